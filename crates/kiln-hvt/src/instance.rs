//! Setting up one instance: VM, guest memory with the image and the
//! tender's structures, the vCPU, the sandbox.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_abi::{device, tender, HVT_NET_DOORBELL_PORT, MAX_DEVICES};
use kiln_tender::{BootBlock, Host, RunConfig};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    Layout, GDT_ADDR, IDT_ADDR, PAGE_TABLES_BASE, RING0_STACK_TOP, STUBS_PAGE, TSS_ADDR,
};
use crate::rings::RingPair;
use crate::seccomp::RingFds;
use crate::vcpu::{self, KvmError};
use crate::{io, paging, seccomp, x86, HvtError};

/// How long each setup step took, for `-v`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Opening the instance's devices.
    pub host: Duration,
    /// Opening /dev/kvm and creating the VM (0 when `probe` made it).
    pub vm: Duration,
    /// Allocating and registering guest memory.
    pub memory: Duration,
    /// Copying the image and writing tables, stubs and BootInfo.
    pub load: Duration,
    /// Creating and configuring the vCPU.
    pub vcpu: Duration,
    /// Eventfds, the I/O thread's filter and its start, and the
    /// doorbell's ioeventfd (zero without network devices).
    pub net: Duration,
    /// Waiting for the I/O thread's filter (normally in place by then),
    /// building and installing the vCPU thread's.
    pub seccomp: Duration,
}

/// The instance's network devices as the ring path needs them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetInfo {
    /// Bit `i`: device `i` is a network device.
    pub mask: u64,
    /// Largest frame of each device (MTU + 14).
    pub frame_max: [usize; MAX_DEVICES],
}

/// The ring machinery of an instance with network devices.
#[derive(Debug)]
pub struct NetRings {
    /// What the vCPU thread shares with the I/O thread.
    pub shared: Arc<io::Shared>,
    /// Whether KVM catches doorbell kicks in the kernel (else they exit to
    /// the run loop, which forwards them).
    pub doorbell_in_kernel: bool,
    /// The rings of each device in ring mode.
    pub pairs: [Option<RingPair>; MAX_DEVICES],
    /// The I/O thread, started (and confining itself) during setup.
    pub thread: IoThread,
}

/// A ready-to-run instance. Field order is drop order: the vCPU and the VM
/// go before the memory they use.
pub struct Instance {
    /// The only vCPU.
    pub vcpu: VcpuFd,
    /// The VM, held open for the vCPU.
    pub _vm: VmFd,
    /// All of guest memory.
    pub mem: GuestMemoryMmap,
    /// Where everything is.
    pub layout: Layout,
    /// Devices, console, clocks.
    pub host: Host,
    /// The network devices.
    pub net: NetInfo,
    /// Shared-memory rings: present when the image has network devices.
    pub rings: Option<NetRings>,
    /// When VM creation started.
    pub created: Instant,
    /// Setup timings.
    pub timings: Timings,
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), HvtError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| HvtError::Load { what, addr, source })
}

/// A VM made by [`crate::probe`], kept for the [`crate::run`] that
/// usually follows (`kiln run --tender auto`), so that one process never
/// creates two VMs.
static PROBED: Mutex<Option<(Kvm, VmFd, Instant)>> = Mutex::new(None);

/// Creates a VM and keeps it for the next [`Instance::create`].
pub fn probe() -> Result<(), KvmError> {
    let created = Instant::now();
    let (kvm, vm) = create_vm()?;
    if let Ok(mut slot) = PROBED.lock() {
        *slot = Some((kvm, vm, created));
    }
    Ok(())
}

/// The probed VM if there is one, else a new one; with its creation time.
fn take_or_create_vm() -> Result<(Kvm, VmFd, Instant), KvmError> {
    let probed = PROBED.lock().ok().and_then(|mut slot| slot.take());
    match probed {
        Some(vm) => Ok(vm),
        None => {
            let created = Instant::now();
            let (kvm, vm) = create_vm()?;
            Ok((kvm, vm, created))
        }
    }
}

