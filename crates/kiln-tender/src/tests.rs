//! Hypercalls against a vector-backed guest memory: every rejection the ABI
//! promises, and the results written back.

use crate::*;
use kiln_abi::{device, nr, Manifest, ABI_VERSION, BOOT_MAGIC};
use kiln_image::{synthetic, Image};

pub(crate) const BASE: u64 = 0x10_0000;
pub(crate) const ARG: u64 = BASE + 0x100;
pub(crate) const BUF: u64 = BASE + 0x1000;

pub(crate) fn config(manifest: &Manifest) -> RunConfig {
    RunConfig {
        image: Image::parse(synthetic::minimal(manifest)).unwrap(),
        args: vec!["hello".into(), "a b".into()],
        env: vec!["K=V".into()],
        mem_size: 32 << 20,
        disks: Vec::new(),
        verbose: false,
        net: Default::default(),
        ready_fd: None,
        started: std::time::Instant::now(),
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

fn setup() -> (Host, VecMemory) {
    let host = Host::open(&config(&Manifest::new())).unwrap();
    (
        host,
        VecMemory {
            base: BASE,
            bytes: vec![0; 0x10000],
        },
    )
}

pub(crate) fn put_words(mem: &mut VecMemory, at: u64, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        mem.write(at + 8 * i as u64, &w.to_le_bytes()).unwrap();
    }
}

pub(crate) fn word(mem: &VecMemory, at: u64) -> u64 {
    let mut b = [0; 8];
    mem.read(at, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub(crate) fn violation(c: Control) -> (&'static str, Violation) {
    match c {
        Control::Exit(Outcome::Violation { hypercall, reason }) => (hypercall, reason),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn console_write_rejects_wild_and_huge_buffers() {
    let (mut host, mut mem) = setup();
    put_words(&mut mem, ARG, &[0xdead_beef_0000, 16]);
    let (name, why) = violation(dispatch(&mut host, &mut mem, nr::CONSOLE_WRITE, ARG));
    assert_eq!(name, "CONSOLE_WRITE");
    assert!(matches!(
        why,
        Violation::BadRange {
            what: "buffer",
            addr: 0xdead_beef_0000,
            ..
        }
    ));

    put_words(&mut mem, ARG, &[BUF, u64::MAX]);
    let (_, why) = violation(dispatch(&mut host, &mut mem, nr::CONSOLE_WRITE, ARG));
    assert!(matches!(why, Violation::TooLong { len: u64::MAX, .. }));

    // A buffer that starts inside memory and runs past its end.
    put_words(&mut mem, ARG, &[BASE + 0x10000 - 4, 8]);
    violation(dispatch(&mut host, &mut mem, nr::CONSOLE_WRITE, ARG));
}

#[test]
fn argument_struct_outside_memory_is_a_violation() {
    let (mut host, mut mem) = setup();
    for number in 1..nr::COUNT {
        let (name, why) = violation(dispatch(&mut host, &mut mem, number, 0x10));
        assert_eq!(name, nr::name(number));
        assert!(matches!(
            why,
            Violation::BadRange {
                what: "argument struct",
                ..
            }
        ));
    }
    // Wrapping around the address space.
    violation(dispatch(&mut host, &mut mem, nr::CLOCK, u64::MAX - 3));
}

#[test]
fn unknown_number_is_a_violation() {
    let (mut host, mut mem) = setup();
    let (name, why) = violation(dispatch(&mut host, &mut mem, 77, ARG));
    assert_eq!(name, "UNKNOWN");
    assert_eq!(why, Violation::UnknownNumber(77));
    violation(dispatch(&mut host, &mut mem, 0, ARG));
}

#[test]
fn clock_writes_both_clocks() {
    let (mut host, mut mem) = setup();
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::CLOCK, ARG),
        Control::Continue
    ));
    let (mono, wall) = (word(&mem, ARG), word(&mem, ARG + 8));
    assert!(mono > 0);
    // Later than 2020-01-01.
    assert!(wall > 1_577_836_800_000_000_000, "wall clock {wall}");
}

#[test]
fn poll_with_past_deadline_returns_nothing_ready() {
    let (mut host, mut mem) = setup();
    put_words(&mut mem, ARG, &[1, 0xff]);
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::POLL, ARG),
        Control::Continue
    ));
    assert_eq!(word(&mem, ARG + 8), 0);
}

#[test]
fn halt_and_abort_end_the_instance() {
    let (mut host, mut mem) = setup();
    put_words(&mut mem, ARG, &[0x1_07]);
    match dispatch(&mut host, &mut mem, nr::HALT, ARG) {
        Control::Exit(Outcome::Exited(7)) => {}
        other => panic!("{other:?}"),
    }
    mem.write(BUF, b"panicked at x.rs:1:1: boom").unwrap();
    put_words(&mut mem, ARG, &[BUF, 26]);
    match dispatch(&mut host, &mut mem, nr::ABORT, ARG) {
        Control::Exit(Outcome::Aborted(m)) => assert_eq!(m.as_str(), "panicked at x.rs:1:1: boom"),
        other => panic!("{other:?}"),
    }
    // A huge message length is cut, not trusted: the range checked is the cut one.
    put_words(&mut mem, ARG, &[BUF, u64::MAX]);
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::ABORT, ARG),
        Control::Exit(Outcome::Aborted(_))
    ));
}

