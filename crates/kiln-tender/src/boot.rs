//! The BootInfo block: BootInfo, then the argv and envp arrays, then the
//! string bytes, laid out for a given guest address.

use crate::{RunConfig, TenderError};
use kiln_abi::{DeviceInfo, StrRef, ABI_VERSION, BOOT_MAGIC, MAX_DEVICES};
use std::mem::size_of;

/// Largest BootInfo block (BootInfo, arrays and strings) kiln builds.
pub const BOOT_BLOCK_MAX: u64 = 256 * 1024;

/// Where an instance's memory is, for BootInfo.
#[derive(Debug, Clone, Copy)]
pub struct BootBlock {
    /// Guest address the block will be copied to.
    pub base: u64,
    /// [`kiln_abi::tender::HVT`] or [`kiln_abi::tender::SPT`].
    pub tender: u32,
    /// spt's hypercall entry, or 0.
    pub hypercall: u64,
    /// Heap start and size.
    pub heap: (u64, u64),
    /// Lowest address of the stack.
    pub stack_bottom: u64,
    /// TSC frequency for guest-side clock reads, or 0.
    pub tsc_hz: u64,
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

fn strings(cfg: &RunConfig) -> impl Iterator<Item = &str> {
    cfg.args.iter().chain(cfg.env.iter()).map(String::as_str)
}

impl BootBlock {
    /// Bytes the block needs for `cfg` (before page rounding).
    pub fn size_needed(cfg: &RunConfig) -> u64 {
        let refs = (cfg.args.len() + cfg.env.len()) as u64 * size_of::<StrRef>() as u64;
        let text: u64 = strings(cfg).map(|s| s.len() as u64).sum();
        align8(size_of::<kiln_abi::BootInfo>() as u64) + refs + text
    }

    /// Builds the block for `cfg` with `devices`; copy the result to `self.base`.
    pub fn build(&self, cfg: &RunConfig, devices: &[DeviceInfo]) -> Result<Vec<u8>, TenderError> {
        let size = Self::size_needed(cfg);
        if size > BOOT_BLOCK_MAX {
            return Err(TenderError::BootBlockTooLarge(size));
        }
        let info_size = align8(size_of::<kiln_abi::BootInfo>() as u64);
        let argv = self.base + info_size;
        let envp = argv + cfg.args.len() as u64 * size_of::<StrRef>() as u64;
        let mut text = envp + cfg.env.len() as u64 * size_of::<StrRef>() as u64;

        let mut out = Vec::with_capacity(size as usize);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(BOOT_MAGIC);
        put(u64::from(ABI_VERSION) | (u64::from(self.tender) << 32));
        put(self.hypercall);
        put(self.heap.0);
        put(self.heap.1);
        put(self.stack_bottom);
        put(cfg.args.len() as u64);
        put(argv);
        put(cfg.env.len() as u64);
        put(envp);
        put(self.tsc_hz);
        put(devices.len().min(MAX_DEVICES) as u64);
        for i in 0..MAX_DEVICES {
            let d = devices.get(i).copied().unwrap_or_default();
            out.extend_from_slice(&d.kind.to_le_bytes());
            out.extend_from_slice(&d.unit.to_le_bytes());
            out.extend_from_slice(&d.name);
            out.extend_from_slice(&d.mac);
            out.extend_from_slice(&d._reserved);
            out.extend_from_slice(&d.capacity.to_le_bytes());
            let n = &d.net;
            out.extend_from_slice(&n.flags.to_le_bytes());
            out.extend_from_slice(&n.ipv4);
            out.extend_from_slice(&n.ipv4_gateway);
            out.extend_from_slice(&[n.ipv4_prefix, n.ipv6_prefix]);
            out.extend_from_slice(&n._reserved);
            out.extend_from_slice(&n.ipv6);
            out.extend_from_slice(&n.ipv6_gateway);
        }
        out.resize(info_size as usize, 0);
        for s in strings(cfg) {
            out.extend_from_slice(&text.to_le_bytes());
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            text += s.len() as u64;
        }
        for s in strings(cfg) {
            out.extend_from_slice(s.as_bytes());
        }
        debug_assert_eq!(out.len() as u64, size);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::BootInfo;
    use std::mem::offset_of;

    #[test]
    fn serialized_offsets_match_the_abi_struct() {
        // The writer above emits fields in declaration order, 8 bytes each
        // up to the device table; pin that against the real layout.
        assert_eq!(offset_of!(BootInfo, hypercall), 16);
        assert_eq!(offset_of!(BootInfo, tsc_hz), 80);
        assert_eq!(offset_of!(BootInfo, device_count), 88);
        assert_eq!(offset_of!(BootInfo, devices), 96);
        assert_eq!(offset_of!(DeviceInfo, mac), 24);
        assert_eq!(offset_of!(DeviceInfo, capacity), 32);
        assert_eq!(offset_of!(DeviceInfo, net), 40);
        assert_eq!(std::mem::size_of::<DeviceInfo>(), 88);
        use kiln_abi::NetConfig;
        assert_eq!(offset_of!(NetConfig, ipv4_prefix), 12);
        assert_eq!(offset_of!(NetConfig, ipv6), 16);
        assert_eq!(offset_of!(NetConfig, ipv6_gateway), 32);
    }
}