/// Opens /dev/kvm and creates an empty VM.
pub fn create_vm() -> Result<(Kvm, VmFd), KvmError> {
    let kvm = Kvm::new().map_err(|source| KvmError {
        what: "open /dev/kvm",
        source,
    })?;
    let vm = kvm.create_vm().map_err(|source| KvmError {
        what: "KVM_CREATE_VM",
        source,
    })?;
    Ok((kvm, vm))
}

impl Instance {
    /// Builds the instance for `cfg`, up to but excluding the sandbox.
    pub fn create(cfg: &RunConfig) -> Result<Instance, HvtError> {
        let mut t = Timings::default();
        let mut mark = Instant::now();
        let mut lap = |d: &mut Duration| {
            let now = Instant::now();
            *d = now - mark;
            mark = now;
        };

        let host = Host::open(cfg)?;
        let layout = Layout::new(
            cfg.image.segments(),
            cfg.mem_size,
            cfg.image.stack_size(),
            BootBlock::size_needed(cfg),
        )?;
        lap(&mut t.host);

        // Memory is declared before the VM so that, on an error return, the
        // VM (which refers to it) is dropped first.
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout.mem_size as usize)])
                .map_err(|source| HvtError::Memory {
                    size: layout.mem_size,
                    source,
                })?;
        let mut mmap_time = Duration::ZERO;
        lap(&mut mmap_time);

        // With network devices, the I/O thread starts first and confines
        // itself while this thread builds the VM (2 cores: in parallel);
        // `sandbox` only checks that it did, before the first KVM_RUN.
        let mut net = NetInfo::default();
        for (i, info) in host.device_infos().iter().enumerate().take(MAX_DEVICES) {
            if info.kind == device::NET {
                net.mask |= 1 << i;
                net.frame_max[i] = info.unit as usize + 14;
            }
        }
        let io = if net.mask != 0 {
            // Its SIGSYS reports need the handler from the start.
            seccomp::install_reporter()?;
            let shared = Arc::new(io::Shared::new(mem.clone()).map_err(HvtError::Net)?);
            let fds = RingFds {
                doorbell: shared.doorbell.as_raw_fd(),
                wake: shared.wake.as_raw_fd(),
            };
            let filter = seccomp::build_io(&host.sandbox_fds().nets, fds)?;
            let thread = start_io_thread(shared.clone(), filter)?;
            Some((shared, thread))
        } else {
            None
        };
        lap(&mut t.net);

        let (kvm, vm, created) = take_or_create_vm()?;
        lap(&mut t.vm);
        vcpu::register_memory(&vm, &mem, layout.mem_size)?;
        lap(&mut t.memory);
        t.memory += mmap_time;

        // Fresh anonymous memory is zero: only the file bytes are copied,
        // bss and every gap stay zero.
        for s in cfg.image.segments() {
            write(&mem, "image segment", s.vaddr, cfg.image.segment_data(s))?;
        }
        write(&mem, "GDT", GDT_ADDR, &x86::gdt(TSS_ADDR))?;
        write(&mem, "TSS", TSS_ADDR, &x86::tss(RING0_STACK_TOP))?;
        write(&mem, "IDT", IDT_ADDR, &x86::idt(STUBS_PAGE))?;
        write(&mem, "exception stubs", STUBS_PAGE, &x86::stubs())?;
        let tables = paging::build(&layout.mappings, layout.mem_size, PAGE_TABLES_BASE);
        write(&mem, "page tables", tables.base, &tables.bytes)?;
        lap(&mut t.load);

        let vcpu_fd = vm.create_vcpu(0).map_err(|source| KvmError {
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        vcpu::configure_cpuid(&vcpu_fd)?;
        vcpu::configure_sregs(&vcpu_fd)?;
        vcpu::configure_msrs(&vcpu_fd)?;
        vcpu::configure_regs(&vcpu_fd, cfg.image.entry(), &layout)?;
        let tsc_hz = vcpu::tsc_hz(&vcpu_fd);
        lap(&mut t.vcpu);

        let infos = host.device_infos();
        let rings = io.map(|(shared, thread)| {
            // The doorbell: a PIO ioeventfd, so that a kick costs no exit
            // to this process. Without it the run loop forwards kicks.
            let doorbell_in_kernel = vm
                .register_ioevent(
                    &shared.doorbell,
                    &IoEventAddress::Pio(u64::from(HVT_NET_DOORBELL_PORT)),
                    NoDatamatch,
                )
                .is_ok();
            NetRings {
                shared,
                doorbell_in_kernel,
                pairs: [None; MAX_DEVICES],
                thread,
            }
        });
        let mut ioevent_time = Duration::ZERO;
        lap(&mut ioevent_time);
        t.net += ioevent_time;

        let boot = BootBlock {
            base: layout.boot_info,
            tender: tender::HVT,
            hypercall: 0,
            heap: (layout.heap_start, layout.heap_size),
            stack_bottom: layout.stack_bottom,
            tsc_hz,
        }
        .build(cfg, &infos)?;
        write(&mem, "BootInfo", layout.boot_info, &boot)?;
        let mut boot_time = Duration::ZERO;
        lap(&mut boot_time);
        t.load += boot_time;
        // The /dev/kvm descriptor is not needed any more; closing it keeps
        // it out of reach of the run loop.
        drop(kvm);

        Ok(Instance {
            vcpu: vcpu_fd,
            _vm: vm,
            mem,
            layout,
            host,
            net,
            rings,
            created,
            timings: t,
        })
    }

    /// Confines both threads to what they need: checks that the network
    /// I/O thread (started by [`Instance::create`]) has installed its
    /// filter, then installs this (the vCPU) thread's. Nothing of the
    /// guest's has run yet.
    pub fn sandbox(&mut self) -> Result<(), HvtError> {
        let start = Instant::now();
        seccomp::install_reporter()?;
        let ring_fds = self.rings.as_ref().map(|r| RingFds {
            doorbell: r.shared.doorbell.as_raw_fd(),
            wake: r.shared.wake.as_raw_fd(),
        });
        if let Some(r) = &self.rings {
            r.thread.wait_confined()?;
        }
        let filter = seccomp::build(self.vcpu.as_raw_fd(), &self.host.sandbox_fds(), ring_fds)?;
        seccomp::install_thread(&filter)?;
        self.timings.seccomp = start.elapsed();
        Ok(())
    }
}

