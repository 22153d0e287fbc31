//! Decoding of the manifest note (kiln_abi::Manifest) from image bytes.

use kiln_abi::{
    device, Manifest, ManifestDevice, ABI_VERSION, DEVICE_NAME_LEN, MANIFEST_MAGIC, MANIFEST_SIZE,
    MAX_DEVICES, MAX_STACK_SIZE, PAGE_SIZE,
};

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The note's descriptor has the wrong size.
    #[error("manifest is {0} bytes, expected {MANIFEST_SIZE}")]
    Size(usize),
    /// Wrong magic value.
    #[error("manifest magic is {0:#x}, expected {MANIFEST_MAGIC:#x}")]
    Magic(u32),
    /// The image speaks another ABI version.
    #[error("image was built for kiln ABI version {0}, this tender speaks version {ABI_VERSION}; rebuild the image with this kiln")]
    AbiVersion(u32),
    /// Bad stack size.
    #[error("stack size {0:#x} is not a multiple of 4 KiB in 4 KiB..=64 MiB")]
    StackSize(u32),
    /// Too many devices.
    #[error("{0} devices declared, at most {MAX_DEVICES}")]
    DeviceCount(u32),
    /// A device of unknown kind.
    #[error("device {index} has unknown kind {kind}")]
    DeviceKind {
        /// Index in the manifest.
        index: usize,
        /// The kind value.
        kind: u32,
    },
    /// A device name that is empty or uses characters outside `[a-z0-9_-]`.
    #[error("device {0} has an invalid name (1-16 characters of a-z, 0-9, '_', '-')")]
    DeviceName(usize),
    /// Two devices share a name.
    #[error("device name {0:?} is declared twice")]
    DuplicateName(String),
}

/// Name of a manifest device as text (up to the first NUL).
pub fn device_name(d: &ManifestDevice) -> &str {
    let len = d
        .name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(DEVICE_NAME_LEN);
    std::str::from_utf8(&d.name[..len]).unwrap_or("?")
}

fn word(b: &[u8], at: usize) -> u32 {
    // Callers index within MANIFEST_SIZE, checked once in `decode`.
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn decode(b: &[u8]) -> Result<Manifest, ManifestError> {
    if b.len() != MANIFEST_SIZE {
        return Err(ManifestError::Size(b.len()));
    }
    let magic = word(b, 0);
    if magic != MANIFEST_MAGIC {
        return Err(ManifestError::Magic(magic));
    }
    let abi = word(b, 4);
    if abi != ABI_VERSION {
        return Err(ManifestError::AbiVersion(abi));
    }
    let stack_size = word(b, 8);
    if stack_size != 0
        && (u64::from(stack_size) % PAGE_SIZE != 0 || u64::from(stack_size) > MAX_STACK_SIZE)
    {
        return Err(ManifestError::StackSize(stack_size));
    }
    let count = word(b, 12);
    if count as usize > MAX_DEVICES {
        return Err(ManifestError::DeviceCount(count));
    }
    let mut m = Manifest::new().with_stack_size(stack_size);
    m.device_count = count;
    for index in 0..count as usize {
        let at = 16 + index * 24;
        let kind = word(b, at);
        if kind != device::NET && kind != device::BLOCK {
            return Err(ManifestError::DeviceKind { index, kind });
        }
        let mut name = [0u8; DEVICE_NAME_LEN];
        name.copy_from_slice(&b[at + 8..at + 8 + DEVICE_NAME_LEN]);
        let len = name.iter().position(|&c| c == 0).unwrap_or(DEVICE_NAME_LEN);
        let valid = len > 0
            && name[..len]
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
            && name[len..].iter().all(|&c| c == 0);
        if !valid {
            return Err(ManifestError::DeviceName(index));
        }
        m.devices[index] = ManifestDevice {
            kind,
            _reserved: 0,
            name,
        };
    }
    for i in 0..count as usize {
        for j in 0..i {
            if m.devices[i].name == m.devices[j].name {
                return Err(ManifestError::DuplicateName(
                    device_name(&m.devices[i]).to_string(),
                ));
            }
        }
    }
    Ok(m)
}

/// Encodes a manifest the way the `entry!` macro lays it out in memory
/// (used by tests and tools that write images).
pub fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(MANIFEST_SIZE);
    for w in [m.magic, m.abi_version, m.stack_size, m.device_count] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for d in &m.devices {
        out.extend_from_slice(&d.kind.to_le_bytes());
        out.extend_from_slice(&d._reserved.to_le_bytes());
        out.extend_from_slice(&d.name);
    }
    out
}
