//! Which host system calls a tender's threads may make once the guest
//! runs, and with which arguments: the seccomp policy, as data.
//!
//! Both tenders build their filters from a [`Policy`]. The calls of the
//! hypercall path — what [`crate::dispatch`] and [`crate::finish`] make,
//! with this instance's descriptors and sizes — are described once, by
//! [`Policy::hypercall_path`]; a tender adds what only it needs (hvt: its
//! vCPU `ioctl`s, the ring eventfds, `futex`). [`Policy::compile`] turns the
//! description into a seccompiler program whose every other call raises
//! SIGSYS (`SECCOMP_RET_TRAP`); [`Policy`]'s `Display` prints it, which is
//! where the figures of `docs/security.md` come from.
//!
//! | call | pinned to | used by |
//! |------|-----------|---------|
//! | `write` | fd 1 or 2 (any count); each network backend's fd with count ≤ its largest write; the `--ready-fd` fd with count = 1 | CONSOLE_WRITE, reports; NET_WRITE; READY |
//! | `read` | each network backend's fd | NET_READ |
//! | `ppoll` | signal mask null (all 64 bits); only with network devices | POLL |
//! | `pread64`, `pwrite64` | per disk: fd, count = 4096 or 512, offset ≤ capacity − count ([`crate::block::rules`]) | BLOCK_READ, BLOCK_WRITE |
//! | `clock_gettime` | CLOCK_MONOTONIC or CLOCK_REALTIME | CLOCK, POLL (when the vDSO cannot answer) |
//! | `clock_nanosleep` | CLOCK_MONOTONIC, TIMER_ABSTIME | POLL's sleep |
//! | `exit_group`, `rt_sigreturn` | — | the end of the instance; signal handlers |

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::RawFd;

/// The policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// seccompiler rejected a condition, a rule or the filter.
    #[error("cannot compile the seccomp filter")]
    Compile(#[from] seccompiler::BackendError),
}

/// How a [`Cond`] compares its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The low 32 bits equal the value: for `int` arguments (descriptors,
    /// clock ids, flags), of which the kernel reads only those bits.
    Eq32,
    /// All 64 bits equal the value: sizes and pointers.
    Eq64,
    /// All 64 bits, unsigned, are at most the value.
    AtMost,
}

/// One comparison of one system call argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    /// Argument index, 0 to 5.
    pub arg: u8,
    /// The argument's name in the system call's man page, for the tables.
    pub name: &'static str,
    /// The comparison.
    pub op: Op,
    /// The value compared with.
    pub value: u64,
}

impl Cond {
    /// Argument `arg` (an `int`) is `value`.
    pub const fn eq32(arg: u8, name: &'static str, value: u64) -> Cond {
        Cond {
            arg,
            name,
            op: Op::Eq32,
            value,
        }
    }

    /// Argument `arg` (64 bits) is `value`.
    pub const fn eq64(arg: u8, name: &'static str, value: u64) -> Cond {
        Cond {
            arg,
            name,
            op: Op::Eq64,
            value,
        }
    }

    /// Argument `arg` (64 bits, unsigned) is at most `value`.
    pub const fn at_most(arg: u8, name: &'static str, value: u64) -> Cond {
        Cond {
            arg,
            name,
            op: Op::AtMost,
            value,
        }
    }

    /// Whether a call with arguments `args` meets this condition, as the
    /// compiled filter decides it.
    pub fn holds(&self, args: &[u64; 6]) -> bool {
        let a = args[usize::from(self.arg)];
        match self.op {
            Op::Eq32 => a as u32 == self.value as u32,
            Op::Eq64 => a == self.value,
            Op::AtMost => a <= self.value,
        }
    }

    fn compile(&self) -> Result<SeccompCondition, seccompiler::BackendError> {
        let (len, op) = match self.op {
            Op::Eq32 => (SeccompCmpArgLen::Dword, SeccompCmpOp::Eq),
            Op::Eq64 => (SeccompCmpArgLen::Qword, SeccompCmpOp::Eq),
            Op::AtMost => (SeccompCmpArgLen::Qword, SeccompCmpOp::Le),
        };
        SeccompCondition::new(self.arg, len, op, self.value)
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Eq32 | Op::Eq64 => "=",
            Op::AtMost => "≤",
        };
        write!(f, "{} {op} {}", self.name, self.value)
    }
}

/// Conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(Vec<Cond>);

impl Rule {
    /// A rule of the conditions `conds`.
    pub fn new(conds: Vec<Cond>) -> Rule {
        Rule(conds)
    }

    /// A rule for a call whose descriptor (argument 0) is `fd`.
    pub fn fd(fd: RawFd) -> Rule {
        Rule(vec![Cond::eq32(0, "fd", fd as u64)])
    }

    /// This rule and argument `arg` (an `int`) is `value`.
    pub fn eq32(mut self, arg: u8, name: &'static str, value: u64) -> Rule {
        self.0.push(Cond::eq32(arg, name, value));
        self
    }

    /// This rule and argument `arg` (64 bits) is `value`.
    pub fn eq64(mut self, arg: u8, name: &'static str, value: u64) -> Rule {
        self.0.push(Cond::eq64(arg, name, value));
        self
    }

    /// This rule and argument `arg` (64 bits, unsigned) is at most `value`.
    pub fn at_most(mut self, arg: u8, name: &'static str, value: u64) -> Rule {
        self.0.push(Cond::at_most(arg, name, value));
        self
    }

    /// The conditions.
    pub fn conds(&self) -> &[Cond] {
        &self.0
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What one allowed system call may be called with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Arguments that meet at least one of these rules (never empty: an
    /// empty list would mean "any" to seccompiler).
    OneOf(Vec<Rule>),
}

/// The system calls one thread may make, each with what its arguments
/// may be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    calls: BTreeMap<i64, Args>,
}

/// The descriptors of one instance that its hypercalls use, with the sizes
/// the policy pins on them ([`crate::Host::sandbox_fds`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFds {
    /// Block devices.
    pub disks: Vec<Disk>,
    /// Network backends on the hypercall path.
    pub nets: Vec<NetFd>,
    /// `--ready-fd`, where READY writes its byte.
    pub ready: Option<RawFd>,
}

/// A block device's descriptor and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// The disk file.
    pub fd: RawFd,
    /// Its size in bytes, a multiple of [`crate::block::BLOCK_SIZE`].
    pub capacity: u64,
}

/// A network backend's descriptor and the most it writes in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetFd {
    /// The backend's descriptor.
    pub fd: RawFd,
    /// One frame (MTU + 14) on a tap or frame socket; the send queue on a
    /// stream (passt).
    pub largest_write: u64,
}

impl Policy {
    /// Nothing allowed.
    pub fn new() -> Policy {
        Policy::default()
    }

    /// Allows `nr` with any arguments.
    pub fn allow_any(&mut self, nr: i64) {
        self.calls.insert(nr, Args::Any);
    }

    /// Allows `nr` with arguments that meet `rule` (besides any it
    /// already allows).
    pub fn allow(&mut self, nr: i64, rule: Rule) {
        match self.calls.entry(nr).or_insert(Args::OneOf(Vec::new())) {
            Args::Any => {}
            Args::OneOf(rules) if rules.contains(&rule) => {}
            Args::OneOf(rules) => rules.push(rule),
        }
    }

    /// The allowed system calls, in number order, each with its arguments.
    pub fn calls(&self) -> impl Iterator<Item = (i64, &Args)> {
        self.calls.iter().map(|(&nr, args)| (nr, args))
    }

    /// How many system calls are allowed.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether a call of `nr` with `args` is allowed.
    pub fn admits(&self, nr: i64, args: &[u64; 6]) -> bool {
        match self.calls.get(&nr) {
            None => false,
            Some(Args::Any) => true,
            Some(Args::OneOf(rules)) => rules
                .iter()
                .any(|r| r.conds().iter().all(|c| c.holds(args))),
        }
    }

