//! The host side of the kiln ABI, shared by both tenders.
//!
//! A tender (hvt or spt) owns the mechanics of running guest code: loading
//! the image, memory protection, entering the guest and catching its faults.
//! Everything that the ABI defines independently of those mechanics lives
//! here, written once: decoding and checking hypercall arguments
//! ([`dispatch`]), the devices of one instance ([`Host`]) with their
//! network backends ([`net`]: tap, passt, an inherited socket), READY and
//! the descriptors inherited from kiln's parent ([`inherit`]), the [`BootInfo`]
//! block ([`BootBlock`]), how an instance ends ([`Outcome`], [`finish`]),
//! how block I/O reaches the disk files ([`block`]) and the seccomp policy
//! both tenders compile their filters from ([`Policy`]).
//!
//! Guest memory is reached only through the [`GuestMemory`] trait, whose
//! implementations refuse any range that is not wholly guest memory. The
//! hypercall path does not allocate: it runs after the tender's seccomp
//! filter is in place, where `malloc` could not grow its heap.
//!
//! [`BootInfo`]: kiln_abi::BootInfo

// Outcomes carry their message inline because the hypercall path and the
// signal handlers must not allocate; the size is the point, not an accident.
#![allow(clippy::large_enum_variant, clippy::result_large_err)]

pub mod block;
mod boot;
mod config;
mod dispatch;
mod host;
pub mod inherit;
mod memory;
pub mod net;
mod outcome;
pub mod policy;
mod ready;
pub mod size;
pub mod sys;

pub use boot::{BootBlock, BOOT_BLOCK_MAX};
pub use config::RunConfig;
pub use dispatch::{dispatch, Control};
pub use host::{Host, TenderError};
pub use memory::{GuestMemory, MemError, VecMemory};
pub use outcome::{finish, Fault, Message, Outcome, Violation};
pub use policy::{HostFds, Policy};
pub use ready::READY_BYTE;

#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod tests;
