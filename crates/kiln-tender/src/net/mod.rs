//! Network devices: backends on the host side of NET_READ, NET_WRITE and
//! POLL.
//!
//! * [`config`]: the `kiln run` flags and how they map onto the image's
//!   declared devices (pure).
//! * [`stream`]: length-prefixed frames on a byte stream (pure).
//! * `device`: one device on the hypercall path, allocation-free, its I/O
//!   edge injected as a `Port`.
//! * `passt` (user mode, `-p`), `tap` (`--net tap:NAME`) and an inherited
//!   frame socket (`--net fd:N`, see [`crate::inherit`]): the backends'
//!   set-up; `arp`: passt's start-up probe (pure); `sys`: raw calls.
//!
//! Every device has MTU [`config::MTU`] and a locally administered MAC
//! drawn at random for each instance. What the hypercall path needs from a
//! sandbox: `read` and `write` on [`crate::Host::net_fds`], `ppoll` (POLL
//! with network devices), and `clock_gettime`.

pub mod config;
pub mod stream;

mod arp;
mod device;
mod passt;
mod sys;
mod tap;

pub use config::{
    plan, Attach, Backend, DevicePlan, Ipv4Cidr, NetOptions, PlanError, Proto, Publish,
    SyntaxError, MTU,
};
pub use device::{
    Down, FdPort, Framing, NetDevice, Port, Sent, SocketPort, Stats, STREAM_READ_BUF,
    STREAM_WRITE_BUF,
};

use crate::inherit::{self, FdError, FrameSocket};
use std::net::Ipv4Addr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