    /// The calls the hypercall path makes for an instance with the
    /// descriptors `fds` (see the table in the module documentation).
    pub fn hypercall_path(fds: &HostFds) -> Policy {
        let mut p = Policy::new();
        // CONSOLE_WRITE on stdout; reports on stderr. A count bound would
        // limit nothing there (the caller can repeat the call).
        p.allow(libc::SYS_write, Rule::fd(1));
        p.allow(libc::SYS_write, Rule::fd(2));
        for net in &fds.nets {
            // The most the device itself writes: a guest that reaches
            // `write` without NET_WRITE sends no frame NET_WRITE refuses.
            p.allow(
                libc::SYS_write,
                Rule::fd(net.fd).at_most(2, "count", net.largest_write),
            );
            p.allow(libc::SYS_read, Rule::fd(net.fd));
        }
        if let Some(fd) = fds.ready {
            // READY's one byte.
            p.allow(libc::SYS_write, Rule::fd(fd).eq64(2, "count", 1));
        }
        if !fds.nets.is_empty() {
            // POLL waits on the backends. ppoll's descriptors sit in
            // memory, out of the filter's sight; the signal mask pointer
            // is pinned to null in all its bits.
            p.allow(
                libc::SYS_ppoll,
                Rule::new(vec![Cond::eq64(3, "sigmask", 0)]),
            );
        }
        for disk in &fds.disks {
            for rule in crate::block::rules(disk) {
                p.allow(libc::SYS_pread64, rule.clone());
                p.allow(libc::SYS_pwrite64, rule);
            }
        }
        // CLOCK (normally the vDSO answers without a system call).
        for clock in [libc::CLOCK_MONOTONIC, libc::CLOCK_REALTIME] {
            p.allow(
                libc::SYS_clock_gettime,
                Rule::new(vec![Cond::eq32(0, "clock", clock as u64)]),
            );
        }
        // POLL without network devices: an absolute monotonic sleep.
        p.allow(
            libc::SYS_clock_nanosleep,
            Rule::new(vec![
                Cond::eq32(0, "clock", libc::CLOCK_MONOTONIC as u64),
                Cond::eq32(1, "flags", libc::TIMER_ABSTIME as u64),
            ]),
        );
        p.allow_any(libc::SYS_exit_group);
        p.allow_any(libc::SYS_rt_sigreturn);
        p
    }

    /// Compiles the policy for x86_64: the allowed calls pass, every other
    /// call (and every call of another architecture) raises SIGSYS.
    pub fn compile(&self) -> Result<BpfProgram, PolicyError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (&nr, args) in &self.calls {
            let compiled = match args {
                Args::Any => Vec::new(),
                Args::OneOf(list) => list
                    .iter()
                    .map(|r| {
                        let conds = r.0.iter().map(Cond::compile).collect::<Result<_, _>>()?;
                        SeccompRule::new(conds)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, compiled);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        Ok(filter.try_into()?)
    }
}

/// The name of system call `nr` among those a tender may allow.
pub fn syscall_name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_read => "read",
        libc::SYS_write => "write",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_pread64 => "pread64",
        libc::SYS_pwrite64 => "pwrite64",
        libc::SYS_ppoll => "ppoll",
        libc::SYS_futex => "futex",
        libc::SYS_clock_gettime => "clock_gettime",
        libc::SYS_clock_nanosleep => "clock_nanosleep",
        libc::SYS_exit_group => "exit_group",
        libc::SYS_rt_sigreturn => "rt_sigreturn",
        _ => "(another system call)",
    }
}

