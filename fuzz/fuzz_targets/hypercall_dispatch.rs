//! Hostile hypercalls: a number and an argument address chosen by the
//! fuzzer against a guest memory whose contents the fuzzer also chose. The
//! tender must answer with Continue or an Outcome, never panic, and never
//! touch memory outside the guest's (VecMemory would panic if it did).
#![no_main]

use kiln_tender::{dispatch, Control, GuestMemory, Host, RunConfig, VecMemory};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const BASE: u64 = 0x10_0000;

fn config() -> &'static RunConfig {
    static CFG: OnceLock<RunConfig> = OnceLock::new();
    CFG.get_or_init(|| RunConfig {
        image: kiln_image::Image::parse(kiln_image::synthetic::minimal(&kiln_abi::Manifest::new()))
            .expect("synthetic image"),
        args: vec!["fuzz".into()],
        env: Vec::new(),
        mem_size: 1 << 20,
        disks: Vec::new(),
        net: Default::default(),
        verbose: false,
        ready_fd: None,
        started: std::time::Instant::now(),
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let number = u32::from_le_bytes(data[0..4].try_into().unwrap());
    // POLL could sleep until a far deadline and HALT/ABORT end at once; all
    // others are side-effect free apart from the console.
    if number == kiln_abi::nr::POLL || number == kiln_abi::nr::CONSOLE_WRITE {
        return;
    }
    let offset = u64::from_le_bytes(data[4..12].try_into().unwrap()) % 0x3000;
    let arg = if data.len() % 2 == 0 { BASE + offset } else { offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) };
    let mut mem = VecMemory { base: BASE, bytes: vec![0; 0x2000] };
    let n = (data.len() - 12).min(mem.bytes.len());
    mem.bytes[..n].copy_from_slice(&data[12..12 + n]);
    let mut host = Host::open(config()).expect("host");
    match dispatch(&mut host, &mut mem, number, arg) {
        Control::Continue | Control::Exit(_) => {}
    }
    // The memory object is intact and still the same size.
    assert_eq!(mem.bytes.len(), 0x2000);
    let _ = mem.check(BASE, 0x2000, true);
});