/// Why a network backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// passt is not installed.
    #[error("user-mode networking needs passt, and '{}' was not found: install it (Debian/Ubuntu: apt install passt), set KILN_PASST to its path, or use --net tap:NAME or --net none", .0.display())]
    PasstMissing(PathBuf),
    /// passt could not be started.
    #[error("cannot start passt ({})", program.display())]
    PasstSpawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// passt ended while starting.
    #[error("passt exited before the network came up ({status}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    PasstFailed {
        /// Its exit status.
        status: String,
        /// What it said.
        message: String,
    },
    /// passt did not answer in time.
    #[error("passt did not come up within {0} s")]
    PasstTimeout(u64),
    /// passt sent something that is not a frame stream.
    #[error("passt sent garbage while starting")]
    PasstGarbage(#[source] stream::StreamError),
    /// A published port cannot be bound.
    #[error("cannot publish {proto} port {addr}:{port}: {}", port_problem(error))]
    Port {
        /// Host address.
        addr: Ipv4Addr,
        /// Host port.
        port: u16,
        /// Protocol.
        proto: Proto,
        /// What bind(2) said.
        error: std::io::Error,
    },
    /// `--net fd:N` names no usable frame socket.
    #[error(transparent)]
    Fd(#[from] FdError),
    /// A socket or pipe for a backend could not be made.
    #[error("cannot set up the backend's socket")]
    Socket(#[source] std::io::Error),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun (needed by --net tap:NAME)")]
    TunOpen(#[source] std::io::Error),
    /// The tap does not exist and cannot be created.
    #[error("tap device '{0}' does not exist, and creating it needs root (CAP_NET_ADMIN); create it first: ip tuntap add dev {0} mode tap user $(id -un)")]
    TapMissing(String),
    /// The tap belongs to someone else.
    #[error("not allowed to attach to tap device '{0}' (it belongs to another user; recreate it with: ip tuntap add dev {0} mode tap user $(id -un))")]
    TapDenied(String),
    /// The tap is attached to another process.
    #[error("tap device '{0}' is in use by another process")]
    TapBusy(String),
    /// The name is taken by another kind of interface.
    #[error("'{0}' exists and is not a tap device")]
    NotATap(String),
    /// Another TUNSETIFF failure.
    #[error("cannot attach to tap device '{name}'")]
    TapSetup {
        /// The tap.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tap kiln created cannot be brought up.
    #[error("cannot bring up tap device '{name}'")]
    LinkUp {
        /// The tap.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn port_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "the port is already in use".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        std::io::ErrorKind::AddrNotAvailable => "no such local address".into(),
        _ => e.to_string(),
    }
}

/// `ppoll` on backend descriptors (for [`crate::Host`]'s POLL).
pub(crate) fn poll_fds(
    fds: &mut [libc::pollfd],
    timeout_ns: Option<u64>,
) -> std::io::Result<usize> {
    sys::ppoll(fds, timeout_ns)
}

/// One nonblocking `write(2)` (for the READY byte).
pub(crate) fn write_once(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    sys::write(fd, buf)
}

/// Ignores SIGPIPE, so that a write to a peer that is gone fails with
/// EPIPE instead of ending the process.
pub(crate) fn ignore_sigpipe() -> std::io::Result<()> {
    sys::ignore_sigpipe()
}

/// The inherited socket of a `--net fd:N` device, claimed before any
/// backend is set up (so that no helper process inherits it).
#[derive(Debug)]
pub(crate) struct InheritedSocket {
    fd: OwnedFd,
    kind: FrameSocket,
}

/// Checks and claims the socket `plan` names, if it is `--net fd:N`.
pub(crate) fn claim_socket(plan: &DevicePlan) -> Result<Option<InheritedSocket>, NetError> {
    let Backend::Fd(n) = plan.backend else {
        return Ok(None);
    };
    let kind = inherit::check_frame_socket(n)?;
    let fd = inherit::claim(n, inherit::NET_FLAG)?;
    Ok(Some(InheritedSocket { fd, kind }))
}

/// What keeps a backend alive besides its descriptor.
#[derive(Debug)]
pub(crate) enum Keep {
    /// Nothing.
    Nothing,
    /// The passt process.
    Passt(#[allow(dead_code)] passt::Passt),
}

/// Draws a locally administered, unicast MAC for device `index`:
/// 02:6b ("k"), then 29 random bits and the device index in the low 3
/// bits, so the devices of one instance never collide.
pub(crate) fn random_mac(index: usize) -> [u8; 6] {
    let mut r = [0u8; 4];
    if sys::random(&mut r).is_err() {
        // No entropy yet (very early boot): process id and time differ
        // between instances on one host.
        let t = crate::sys::clock_ns(libc::CLOCK_REALTIME);
        r = ((t as u32) ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    let mut mac = [
        0x02,
        0x6b,
        r[0],
        r[1],
        r[2],
        (r[3] & !7) | (index as u8 & 7),
    ];
    if mac == passt::PASST_MAC {
        mac[2] ^= 0x80;
    }
    mac
}

/// Attaches the device planned by `plan`, named `name`, with `mac`.
pub(crate) fn attach(
    plan: &DevicePlan,
    name: [u8; kiln_abi::DEVICE_NAME_LEN],
    mac: [u8; 6],
    verbose: bool,
    inherited: Option<InheritedSocket>,
) -> Result<(NetDevice, Keep), NetError> {
    let frame_max = device::frame_max(MTU);
    let shown = String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_string();
    let say = |what: String| {
        if verbose {
            eprintln!("kiln: net {shown}: {what}");
        }
    };
    let addressing = || {
        if plan.config.flags & kiln_abi::net_flags::DHCP4 != 0 {
            "address by DHCP".to_string()
        } else {
            format!(
                "guest {}/{}",
                Ipv4Addr::from(plan.config.ipv4),
                plan.config.ipv4_prefix
            )
        }
    };
    let mac_shown = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    match &plan.backend {
        Backend::User => {
            let (fd, passt): (OwnedFd, passt::Passt) = passt::start(plan, mac)?;
            let c = &plan.config;
            say(format!(
                "user mode (passt pid {}), guest {}/{} gateway {}, mac {mac_shown}{}",
                passt.pid(),
                Ipv4Addr::from(c.ipv4),
                c.ipv4_prefix,
                Ipv4Addr::from(c.ipv4_gateway),
                plan.publish
                    .iter()
                    .map(|p| format!(
                        ", {}{}->{}/{}",
                        p.host_addr.map(|a| format!("{a}:")).unwrap_or_default(),
                        p.host_port,
                        p.guest_port,
                        p.proto
                    ))
                    .collect::<String>()
            ));
            Ok((
                NetDevice::new(
                    name,
                    Some(Box::new(device::FdPort(fd))),
                    Framing::stream(frame_max),
                    frame_max,
                ),
                Keep::Passt(passt),
            ))
        }
        Backend::Tap(ifname) => {
            let t = tap::open(ifname)?;
            say(format!(
                "tap {ifname}{}, mac {mac_shown}, {}",
                if t.created {
                    " (created; it goes away with the instance)"
                } else {
                    ""
                },
                addressing()
            ));
            Ok((
                NetDevice::new(
                    name,
                    Some(Box::new(device::FdPort(t.fd))),
                    Framing::datagram(),
                    frame_max,
                ),
                Keep::Nothing,
            ))
        }
        Backend::Fd(n) => {
            let Some(InheritedSocket { fd, kind }) = inherited else {
                // `claim_socket` was not called for this plan: a bug, but
                // no reason to guess at the descriptor.
                return Err(NetError::Fd(FdError {
                    flag: inherit::NET_FLAG,
                    fd: *n,
                    problem: inherit::FdProblem::NotOpen,
                }));
            };
            say(format!(
                "descriptor {n} ({kind}), mac {mac_shown}, {}",
                addressing()
            ));
            Ok((
                NetDevice::new(
                    name,
                    Some(Box::new(SocketPort::new(fd, kind))),
                    Framing::datagram(),
                    frame_max,
                ),
                Keep::Nothing,
            ))
        }
        Backend::None => {
            say(format!("not connected (--net none), mac {mac_shown}"));
            Ok((
                NetDevice::new(name, None, Framing::datagram(), frame_max),
                Keep::Nothing,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_distinct_per_device() {
        let macs: Vec<[u8; 6]> = (0..8).map(random_mac).collect();
        for (i, m) in macs.iter().enumerate() {
            assert_eq!(m[0] & 0b11, 0b10, "locally administered unicast");
            assert_eq!(m[5] & 7, i as u8);
            assert_ne!(*m, passt::PASST_MAC);
            for n in &macs[..i] {
                assert_ne!(m, n);
            }
        }
    }
}
