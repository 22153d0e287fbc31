//! Descriptors inherited from the process that started `kiln run`
//! (`--net fd:N`, `--ready-fd N`): checked, then claimed.
//!
//! A parent such as kilnd passes a socket or pipe by leaving it open
//! across `exec`. Before kiln uses one it makes sure it is what the flag
//! says ([`check_frame_socket`], [`check_ready`]), so that a wrong number
//! is a clear error naming the flag instead of a confusing failure later.
//! `kiln run` checks both before it opens anything of its own, so a
//! number that passes names the inherited descriptor, not one of kiln's;
//! the tender then takes ownership ([`claim`]) and marks it close-on-exec
//! (a helper such as passt must not inherit it).

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What is wrong with an inherited descriptor.
#[derive(Debug)]
pub enum FdProblem {
    /// Nothing is open under that number.
    NotOpen,
    /// 0, 1 or 2.
    Standard,
    /// Open for reading only (`--ready-fd` is written to).
    ReadOnly,
    /// Not a socket; what it is instead.
    NotSocket(&'static str),
    /// A socket of another address family.
    NotUnix(i32),
    /// A stream socket (no message boundaries).
    Stream,
    /// A socket of another type.
    SocketType(i32),
    /// The descriptor could not be inspected.
    Io(io::Error),
}

impl fmt::Display for FdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdProblem::NotOpen => f.write_str("is not open"),
            FdProblem::Standard => f.write_str(
                "is standard input, output or error; pass the socket or pipe as descriptor 3 or above",
            ),
            FdProblem::ReadOnly => f.write_str(
                "is open for reading only (pass the write end of the pipe, or a socket)",
            ),
            FdProblem::NotSocket(what) => write!(
                f,
                "is {what}, not a socket; kiln expects an AF_UNIX SOCK_DGRAM or SOCK_SEQPACKET socket"
            ),
            FdProblem::NotUnix(family) => write!(
                f,
                "is {} socket, not AF_UNIX; kiln expects an AF_UNIX SOCK_DGRAM or SOCK_SEQPACKET socket",
                family_name(*family)
            ),
            FdProblem::Stream => f.write_str(
                "is a stream socket; kiln expects one frame per message (AF_UNIX SOCK_DGRAM or SOCK_SEQPACKET)",
            ),
            FdProblem::SocketType(t) => write!(
                f,
                "is a socket of type {t}; kiln expects one frame per message (AF_UNIX SOCK_DGRAM or SOCK_SEQPACKET)"
            ),
            FdProblem::Io(e) => write!(f, "cannot be inspected: {e}"),
        }
    }
}

fn family_name(family: i32) -> String {
    match family {
        libc::AF_INET => "an AF_INET".into(),
        libc::AF_INET6 => "an AF_INET6".into(),
        libc::AF_NETLINK => "an AF_NETLINK".into(),
        libc::AF_PACKET => "an AF_PACKET".into(),
        other => format!("a family {other}"),
    }
}

/// An inherited descriptor that cannot be used as its flag says.
#[derive(Debug, thiserror::Error)]
#[error("{flag}{fd}: descriptor {fd} {problem}")]
pub struct FdError {
    /// The flag as written before the number: `"--net fd:"` or `"--ready-fd "`.
    pub flag: &'static str,
    /// The descriptor.
    pub fd: RawFd,
    /// What is wrong.
    pub problem: FdProblem,
}

/// The flag prefix of `--net fd:N`.
pub const NET_FLAG: &str = "--net fd:";
/// The flag prefix of `--ready-fd N`.
pub const READY_FLAG: &str = "--ready-fd ";

/// How a frame socket delimits messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSocket {
    /// `SOCK_DGRAM`: a closed peer shows only as a failed send.
    Datagram,
    /// `SOCK_SEQPACKET`: a closed peer reads as end of file.
    SeqPacket,
}

impl fmt::Display for FrameSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameSocket::Datagram => "AF_UNIX SOCK_DGRAM",
            FrameSocket::SeqPacket => "AF_UNIX SOCK_SEQPACKET",
        })
    }
}

/// `fcntl(fd, F_GETFL)`: the file status flags, `NotOpen` for EBADF.
fn status_flags(fd: RawFd) -> Result<libc::c_int, FdProblem> {
    if fd < 0 {
        return Err(FdProblem::NotOpen);
    }
    // SAFETY: F_GETFL takes no pointer; any number is safe to ask about.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBADF) => FdProblem::NotOpen,
            _ => FdProblem::Io(e),
        });
    }
    Ok(flags)
}

fn open_and_not_standard(fd: RawFd) -> Result<libc::c_int, FdProblem> {
    let flags = status_flags(fd)?;
    if (0..=2).contains(&fd) {
        return Err(FdProblem::Standard);
    }
    Ok(flags)
}

fn file_kind(fd: RawFd) -> Result<&'static str, FdProblem> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(FdProblem::Io(io::Error::last_os_error()));
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => "a socket",
        libc::S_IFREG => "a regular file",
        libc::S_IFIFO => "a pipe",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        _ => "not a socket",
    })
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Result<libc::c_int, FdProblem> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes; the kernel writes at
    // most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(FdProblem::Io(io::Error::last_os_error()));
    }
    Ok(value)
}

