//! The image entry point `_start`: checks the BootInfo, sets up the heap,
//! the clock and the logger, runs the application's `main` (through the
//! `kiln_app_main` symbol that [`entry!`](crate::entry) defines) and ends the
//! instance with its exit code.

use kiln_abi::{BootInfo, ABI_VERSION, BOOT_MAGIC, EXIT_TENDER_ERROR};

/// Why a BootInfo cannot be used; `None` when it can.
pub(crate) fn check(magic: u64, abi_version: u32) -> Option<&'static str> {
    if magic != BOOT_MAGIC {
        Some("kiln-rt: bad BootInfo magic; this tender does not speak the kiln ABI")
    } else if abi_version != ABI_VERSION {
        Some("kiln-rt: the tender speaks another kiln ABI version than this image")
    } else {
        None
    }
}

#[cfg(not(test))]
mod entry {
    use super::*;
    use crate::{boot, heap, hypercall, logger, time};

    extern "C" {
        /// The application's main, defined by `kiln_rt::entry!`.
        fn kiln_app_main() -> i32;
    }

    /// Where the tender starts the image: `rdi` = the BootInfo's address,
    /// `rsp ≡ 8 (mod 16)` as after a `call`.
    ///
    /// # Safety
    ///
    /// Called once, by the tender, with a BootInfo that follows the kiln_abi
    /// contract (mapped, readable and unchanged for the whole run).
    #[unsafe(no_mangle)]
    unsafe extern "C" fn _start(boot_info: *const BootInfo) -> ! {
        if boot_info.is_null() {
            // Without a BootInfo we cannot know how to reach the tender; port
            // I/O is right on hvt and faults (ending the instance) on spt.
            hypercall::exit(i32::from(EXIT_TENDER_ERROR));
        }
        // SAFETY: the tender passes a valid BootInfo (our contract).
        let info = unsafe { &*boot_info };
        if let Some(problem) = check(info.magic, info.abi_version) {
            if info.magic == BOOT_MAGIC {
                // The layout up to `hypercall` is stable across versions.
                hypercall::set_entry(info.hypercall);
            }
            hypercall::abort(problem);
        }
        hypercall::set_entry(info.hypercall);
        // SAFETY: the magic and version check out, so this is the kiln_abi
        // BootInfo, which the tender keeps mapped and unchanged.
        unsafe { boot::set(boot_info) };
        // SAFETY: the tender gives the image this region for its heap; no one
        // else uses it, and this is the only call.
        unsafe { heap::init(info.heap_start, info.heap_size) };
        time::init(info.tsc_hz);
        logger::init();
        // SAFETY: `kiln_app_main` is the `extern "C" fn() -> i32` that
        // `entry!` defines; it has no preconditions.
        let code = unsafe { kiln_app_main() };
        hypercall::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_checks() {
        assert_eq!(check(BOOT_MAGIC, ABI_VERSION), None);
        assert!(check(0, ABI_VERSION).unwrap().contains("magic"));
        assert!(check(BOOT_MAGIC, ABI_VERSION + 1)
            .unwrap()
            .contains("version"));
    }
}