#[test]
fn net_without_devices_is_enodev() {
    let (mut host, mut mem) = setup();
    put_words(&mut mem, ARG, &[0, BUF, 64, 0]);
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::NET_READ, ARG),
        Control::Continue
    ));
    assert_eq!(word(&mem, ARG + 24) as i64, kiln_abi::errno::ENODEV);
}

#[test]
fn block_devices_read_and_write_and_check_bounds() {
    let dir = std::env::temp_dir().join(format!("kiln-tender-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 8192]).unwrap();
    let mut cfg = config(&Manifest::new().with_device(device::BLOCK, "data"));
    cfg.disks.push(("data".into(), disk.clone()));
    let mut host = Host::open(&cfg).unwrap();
    assert_eq!(host.device_infos()[0].capacity, 8192);
    assert_eq!(
        host.sandbox_fds()
            .disks
            .iter()
            .map(|d| d.capacity)
            .collect::<Vec<_>>(),
        [8192]
    );
    let mut mem = VecMemory {
        base: BASE,
        bytes: vec![0; 0x10000],
    };

    mem.write(BUF, &[0xab; 1024]).unwrap();
    put_words(&mut mem, ARG, &[0, 512, BUF, 1024, 0]);
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::BLOCK_WRITE, ARG),
        Control::Continue
    ));
    assert_eq!(word(&mem, ARG + 32), 1024);
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[512..1536].iter().all(|&b| b == 0xab) && on_disk[0] == 0);

    put_words(&mut mem, ARG, &[0, 1024, BUF + 0x2000, 512, 0]);
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::BLOCK_READ, ARG),
        Control::Continue
    ));
    assert_eq!(word(&mem, ARG + 32), 512);
    assert_eq!(word(&mem, BUF + 0x2000), u64::from_le_bytes([0xab; 8]));

    for (dev, off, len, want) in [
        (1, 0, 512, kiln_abi::errno::ENODEV),
        (0, 8192, 512, kiln_abi::errno::EINVAL),
        (0, 100, 512, kiln_abi::errno::EINVAL),
        (0, u64::MAX - 511, 512, kiln_abi::errno::EINVAL),
    ] {
        put_words(&mut mem, ARG, &[dev, off, BUF, len, 0]);
        assert!(matches!(
            dispatch(&mut host, &mut mem, nr::BLOCK_READ, ARG),
            Control::Continue
        ));
        assert_eq!(word(&mem, ARG + 32) as i64, want, "dev {dev} off {off}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devices_must_match_the_manifest() {
    let mut cfg = config(&Manifest::new());
    cfg.disks.push(("data".into(), "/nonexistent".into()));
    let e = Host::open(&cfg).unwrap_err().to_string();
    assert!(e.contains("declares no block device named 'data'"), "{e}");
    let cfg = config(&Manifest::new().with_device(device::BLOCK, "data"));
    let e = Host::open(&cfg).unwrap_err().to_string();
    assert!(e.contains("no --disk data=FILE"), "{e}");
}

#[test]
fn boot_block_round_trips() {
    let cfg = config(&Manifest::new());
    let block = BootBlock {
        base: 0x8000,
        tender: kiln_abi::tender::SPT,
        hypercall: 0x5555_0000,
        heap: (0x20_0000, 0x10_0000),
        stack_bottom: 0x40_0000,
        tsc_hz: 0,
    };
    let mut dev = kiln_abi::DeviceInfo {
        kind: device::NET,
        unit: 1500,
        ..Default::default()
    };
    dev.mac = [2, 0, 0, 0, 0, 1];
    dev.net.ipv4 = [10, 0, 0, 2];
    dev.net.ipv4_prefix = 24;
    dev.net.ipv6_gateway[15] = 1;
    let bytes = block.build(&cfg, &[dev]).unwrap();
    assert_eq!(bytes.len() as u64, BootBlock::size_needed(&cfg));
    // The device as the guest will read it, field by field at ABI offsets.
    let d = 96;
    assert_eq!(&bytes[d..d + 8], &[1, 0, 0, 0, 0xdc, 0x05, 0, 0]);
    assert_eq!(&bytes[d + 24..d + 30], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(&bytes[d + 44..d + 48], &[10, 0, 0, 2]);
    assert_eq!(bytes[d + 52], 24);
    assert_eq!(bytes[d + 72 + 15], 1);
    assert_eq!(
        &bytes[d + 88..d + 96],
        &[0; 8],
        "second device slot is empty"
    );
    let mem = VecMemory {
        base: 0x8000,
        bytes,
    };
    assert_eq!(word(&mem, 0x8000), BOOT_MAGIC);
    assert_eq!(word(&mem, 0x8008), u64::from(ABI_VERSION) | (2 << 32));
    assert_eq!(word(&mem, 0x8000 + 48), 2);
    let argv = word(&mem, 0x8000 + 56);
    let (ptr, len) = (word(&mem, argv + 16), word(&mem, argv + 24));
    let mut s = vec![0; len as usize];
    mem.read(ptr, &mut s).unwrap();
    assert_eq!(s, b"a b");
    let envp = word(&mem, 0x8000 + 72);
    let (ptr, len) = (word(&mem, envp), word(&mem, envp + 8));
    let mut s = vec![0; len as usize];
    mem.read(ptr, &mut s).unwrap();
    assert_eq!(s, b"K=V");

    let mut big = cfg.clone();
    big.env.push("X".repeat(BOOT_BLOCK_MAX as usize));
    assert!(matches!(
        block.build(&big, &[]),
        Err(TenderError::BootBlockTooLarge(_))
    ));
}
