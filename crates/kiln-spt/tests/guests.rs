//! Boots tiny hand-written guests on spt, each in its own child process,
//! and checks what they print and how they end.
//!
//! The guests are a few instructions of assembly each (below), assembled
//! by rustc into this test binary's read-only data and copied into a
//! synthetic kiln image, so the test needs neither the guest toolchain nor
//! kiln-rt: it pins spt's own behaviour (entry state, hypercall entry,
//! memory checks, faults, seccomp) independently of the library OS.
//!
//! Run with `cargo test -p kiln-spt --test guests`. `-- --dump DIR` writes
//! the images to DIR instead (to try them with `kiln run --tender spt`).
//!
//! Harness-less: the parent re-runs this binary with `KILN_SPT_CASE=name`;
//! the child builds that image and calls `kiln_spt::run` on its main
//! thread, which never returns once the guest starts.

use std::arch::global_asm;
use std::path::PathBuf;
use std::process::Command;

use kiln_abi::{device, Manifest, EXIT_ABORTED, EXIT_CRASHED, EXIT_TENDER_ERROR, IMAGE_BASE};
use kiln_image::synthetic::{self, Ph};
use kiln_image::Image;
use kiln_tender::RunConfig;

// Every guest starts with rdi = BootInfo. BootInfo offsets: hypercall 16,
// heap_start 24, heap_size 32, stack_bottom 40, argc 48, argv 56, envc 64,
// envp 72. Hypercalls: 1 CONSOLE_WRITE {buf,len}, 2 CLOCK {mono,wall},
// 3 POLL {deadline,ready}, 6 BLOCK_WRITE / 7 BLOCK_READ
// {dev,off,buf,len,ret}, 8 HALT {code}, 9 ABORT {msg,len}. Argument structs
// live on the guest stack (they must be writable guest memory).
macro_rules! guests {
    ($($name:ident: $($line:literal)*;)*) => {
        global_asm!(
            ".pushsection .rodata.kiln_test_guests,\"a\"",
            $(
                concat!(".globl kiln_guest_", stringify!($name)),
                concat!("kiln_guest_", stringify!($name), ":"),
                $($line,)*
                concat!(".globl kiln_guest_", stringify!($name), "_end"),
                concat!("kiln_guest_", stringify!($name), "_end:"),
            )*
            ".popsection",
        );
        /// The machine code of the guest called `name`.
        fn code(name: &str) -> &'static [u8] {
            $(
                if name == stringify!($name) {
                    extern "C" {
                        #[link_name = concat!("kiln_guest_", stringify!($name))]
                        static START: u8;
                        #[link_name = concat!("kiln_guest_", stringify!($name), "_end")]
                        static END: u8;
                    }
                    // SAFETY: both symbols are labels in the read-only
                    // section above, START before END, all bytes between
                    // them assembled code that lives as long as the program.
                    return unsafe {
                        let start = &raw const START;
                        let end = &raw const END;
                        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
                    };
                }
            )*
            panic!("no guest named {name}")
        }
    };
}

