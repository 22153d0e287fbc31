//! Boots real images on every tender available and checks what they print
//! and how they end. One image per property (tests/images/*).

mod common;

use common::{image, run, tenders};
use kiln_abi::{EXIT_ABORTED, EXIT_CRASHED};

#[test]
fn hello_prints_and_exits_zero() {
    let img = image("examples/hello");
    for t in tenders() {
        let r = run(t, &img, &[], &["a", "b c"]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(r.stdout.contains("Hello from kiln!"), "{t}: {r:?}");
        assert!(
            r.stdout.contains("a") && r.stdout.contains("b c"),
            "{t}: {r:?}"
        );
        assert!(r.stderr.is_empty(), "{t}: unexpected stderr {r:?}");
    }
}

#[test]
fn args_and_env_round_trip_and_exit_code_propagates() {
    let img = image("tests/images/args-env");
    for t in tenders() {
        let r = run(
            t,
            &img,
            &["-e", "GREETING=hi there", "-e", "EXIT_CODE=42"],
            &["one", "two words", "--flag"],
        );
        assert_eq!(r.status, 42, "{t}: {r:?}");
        for want in [
            "arg 0: args-env",
            "arg 1: one",
            "arg 2: two words",
            "arg 3: --flag",
            "env GREETING=hi there",
            "env EXIT_CODE=42",
        ] {
            assert!(
                r.stdout.lines().any(|l| l == want),
                "{t}: missing {want:?} in {r:?}"
            );
        }
    }
}

#[test]
fn exit_codes_propagate() {
    let img = image("tests/images/exit-code");
    for t in tenders() {
        for code in [0, 1, 7, 255] {
            let r = run(t, &img, &[], &[&code.to_string()]);
            assert_eq!(r.status, code, "{t}: {r:?}");
        }
    }
}

#[test]
fn panic_aborts_with_its_message() {
    let img = image("tests/images/panic");
    for t in tenders() {
        let r = run(t, &img, &[], &[]);
        assert_eq!(r.status, i32::from(EXIT_ABORTED), "{t}: {r:?}");
        assert!(r.stderr.contains("instance aborted"), "{t}: {r:?}");
        assert!(r.stderr.contains("boom from the panic image"), "{t}: {r:?}");
    }
}

fn crashes(dir: &str, args: &[&str], want: &[&str]) {
    let img = image(dir);
    for t in tenders() {
        let r = run(t, &img, &[], args);
        assert_eq!(r.status, i32::from(EXIT_CRASHED), "{t}: {r:?}");
        for w in want {
            assert!(r.stderr.contains(w), "{t}: want {w:?} in {r:?}");
        }
    }
}

#[test]
fn null_pointer_is_a_page_fault() {
    crashes(
        "tests/images/null-deref",
        &[],
        &["instance crashed: page fault", "at address 0x0,"],
    );
}

#[test]
fn write_into_text_faults() {
    crashes(
        "tests/images/write-text",
        &[],
        &["instance crashed: page fault", "write"],
    );
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    crashes(
        "tests/images/stack-overflow",
        &[],
        &["instance crashed: page fault", "guard page"],
    );
}

#[test]
fn wild_hypercall_pointers_end_the_instance() {
    crashes(
        "tests/images/wild-pointer",
        &[],
        &["hypercall CONSOLE_WRITE", "0xdeadbeef0000"],
    );
    crashes(
        "tests/images/wild-pointer",
        &["huge-len"],
        &["hypercall CONSOLE_WRITE", "exceeds the limit"],
    );
    crashes(
        "tests/images/wild-pointer",
        &["tender-memory"],
        &["hypercall CONSOLE_WRITE", "0x1000"],
    );
}

#[test]
fn hostile_ready_arguments_end_the_instance() {
    crashes(
        "tests/images/wild-pointer",
        &["ready"],
        &[
            "hypercall READY: argument struct at 0xfff00000",
            "is not writable guest memory",
        ],
    );
    crashes(
        "tests/images/wild-pointer",
        &["ready-readonly"],
        &["hypercall READY: argument struct at", "not writable"],
    );
    // A nonzero reserved word is refused in `ret`, not fatal.
    let img = image("tests/images/wild-pointer");
    for t in tenders() {
        let r = run(t, &img, &[], &["ready-reserved"]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(
            r.stdout.contains("wild-pointer: ready-reserved ret -22"),
            "{t}: {r:?}"
        );
    }
}

#[test]
fn unknown_hypercall_numbers_end_the_instance() {
    crashes(
        "tests/images/wild-pointer",
        &["unknown"],
        &["unknown hypercall number 77"],
    );
}

#[test]
fn raw_syscall_is_stopped() {
    let img = image("tests/images/raw-syscall");
    for t in tenders() {
        let r = run(t, &img, &[], &[]);
        assert_eq!(r.status, i32::from(EXIT_CRASHED), "{t}: {r:?}");
        let want = if t == "spt" {
            "forbidden system call"
        } else {
            "invalid opcode"
        };
        assert!(r.stderr.contains(want), "{t}: {r:?}");
        // Only the image's own marker line may appear; the raw write's "x" must not.
        let leaked: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("raw-syscall:"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{t}: the syscall's write got through: {r:?}"
        );
    }
}

#[test]
fn clocks_timers_heap_and_tasks_work() {
    let img = image("tests/images/clock");
    for t in tenders() {
        let r = run(t, &img, &[], &[]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(r.stdout.contains("slept ok"), "{t}: {r:?}");
    }
}

#[test]
fn memory_functions_are_correct_in_the_guest() {
    let img = image("tests/images/mem");
    for t in tenders() {
        let r = run(t, &img, &[], &[]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(r.stdout.lines().any(|l| l == "mem ok"), "{t}: {r:?}");
    }
}

#[test]
fn out_of_memory_aborts_with_a_message() {
    let img = image("tests/images/oom");
    for t in tenders() {
        let r = run(t, &img, &["--mem", "8M"], &[]);
        assert_eq!(r.status, i32::from(EXIT_ABORTED), "{t}: {r:?}");
        assert!(r.stderr.contains("memory allocation of"), "{t}: {r:?}");
    }
}

#[test]
fn large_output_arrives_whole_and_in_order() {
    let img = image("tests/images/big-output");
    for t in tenders() {
        let r = run(t, &img, &[], &[]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(
            r.stdout.len() > kiln_abi::CONSOLE_WRITE_MAX as usize,
            "{t}: {}",
            r.stdout.len()
        );
        assert!(
            r.stdout.ends_with("big-output: done\n"),
            "{t}: tail {:?}",
            &r.stdout[r.stdout.len().saturating_sub(80)..]
        );
    }
}

#[test]
fn block_device_reads_back_what_it_wrote() {
    let img = image("tests/images/block-io");
    let dir = common::root().join("target/kiln-test-disks");
    std::fs::create_dir_all(&dir).unwrap();
    for t in tenders() {
        let disk = dir.join(format!("{t}.img"));
        std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
        let arg = format!("data={}", disk.display());
        let r = run(t, &img, &["--disk", &arg], &[]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(r.stdout.contains("block ok 512 65536"), "{t}: {r:?}");
        let on_disk = std::fs::read(&disk).unwrap();
        let expect: Vec<u8> = (0..4096usize).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(
            &on_disk[4096..8192],
            &expect[..],
            "{t}: pattern not on disk"
        );
        assert!(
            on_disk[..4096].iter().all(|&b| b == 0),
            "{t}: bytes before the write changed"
        );
    }
    // Without the disk the image does not start: the manifest asks for it.
    let r = run("spt", &img, &[], &[]);
    assert_eq!(r.status, i32::from(kiln_abi::EXIT_TENDER_ERROR), "{r:?}");
    assert!(r.stderr.contains("no --disk data=FILE"), "{r:?}");
}

/// Disks smaller than the 4096-byte host piece and disks whose size is not
/// a multiple of it: every transfer the image makes, up to the last byte,
/// passes the tender's pinned pread64/pwrite64 rules, and the file keeps
/// its size.
#[test]
fn block_transfers_reach_the_end_of_disks_of_any_size() {
    let img = image("tests/images/block-edge");
    let dir = common::root().join("target/kiln-test-disks");
    std::fs::create_dir_all(&dir).unwrap();
    for t in tenders() {
        for size in [512usize, 2560, 4096, 4608, 12800] {
            let disk = dir.join(format!("edge-{t}-{size}.img"));
            std::fs::write(&disk, vec![0u8; size]).unwrap();
            let arg = format!("data={}", disk.display());
            let r = run(t, &img, &["--disk", &arg], &[]);
            let on_disk = std::fs::read(&disk).unwrap();
            let _ = std::fs::remove_file(&disk);
            assert_eq!(r.status, 0, "{t}, {size} bytes: {r:?}");
            assert!(
                r.stdout.contains(&format!("block edge ok {size}")),
                "{t}, {size} bytes: {r:?}"
            );
            assert_eq!(on_disk.len(), size, "{t}: the disk changed size");
            let want: Vec<u8> = (0..size - 512)
                .map(|i| (i * 13 + 5) as u8)
                .chain(std::iter::repeat_n(0x5a, 512))
                .collect();
            assert!(on_disk == want, "{t}, {size} bytes: wrong bytes on disk");
        }
    }
}

#[test]
fn socket_api_works_over_the_in_image_loopback() {
    let img = image("tests/images/net-loopback");
    for t in tenders() {
        let r = run(t, &img, &["--mem", "64M"], &[]);
        assert_eq!(r.status, 0, "{t}: {r:?}");
        assert!(
            r.stdout.lines().any(|l| l == "net-loopback ok"),
            "{t}: {r:?}"
        );
    }
}
