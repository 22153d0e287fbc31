//! The descriptors a parent hands `kiln run` (`--net fd:N`, `--ready-fd N`):
//! the flag values as text, and what the kernel says about each number
//! (`F_GETFL`, `fstat`'s file type, `SO_DOMAIN`, `SO_TYPE`, or an error
//! from any of them), all chosen by the fuzzer. The flags are parsed as
//! `kiln run` parses them (`Attach::from_str`, and `RawFd::from_str` as
//! clap does for `--ready-fd`), then `inherit::check_inherited`, the check
//! `kiln run` makes before it opens anything, decides on the fuzzer's
//! kernel answers.
//!
//! Properties:
//! * parsing never panics; `fd:N` is accepted exactly for a plain decimal
//!   N that fits a descriptor number, and yields that N;
//! * an accepted set of flags names only frame sockets (open, above 2, of
//!   file type socket, `AF_UNIX`, `SOCK_DGRAM` or `SOCK_SEQPACKET`) and a
//!   writable ready descriptor above 2 that is none of them;
//! * a refusal names the first descriptor that fails, under the flag it
//!   was given with, for a reason that is true of it (the kernel's answer
//!   it cites, the file type it names), and every descriptor checked
//!   before it passed;
//! * the message starts with the flag and number and never panics.
#![no_main]

use kiln_tender::inherit::{
    check_inherited, FdProblem, InheritError, Inspect, NET_FLAG, READY_FLAG,
};
use kiln_tender::net::{Attach, Backend};
use libfuzzer_sys::fuzz_target;
use std::io;
use std::os::fd::RawFd;

/// What the made-up kernel answers for one descriptor.
#[derive(Clone, Copy, Debug)]
struct Answers {
    /// `F_GETFL`: the flags, or an errno.
    flags: Result<libc::c_int, i32>,
    /// `fstat`: `st_mode`, or an errno.
    mode: Result<libc::mode_t, i32>,
    domain: Result<libc::c_int, i32>,
    ty: Result<libc::c_int, i32>,
}

const TYPES: [libc::mode_t; 8] = [
    libc::S_IFSOCK,
    libc::S_IFREG,
    libc::S_IFIFO,
    libc::S_IFCHR,
    libc::S_IFBLK,
    libc::S_IFDIR,
    libc::S_IFLNK,
    0,
];

impl Answers {
    fn decode(e: &[u8; 8]) -> Answers {
        let err = |b: u8| [libc::EBADF, libc::EIO, libc::ENOTSOCK, libc::EACCES][b as usize % 4];
        let small = |b: u8| i32::from(b as i8);
        Answers {
            flags: match e[0] % 8 {
                0 => Err(err(e[1])),
                _ => Ok(small(e[1]) & !0x3 | i32::from(e[0] >> 3) % 4),
            },
            mode: match e[2] % 16 {
                15 => Err(err(e[3])),
                // Any type bits, or one of the common ones.
                14 => Ok(libc::mode_t::from(e[3]) << 12),
                n => Ok(TYPES[n as usize % 8] | 0o600),
            },
            domain: match e[4] {
                0xff => Err(err(e[5])),
                d => Ok(i32::from(d % 48)),
            },
            ty: match e[6] {
                0xff => Err(err(e[7])),
                t => Ok(i32::from(t % 12)),
            },
        }
    }

    fn open(&self, fd: RawFd) -> bool {
        fd >= 0 && self.flags != Err(libc::EBADF)
    }

    fn frame_socket(&self, fd: RawFd) -> bool {
        fd > 2
            && self.flags.is_ok()
            && self.mode.is_ok_and(|m| m & libc::S_IFMT == libc::S_IFSOCK)
            && self.domain == Ok(libc::AF_UNIX)
            && matches!(self.ty, Ok(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET))
    }

    fn writable(&self, fd: RawFd) -> bool {
        fd > 2
            && self
                .flags
                .is_ok_and(|f| f & libc::O_ACCMODE != libc::O_RDONLY)
    }
}

/// Eight descriptors' answers; a number uses entry `fd % 8`.
struct Table([Answers; 8]);

impl Table {
    fn get(&self, fd: RawFd) -> Answers {
        self.0[fd.rem_euclid(8) as usize]
    }
}

impl Inspect for Table {
    fn status_flags(&self, fd: RawFd) -> io::Result<libc::c_int> {
        self.get(fd).flags.map_err(io::Error::from_raw_os_error)
    }
    fn mode(&self, fd: RawFd) -> io::Result<libc::mode_t> {
        self.get(fd).mode.map_err(io::Error::from_raw_os_error)
    }
    fn sockopt(&self, fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
        let a = self.get(fd);
        match opt {
            libc::SO_DOMAIN => a.domain,
            libc::SO_TYPE => a.ty,
            other => panic!("the check asked for socket option {other}"),
        }
        .map_err(io::Error::from_raw_os_error)
    }
}