guests! {
    hello:
        "mov rbx, rdi"
        "mov r12, qword ptr [rbx + 16]"
        "sub rsp, 40"
        "lea rax, [rip + kiln_guest_hello_msg]"
        "mov qword ptr [rsp], rax"
        "mov qword ptr [rsp + 8], 15"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "mov qword ptr [rsp], 0"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        "kiln_guest_hello_msg: .ascii \"hello from spt\\n\"";

    // Exit code 0 when the entry state is as the ABI says, else which check failed.
    entry_state:
        "mov ecx, 5"
        "test rax, rax"
        "jnz kiln_guest_entry_state_out"
        "test rbp, rbp"
        "jnz kiln_guest_entry_state_out"
        "mov ecx, 1"
        "mov rax, rsp"
        "and eax, 15"
        "cmp eax, 8"
        "jne kiln_guest_entry_state_out"
        "mov ecx, 2"
        "movabs rax, 0x544f4f424e4c494b"
        "cmp qword ptr [rdi], rax"
        "jne kiln_guest_entry_state_out"
        "mov ecx, 3"
        "cmp dword ptr [rdi + 12], 2"
        "jne kiln_guest_entry_state_out"
        "mov ecx, 4"
        "pushfq"
        "pop rax"
        "test eax, 0x400"
        "jnz kiln_guest_entry_state_out"
        "mov ecx, 6"
        "cmp qword ptr [rdi + 80], 0"
        "jne kiln_guest_entry_state_out"
        "xor ecx, ecx"
        "kiln_guest_entry_state_out:"
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov qword ptr [rsp], rcx"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2";

    // Prints every argv and envp string on its own line; exits with argc.
    args_env:
        "mov rbx, rdi"
        "mov r12, qword ptr [rbx + 16]"
        "sub rsp, 40"
        "mov r13, qword ptr [rbx + 48]"
        "mov r14, qword ptr [rbx + 56]"
        "call kiln_guest_args_env_print"
        "mov r13, qword ptr [rbx + 64]"
        "mov r14, qword ptr [rbx + 72]"
        "call kiln_guest_args_env_print"
        "mov rax, qword ptr [rbx + 48]"
        "mov qword ptr [rsp], rax"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        // print r13 StrRefs at r14; the struct goes at rsp + 8 (inside our frame).
        "kiln_guest_args_env_print:"
        "sub rsp, 24"
        "kiln_guest_args_env_loop:"
        "test r13, r13"
        "jz kiln_guest_args_env_done"
        "mov rax, qword ptr [r14]"
        "mov qword ptr [rsp], rax"
        "mov rax, qword ptr [r14 + 8]"
        "mov qword ptr [rsp + 8], rax"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "lea rax, [rip + kiln_guest_args_env_nl]"
        "mov qword ptr [rsp], rax"
        "mov qword ptr [rsp + 8], 1"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "add r14, 16"
        "dec r13"
        "jmp kiln_guest_args_env_loop"
        "kiln_guest_args_env_done:"
        "add rsp, 24"
        "ret"
        "kiln_guest_args_env_nl: .ascii \"\\n\"";

    null_read:
        "mov rax, qword ptr [0]"
        "ud2";

    write_text:
        "lea rax, [rip + kiln_guest_write_text]"
        "mov byte ptr [rax], 0x90"
        "ud2";

    write_boot_info:
        "mov qword ptr [rdi], 0"
        "ud2";

    stack_overflow:
        "kiln_guest_stack_overflow_again:"
        "call kiln_guest_stack_overflow_again";

    exec_heap:
        "mov rax, qword ptr [rdi + 24]"
        "jmp rax";

    divide_by_zero:
        "xor edx, edx"
        "xor ecx, ecx"
        "mov eax, 1"
        "div ecx"
        "ud2";

    invalid_opcode:
        "ud2";

    privileged:
        "hlt";

    raw_getpid:
        "mov eax, 39"
        "syscall"
        "ud2";

    raw_mprotect:
        "mov eax, 10"
        "mov edi, 0x100000"
        "mov esi, 4096"
        "mov edx, 7"
        "syscall"
        "ud2";

    raw_write_fd3:
        "mov eax, 1"
        "mov edi, 3"
        "lea rsi, [rip + kiln_guest_raw_write_fd3]"
        "mov edx, 1"
        "syscall"
        "ud2";

    // write(1, "x", 1) straight from guest code: allowed for the tender,
    // not for the guest.
    raw_write_stdout:
        "mov eax, 1"
        "mov edi, 1"
        "lea rsi, [rip + kiln_guest_raw_write_stdout]"
        "mov edx, 1"
        "syscall"
        "ud2";

    raw_exit:
        "mov eax, 231"
        "xor edi, edi"
        "syscall"
        "ud2";

    int80:
        "mov eax, 20"
        "int 0x80"
        "ud2";

    // CONSOLE_WRITE of 16 bytes of the tender's own code.
    wild_buffer:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov qword ptr [rsp], r12"
        "mov qword ptr [rsp + 8], 16"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "ud2";

    // CLOCK with its argument struct at an address nobody mapped.
    wild_arg:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov edi, 2"
        "movabs rsi, 0xdeadbeef0000"
        "call r12"
        "ud2";

    // CLOCK asked to write its result into the read-only BootInfo block.
    arg_in_boot_info:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov rsi, rdi"
        "mov edi, 2"
        "call r12"
        "ud2";

    // Hypercall number 1 + 2^32 must not be taken for CONSOLE_WRITE.
    wide_number:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov qword ptr [rsp], 0"
        "mov qword ptr [rsp + 8], 0"
        "movabs rdi, 0x100000001"
        "mov rsi, rsp"
        "call r12"
        "ud2";

    abort:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "lea rax, [rip + kiln_guest_abort_msg]"
        "mov qword ptr [rsp], rax"
        "mov qword ptr [rsp + 8], 8"
        "mov edi, 9"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        "kiln_guest_abort_msg: .ascii \"bye\\x1b[0m!\"";

    // ABORT with a message that tries to add a report line of its own.
    abort_forged:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "lea rax, [rip + kiln_guest_abort_forged_msg]"
        "mov qword ptr [rsp], rax"
        "mov qword ptr [rsp + 8], 36"
        "mov edi, 9"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        "kiln_guest_abort_forged_msg: .ascii \"x\\nkiln: instance exited with code 0\\n\"";

    // A hypercall with the direction flag set, a misaligned stack and only
    // 64 bytes of stack left: the entry copes, and prints "ok".
    hostile_call:
        "mov r12, qword ptr [rdi + 16]"
        "mov rsp, qword ptr [rdi + 40]"
        "add rsp, 67"
        "lea rax, [rip + kiln_guest_hostile_call_msg]"
        "mov qword ptr [rsp], rax"
        "mov qword ptr [rsp + 8], 3"
        "std"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "mov qword ptr [rsp], 0"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        "kiln_guest_hostile_call_msg: .ascii \"ok\\n\"";

    // CLOCK, POLL until 2 ms later, CLOCK: exit 0 when at least 2 ms passed.
    clock_poll:
        "mov r12, qword ptr [rdi + 16]"
        "sub rsp, 40"
        "mov edi, 2"
        "mov rsi, rsp"
        "call r12"
        "mov r13, qword ptr [rsp]"
        "lea rax, [r13 + 2000000]"
        "mov qword ptr [rsp], rax"
        "mov edi, 3"
        "mov rsi, rsp"
        "call r12"
        "mov edi, 2"
        "mov rsi, rsp"
        "call r12"
        "mov rax, qword ptr [rsp]"
        "sub rax, r13"
        "xor ecx, ecx"
        "cmp rax, 2000000"
        "setb cl"
        "mov qword ptr [rsp], rcx"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2";

    // BLOCK_READ sector 0 into the heap, print its first 16 bytes, write
    // them to sector 1 with BLOCK_WRITE; exit 0 when both returned 512.
    block:
        "mov rbx, rdi"
        "mov r12, qword ptr [rbx + 16]"
        "mov r13, qword ptr [rbx + 24]"
        "sub rsp, 56"
        "mov qword ptr [rsp], 0"
        "mov qword ptr [rsp + 8], 0"
        "mov qword ptr [rsp + 16], r13"
        "mov qword ptr [rsp + 24], 512"
        "mov qword ptr [rsp + 32], 0"
        "mov edi, 7"
        "mov rsi, rsp"
        "call r12"
        "mov r14, qword ptr [rsp + 32]"
        "mov qword ptr [rsp + 8], 512"
        "mov edi, 6"
        "mov rsi, rsp"
        "call r12"
        "add r14, qword ptr [rsp + 32]"
        "mov qword ptr [rsp], r13"
        "mov qword ptr [rsp + 8], 16"
        "mov edi, 1"
        "mov rsi, rsp"
        "call r12"
        "xor ecx, ecx"
        "cmp r14, 1024"
        "setne cl"
        "mov qword ptr [rsp], rcx"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2";

    // A hostile guest that skips BLOCK_WRITE and its checks: it finds a
    // `syscall; ret` (0f 05 c3) in the tender's own code, scanning forward
    // from the hypercall entry, and calls it as pwrite64(3, heap, count,
    // offset) with count = argv[1] and offset = argv[2] (decimal). The
    // call comes from tender code, so only the filter's argument pins stand
    // between it and the disk file. Exit 0 when pwrite64 wrote `count`
    // bytes, 1 when it returned anything else, 77 when no gadget was found.
    gadget_pwrite:
        "mov rbx, rdi"
        "mov r12, qword ptr [rbx + 16]"
        "sub rsp, 40"
        "mov r15, qword ptr [rbx + 56]"
        "mov rsi, qword ptr [r15 + 16]"
        "mov rcx, qword ptr [r15 + 24]"
        "call kiln_guest_gadget_pwrite_parse"
        "mov r13, rax"
        "mov rsi, qword ptr [r15 + 32]"
        "mov rcx, qword ptr [r15 + 40]"
        "call kiln_guest_gadget_pwrite_parse"
        "mov r14, rax"
        "mov rsi, r12"
        "lea rdx, [r12 + 0x4000000]"
        "kiln_guest_gadget_pwrite_scan:"
        "cmp rsi, rdx"
        "jae kiln_guest_gadget_pwrite_none"
        "cmp word ptr [rsi], 0x050f"
        "jne kiln_guest_gadget_pwrite_next"
        "cmp byte ptr [rsi + 2], 0xc3"
        "je kiln_guest_gadget_pwrite_found"
        "kiln_guest_gadget_pwrite_next:"
        "inc rsi"
        "jmp kiln_guest_gadget_pwrite_scan"
        "kiln_guest_gadget_pwrite_found:"
        "mov r15, rsi"
        "mov eax, 18"
        "mov edi, 3"
        "mov rsi, qword ptr [rbx + 24]"
        "mov rdx, r13"
        "mov r10, r14"
        "call r15"
        "xor ecx, ecx"
        "cmp rax, r13"
        "setne cl"
        "jmp kiln_guest_gadget_pwrite_halt"
        "kiln_guest_gadget_pwrite_none:"
        "mov ecx, 77"
        "kiln_guest_gadget_pwrite_halt:"
        "mov qword ptr [rsp], rcx"
        "mov edi, 8"
        "mov rsi, rsp"
        "call r12"
        "ud2"
        // rax := the decimal number of rcx bytes at rsi.
        "kiln_guest_gadget_pwrite_parse:"
        "xor eax, eax"
        "kiln_guest_gadget_pwrite_digit:"
        "test rcx, rcx"
        "jz kiln_guest_gadget_pwrite_parsed"
        "movzx edx, byte ptr [rsi]"
        "sub edx, 48"
        "imul rax, rax, 10"
        "add rax, rdx"
        "inc rsi"
        "dec rcx"
        "jmp kiln_guest_gadget_pwrite_digit"
        "kiln_guest_gadget_pwrite_parsed:"
        "ret";
}

