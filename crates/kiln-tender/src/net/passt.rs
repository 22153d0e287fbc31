//! The user-mode backend: a private passt process on one end of a UNIX
//! stream socket pair, frames length-prefixed on the stream.
//!
//! passt (the Debian package of 2023) is started in the foreground and
//! quiet, with the guest's addresses given explicitly and `--interface lo`
//! with an explicit MAC, so that it needs no default route or external
//! interface: it works on a host that has only loopback. That also makes
//! it IPv4-only. Published ports are bound by passt on the host; kiln
//! first binds each one itself for a moment, since passt may settle for
//! binding only IPv6 when the IPv4 port is taken, which would leave the
//! port silently unpublished.
//!
//! passt ends when its socket closes (`--fd` implies one-off), which
//! happens when the instance's process ends in any way: no passt outlives
//! its instance. Start-up is confirmed by an ARP request for the gateway:
//! passt reads its socket only after binding every published port, so its
//! answer means the ports are open. Its stderr goes to a pipe that kiln
//! reads while it starts (to explain a failure); later messages are
//! dropped (the pipe is nonblocking and never read again).

use super::config::{DevicePlan, Proto, Publish};
use super::stream::{Decoder, HEADER};
use super::{arp, sys, NetError};
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The MAC passt uses toward the guest (locally administered).
pub const PASST_MAC: [u8; 6] = [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x01];

/// How long passt may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The passt binary: `$KILN_PASST`, else `passt` on the PATH.
pub fn program() -> PathBuf {
    std::env::var_os("KILN_PASST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("passt"))
}

/// A running passt. Dropping it (only when the instance never started)
/// ends it.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    /// The read end of passt's stderr, kept open so that its writes never
    /// fail with EPIPE.
    _stderr: OwnedFd,
}

impl Passt {
    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// passt's port specification for one forward.
fn port_spec(p: &Publish) -> String {
    match p.host_addr {
        Some(addr) => format!("{addr}/{}:{}", p.host_port, p.guest_port),
        None => format!("{}:{}", p.host_port, p.guest_port),
    }
}

/// The arguments after `--fd N`.
pub fn arguments(plan: &DevicePlan, as_root: bool) -> Vec<String> {
    let c = &plan.config;
    let mut args: Vec<String> = vec![
        "--address".into(),
        Ipv4Addr::from(c.ipv4).to_string(),
        "--netmask".into(),
        c.ipv4_prefix.to_string(),
        "--gateway".into(),
        Ipv4Addr::from(c.ipv4_gateway).to_string(),
        "--interface".into(),
        "lo".into(),
        "--mac-addr".into(),
        mac_text(PASST_MAC),
        "--mtu".into(),
        super::config::MTU.to_string(),
        "--ipv4-only".into(),
    ];
    if as_root {
        // passt would drop to nobody anyway, but says so on stderr.
        args.extend(["--runas".into(), "nobody".into()]);
    }
    for (flag, proto) in [("--tcp-ports", Proto::Tcp), ("--udp-ports", Proto::Udp)] {
        let specs: Vec<String> = plan
            .publish
            .iter()
            .filter(|p| p.proto == proto)
            .map(port_spec)
            .collect();
        // Explicitly none: passt otherwise forwards UDP for TCP ports.
        if specs.is_empty() {
            args.extend([flag.into(), "none".into()]);
        }
        for s in specs {
            args.extend([flag.into(), s]);
        }
    }
    args
}

/// Checks that every published port can be bound now.
fn check_ports(publish: &[Publish]) -> Result<(), NetError> {
    for p in publish {
        let addr = p.host_addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let bound = match p.proto {
            Proto::Tcp => TcpListener::bind((addr, p.host_port)).map(drop),
            Proto::Udp => UdpSocket::bind((addr, p.host_port)).map(drop),
        };
        if let Err(error) = bound {
            return Err(NetError::Port {
                addr,
                port: p.host_port,
                proto: p.proto,
                error,
            });
        }
    }
    Ok(())
}

/// What passt said on stderr, without its complaints about syslog.
fn stderr_text(fd: &OwnedFd) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while bytes.len() < 64 * 1024 {
        match sys::read(fd.as_raw_fd(), &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !(l.starts_with("Failed to send ") && l.ends_with(" to syslog")))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Starts passt for the user-mode device `plan` whose guest uses `mac`.
/// Returns the (nonblocking) socket toward passt and the process.
pub fn start(plan: &DevicePlan, mac: [u8; 6]) -> Result<(OwnedFd, Passt), NetError> {
    check_ports(&plan.publish)?;
    let (ours, theirs) = sys::stream_pair().map_err(NetError::Socket)?;
    let (err_r, err_w) = sys::pipe().map_err(NetError::Socket)?;
    sys::set_nonblocking(err_r.as_raw_fd(), true).map_err(NetError::Socket)?;
    // Shared with passt: its writes to a full pipe fail instead of
    // blocking it.
    sys::set_nonblocking(err_w.as_raw_fd(), true).map_err(NetError::Socket)?;
    // Writing to the socket after passt is gone must fail, not kill us.
    sys::ignore_sigpipe().map_err(NetError::Socket)?;

    let program = program();
    // SAFETY: geteuid takes no arguments and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&program);
    cmd.args(["--foreground", "--quiet", "--fd", &theirs_fd.to_string()])
        .args(arguments(plan, as_root))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err_w));
    // SAFETY: the closure runs in the child between fork and exec and
    // makes only async-signal-safe calls (fcntl, prctl), on a descriptor
    // that is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            sys::inherit(theirs_fd)?;
            // Belt and braces: passt also ends when the socket closes.
            sys::parent_death_signal(libc::SIGTERM)
        });
    }
    let child = cmd.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetError::PasstMissing(program.clone())
        } else {
            NetError::PasstSpawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    drop(theirs);
    drop(cmd);
    let mut passt = Passt {
        child,
        _stderr: err_r,
    };
    wait_ready(&ours, &mut passt, plan, mac)?;
    sys::set_nonblocking(ours.as_raw_fd(), true).map_err(NetError::Socket)?;
    Ok((ours, passt))
}