/// The network I/O thread, as the vCPU thread sees it.
#[derive(Debug)]
pub struct IoThread {
    state: Arc<AtomicU8>,
}

const STARTING: u8 = 0;
const CONFINED: u8 = 1;
const FAILED: u8 = 2;

/// Starts the I/O thread. Its first act is to confine itself with
/// `filter`; only then does it look at anything (the doorbell, the
/// backends, guest memory through `shared`), and from then on it does not
/// allocate. [`IoThread::wait_confined`] tells when it got there.
fn start_io_thread(
    shared: Arc<io::Shared>,
    filter: seccompiler::BpfProgram,
) -> Result<IoThread, HvtError> {
    let state = Arc::new(AtomicU8::new(STARTING));
    let theirs = state.clone();
    std::thread::Builder::new()
        .name("kiln-net-io".into())
        .spawn(move || {
            if seccomp::install_thread(&filter).is_err() {
                theirs.store(FAILED, Ordering::Release);
                return;
            }
            theirs.store(CONFINED, Ordering::Release);
            // Never returns, so `filter` (like everything else here) is
            // never freed under the filter.
            io::run(&shared)
        })
        .map_err(HvtError::Net)?;
    Ok(IoThread { state })
}

impl IoThread {
    /// Waits until the thread has installed its filter (by the time the
    /// VM is built it normally has); an error when it could not.
    pub fn wait_confined(&self) -> Result<(), HvtError> {
        loop {
            match self.state.load(Ordering::Acquire) {
                STARTING => std::thread::yield_now(),
                CONFINED => return Ok(()),
                _ => {
                    return Err(HvtError::Net(std::io::Error::other(
                        "the network I/O thread could not install its seccomp filter",
                    )))
                }
            }
        }
    }
}