/// Whether `problem` is true of a descriptor with these answers.
fn true_of(problem: &FdProblem, fd: RawFd, a: &Answers, ready: bool) -> bool {
    match problem {
        FdProblem::NotOpen => !a.open(fd),
        FdProblem::Standard => a.flags.is_ok() && (0..=2).contains(&fd),
        FdProblem::ReadOnly => {
            ready && a.flags.is_ok_and(|f| f & libc::O_ACCMODE == libc::O_RDONLY)
        }
        FdProblem::NotSocket(kind) => a.mode.is_ok_and(|m| {
            let t = m & libc::S_IFMT;
            let named = match t {
                libc::S_IFREG => "a regular file",
                libc::S_IFIFO => "a pipe",
                libc::S_IFCHR => "a character device",
                libc::S_IFBLK => "a block device",
                libc::S_IFDIR => "a directory",
                libc::S_IFLNK => "a symbolic link",
                _ => "a file of another kind",
            };
            !ready && t != libc::S_IFSOCK && kind.starts_with(named)
        }),
        FdProblem::NotUnix(f) => !ready && a.domain == Ok(*f) && *f != libc::AF_UNIX,
        FdProblem::Stream => !ready && a.ty == Ok(libc::SOCK_STREAM),
        FdProblem::SocketType(t) => {
            !ready
                && a.ty == Ok(*t)
                && ![libc::SOCK_DGRAM, libc::SOCK_SEQPACKET, libc::SOCK_STREAM].contains(t)
        }
        FdProblem::Io(e) => {
            let errno = e.raw_os_error();
            [a.flags.err(), a.mode.err(), a.domain.err(), a.ty.err()]
                .into_iter()
                .flatten()
                .any(|x| Some(x) == errno)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Input: 64 bytes of kernel answers (8 per entry), then the flag
    // values, one per line: `--ready-fd`'s first, then each `--net`.
    if data.len() < 64 {
        return;
    }
    let (table, text) = data.split_at(64);
    let table = Table(std::array::from_fn(|i| {
        Answers::decode(table[i * 8..i * 8 + 8].try_into().unwrap())
    }));
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split('\n');
    let ready: Option<RawFd> = lines.next().and_then(|s| s.parse().ok());
    let mut net = Vec::new();
    for line in lines.take(8) {
        let Ok(attach) = line.parse::<Attach>() else {
            continue;
        };
        if let Backend::Fd(n) = attach.backend {
            // Exactly a plain decimal number, after an optional `NAME=`.
            let value = line.split_once('=').map_or(line, |(_, v)| v);
            let digits = value
                .strip_prefix("fd:")
                .expect("fd:N parsed from something else");
            assert!(
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
                "{line:?}"
            );
            assert_eq!(digits.parse::<RawFd>().ok(), Some(n), "{line:?}");
            assert_eq!(
                format!("fd:{n}").parse::<Backend>().ok(),
                Some(Backend::Fd(n))
            );
            net.push(n);
        }
    }

    match check_inherited(&table, &net, ready) {
        Ok(()) => {
            for &fd in &net {
                assert!(
                    table.get(fd).frame_socket(fd),
                    "--net fd:{fd} accepted: {:?}",
                    table.get(fd)
                );
            }
            if let Some(fd) = ready {
                assert!(
                    table.get(fd).writable(fd),
                    "--ready-fd {fd} accepted: {:?}",
                    table.get(fd)
                );
                assert!(!net.contains(&fd), "--ready-fd {fd} is also a --net fd");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("not a socket, not a socket"), "{msg}");
            match e {
                InheritError::Shared(fd) => {
                    assert_eq!(Some(fd), ready);
                    assert!(net.contains(&fd));
                    assert!(net.iter().all(|&n| table.get(n).frame_socket(n)));
                    assert!(
                        msg.starts_with(&format!("descriptor {fd} is given both")),
                        "{msg}"
                    );
                }
                InheritError::Fd(e) => {
                    let is_ready = e.flag == READY_FLAG;
                    assert!(is_ready || e.flag == NET_FLAG);
                    assert!(
                        msg.starts_with(&format!("{}{}: descriptor {} ", e.flag, e.fd, e.fd)),
                        "{msg}"
                    );
                    // The first that fails, all before it passed.
                    if is_ready {
                        assert_eq!(Some(e.fd), ready);
                        assert!(net.iter().all(|&n| table.get(n).frame_socket(n)));
                    } else {
                        let at = net
                            .iter()
                            .position(|&n| n == e.fd)
                            .expect("a --net fd not given");
                        assert!(net[..at].iter().all(|&n| table.get(n).frame_socket(n)));
                    }
                    let a = table.get(e.fd);
                    assert!(true_of(&e.problem, e.fd, &a, is_ready), "{msg}: {a:?}");
                }
            }
        }
    }
});