/// Sends the ARP probe and waits for passt's answer.
fn wait_ready(
    ours: &OwnedFd,
    passt: &mut Passt,
    plan: &DevicePlan,
    mac: [u8; 6],
) -> Result<(), NetError> {
    let ip = Ipv4Addr::from(plan.config.ipv4);
    let gateway = Ipv4Addr::from(plan.config.ipv4_gateway);
    let probe = arp::request(mac, ip, gateway);
    let mut framed = [0u8; HEADER + arp::LEN];
    framed[..HEADER].copy_from_slice(&(arp::LEN as u32).to_be_bytes());
    framed[HEADER..].copy_from_slice(&probe);
    let fd = ours.as_raw_fd();
    let mut written = 0;
    while written < framed.len() {
        match sys::write(fd, &framed[written..]) {
            Ok(n) => written += n,
            Err(_) => return Err(failed(passt)),
        }
    }
    let mut rx = Decoder::new(super::device::frame_max(super::config::MTU), 4096);
    let started = Instant::now();
    loop {
        let left = START_TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() {
            let _ = passt.child.kill();
            return Err(NetError::PasstTimeout(START_TIMEOUT.as_secs()));
        }
        let mut pfd = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        sys::ppoll(&mut pfd, Some(left.as_nanos() as u64)).map_err(NetError::Socket)?;
        if pfd[0].revents == 0 {
            continue;
        }
        match sys::read(fd, rx.space()) {
            Ok(0) | Err(_) => return Err(failed(passt)),
            Ok(n) => rx.filled(n),
        }
        loop {
            match rx.next_frame() {
                Ok(Some(frame)) if arp::is_reply(frame, mac, gateway) => return Ok(()),
                // Anything else before the answer is of no use.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let _ = passt.child.kill();
                    return Err(NetError::PasstGarbage(e));
                }
            }
        }
    }
}

/// The error for a passt that closed its socket while starting.
fn failed(passt: &mut Passt) -> NetError {
    // It closed the socket, so it is exiting; give it a moment.
    let started = Instant::now();
    let status = loop {
        match passt.child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if started.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {
                let _ = passt.child.kill();
                break "killed: it closed its socket but did not exit".to_string();
            }
        }
    };
    NetError::PasstFailed {
        status,
        message: stderr_text(&passt._stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::config::{plan, NetOptions};

    #[test]
    fn arguments_name_addresses_and_ports() {
        let opts = NetOptions {
            publish: ["8080:80", "127.0.0.1:8443:443", "5353:53/udp"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            ..NetOptions::default()
        };
        let p = &plan(&[(0, "service0")], &opts).unwrap()[0];
        let args = arguments(p, false).join(" ");
        assert!(
            args.starts_with("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2 --interface lo --mac-addr 02:6b:69:6c:6e:01 --mtu 1500 --ipv4-only"),
            "{args}"
        );
        assert!(
            args.contains("--tcp-ports 8080:80 --tcp-ports 127.0.0.1/8443:443"),
            "{args}"
        );
        assert!(args.ends_with("--udp-ports 5353:53"), "{args}");
        assert!(!args.contains("--runas"));
        let p = &plan(&[(0, "service0")], &NetOptions::default()).unwrap()[0];
        let args = arguments(p, true).join(" ");
        assert!(args.contains("--runas nobody"));
        assert!(
            args.ends_with("--tcp-ports none --udp-ports none"),
            "{args}"
        );
    }

    #[test]
    fn a_port_in_use_is_refused_before_passt_starts() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let publish = [Publish {
            host_addr: None,
            host_port: port,
            guest_port: 80,
            proto: Proto::Tcp,
        }];
        let e = check_ports(&publish).unwrap_err().to_string();
        assert!(e.contains(&format!("0.0.0.0:{port}")), "{e}");
        assert!(e.contains("in use"), "{e}");
        drop(held);
        check_ports(&publish).unwrap();
    }

    #[test]
    fn syslog_complaints_are_filtered_from_passt_messages() {
        let (r, w) = sys::pipe().unwrap();
        sys::set_nonblocking(r.as_raw_fd(), true).unwrap();
        sys::write(
            w.as_raw_fd(),
            b"Failed to send 57 bytes to syslog\nFailed to bind any port for '-t 1:2', exiting\n",
        )
        .unwrap();
        drop(w);
        assert_eq!(
            stderr_text(&r),
            "Failed to bind any port for '-t 1:2', exiting"
        );
    }
}
