//! Boots hand-assembled images in real VMs and checks how each one ends.
//!
//! `kiln_hvt::run` never returns once the guest runs (it ends the process),
//! so every case runs in a child process: the test re-executes this test
//! binary with `KILN_HVT_CASE` naming the case, and the child boots the VM.
//! Cases are skipped (with a note) where /dev/kvm is unavailable.

mod common;

use common::{boot_here, config, rerun, MEM};
use kiln_abi::{nr, Manifest, HVT_PORT_BASE, IMAGE_BASE};
use kiln_image::synthetic::{note_bytes, write_elf, Ph};
use kiln_image::Image;
use kiln_tender::RunConfig;

/// The text segment (r-x) and the data segment (rw-, 12 KiB).
const TEXT: u64 = IMAGE_BASE;
const DATA: u64 = IMAGE_BASE + 0x1000;

/// `mov eax, arg; mov dx, HVT_PORT_BASE + nr; out dx, eax`.
fn hypercall(number: u32, arg: u64) -> Vec<u8> {
    let mut v = vec![0xb8];
    v.extend_from_slice(&(arg as u32).to_le_bytes());
    v.extend_from_slice(&[0x66, 0xba]);
    v.extend_from_slice(&(HVT_PORT_BASE + number as u16).to_le_bytes());
    v.push(0xef);
    v
}

fn words(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Data: an argument struct at DATA, a Halt struct at DATA+0x20, bytes at
/// DATA+0x40.
fn data(arg: &[u64], halt: u64, bytes: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 0x40 + bytes.len()];
    d[..arg.len() * 8].copy_from_slice(&words(arg));
    d[0x20..0x28].copy_from_slice(&halt.to_le_bytes());
    d[0x40..].copy_from_slice(bytes);
    d
}

fn image(code: &[u8], data: &[u8], manifest: &Manifest) -> Vec<u8> {
    let note = note_bytes(manifest);
    let phs = [
        Ph {
            ptype: 1,
            flags: 5,
            offset: 0x1000,
            vaddr: TEXT,
            filesz: code.len() as u64,
            memsz: code.len() as u64,
        },
        Ph {
            ptype: 1,
            flags: 6,
            offset: 0x2000,
            vaddr: DATA,
            filesz: data.len() as u64,
            memsz: 0x3000,
        },
        Ph {
            ptype: 4,
            flags: 4,
            offset: 0x3000,
            vaddr: 0,
            filesz: note.len() as u64,
            memsz: 0,
        },
    ];
    let mut b = write_elf(TEXT, &phs, 0x3000 + note.len());
    b[0x1000..0x1000 + code.len()].copy_from_slice(code);
    b[0x2000..0x2000 + data.len()].copy_from_slice(data);
    b[0x3000..].copy_from_slice(&note);
    b
}

