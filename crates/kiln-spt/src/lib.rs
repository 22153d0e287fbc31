//! spt, the process tender: runs a kiln image inside this very process.
//!
//! The image is mapped at its link addresses (never over the tender's own
//! mappings) with exactly its segments' permissions, next to a fresh heap
//! and a stack with a guard page below it; a read-only BootInfo block tells
//! it where everything is and where to call for hypercalls. Just before the
//! jump into the image, a seccomp filter shrinks the process's system calls
//! to those the hypercalls need. Faults and forbidden system calls are
//! caught by signal handlers and reported like hvt reports CPU exceptions.
//!
//! ```text
//!  .. IMAGE_BASE           BootInfo block (r--), just below the image
//!  IMAGE_BASE ..            image segments (p_flags exactly, W^X)
//!  image end ..             heap (rw-)          } mem_size
//!                           guard page (---)    }   together
//!                           stack (rw-)         }
//!  0x55.. / 0x7f..          the tender itself (untouched)
//! ```
//!
//! Module map: [`layout`] (where things go, pure), [`regions`] (which guest
//! ranges a hypercall may touch, pure), [`report`] (what a signal means,
//! pure), `sys` (mappings), `memory` (the checked `GuestMemory`), `fault`
//! (signal handlers), `sandbox` (seccomp), `entry` (jump and hypercall
//! entry).

pub mod layout;
pub mod regions;
pub mod report;

mod entry;
mod fault;
mod memory;
mod sandbox;
mod sys;

use std::convert::Infallible;
use std::time::Instant;

use kiln_abi::tender::SPT;
use kiln_image::Image;
use kiln_tender::{BootBlock, Host, RunConfig, TenderError};

use crate::layout::{Layout, LayoutError, Prot};
use crate::regions::Regions;
use crate::sys::{MapError, Mapping};

pub use crate::fault::FaultError;
pub use crate::sandbox::SandboxError;

/// Why spt could not start an instance. Once the guest runs, spt no longer
/// returns: the instance ends the process through [`kiln_tender::finish`].
#[derive(Debug, thiserror::Error)]
pub enum SptError {
    /// Devices, arguments or environment.
    #[error(transparent)]
    Tender(#[from] TenderError),
    /// The memory size does not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A region could not be mapped where the image needs it.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A segment's initialized bytes exceed its memory size.
    #[error(
        "segment {index} holds {file_size:#x} bytes of data but only {mem_size:#x} bytes of memory"
    )]
    SegmentData {
        /// Program header index.
        index: usize,
        /// Bytes from the file.
        file_size: u64,
        /// Bytes in memory.
        mem_size: u64,
    },
    /// The signal handlers could not be installed.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Runs `cfg.image` in this process. Returns only when the instance could
/// not be started; after the first guest instruction, the process ends
/// with the instance (exit code, abort, fault, or ABI violation).
///
/// The process must be single-threaded: the seccomp filter and the signal
/// stack are per thread, and the guest takes over this thread.
pub fn run(cfg: RunConfig) -> Result<Infallible, SptError> {
    let started = Instant::now();
    let host = Host::open(&cfg)?;
    let layout = Layout::plan(&cfg.image, cfg.mem_size, BootBlock::size_needed(&cfg))?;
    let mut memory = map_image(&cfg.image, &layout)?;
    memory.push(Mapping::fixed(layout.heap, Prot::RW, true, "the heap")?);
    memory.push(Mapping::fixed(
        layout.guard,
        Prot::NONE,
        false,
        "the stack guard page",
    )?);
    memory.push(Mapping::fixed(layout.stack, Prot::RW, true, "the stack")?);

    let block = BootBlock {
        base: layout.boot.start,
        tender: SPT,
        hypercall: entry::hypercall_address(),
        heap: (layout.heap.start, layout.heap.len()),
        stack_bottom: layout.stack.start,
        tsc_hz: 0,
    }
    .build(&cfg, &host.device_infos())?;
    let mut boot = Mapping::fixed(layout.boot, Prot::RW, false, "the BootInfo block")?;
    boot.fill(0, &block);
    boot.protect(Prot::R, "the BootInfo block")?;
    memory.push(boot);

    let filter = sandbox::filter(&host.sandbox_fds())?;
    let entry_point = cfg.image.entry();
    if cfg.verbose {
        eprintln!(
            "kiln: spt: image {:#x}..{:#x}, heap {:#x}..{:#x}, stack {:#x}..{:#x}, ready in {} us",
            kiln_abi::IMAGE_BASE,
            layout.heap.start,
            layout.heap.start,
            layout.heap.end,
            layout.stack.start,
            layout.stack.end,
            started.elapsed().as_micros()
        );
    }
    // Release what the guest no longer needs (the image file's bytes) while
    // system calls are still allowed.
    drop(cfg);
    drop(block);

    let handlers = fault::install(layout.guard)?;
    entry::publish(entry::Instance {
        host,
        mem: memory::SptMemory::new(Regions::from_layout(&layout)),
    });
    if let Err(e) = sandbox::install(&filter) {
        entry::unpublish();
        handlers.restore();
        return Err(e.into());
    }
    // From here on no system call but the admitted ones may happen, so
    // nothing is dropped (a drop could hand memory back to the kernel): the
    // guest owns the mappings, and the handlers stay for good.
    handlers.keep();
    let (stack_top, boot_info) = (layout.stack.end, layout.boot.start);
    std::mem::forget(memory);
    std::mem::forget(filter);
    std::mem::forget(layout);
    // SAFETY: `entry_point` lies in an executable segment of the image
    // (kiln_image validates that) now mapped at its link address; the stack
    // is mapped read-write and its top is page aligned; the BootInfo block
    // is mapped read-only at `boot_info`; the instance is published; `run`
    // never resumes.
    unsafe { entry::enter(entry_point, stack_top, boot_info) }
}

/// Maps every image segment at its link address: fresh pages, the file's
/// bytes copied in, the rest zero, then exactly the segment's permissions.
fn map_image(image: &Image, layout: &Layout) -> Result<Vec<Mapping>, SptError> {
    let mut mappings = Vec::with_capacity(layout.segments.len() + 4);
    for plan in &layout.segments {
        let Some(segment) = image.segments().iter().find(|s| s.index == plan.index) else {
            continue;
        };
        let data = image.segment_data(segment);
        if data.len() as u64 > plan.span.len() || segment.vaddr != plan.span.start {
            return Err(SptError::SegmentData {
                index: segment.index,
                file_size: data.len() as u64,
                mem_size: segment.mem_size,
            });
        }
        let what = format!("segment {} ({})", segment.index, segment.perms());
        let mut m = Mapping::fixed(plan.span, Prot::RW, false, &what)?;
        m.fill(0, data);
        if plan.prot != Prot::RW {
            m.protect(plan.prot, &what)?;
        }
        mappings.push(m);
    }
    Ok(mappings)
}
