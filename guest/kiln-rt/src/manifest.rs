//! Compile-time helpers that build an image's manifest; used by
//! [`entry!`](crate::entry). Every check here runs in const context, so a
//! mistake is a compile-time error.

use kiln_abi::{Manifest, MAX_STACK_SIZE, PAGE_SIZE};

/// Adds one device of `kind` ([`kiln_abi::device::NET`] or
/// [`kiln_abi::device::BLOCK`]) per name, in order.
///
/// Fails to compile when a name is empty, longer than 16 bytes, uses a
/// character outside `[a-z0-9_-]`, is declared twice, or when there are more
/// than 8 devices.
pub const fn with_devices(mut manifest: Manifest, kind: u32, names: &[&str]) -> Manifest {
    let mut i = 0;
    while i < names.len() {
        let name = names[i].as_bytes();
        let mut j = 0;
        while j < name.len() {
            let c = name[j];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-',
                "device names may use only a-z, 0-9, '_' and '-'"
            );
            j += 1;
        }
        assert!(
            !has_device(&manifest, name),
            "a device name is declared twice"
        );
        manifest = manifest.with_device(kind, names[i]);
        i += 1;
    }
    manifest
}

/// Sets the stack size in bytes: a non-zero multiple of 4096, at most 64 MiB.
pub const fn with_stack_size(manifest: Manifest, bytes: usize) -> Manifest {
    assert!(
        bytes > 0 && (bytes as u64).is_multiple_of(PAGE_SIZE),
        "the stack size must be a non-zero multiple of 4096"
    );
    assert!(
        bytes as u64 <= MAX_STACK_SIZE,
        "the stack size may be at most 64 MiB"
    );
    manifest.with_stack_size(bytes as u32)
}

/// Whether `manifest` already declares a device called `name`.
const fn has_device(manifest: &Manifest, name: &[u8]) -> bool {
    let mut i = 0;
    while i < manifest.device_count as usize {
        let existing = &manifest.devices[i].name;
        let mut same = true;
        let mut j = 0;
        while j < existing.len() {
            let want = if j < name.len() { name[j] } else { 0 };
            if existing[j] != want {
                same = false;
            }
            j += 1;
        }
        if same {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::device;

    #[test]
    fn devices_and_stack_land_in_the_manifest() {
        const M: Manifest = with_stack_size(
            with_devices(
                with_devices(Manifest::new(), device::NET, &["service0"]),
                device::BLOCK,
                &["data", "logs"],
            ),
            1024 * 1024,
        );
        assert_eq!(M.device_count, 3);
        assert_eq!(&M.devices[0].name[..9], b"service0\0");
        assert_eq!(M.devices[0].kind, device::NET);
        assert_eq!(M.devices[2].kind, device::BLOCK);
        assert_eq!(&M.devices[2].name[..5], b"logs\0");
        assert_eq!(M.stack_size, 1024 * 1024);
    }

    #[test]
    fn duplicate_names_are_detected() {
        let m = with_devices(Manifest::new(), device::NET, &["a"]);
        assert!(has_device(&m, b"a"));
        assert!(!has_device(&m, b"ab"));
        assert!(!has_device(&m, b""));
    }
}