struct Ended {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Boots `code` + `data` in a child process; `None` when KVM is unavailable
/// (or in a child running another case).
fn boot(case: &str, code: &[u8], data: &[u8]) -> Option<Ended> {
    boot_with(case, code, data, &Manifest::new(), &[])
}

/// [`boot`] with a manifest and block devices.
fn boot_with(
    case: &str,
    code: &[u8],
    data: &[u8],
    manifest: &Manifest,
    disks: &[(&str, &std::path::Path)],
) -> Option<Ended> {
    if let Ok(wanted) = std::env::var("KILN_HVT_CASE") {
        if wanted != case {
            return None;
        }
        let img = Image::parse(image(code, data, manifest)).expect("synthetic image is valid");
        boot_here(RunConfig {
            disks: disks
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
            ..config(img)
        });
    }
    if let Err(e) = kiln_hvt::probe() {
        eprintln!("skipping {case}: KVM is not available here: {e}");
        return None;
    }
    let out = rerun(case, "KILN_HVT_CASE", case).output().unwrap();
    let ended = Ended {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "--- {case}: status {}\n{}{}",
        ended.status, ended.stdout, ended.stderr
    );
    Some(ended)
}

/// Boots and expects a crash report containing every one of `wanted`.
fn crashes(case: &str, code: &[u8], data: &[u8], wanted: &[&str]) {
    let Some(e) = boot(case, code, data) else {
        return;
    };
    assert_eq!(e.status, i32::from(kiln_abi::EXIT_CRASHED), "{}", e.stderr);
    for w in wanted {
        assert!(e.stderr.contains(w), "{case}: {w:?} not in {}", e.stderr);
    }
}

fn halt_after(mut code: Vec<u8>) -> Vec<u8> {
    code.extend(hypercall(nr::HALT, DATA + 0x20));
    code.push(0xf4);
    code
}

#[test]
fn hello() {
    let msg = b"hello from hvt\n";
    let code = halt_after(hypercall(nr::CONSOLE_WRITE, DATA));
    let d = data(&[DATA + 0x40, msg.len() as u64], 7, msg);
    let Some(e) = boot("hello", &code, &d) else {
        return;
    };
    assert!(e.stdout.contains("hello from hvt\n"), "{}", e.stdout);
    assert_eq!(e.status, 7, "{}", e.stderr);
    assert!(e.stderr.contains("kiln-hvt: 2 exits;"), "{}", e.stderr);
}

/// Checks BootInfo, the entry registers, SSE and the heap from inside the
/// guest; the exit code has a bit set for each failed check.
#[test]
fn entry_state() {
    #[rustfmt::skip]
    const CHECKS: &[u8] = &[0x31, 0xdb, 0x48, 0xb9, 0x4b, 0x49, 0x4c, 0x4e, 0x42, 0x4f, 0x4f, 0x54, 0x48, 0x39, 0x0f, 0x74, 0x03, 0x83, 0xcb, 0x01, 0x48, 0xb9, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x48, 0x39, 0x4f, 0x08, 0x74, 0x03, 0x83, 0xcb, 0x02, 0x48, 0x83, 0x7f, 0x10, 0x00, 0x75, 0x07, 0x48, 0x83, 0x7f, 0x30, 0x01, 0x74, 0x03, 0x83, 0xcb, 0x04, 0x48, 0x89, 0xe0, 0x83, 0xe0, 0x0f, 0x83, 0xf8, 0x08, 0x74, 0x03, 0x83, 0xcb, 0x08, 0x48, 0x81, 0xfc, 0xf8, 0xff, 0xff, 0x01, 0x74, 0x03, 0x83, 0xcb, 0x10, 0x48, 0x81, 0x7f, 0x28, 0x00, 0x00, 0xfc, 0x01, 0x74, 0x03, 0x83, 0xcb, 0x20, 0x66, 0x0f, 0xef, 0xc0, 0xb8, 0x00, 0x00, 0x80, 0x3f, 0x66, 0x0f, 0x6e, 0xc8, 0xf3, 0x0f, 0x58, 0xc1, 0xf3, 0x0f, 0x58, 0xc1, 0x66, 0x0f, 0x7e, 0xc0, 0x3d, 0x00, 0x00, 0x00, 0x40, 0x74, 0x03, 0x83, 0xcb, 0x40, 0x48, 0x8b, 0x47, 0x18, 0x48, 0xc7, 0x00, 0x34, 0x12, 0x00, 0x00, 0x48, 0x81, 0x38, 0x34, 0x12, 0x00, 0x00, 0x74, 0x06, 0x81, 0xcb, 0x80, 0x00, 0x00, 0x00, 0x48, 0x89, 0x1c, 0x25, 0x20, 0x10, 0x10, 0x00, 0xb8, 0x20, 0x10, 0x10, 0x00, 0x66, 0xba, 0x08, 0x05, 0xef, 0xf4];
    // Bytes 22..30: the immediate compared with BootInfo's abi_version and
    // tender fields.
    let mut code = CHECKS.to_vec();
    let version = u64::from(kiln_abi::ABI_VERSION) | u64::from(kiln_abi::tender::HVT) << 32;
    code[22..30].copy_from_slice(&version.to_le_bytes());
    let Some(e) = boot("entry_state", &code, &data(&[], 0xff, &[])) else {
        return;
    };
    assert_eq!(
        e.status, 0,
        "failed checks (bits): {:#b}\n{}",
        e.status, e.stderr
    );
}

/// The x87 and SSE control words are at their reset values (MXCSR 0x1f80,
/// FCW 0x37f: all exceptions masked) without the monitor setting them.
#[test]
fn fpu_state() {
    // sub rsp, 8; stmxcsr [rsp]; bit 0 unless 0x1f80; fnstcw [rsp];
    // bit 1 unless 0x37f; HALT with the bits.
    #[rustfmt::skip]
    const FPU_STATE: &[u8] = &[0x48, 0x83, 0xec, 0x08, 0x0f, 0xae, 0x1c, 0x24, 0x31, 0xdb, 0x81, 0x3c, 0x24, 0x80, 0x1f, 0x00, 0x00, 0x74, 0x03, 0x83, 0xcb, 0x01, 0xd9, 0x3c, 0x24, 0x66, 0x81, 0x3c, 0x24, 0x7f, 0x03, 0x74, 0x03, 0x83, 0xcb, 0x02, 0x48, 0x89, 0x1c, 0x25, 0x20, 0x10, 0x10, 0x00, 0xb8, 0x20, 0x10, 0x10, 0x00, 0x66, 0xba, 0x08, 0x05, 0xef, 0xf4];
    let Some(e) = boot("fpu_state", FPU_STATE, &data(&[], 0xff, &[])) else {
        return;
    };
    assert_eq!(
        e.status, 0,
        "failed checks (bits): {:#b}\n{}",
        e.status, e.stderr
    );
}

#[test]
fn null_deref() {
    // mov rax, [0]
    crashes(
        "null_deref",
        &[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0],
        &[],
        &[
            "page fault (14) at address 0x0, rip 0x100000",
            "null pointer",
        ],
    );
}

#[test]
fn write_text() {
    // mov byte [0x100000], 1
    crashes(
        "write_text",
        &[0xc6, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, 0x01],
        &[],
        &[
            "page fault (14) at address 0x100000",
            "write, protection violation",
        ],
    );
}

#[test]
fn execute_data() {
    // mov eax, DATA; jmp rax
    crashes(
        "execute_data",
        &[0xb8, 0x00, 0x10, 0x10, 0x00, 0xff, 0xe0],
        &[0xc3],
        &[
            "page fault (14) at address 0x101000, rip 0x101000",
            "instruction fetch, protection violation",
        ],
    );
}

#[test]
fn read_tender_tables() {
    // mov rax, [0x1000] (GDT: supervisor only)
    crashes(
        "read_tender_tables",
        &[0x48, 0x8b, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00],
        &[],
        &[
            "page fault (14) at address 0x1000",
            "read, protection violation",
        ],
    );
}

#[test]
fn read_page_tables() {
    // mov rax, [0x4000] (the PML4: not mapped at all)
    crashes(
        "read_page_tables",
        &[0x48, 0x8b, 0x04, 0x25, 0x00, 0x40, 0x00, 0x00],
        &[],
        &["page fault (14) at address 0x4000", "read, page not mapped"],
    );
}

#[test]
fn write_boot_info() {
    // mov byte [rdi], 0
    crashes(
        "write_boot_info",
        &[0xc6, 0x07, 0x00],
        &[],
        &[
            "page fault (14) at address 0xff000",
            "write, protection violation",
        ],
    );
}

#[test]
fn stack_overflow() {
    // 1: push rax; jmp 1b
    crashes(
        "stack_overflow",
        &[0x50, 0xeb, 0xfd],
        &[],
        &[
            "page fault (14) at address 0x1fbfff8",
            "stack overflow into the guard page",
        ],
    );
}

#[test]
fn raw_syscall() {
    crashes(
        "raw_syscall",
        &[0x0f, 0x05],
        &[],
        &["invalid opcode (6)", "rip 0x100000", "syscall instruction"],
    );
}

#[test]
fn software_interrupt() {
    // int 0x80
    crashes(
        "software_interrupt",
        &[0xcd, 0x80],
        &[],
        // #GP on VMX/SVM hardware, #UD on PVM.
        &["int n", "rip 0x100000"],
    );
}

#[test]
fn breakpoint() {
    // int3 goes through a DPL-0 gate: #GP on hardware, #BP on PVM.
    let Some(e) = boot("breakpoint", &[0xcc], &[]) else {
        return;
    };
    assert_eq!(e.status, i32::from(kiln_abi::EXIT_CRASHED), "{}", e.stderr);
    assert!(
        e.stderr.contains("int n") || e.stderr.contains("breakpoint (3)"),
        "{}",
        e.stderr
    );
}

#[test]
fn halt_instruction() {
    crashes(
        "halt_instruction",
        &[0xf4],
        &[],
        &["general protection fault (13)", "hlt is privileged"],
    );
}

#[test]
fn forbidden_port() {
    // mov al, 1; out 0x80, al
    crashes(
        "forbidden_port",
        &[0xb0, 0x01, 0xe6, 0x80],
        &[],
        &[
            "general protection fault (13)",
            "rip 0x100002",
            "port I/O outside",
        ],
    );
}

#[test]
fn forged_fault_report() {
    // mov al, 14; out FAULT_PORT, al: the stubs' port is not in the bitmap.
    crashes(
        "forged_fault_report",
        &[0xb0, 0x0e, 0xe6, 0xfa],
        &[],
        &[
            "general protection fault (13)",
            "rip 0x100002",
            "port I/O outside",
        ],
    );
}

#[test]
fn divide_by_zero() {
    // xor ecx, ecx; div ecx
    crashes(
        "divide_by_zero",
        &[0x31, 0xc9, 0xf7, 0xf1],
        &[],
        &["divide error (0)", "rip 0x100002"],
    );
}

#[test]
fn narrow_hypercall() {
    // mov dx, 0x501; out dx, al
    crashes(
        "narrow_hypercall",
        &[0x66, 0xba, 0x01, 0x05, 0xee],
        &[],
        &["malformed hypercall", "4-byte"],
    );
}

#[test]
fn input_from_hypercall_port() {
    // mov dx, 0x501; in eax, dx
    crashes(
        "input_from_hypercall_port",
        &[0x66, 0xba, 0x01, 0x05, 0xed],
        &[],
        &["malformed hypercall", "port input"],
    );
}

#[test]
fn unknown_hypercall() {
    // A 4-byte access to HVT_PORT_BASE + COUNT touches a port beyond the
    // bitmap's window, so the CPU refuses it with #GP; the monitor names it.
    crashes(
        "unknown_hypercall",
        &halt_after(hypercall(nr::COUNT, DATA)),
        &data(&[], 0, &[]),
        &[&format!(
            "hypercall UNKNOWN: unknown hypercall number {}",
            nr::COUNT
        )],
    );
}

#[test]
fn hypercall_zero() {
    crashes(
        "hypercall_zero",
        &halt_after(hypercall(0, DATA)),
        &data(&[], 0, &[]),
        &["hypercall UNKNOWN: unknown hypercall number 0"],
    );
}

#[test]
fn far_hypercall_number() {
    crashes(
        "far_hypercall_number",
        &halt_after(hypercall(77, DATA)),
        &data(&[], 0, &[]),
        &["hypercall UNKNOWN: unknown hypercall number 77"],
    );
}

#[test]
fn sysenter() {
    crashes("sysenter", &[0x0f, 0x34], &[], &["rip 0x100000"]);
}

#[test]
fn wild_argument_pointer() {
    // The argument struct "at" the GDT.
    crashes(
        "wild_argument_pointer",
        &halt_after(hypercall(nr::CONSOLE_WRITE, 0x1000)),
        &data(&[], 0, &[]),
        &["hypercall CONSOLE_WRITE: argument struct at 0x1000"],
    );
}

#[test]
fn wild_buffer_pointer() {
    // A console buffer in the page tables.
    crashes(
        "wild_buffer_pointer",
        &halt_after(hypercall(nr::CONSOLE_WRITE, DATA)),
        &data(&[0x4000, 8], 0, &[]),
        &["hypercall CONSOLE_WRITE: buffer at 0x4000 (length 0x8) is not readable"],
    );
}

#[test]
fn buffer_beyond_memory() {
    crashes(
        "buffer_beyond_memory",
        &halt_after(hypercall(nr::CONSOLE_WRITE, DATA)),
        &data(&[MEM - 4, 8], 0, &[]),
        &["hypercall CONSOLE_WRITE: buffer at 0x1fffffc"],
    );
}

#[test]
fn hypercall_writes_into_text() {
    // CLOCK's results would land on the code: W^X holds for hypercalls too.
    crashes(
        "hypercall_writes_into_text",
        &halt_after(hypercall(nr::CLOCK, TEXT)),
        &data(&[], 0, &[]),
        &[
            "hypercall CLOCK: argument struct at 0x100000",
            "not writable",
        ],
    );
}

#[test]
fn abort_reports_the_message() {
    let msg = b"something broke";
    let code = halt_after(hypercall(nr::ABORT, DATA));
    let d = data(&[DATA + 0x40, msg.len() as u64], 0, msg);
    let Some(e) = boot("abort_reports_the_message", &code, &d) else {
        return;
    };
    assert_eq!(e.status, i32::from(kiln_abi::EXIT_ABORTED), "{}", e.stderr);
    assert!(
        e.stderr.contains("instance aborted: something broke"),
        "{}",
        e.stderr
    );
}

#[test]
fn clock_and_poll() {
    // CLOCK into DATA, POLL with a deadline in the past, then HALT 3.
    let mut code = hypercall(nr::CLOCK, DATA);
    code.extend(hypercall(nr::POLL, DATA + 0x40));
    let code = halt_after(code);
    let d = data(&[], 3, &words(&[0, 0]));
    let Some(e) = boot("clock_and_poll", &code, &d) else {
        return;
    };
    assert_eq!(e.status, 3, "{}", e.stderr);
    assert!(e.stderr.contains("kiln-hvt: 3 exits;"), "{}", e.stderr);
}

#[test]
fn block_device_under_the_sandbox() {
    // BLOCK_WRITE 512 bytes to sector 0, BLOCK_READ sector 1, print 16 of
    // its bytes, HALT 5: pread64/pwrite64 on the disk's fd pass the filter.
    // Named after the parent test process, which creates and removes it.
    let child = std::env::var_os("KILN_HVT_CASE").is_some();
    let owner = if child {
        std::os::unix::process::parent_id()
    } else {
        std::process::id()
    };
    let disk = std::env::temp_dir().join(format!("kiln-hvt-test-{owner}.img"));
    if !child {
        let mut content = vec![0u8; 1024];
        content[512..528].copy_from_slice(b"disk says hello\n");
        std::fs::write(&disk, &content).unwrap();
    }
    let mut code = hypercall(nr::BLOCK_WRITE, DATA);
    code.extend(hypercall(nr::BLOCK_READ, DATA + 0x30));
    code.extend(hypercall(nr::CONSOLE_WRITE, DATA + 0x60));
    code.extend(hypercall(nr::HALT, DATA + 0x80));
    code.push(0xf4);
    let mut d = vec![0u8; 0x600];
    d[..0x28].copy_from_slice(&words(&[0, 0, DATA + 0x200, 512, 0]));
    d[0x30..0x58].copy_from_slice(&words(&[0, 512, DATA + 0x400, 512, 0]));
    d[0x60..0x70].copy_from_slice(&words(&[DATA + 0x400, 16]));
    d[0x80..0x88].copy_from_slice(&words(&[5]));
    for (i, b) in d[0x200..0x400].iter_mut().enumerate() {
        *b = i as u8;
    }
    let manifest = Manifest::new().with_device(kiln_abi::device::BLOCK, "data");
    let ended = boot_with(
        "block_device_under_the_sandbox",
        &code,
        &d,
        &manifest,
        &[("data", &disk)],
    );
    let written = std::fs::read(&disk);
    let _ = std::fs::remove_file(&disk);
    let Some(e) = ended else {
        return;
    };
    assert_eq!(e.status, 5, "{}", e.stderr);
    assert!(e.stdout.contains("disk says hello\n"), "{}", e.stdout);
    let written = written.unwrap();
    assert_eq!(&written[..512], &d[0x200..0x400]);
}
