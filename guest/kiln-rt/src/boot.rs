//! The [`BootInfo`] the tender handed to `_start`, and safe views of the
//! strings and devices it describes.

use core::sync::atomic::{AtomicPtr, Ordering};
use kiln_abi::{BootInfo, DeviceInfo, StrRef};

/// The BootInfo, set once by `_start` before anything else runs.
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Records the BootInfo.
///
/// # Safety
///
/// `info` must point to a valid BootInfo whose memory, and the argv/envp
/// arrays and strings it names, stay mapped, readable and unchanged for the
/// rest of the program (the kiln_abi contract for the tender's boot pages).
pub(crate) unsafe fn set(info: *const BootInfo) {
    BOOT_INFO.store(info.cast_mut(), Ordering::Relaxed);
}

/// The BootInfo, or `None` before `_start` recorded it (or in host tests).
pub(crate) fn info() -> Option<&'static BootInfo> {
    let ptr = BOOT_INFO.load(Ordering::Relaxed);
    // SAFETY: `set`'s contract: a non-null pointer is a valid BootInfo that
    // stays mapped and unchanged for the program's lifetime.
    unsafe { ptr.as_ref() }
}

/// Which tender runs the image: [`kiln_abi::tender::HVT`],
/// [`kiln_abi::tender::SPT`], or 0 before start-up.
pub fn tender() -> u32 {
    info().map_or(0, |b| b.tender)
}

/// String number `index` of a StrRef array at guest address `array` holding
/// `count` entries. Returns `None` past the end; a string that is not valid
/// UTF-8 (which the tenders never produce) is cut to its valid prefix.
pub(crate) fn str_at(array: u64, count: u64, index: u64) -> Option<&'static str> {
    if index >= count {
        return None;
    }
    // SAFETY: per `set`'s contract the tender placed `count` StrRefs at
    // `array`, each naming `len` bytes at `ptr`, all mapped, readable and
    // immutable for the program's lifetime; `index < count`.
    let bytes: &'static [u8] = unsafe {
        let entry: StrRef = *(array as *const StrRef).add(index as usize);
        if entry.len == 0 {
            return Some("");
        }
        core::slice::from_raw_parts(entry.ptr as *const u8, entry.len as usize)
    };
    Some(match core::str::from_utf8(bytes) {
        Ok(s) => s,
        // The prefix up to `valid_up_to` is valid UTF-8 by definition.
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    })
}

/// The devices the tender attached, in manifest order, with their index (the
/// `device` number hypercalls take, and the bit in POLL's ready mask).
pub fn devices() -> impl Iterator<Item = (usize, &'static DeviceInfo)> {
    let list: &'static [DeviceInfo] = match info() {
        Some(b) => {
            let n = (b.device_count as usize).min(b.devices.len());
            &b.devices[..n]
        }
        None => &[],
    };
    list.iter().enumerate()
}

/// The name of a device, as declared in the manifest (without NUL padding).
pub fn device_name(device: &DeviceInfo) -> &str {
    let end = device
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(device.name.len());
    core::str::from_utf8(&device.name[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_at_reads_entries_and_stops_at_count() {
        let strings: [&'static str; 2] = ["hello", ""];
        let refs: Vec<StrRef> = strings
            .iter()
            .map(|s| StrRef {
                ptr: s.as_ptr() as u64,
                len: s.len() as u64,
            })
            .collect();
        let refs = refs.leak();
        let base = refs.as_ptr() as u64;
        assert_eq!(str_at(base, 2, 0), Some("hello"));
        assert_eq!(str_at(base, 2, 1), Some(""));
        assert_eq!(str_at(base, 2, 2), None);
    }

    #[test]
    fn invalid_utf8_is_cut_to_its_valid_prefix() {
        let bytes: &'static [u8] = b"ab\xffcd";
        let refs = vec![StrRef {
            ptr: bytes.as_ptr() as u64,
            len: bytes.len() as u64,
        }]
        .leak();
        assert_eq!(str_at(refs.as_ptr() as u64, 1, 0), Some("ab"));
    }

    #[test]
    fn device_names_drop_their_padding() {
        let mut dev = DeviceInfo::default();
        dev.name[..4].copy_from_slice(b"data");
        assert_eq!(device_name(&dev), "data");
        dev.name = [b'x'; 16];
        assert_eq!(device_name(&dev).len(), 16);
    }
}