/// A kiln image whose text segment is `code` (r-x at IMAGE_BASE) with the
/// synthetic image's rw- data segment after it.
fn image_bytes(code: &[u8], manifest: &Manifest) -> Vec<u8> {
    assert!(code.len() <= 0x1000, "guest code too long");
    let mut phs = synthetic::phs();
    for p in phs
        .iter_mut()
        .filter(|p| p.ptype == 1 && p.vaddr == IMAGE_BASE)
    {
        *p = Ph {
            filesz: code.len() as u64,
            memsz: code.len() as u64,
            ..*p
        };
    }
    let mut b = synthetic::build(&phs, manifest);
    b[0x1000..0x1000 + code.len()].copy_from_slice(code);
    b
}

fn manifest(case: &str) -> Manifest {
    match case {
        "block" | "gadget_pwrite" => Manifest::new().with_device(device::BLOCK, "disk0"),
        _ => Manifest::new(),
    }
}

fn disk_path() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-spt-test-disk-{}", std::process::id()))
}

/// Child side: run one guest; never returns once it starts.
fn child(case: &str) -> ! {
    let guest = case.strip_prefix("clash:").unwrap_or(case);
    let image = Image::parse(image_bytes(code(guest), &manifest(guest))).expect("valid image");
    let disks = match std::env::var_os("KILN_SPT_DISK") {
        Some(p) => vec![("disk0".to_string(), PathBuf::from(p))],
        None => vec![],
    };
    // A case's own arguments (KILN_SPT_ARGS, space separated), else the
    // ones args_env prints.
    let args = match std::env::var("KILN_SPT_ARGS") {
        Ok(a) => std::iter::once(guest.to_string())
            .chain(a.split(' ').map(String::from))
            .collect(),
        Err(_) => vec![guest.to_string(), "one".into(), "two words".into()],
    };
    if guest == "gadget_pwrite" {
        // The guest writes to descriptor 3: the disk is the first file
        // the tender opens, so it gets the lowest free descriptor.
        let probe = std::fs::File::open("/dev/null").expect("open /dev/null");
        assert_eq!(
            std::os::fd::AsRawFd::as_raw_fd(&probe),
            3,
            "the disk would not be descriptor 3"
        );
    }
    let cfg = RunConfig {
        image,
        args,
        env: vec!["GREETING=hi there".into()],
        mem_size: 4 << 20,
        disks,
        verbose: false,
        net: Default::default(),
        ready_fd: None,
        started: std::time::Instant::now(),
    };
    if case.starts_with("clash:") {
        occupy_image_base();
    }
    let Err(e) = kiln_spt::run(cfg);
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    eprintln!("kiln: cannot start the instance: {msg}");
    std::process::exit(i32::from(EXIT_TENDER_ERROR));
}