/// One line per system call: its name and what its arguments may be,
/// rules separated by " | ".
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (&nr, args) in &self.calls {
            write!(f, "{}: ", syscall_name(nr))?;
            match args {
                Args::Any => f.write_str("any arguments")?,
                Args::OneOf(rules) => {
                    for (i, r) in rules.iter().enumerate() {
                        if i > 0 {
                            f.write_str(" | ")?;
                        }
                        write!(f, "{r}")?;
                    }
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds() -> HostFds {
        HostFds {
            disks: vec![Disk {
                fd: 7,
                capacity: 9 * 512,
            }],
            nets: vec![NetFd {
                fd: 8,
                largest_write: 1514,
            }],
            ready: Some(9),
        }
    }

    #[test]
    fn hypercall_path_counts() {
        let none = Policy::hypercall_path(&HostFds::default());
        // write, clock_gettime, clock_nanosleep, exit_group, rt_sigreturn.
        assert_eq!(none.len(), 5, "{none}");
        let all = Policy::hypercall_path(&fds());
        // + read, ppoll, pread64, pwrite64.
        assert_eq!(all.len(), 9, "{all}");
        // A disk too small for any piece adds nothing (not "any arguments").
        let empty = Policy::hypercall_path(&HostFds {
            disks: vec![Disk { fd: 7, capacity: 0 }],
            ..HostFds::default()
        });
        assert_eq!(empty, none);
    }

    #[test]
    fn hypercall_path_prints_its_pins() {
        let text = Policy::hypercall_path(&fds()).to_string();
        assert!(
            text.contains(
                "pwrite64: fd = 7, count = 4096, offset ≤ 512 | fd = 7, count = 512, offset ≤ 4096\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("write: fd = 1 | fd = 2 | fd = 8, count ≤ 1514 | fd = 9, count = 1\n"),
            "{text}"
        );
        assert!(text.contains("exit_group: any arguments\n"), "{text}");
    }

    #[test]
    fn admits_mirrors_the_pins() {
        let p = Policy::hypercall_path(&fds());
        let w = libc::SYS_pwrite64;
        assert!(p.admits(w, &[7, 0, 512, 4096, 0, 0]));
        assert!(!p.admits(w, &[7, 0, 512, 4608, 0, 0]));
        assert!(p.admits(libc::SYS_exit_group, &[3, 0, 0, 0, 0, 0]));
        assert!(!p.admits(libc::SYS_getpid, &[0; 6]));
    }

    /// One call made under the compiled hypercall-path filter in a child
    /// process, and whether the filter must let it through.
    struct Case {
        name: &'static str,
        nr: i64,
        /// Arguments; `DISK`, `NET`, `READY` and `BUF` stand for the
        /// child's descriptors and a buffer.
        args: [u64; 6],
        allowed: bool,
    }

    const DISK: u64 = 1 << 60;
    const NET: u64 = 2 << 60;
    const READY: u64 = 3 << 60;
    const BUF: u64 = 4 << 60;
    const CAPACITY: u64 = 9 * 512;
    const CASE_VAR: &str = "KILN_POLICY_CASE";

    fn cases() -> Vec<Case> {
        let c = |name, nr, args: [u64; 6], allowed| Case {
            name,
            nr,
            args,
            allowed,
        };
        let (pr, pw) = (libc::SYS_pread64, libc::SYS_pwrite64);
        vec![
            c(
                "pwrite_last_block",
                pw,
                [DISK, BUF, 512, CAPACITY - 512, 0, 0],
                true,
            ),
            c(
                "pwrite_last_piece",
                pw,
                [DISK, BUF, 4096, CAPACITY - 4096, 0, 0],
                true,
            ),
            c("pread_first_piece", pr, [DISK, BUF, 4096, 0, 0, 0], true),
            c(
                "pwrite_past_end",
                pw,
                [DISK, BUF, 512, CAPACITY, 0, 0],
                false,
            ),
            c(
                "pwrite_piece_past_end",
                pw,
                [DISK, BUF, 4096, 1024, 0, 0],
                false,
            ),
            c(
                "pwrite_terabyte",
                pw,
                [DISK, BUF, 512, 1 << 40, 0, 0],
                false,
            ),
            c(
                "pwrite_negative",
                pw,
                [DISK, BUF, 512, (-512i64) as u64, 0, 0],
                false,
            ),
            c("pwrite_odd_count", pw, [DISK, BUF, 100, 0, 0, 0], false),
            c(
                "pread_high_count",
                pr,
                [DISK, BUF, (1 << 32) | 512, 0, 0, 0],
                false,
            ),
            c("pwrite_other_fd", pw, [READY, BUF, 512, 0, 0, 0], false),
            c(
                "write_ready_byte",
                libc::SYS_write,
                [READY, BUF, 1, 0, 0, 0],
                true,
            ),
            c(
                "write_ready_two",
                libc::SYS_write,
                [READY, BUF, 2, 0, 0, 0],
                false,
            ),
            c(
                "write_net_frame",
                libc::SYS_write,
                [NET, BUF, 1514, 0, 0, 0],
                true,
            ),
            c(
                "write_net_jumbo",
                libc::SYS_write,
                [NET, BUF, 1515, 0, 0, 0],
                false,
            ),
            c("ppoll_no_mask", libc::SYS_ppoll, [0, 0, BUF, 0, 8, 0], true),
            c(
                "ppoll_mask_high_bits",
                libc::SYS_ppoll,
                [0, 0, BUF, 1 << 32, 8, 0],
                false,
            ),
            c(
                "clock_boottime",
                libc::SYS_clock_gettime,
                [libc::CLOCK_BOOTTIME as u64, BUF, 0, 0, 0, 0],
                false,
            ),
        ]
    }

    /// In the child: set up the descriptors, confine this thread with the
    /// hypercall path's filter, make the call, and exit 0 if it returned.
    fn child(case: &Case) -> ! {
        use std::os::fd::IntoRawFd;
        let disk_path = std::env::temp_dir().join(format!("kiln-policy-{}", std::process::id()));
        std::fs::write(&disk_path, vec![0u8; CAPACITY as usize]).unwrap();
        let disk = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&disk_path)
            .unwrap()
            .into_raw_fd();
        std::fs::remove_file(&disk_path).unwrap();
        let (net, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let net = net.into_raw_fd();
        let (ready, _reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let ready = ready.into_raw_fd();
        // A zeroed buffer, also a zero timespec for ppoll.
        let buf = vec![0u8; 8192];
        let fds = HostFds {
            disks: vec![Disk {
                fd: disk,
                capacity: CAPACITY,
            }],
            nets: vec![NetFd {
                fd: net,
                largest_write: 1514,
            }],
            ready: Some(ready),
        };
        let args = case.args.map(|a| match a {
            DISK => disk as u64,
            NET => net as u64,
            READY => ready as u64,
            BUF => buf.as_ptr() as u64,
            other => other,
        });
        let program = Policy::hypercall_path(&fds).compile().unwrap();
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads a valid rlimit; a child without core
        // dumps is all it changes.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        seccompiler::apply_filter(&program).unwrap();
        // SAFETY: the arguments are descriptors and a live 8 KiB buffer
        // of this process, or values the kernel checks and refuses.
        unsafe {
            libc::syscall(
                case.nr, args[0], args[1], args[2], args[3], args[4], args[5],
            )
        };
        // SAFETY: _exit ends the process; nothing needs to run first.
        unsafe { libc::_exit(0) }
    }

    /// Each call under the compiled filter, in its own child process: the
    /// allowed ones return, the others end the child with SIGSYS.
    #[test]
    fn compiled_filter_admits_exactly_the_pinned_calls() {
        let cases = cases();
        if let Ok(name) = std::env::var(CASE_VAR) {
            let case = cases.iter().find(|c| c.name == name).unwrap();
            child(case);
        }
        let policy = Policy::hypercall_path(&fds());
        let mut wrong = Vec::new();
        for case in &cases {
            use std::os::unix::process::ExitStatusExt;
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "policy::tests::compiled_filter_admits_exactly_the_pinned_calls",
                    "--exact",
                    "--nocapture",
                ])
                .env(CASE_VAR, case.name)
                .output()
                .unwrap();
            let trapped = out.status.signal() == Some(libc::SIGSYS);
            let returned = out.status.code() == Some(0);
            if !(trapped || returned) || returned != case.allowed {
                wrong.push(format!(
                    "{}: want {}, got {:?}\n{}",
                    case.name,
                    if case.allowed { "allowed" } else { "SIGSYS" },
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // The data model says the same as the kernel (descriptors as
            // in `fds()`).
            let model_args = case.args.map(|a| match a {
                DISK => 7,
                NET => 8,
                READY => 9,
                BUF => 0x1000,
                other => other,
            });
            if policy.admits(case.nr, &model_args) != case.allowed {
                wrong.push(format!("{}: the model disagrees", case.name));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