/// Checks that `fd` is an open `AF_UNIX` socket of type `SOCK_DGRAM` or
/// `SOCK_SEQPACKET` (above the standard descriptors).
pub fn check_frame_socket(fd: RawFd) -> Result<FrameSocket, FdError> {
    let err = |problem| FdError {
        flag: NET_FLAG,
        fd,
        problem,
    };
    open_and_not_standard(fd).map_err(err)?;
    let kind = file_kind(fd).map_err(err)?;
    if kind != "a socket" {
        return Err(err(FdProblem::NotSocket(kind)));
    }
    let family = sockopt(fd, libc::SO_DOMAIN).map_err(err)?;
    if family != libc::AF_UNIX {
        return Err(err(FdProblem::NotUnix(family)));
    }
    match sockopt(fd, libc::SO_TYPE).map_err(err)? {
        libc::SOCK_DGRAM => Ok(FrameSocket::Datagram),
        libc::SOCK_SEQPACKET => Ok(FrameSocket::SeqPacket),
        libc::SOCK_STREAM => Err(err(FdProblem::Stream)),
        other => Err(err(FdProblem::SocketType(other))),
    }
}

/// Checks that `fd` is open for writing (above the standard descriptors).
pub fn check_ready(fd: RawFd) -> Result<(), FdError> {
    let err = |problem| FdError {
        flag: READY_FLAG,
        fd,
        problem,
    };
    let flags = open_and_not_standard(fd).map_err(err)?;
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(err(FdProblem::ReadOnly));
    }
    Ok(())
}

/// Takes ownership of the inherited descriptor `fd`, which a `check_*`
/// function accepted, and makes it nonblocking and close-on-exec.
///
/// Ownership is sound because `kiln run` checks every inherited number
/// before this process opens anything (so the number is the parent's
/// descriptor, not one of kiln's), each number is claimed once (the
/// network plan refuses `fd:N` twice and [`crate::Host::open`] refuses the
/// ready fd among the network fds), and the standard descriptors are
/// refused.
pub(crate) fn claim(fd: RawFd, flag: &'static str) -> Result<OwnedFd, FdError> {
    let err = |problem| FdError { flag, fd, problem };
    let flags = open_and_not_standard(fd).map_err(err)?;
    // SAFETY: F_SETFL and F_SETFD take integers.
    let ok = unsafe {
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
            && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) >= 0
    };
    if !ok {
        return Err(err(FdProblem::Io(io::Error::last_os_error())));
    }
    // SAFETY: `fd` is open (checked above), not a standard descriptor, and
    // owned by nothing else in this process (see the doc comment).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn pair(ty: libc::c_int) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let rc = unsafe {
            libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        assert_eq!(rc, 0);
        // SAFETY: both are new and ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn frame_sockets_are_told_from_everything_else() {
        let (a, _b) = pair(libc::SOCK_DGRAM);
        assert_eq!(
            check_frame_socket(a.as_raw_fd()).unwrap(),
            FrameSocket::Datagram
        );
        let (a, _b) = pair(libc::SOCK_SEQPACKET);
        assert_eq!(
            check_frame_socket(a.as_raw_fd()).unwrap(),
            FrameSocket::SeqPacket
        );
        let (a, _b) = pair(libc::SOCK_STREAM);
        let e = check_frame_socket(a.as_raw_fd()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "--net fd:{0}: descriptor {0} is a stream socket",
                a.as_raw_fd()
            )),
            "{e}"
        );
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = check_frame_socket(file.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a regular file, not a socket"), "{e}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check_frame_socket(udp.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("is an AF_INET socket, not AF_UNIX"), "{e}");
        // A number that was open a moment ago, far above what the other
        // tests of this process open meanwhile.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // SAFETY: F_DUPFD takes an integer; the copy is ours.
        let closed = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 900) };
        assert!(closed >= 900);
        // SAFETY: `closed` is ours and closed exactly once.
        unsafe { libc::close(closed) };
        let e = check_frame_socket(closed).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("--net fd:{closed}: descriptor {closed} is not open")
        );
        assert!(check_frame_socket(-1)
            .unwrap_err()
            .to_string()
            .contains("is not open"));
        assert!(matches!(
            check_frame_socket(1).map_err(|e| e.problem),
            Err(FdProblem::Standard) | Err(FdProblem::NotOpen)
        ));
    }

    #[test]
    fn ready_fds_must_be_writable() {
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for two descriptors.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
            assert_eq!(rc, 0);
            // SAFETY: both are new and ours.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        check_ready(w.as_raw_fd()).unwrap();
        let e = check_ready(r.as_raw_fd()).unwrap_err().to_string();
        assert!(e.starts_with("--ready-fd "), "{e}");
        assert!(e.contains("open for reading only"), "{e}");
        let (a, _b) = pair(libc::SOCK_STREAM);
        check_ready(a.as_raw_fd()).unwrap();
    }

    #[test]
    fn claimed_descriptors_are_nonblocking_and_close_on_exec() {
        let (a, _b) = pair(libc::SOCK_DGRAM);
        let raw = a.into_raw_fd();
        // SAFETY: F_SETFD takes an integer; clear CLOEXEC as an inherited fd has it.
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        let owned = claim(raw, NET_FLAG).unwrap();
        // SAFETY: F_GETFL/F_GETFD take no pointer.
        let (fl, fd_flags) = unsafe {
            (
                libc::fcntl(owned.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(owned.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    }
}
