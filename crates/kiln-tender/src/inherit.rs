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
//!
//! The numbers come from whoever started `kiln run`, and what they name is
//! whatever that process left open: both are untrusted. The decisions are
//! made on the kernel's answers alone (`F_GETFL`, `fstat`'s file type,
//! `SO_DOMAIN`, `SO_TYPE`), asked through [`Inspect`], so that the same
//! code runs on [`Kernel`] in production and on made-up answers in tests
//! and in the `inherit` fuzz target. [`check_inherited`] is the whole
//! check of `kiln run`'s flags.

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

/// What the checks ask the kernel about a descriptor.
pub trait Inspect {
    /// `fcntl(fd, F_GETFL)`: the file status flags.
    fn status_flags(&self, fd: RawFd) -> io::Result<libc::c_int>;
    /// `fstat(fd)`: the file type and mode (`st_mode`).
    fn mode(&self, fd: RawFd) -> io::Result<libc::mode_t>;
    /// `getsockopt(fd, SOL_SOCKET, opt)` for an integer option.
    fn sockopt(&self, fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int>;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Inspect for Kernel {
    fn status_flags(&self, fd: RawFd) -> io::Result<libc::c_int> {
        // SAFETY: F_GETFL takes no pointer; any number is safe to ask about.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(flags)
    }

    fn mode(&self, fd: RawFd) -> io::Result<libc::mode_t> {
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat buffer.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.st_mode)
    }

    fn sockopt(&self, fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
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
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }
}

/// The file status flags of an open descriptor above the standard ones:
/// `NotOpen` for a negative number or EBADF.
fn open_and_not_standard(k: &impl Inspect, fd: RawFd) -> Result<libc::c_int, FdProblem> {
    if fd < 0 {
        return Err(FdProblem::NotOpen);
    }
    let flags = k.status_flags(fd).map_err(|e| match e.raw_os_error() {
        Some(libc::EBADF) => FdProblem::NotOpen,
        _ => FdProblem::Io(e),
    })?;
    if (0..=2).contains(&fd) {
        return Err(FdProblem::Standard);
    }
    Ok(flags)
}

fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFSOCK => "a socket",
        libc::S_IFREG => "a regular file",
        libc::S_IFIFO => "a pipe",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        // An eventfd, epoll or other anonymous inode has no type bits.
        _ => "a file of another kind (no socket, file, pipe or device)",
    }
}

/// Checks, with the kernel's answers from `k`, that `fd` is an open
/// `AF_UNIX` socket of type `SOCK_DGRAM` or `SOCK_SEQPACKET` (above the
/// standard descriptors).
pub fn classify_frame_socket(k: &impl Inspect, fd: RawFd) -> Result<FrameSocket, FdError> {
    let err = |problem| FdError {
        flag: NET_FLAG,
        fd,
        problem,
    };
    open_and_not_standard(k, fd).map_err(err)?;
    let mode = k.mode(fd).map_err(|e| err(FdProblem::Io(e)))?;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err(FdProblem::NotSocket(file_kind(mode))));
    }
    let sockopt = |opt| k.sockopt(fd, opt).map_err(|e| err(FdProblem::Io(e)));
    let family = sockopt(libc::SO_DOMAIN)?;
    if family != libc::AF_UNIX {
        return Err(err(FdProblem::NotUnix(family)));
    }
    match sockopt(libc::SO_TYPE)? {
        libc::SOCK_DGRAM => Ok(FrameSocket::Datagram),
        libc::SOCK_SEQPACKET => Ok(FrameSocket::SeqPacket),
        libc::SOCK_STREAM => Err(err(FdProblem::Stream)),
        other => Err(err(FdProblem::SocketType(other))),
    }
}

/// Checks, with the kernel's answers from `k`, that `fd` is open for
/// writing (above the standard descriptors).
pub fn classify_ready(k: &impl Inspect, fd: RawFd) -> Result<(), FdError> {
    let err = |problem| FdError {
        flag: READY_FLAG,
        fd,
        problem,
    };
    let flags = open_and_not_standard(k, fd).map_err(err)?;
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(err(FdProblem::ReadOnly));
    }
    Ok(())
}

/// Checks that `fd` is an open `AF_UNIX` socket of type `SOCK_DGRAM` or
/// `SOCK_SEQPACKET` (above the standard descriptors).
pub fn check_frame_socket(fd: RawFd) -> Result<FrameSocket, FdError> {
    classify_frame_socket(&Kernel, fd)
}

/// Checks that `fd` is open for writing (above the standard descriptors).
pub fn check_ready(fd: RawFd) -> Result<(), FdError> {
    classify_ready(&Kernel, fd)
}

/// Why the descriptors `kiln run`'s flags name cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// One of them is not what its flag says.
    #[error(transparent)]
    Fd(#[from] FdError),
    /// One descriptor for two purposes.
    #[error("descriptor {0} is given both as --ready-fd {0} and as --net fd:{0}")]
    Shared(RawFd),
}

/// The check `kiln run` makes before it opens anything: every `--net fd:N`
/// (`net`, in the order given) is a frame socket, and `--ready-fd`
/// (`ready`) is writable and not one of them.
pub fn check_inherited(
    k: &impl Inspect,
    net: &[RawFd],
    ready: Option<RawFd>,
) -> Result<(), InheritError> {
    for &fd in net {
        classify_frame_socket(k, fd)?;
    }
    if let Some(fd) = ready {
        if net.contains(&fd) {
            return Err(InheritError::Shared(fd));
        }
        classify_ready(k, fd)?;
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
    let flags = open_and_not_standard(&Kernel, fd).map_err(err)?;
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
    fn a_descriptor_of_no_file_type_is_named_sensibly() {
        // An eventfd (an anonymous inode) has no file type bits at all;
        // the message used to read "is not a socket, not a socket".
        // SAFETY: eventfd takes no pointer; the new descriptor is ours.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: `raw` is new and owned by nothing else.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let e = check_frame_socket(efd.as_raw_fd()).unwrap_err().to_string();
        assert!(
            e.contains("is a file of another kind (no socket, file, pipe or device), not a socket"),
            "{e}"
        );
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
