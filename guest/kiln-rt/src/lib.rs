//! kiln-rt: the library OS linked into every kiln image.
//!
//! An application is an ordinary `#![no_std]`, `#![no_main]` binary crate that
//! depends on `kiln-rt` and names its entry point with [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use kiln_rt::println;
//!
//! kiln_rt::entry!(main);
//!
//! fn main() -> i32 {
//!     println!("Hello from kiln!");
//!     0
//! }
//! ```
//!
//! kiln-rt provides the rest: the image entry point `_start`, a heap (so
//! `alloc`'s `Vec`, `String`, `Box`, `BTreeMap` ... work), console output
//! ([`print!`], [`println!`], [`eprintln!`] and a [`log`] backend),
//! monotonic and wall-clock time ([`time`]), a single-threaded async
//! executor ([`executor`]), arguments and environment ([`mod@env`]), block
//! devices ([`block`]), TCP/IP networking (`net`, with the `net` feature),
//! readiness for whoever started the instance ([`ready`]), and a panic
//! handler that ends the instance with the panic message.
//!
//! The image talks to its tender only through the hypercalls of
//! [`kiln_abi`] (re-exported as [`abi`]); everything above the small
//! hypercall layer is ordinary safe Rust that does not know whether it runs on
//! hvt or spt. A kiln image has exactly one thread of execution and no
//! interrupts or signal handlers; kiln-rt relies on that.
#![cfg_attr(not(test), no_std)]
// Host unit tests leave out the entry point, so its helpers look unused there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

extern crate alloc;

/// The ABI shared with the tenders ([`kiln_abi`]), plus the low-level
/// [`hypercall`](abi::hypercall) function.
///
/// Applications rarely need this module: the rest of kiln-rt wraps every
/// hypercall safely.
pub mod abi {
    pub use crate::hypercall::{hypercall, hypercall_raw};
    pub use kiln_abi::*;
}

/// The `kiln_abi` crate itself, for code that names it directly.
pub use kiln_abi;

pub mod block;
mod boot;
pub mod console;
pub mod env;
pub mod executor;
mod global;
mod heap;
mod hypercall;
pub mod logger;
pub mod manifest;
mod mem;
#[cfg(feature = "net")]
pub mod net;
mod panic;
mod start;
pub mod time;

pub use boot::{device_name, devices, tender};
pub use executor::{block_on, spawn};
pub use heap::heap_size;
pub use hypercall::{abort, exit};

/// Whether READY was issued.
static READY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Tells the tender that the application is ready to serve (the READY
/// hypercall), once: later calls do nothing.
///
/// Whoever started the instance learns it at once (`kiln run --ready-fd`,
/// used by kilnd to hold a client's connection until the instance can take
/// it). With the `net` feature kiln-rt calls it by itself when the first
/// `net::TcpListener::bind` or `net::UdpSocket::bind` succeeds and the
/// interface has its IPv4 configuration: a static address at once; with
/// DHCP, when the lease arrives (also when the bind came first). An
/// application that needs more before it can answer (a cache to load, say)
/// binds after that work. Call it yourself in an application that serves
/// without binding a socket.
pub fn ready() {
    let first = !READY.swap(true, core::sync::atomic::Ordering::Relaxed);
    // Host unit tests have no tender to call.
    if first && cfg!(not(test)) {
        // A reserved word of zero is never refused; nothing to do on error.
        let _ = hypercall::ready();
    }
}

/// Whether [`ready`] was called (by the application or by kiln-rt).
pub fn is_ready() -> bool {
    READY.load(core::sync::atomic::Ordering::Relaxed)
}

/// What an application's `main` may return; converted to the exit code of
/// the instance.
///
/// * `()` exits with 0;
/// * an `i32` or `u8` is the exit code itself (`kiln run` exits with
///   `code & 0xff`);
/// * `Result<T, E>` exits with `T`'s code on `Ok`, and on `Err` prints
///   `Error: {e:?}` to the console and exits with 1.
pub trait Termination {
    /// The exit code this value stands for.
    fn report(self) -> i32;
}

impl Termination for () {
    fn report(self) -> i32 {
        0
    }
}

impl Termination for i32 {
    fn report(self) -> i32 {
        self
    }
}

impl Termination for u8 {
    fn report(self) -> i32 {
        i32::from(self)
    }
}

impl<T: Termination, E: core::fmt::Debug> Termination for Result<T, E> {
    fn report(self) -> i32 {
        match self {
            Ok(value) => value.report(),
            Err(err) => {
                eprintln!("Error: {err:?}");
                1
            }
        }
    }
}

/// Declares the application's entry point and its manifest.
///
/// `main` is a function taking no arguments and returning a
/// [`Termination`] value (`()`, `i32`, `u8` or a `Result`); its result is the
/// exit code of the instance. After `main`, optional `key = value` pairs, in
/// any order, go into the image's manifest (the ELF note that tells the
/// tender what the image needs):
///
/// * `net = ["name", ...]`: network devices the image uses;
/// * `block = ["name", ...]`: block devices the image uses;
/// * `stack = bytes`: stack size, a multiple of 4096 (default 256 KiB, at
///   most 64 MiB).
///
/// Device names are 1 to 16 bytes of `[a-z0-9_-]`; at most 8 devices in all.
/// Mistakes are compile-time errors.
///
/// ```ignore
/// kiln_rt::entry!(main);
/// kiln_rt::entry!(main, net = ["service0"], block = ["data"], stack = 1024 * 1024);
/// ```
///
/// Use it exactly once, in the binary crate.
#[macro_export]
macro_rules! entry {
    ($main:path $(, $key:ident = $value:expr)* $(,)?) => {
        /// The application entry point, called by kiln-rt's `_start`.
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_app_main() -> i32 {
            $crate::Termination::report($main())
        }

        /// The image's manifest, read by the tender from the `.note.kiln` ELF note.
        #[used]
        #[unsafe(link_section = ".note.kiln")]
        static __KILN_MANIFEST_NOTE: $crate::abi::ManifestNote =
            $crate::abi::ManifestNote::new({
                let manifest = $crate::abi::Manifest::new();
                $( let manifest = $crate::__kiln_manifest_entry!(manifest, $key = $value); )*
                manifest
            });
    };
}

/// Implementation detail of [`entry!`]: applies one `key = value` pair.
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_manifest_entry {
    ($m:ident, net = $names:expr) => {
        $crate::manifest::with_devices($m, $crate::abi::device::NET, &$names)
    };
    ($m:ident, block = $names:expr) => {
        $crate::manifest::with_devices($m, $crate::abi::device::BLOCK, &$names)
    };
    ($m:ident, stack = $bytes:expr) => {
        $crate::manifest::with_stack_size($m, $bytes)
    };
    ($m:ident, $other:ident = $value:expr) => {
        ::core::compile_error!(::core::concat!(
            "kiln_rt::entry!: unknown key `",
            ::core::stringify!($other),
            "` (expected `net`, `block` or `stack`)"
        ))
    };
}