/// Maps a page where the image's text goes, as if the tender lived there.
fn occupy_image_base() {
    // SAFETY: a fresh anonymous mapping with MAP_FIXED_NOREPLACE replaces
    // nothing; it stands in for tender memory at the image's address.
    let p = unsafe {
        libc::mmap(
            IMAGE_BASE as *mut libc::c_void,
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, IMAGE_BASE);
}

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn run(case: &str, disk: Option<&PathBuf>) -> Run {
    run_with(case, disk, None)
}

fn run_with(case: &str, disk: Option<&PathBuf>, args: Option<&str>) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env("KILN_SPT_CASE", case);
    if let Some(a) = args {
        c.env("KILN_SPT_ARGS", a);
    }
    if let Some(d) = disk {
        c.env("KILN_SPT_DISK", d);
    }
    let out = c.output().expect("spawn the child");
    Run {
        status: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Expects exit `status` and each of `want` in stderr (or stdout for
/// strings starting with "stdout:").
fn expect(case: &str, status: u8, want: &[&str]) -> Result<(), String> {
    let r = run(case, None);
    check(case, &r, status, want)
}

fn check(case: &str, r: &Run, status: u8, want: &[&str]) -> Result<(), String> {
    if r.status != i32::from(status) {
        return Err(format!("{case}: want status {status}, got {r:?}"));
    }
    for w in want {
        let (hay, w) = match w.strip_prefix("stdout:") {
            Some(w) => (&r.stdout, w),
            None => (&r.stderr, *w),
        };
        if !hay.contains(w) {
            return Err(format!("{case}: want {w:?} in {r:?}"));
        }
    }
    if r.stderr.contains("panicked") {
        return Err(format!("{case}: the tender panicked: {r:?}"));
    }
    Ok(())
}

type Case = (&'static str, fn() -> Result<(), String>);

/// Runs the gadget_pwrite guest with `args` on a fresh 2048-byte disk full
/// of 0xee; returns the run and the disk's bytes afterwards (or its size,
/// as that many zeros stand-ins, when it grew beyond 1 MiB).
fn gadget(case: &str, args: &str) -> Result<(Run, Vec<u8>), String> {
    let disk = disk_path().with_extension(case);
    std::fs::write(&disk, [0xee; 2048]).map_err(|e| e.to_string())?;
    let r = run_with("gadget_pwrite", Some(&disk), Some(args));
    let size = std::fs::metadata(&disk).map(|m| m.len());
    let back = match size {
        Ok(n) if n <= 1 << 20 => std::fs::read(&disk).map_err(|e| e.to_string()),
        Ok(n) => Err(format!("{case}: the disk file grew to {n} bytes: {r:?}")),
        Err(e) => Err(e.to_string()),
    };
    let _ = std::fs::remove_file(&disk);
    if r.status == 77 {
        return Err(format!(
            "{case}: no `syscall; ret` found after the hypercall entry: {r:?}"
        ));
    }
    Ok((r, back?))
}

/// The gadget_pwrite guest with `args` that break the pins must be stopped
/// by the filter before its pwrite64 happens: the disk keeps its size and
/// its bytes.
fn gadget_stopped(case: &str, args: &str) -> Result<(), String> {
    let (r, disk) = gadget(case, args)?;
    check(
        case,
        &r,
        CRASHED,
        &[
            "kiln: instance crashed: forbidden system call (18)",
            "pwrite64",
        ],
    )?;
    if disk.len() != 2048 || disk.iter().any(|&b| b != 0xee) {
        return Err(format!(
            "{case}: the disk changed ({} bytes): {r:?}",
            disk.len()
        ));
    }
    Ok(())
}

const CRASHED: u8 = EXIT_CRASHED;

fn cases() -> Vec<Case> {
    vec![
        ("hello", || {
            let r = run("hello", None);
            check("hello", &r, 0, &["stdout:hello from spt\n"])?;
            if !r.stderr.is_empty() || r.stdout != "hello from spt\n" {
                return Err(format!("hello: unexpected output {r:?}"));
            }
            Ok(())
        }),
        ("entry_state", || expect("entry_state", 0, &[])),
        ("args_env", || {
            let r = run("args_env", None);
            check("args_env", &r, 3, &[])?;
            let want = "args_env\none\ntwo words\nGREETING=hi there\n";
            if r.stdout != want {
                return Err(format!("args_env: want stdout {want:?}, got {r:?}"));
            }
            Ok(())
        }),
        ("null_read", || {
            expect(
                "null_read",
                CRASHED,
                &[
                    "kiln: instance crashed: page fault (14) at address 0x0, rip 0x100000: read of unmapped memory",
                ],
            )
        }),
        ("write_text", || {
            expect(
                "write_text",
                CRASHED,
                &["page fault (14) at address 0x100000, rip 0x100007: write to read-only memory"],
            )
        }),
        ("write_boot_info", || {
            expect(
                "write_boot_info",
                CRASHED,
                &[
                    "page fault (14) at address 0xff000,",
                    "write to read-only memory",
                ],
            )
        }),
        ("stack_overflow", || {
            expect(
                "stack_overflow",
                CRASHED,
                &[
                    "page fault (14)",
                    "stack overflow (hit the guard page below the stack)",
                ],
            )
        }),
        ("exec_heap", || {
            expect(
                "exec_heap",
                CRASHED,
                &["page fault (14) at address 0x104000, rip 0x104000: instruction fetch from non-executable memory"],
            )
        }),
        ("divide_by_zero", || {
            expect(
                "divide_by_zero",
                CRASHED,
                &["divide error (0)", "division by zero"],
            )
        }),
        ("invalid_opcode", || {
            expect(
                "invalid_opcode",
                CRASHED,
                &["invalid opcode (6), rip 0x100000"],
            )
        }),
        ("privileged", || {
            expect(
                "privileged",
                CRASHED,
                &["general protection fault (13), rip 0x100000"],
            )
        }),
        ("raw_getpid", || {
            expect(
                "raw_getpid",
                CRASHED,
                &["forbidden system call (39), rip 0x100007: getpid"],
            )
        }),
        ("raw_mprotect", || {
            expect(
                "raw_mprotect",
                CRASHED,
                &["forbidden system call (10)", "mprotect"],
            )
        }),
        ("raw_write_fd3", || {
            expect(
                "raw_write_fd3",
                CRASHED,
                &["forbidden system call (1)", ": write"],
            )
        }),
        ("raw_write_stdout", || {
            let r = run("raw_write_stdout", None);
            check(
                "raw_write_stdout",
                &r,
                CRASHED,
                &["forbidden system call (1), rip 0x100018: write"],
            )?;
            if !r.stdout.is_empty() {
                return Err(format!("raw_write_stdout: the write got through: {r:?}"));
            }
            Ok(())
        }),
        ("raw_exit", || {
            expect(
                "raw_exit",
                CRASHED,
                &["forbidden system call (231)", "exit_group"],
            )
        }),
        ("int80", || {
            expect(
                "int80",
                CRASHED,
                &[
                    "forbidden system call (20)",
                    "32-bit system call (int 0x80)",
                ],
            )
        }),
        ("wild_buffer", || {
            expect(
                "wild_buffer",
                CRASHED,
                &[
                    "kiln: instance stopped: hypercall CONSOLE_WRITE: buffer at 0x",
                    "is not readable guest memory",
                ],
            )
        }),
        ("wild_arg", || {
            expect(
                "wild_arg",
                CRASHED,
                &["hypercall CLOCK: argument struct at 0xdeadbeef0000 (length 0x10) is not writable guest memory"],
            )
        }),
        ("arg_in_boot_info", || {
            expect(
                "arg_in_boot_info",
                CRASHED,
                &["hypercall CLOCK: argument struct at 0xff000 (length 0x10) is not writable guest memory"],
            )
        }),
        ("wide_number", || {
            expect("wide_number", CRASHED, &["unknown hypercall number"])
        }),
        ("abort", || {
            expect(
                "abort",
                EXIT_ABORTED,
                &["kiln: instance aborted: bye?[0m!\n"],
            )
        }),
        ("abort_forged", || {
            let r = run("abort_forged", None);
            check(
                "abort_forged",
                &r,
                EXIT_ABORTED,
                &["kiln: instance aborted: x\n  kiln: instance exited with code 0\n"],
            )?;
            if r.stderr.lines().filter(|l| l.starts_with("kiln:")).count() != 1 {
                return Err(format!("abort_forged: a second report line: {r:?}"));
            }
            Ok(())
        }),
        ("hostile_call", || {
            let r = run("hostile_call", None);
            check("hostile_call", &r, 0, &["stdout:ok\n"])
        }),
        ("clock_poll", || expect("clock_poll", 0, &[])),
        ("block", || {
            let disk = disk_path();
            let mut data = vec![0u8; 2048];
            data[..16].copy_from_slice(b"block data here\n");
            std::fs::write(&disk, &data).map_err(|e| e.to_string())?;
            let r = run("block", Some(&disk));
            let back = std::fs::read(&disk).map_err(|e| e.to_string());
            let _ = std::fs::remove_file(&disk);
            check("block", &r, 0, &["stdout:block data here\n"])?;
            if back?[512..528] != *b"block data here\n" {
                return Err("block: BLOCK_WRITE did not reach the disk".into());
            }
            Ok(())
        }),
        ("gadget_in_bounds", || {
            // The gadget is found and the filter admits the shape the
            // tender itself uses: one block inside the disk.
            let (r, disk) = gadget("gadget_in_bounds", "512 1536")?;
            check("gadget_in_bounds", &r, 0, &[])?;
            if disk.len() != 2048 || disk[..1536].iter().any(|&b| b != 0xee) {
                return Err(format!(
                    "gadget_in_bounds: disk changed outside the block: {r:?}"
                ));
            }
            if disk[1536..].iter().any(|&b| b != 0) {
                return Err(format!("gadget_in_bounds: the write did not land: {r:?}"));
            }
            Ok(())
        }),
        ("gadget_past_end", || {
            gadget_stopped("gadget_past_end", "512 1099511627776")
        }),
        ("gadget_huge_length", || {
            gadget_stopped("gadget_huge_length", "1048576 0")
        }),
        ("gadget_odd_length", || {
            gadget_stopped("gadget_odd_length", "100 0")
        }),
        ("clash", || {
            expect(
                "clash:hello",
                EXIT_TENDER_ERROR,
                &["segment 0 (r-x) at 0x100000..0x101000 would overlap memory the tender already uses"],
            )
        }),
    ]
}

fn main() {
    if let Ok(case) = std::env::var("KILN_SPT_CASE") {
        child(&case);
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--dump") {
        let dir = PathBuf::from(args.get(i + 1).expect("--dump DIR"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _) in cases() {
            let guest = match name {
                "clash" => "hello",
                n if n.starts_with("gadget_") => "gadget_pwrite",
                n => n,
            };
            let p = dir.join(format!("{name}.kiln"));
            std::fs::write(&p, image_bytes(code(guest), &manifest(guest))).unwrap();
            println!("{}", p.display());
        }
        return;
    }
    // `cargo test` passes libtest flags; a name filter selects cases.
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = 0;
    let mut ran = 0;
    for (name, case) in cases() {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e}\n");
            }
        }
    }
    println!("\n{} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
