//! What `kiln run` asks of an instance's network: the flags as parsed
//! values ([`NetOptions`]) and how they map onto the network devices the
//! image declares ([`plan`]). Pure: nothing here touches the host.

use kiln_abi::{net_flags, NetConfig};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// MTU of every network device.
pub const MTU: u32 = 1500;

/// Guest address in user mode unless `--ip` says otherwise.
pub const USER_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Prefix length of [`USER_GUEST`].
pub const USER_PREFIX: u8 = 24;
/// Gateway in user mode (passt answers there; connections from the host's
/// loopback appear to come from it).
pub const USER_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// How a network device reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// User-mode networking through passt: outbound connections are made
    /// by passt on the guest's behalf; `-p` publishes guest ports.
    User,
    /// An existing tap device (or one created for the instance, as root).
    Tap(String),
    /// An inherited descriptor (`--net fd:N`): an `AF_UNIX` socket of type
    /// `SOCK_DGRAM` or `SOCK_SEQPACKET` whose peer (the process that
    /// started kiln, such as kilnd) exchanges exactly one Ethernet frame
    /// per message, as a tap does.
    Fd(std::os::fd::RawFd),
    /// No backend: the device exists but nothing is connected to it.
    None,
}

/// `--net [DEVICE=]BACKEND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The manifest name; `None` means the image's only network device.
    pub device: Option<String>,
    /// The backend.
    pub backend: Backend,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `-p [ADDR:]HOST:GUEST[/tcp|/udp]`: a host port forwarded to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Host address to bind; `None` binds every IPv4 address.
    pub host_addr: Option<Ipv4Addr>,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
    /// Protocol.
    pub proto: Proto,
}

/// An IPv4 address with its prefix length: `--ip 10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Whether `other` lies in this address's subnet.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The network flags of `kiln run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// `--net`, in order.
    pub attach: Vec<Attach>,
    /// `-p`, in order.
    pub publish: Vec<Publish>,
    /// `--ip`.
    pub ip: Option<Ipv4Cidr>,
    /// `--gateway`.
    pub gateway: Option<Ipv4Addr>,
}

impl NetOptions {
    /// Whether any network flag was given.
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty()
            && self.publish.is_empty()
            && self.ip.is_none()
            && self.gateway.is_none()
    }
}

/// A flag that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(String);

fn syntax(msg: String) -> SyntaxError {
    SyntaxError(msg)
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

fn check_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= kiln_abi::DEVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `name` is a valid Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl FromStr for Backend {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        match s {
            "user" => Ok(Backend::User),
            "none" => Ok(Backend::None),
            _ if s.starts_with("fd:") => {
                let n = &s[3..];
                match n.parse::<std::os::fd::RawFd>() {
                    Ok(fd) if fd >= 0 && n.bytes().all(|b| b.is_ascii_digit()) => {
                        Ok(Backend::Fd(fd))
                    }
                    _ => Err(syntax(format!(
                        "'{n}' is not a descriptor number (fd:N takes a decimal number, 0 to {})",
                        std::os::fd::RawFd::MAX
                    ))),
                }
            }
            _ => match s.strip_prefix("tap:") {
                Some(name) if valid_ifname(name) => Ok(Backend::Tap(name.to_string())),
                Some(name) => Err(syntax(format!(
                    "'{name}' is not a valid interface name (1 to {IFNAME_MAX} printable characters, no '/' or ':')"
                ))),
                None => Err(syntax(format!(
                    "'{s}' is not a network backend (expected user, tap:NAME, fd:N or none)"
                ))),
            },
        }
    }
}

impl FromStr for Attach {
    type Err = SyntaxError;
    /// `BACKEND` or `DEVICE=BACKEND`.
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        match s.split_once('=') {
            Some((device, backend)) => {
                if !check_device_name(device) {
                    return Err(syntax(format!(
                        "'{device}' is not a device name (1 to 16 of a-z, 0-9, '_', '-')"
                    )));
                }
                Ok(Attach {
                    device: Some(device.to_string()),
                    backend: backend.parse()?,
                })
            }
            None => Ok(Attach {
                device: None,
                backend: s.parse()?,
            }),
        }
    }
}

fn port(s: &str, what: &str, whole: &str) -> Result<u16, SyntaxError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(syntax(format!(
            "'{whole}': {what} port '{s}' is not a port number (1-65535)"
        ))),
    }
}

impl FromStr for Publish {
    type Err = SyntaxError;
    /// `HOST:GUEST`, `ADDR:HOST:GUEST`, each optionally followed by `/tcp`
    /// or `/udp`.
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => {
                return Err(syntax(format!(
                    "'{s}': unknown protocol '{other}' (expected tcp or udp)"
                )))
            }
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_addr, host, guest) = match parts[..] {
            [host, guest] => (None, host, guest),
            [addr, host, guest] => {
                let addr = addr
                    .parse::<Ipv4Addr>()
                    .map_err(|_| syntax(format!("'{s}': '{addr}' is not an IPv4 address")))?;
                (Some(addr), host, guest)
            }
            _ => {
                return Err(syntax(format!(
                    "'{s}' is not [ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp] (example: 8080:80)"
                )))
            }
        };
        Ok(Publish {
            host_addr,
            host_port: port(host, "host", s)?,
            guest_port: port(guest, "guest", s)?,
            proto,
        })
    }
}

impl FromStr for Ipv4Cidr {
    type Err = SyntaxError;
    /// `ADDR/PREFIX`.
    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        let bad = || syntax(format!("'{s}' is not ADDR/PREFIX (example: 10.0.0.2/24)"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(syntax(format!("'{s}': prefix length {prefix} is above 32")));
        }
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(syntax(format!("'{s}': {addr} cannot be a host address")));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// How one declared network device is to be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Index in the manifest's device table.
    pub index: usize,
    /// The backend.
    pub backend: Backend,
    /// Ports to publish (user mode only).
    pub publish: Vec<Publish>,
    /// The addresses handed to the image in BootInfo.
    pub config: NetConfig,
}

/// Why the network flags do not fit the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Network flags for an image without network devices.
    #[error("{flag} was given, but the image declares no network device")]
    NoNetDevice {
        /// The first network flag given.
        flag: &'static str,
    },
    /// `--net DEVICE=...` names no declared network device.
    #[error("--net {name}=...: the image declares no network device named '{name}' (it declares: {declared})")]
    UnknownDevice {
        /// The name.
        name: String,
        /// The declared network devices.
        declared: String,
    },
    /// `--net BACKEND` without a device name, for an image with several.
    #[error("the image declares several network devices ({declared}): name one, as in --net {first}=BACKEND")]
    Ambiguous {
        /// The declared network devices.
        declared: String,
        /// One of them.
        first: String,
    },
    /// Two backends for one device.
    #[error("network device '{0}' is given two backends")]
    Twice(String),
    /// `-p` without a user-mode device.
    #[error("-p publishes ports through user-mode networking, but no network device uses it (drop --net tap:... or --net fd:..., or use --net user)")]
    PublishWithoutUser,
    /// `-p` with several user-mode devices.
    #[error("-p is ambiguous: several network devices use user-mode networking")]
    PublishAmbiguous,
    /// The same host port twice.
    #[error("host port {port}/{proto} is published twice")]
    PublishTwice {
        /// Port.
        port: u16,
        /// Protocol.
        proto: Proto,
    },
    /// `--ip`/`--gateway` with several network devices.
    #[error("--ip and --gateway apply to an image with one network device; this one declares {0}")]
    AddressAmbiguous(String),
    /// `--gateway` alone.
    #[error("--gateway needs --ip (without --ip the address comes from DHCP)")]
    GatewayWithoutIp,
    /// The gateway is off the subnet.
    #[error("gateway {gateway} is not in the guest's subnet {ip}")]
    GatewayOffLink {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The guest address.
        ip: Ipv4Cidr,
    },
    /// The gateway is the guest itself.
    #[error("gateway {0} is the guest's own address")]
    GatewayIsGuest(Ipv4Addr),
    /// passt needs a gateway address distinct from the guest's, in its subnet.
    #[error("user-mode networking needs a subnet with room for a gateway; {0} has none (use a prefix of 30 or less)")]
    UserSubnetTooSmall(Ipv4Cidr),
    /// A declared device the plan does not cover (a bug in [`plan`]).
    #[error("network device '{0}' was left without a backend")]
    Unplanned(String),
    /// One descriptor for two devices.
    #[error("--net fd:{0} is given for two network devices")]
    FdTwice(std::os::fd::RawFd),
    /// `--ip`/`--gateway` for a device with no backend.
    #[error("--ip and --gateway need a backend (--net none has none)")]
    AddressWithoutBackend,
}

fn ipv4_config(ip: Ipv4Cidr, gateway: Option<Ipv4Addr>) -> NetConfig {
    NetConfig {
        ipv4: ip.addr.octets(),
        ipv4_prefix: ip.prefix,
        ipv4_gateway: gateway.map(|g| g.octets()).unwrap_or_default(),
        ..NetConfig::default()
    }
}

/// A gateway for a user-mode subnet given without one: the subnet's first
/// host address, or its second when that is the guest's.
fn default_gateway(ip: Ipv4Cidr) -> Option<Ipv4Addr> {
    if ip.prefix > 30 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(ip.prefix)).unwrap_or(0);
    let first = (u32::from(ip.addr) & mask) + 1;
    let pick = if first == u32::from(ip.addr) {
        first + 1
    } else {
        first
    };
    Some(Ipv4Addr::from(pick))
}

/// Maps the flags onto the image's network devices, given by manifest
/// index and name. A declared device with no `--net` gets user-mode
/// networking (like a container runtime's default).
pub fn plan(declared: &[(usize, &str)], opts: &NetOptions) -> Result<Vec<DevicePlan>, PlanError> {
    let names = || {
        declared
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if declared.is_empty() {
        let flag = if !opts.attach.is_empty() {
            "--net"
        } else if !opts.publish.is_empty() {
            "-p"
        } else if opts.ip.is_some() {
            "--ip"
        } else if opts.gateway.is_some() {
            "--gateway"
        } else {
            return Ok(Vec::new());
        };
        return Err(PlanError::NoNetDevice { flag });
    }
    let mut backends: Vec<Option<Backend>> = vec![None; declared.len()];
    for a in &opts.attach {
        let slot = match &a.device {
            Some(name) => declared
                .iter()
                .position(|(_, n)| n == name)
                .ok_or_else(|| PlanError::UnknownDevice {
                    name: name.clone(),
                    declared: names(),
                })?,
            None if declared.len() == 1 => 0,
            None => {
                return Err(PlanError::Ambiguous {
                    declared: names(),
                    first: declared[0].1.to_string(),
                })
            }
        };
        if backends[slot].is_some() {
            return Err(PlanError::Twice(declared[slot].1.to_string()));
        }
        backends[slot] = Some(a.backend.clone());
    }
    let backends: Vec<Backend> = backends
        .into_iter()
        .map(|b| b.unwrap_or(Backend::User))
        .collect();

    for (i, p) in opts.publish.iter().enumerate() {
        if opts.publish[..i]
            .iter()
            .any(|q| q.host_port == p.host_port && q.proto == p.proto)
        {
            return Err(PlanError::PublishTwice {
                port: p.host_port,
                proto: p.proto,
            });
        }
    }
    for (i, b) in backends.iter().enumerate() {
        if let Backend::Fd(fd) = b {
            if backends[..i].contains(b) {
                return Err(PlanError::FdTwice(*fd));
            }
        }
    }
    let users = backends.iter().filter(|b| **b == Backend::User).count();
    if !opts.publish.is_empty() && users == 0 {
        return Err(PlanError::PublishWithoutUser);
    }
    if !opts.publish.is_empty() && users > 1 {
        return Err(PlanError::PublishAmbiguous);
    }
    if (opts.ip.is_some() || opts.gateway.is_some()) && declared.len() > 1 {
        return Err(PlanError::AddressAmbiguous(names()));
    }
    if opts.gateway.is_some() && opts.ip.is_none() {
        return Err(PlanError::GatewayWithoutIp);
    }
    if let (Some(ip), Some(gw)) = (opts.ip, opts.gateway) {
        if !ip.contains(gw) {
            return Err(PlanError::GatewayOffLink { gateway: gw, ip });
        }
        if gw == ip.addr {
            return Err(PlanError::GatewayIsGuest(gw));
        }
    }

    let mut plans = Vec::with_capacity(declared.len());
    for (&(index, _), backend) in declared.iter().zip(backends) {
        let (config, publish) = match &backend {
            Backend::User => {
                let ip = opts.ip.unwrap_or(Ipv4Cidr {
                    addr: USER_GUEST,
                    prefix: USER_PREFIX,
                });
                let gateway = match (opts.ip, opts.gateway) {
                    (None, _) => USER_GATEWAY,
                    (Some(_), Some(gw)) => gw,
                    (Some(ip), None) => {
                        default_gateway(ip).ok_or(PlanError::UserSubnetTooSmall(ip))?
                    }
                };
                (ipv4_config(ip, Some(gateway)), opts.publish.clone())
            }
            // Like a tap, an fd peer is a link: static addresses when
            // given, else DHCP (the peer may answer it).
            Backend::Tap(_) | Backend::Fd(_) => match opts.ip {
                Some(ip) => (ipv4_config(ip, opts.gateway), Vec::new()),
                None => (
                    NetConfig {
                        flags: net_flags::DHCP4,
                        ..NetConfig::default()
                    },
                    Vec::new(),
                ),
            },
            Backend::None => {
                if opts.ip.is_some() {
                    return Err(PlanError::AddressWithoutBackend);
                }
                (NetConfig::default(), Vec::new())
            }
        };
        plans.push(DevicePlan {
            index,
            backend,
            publish,
            config,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Publish {
        s.parse().unwrap()
    }

    #[test]
    fn publish_syntax() {
        assert_eq!(
            p("8080:80"),
            Publish {
                host_addr: None,
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(p("5353:53/udp").proto, Proto::Udp);
        assert_eq!(p("5353:53/tcp").proto, Proto::Tcp);
        assert_eq!(p("127.0.0.1:8080:80").host_addr, Some(Ipv4Addr::LOCALHOST));
        for bad in [
            "80",
            "0:80",
            "80:0",
            "x:80",
            "8080:80/sctp",
            "65536:1",
            "1:2:3:4",
            "::1:80:80",
            "",
            "8080:",
            ":80",
            "a.b.c.d:1:2",
        ] {
            let e = bad.parse::<Publish>().unwrap_err().to_string();
            assert!(e.contains(bad) || bad.is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn net_and_ip_syntax() {
        assert_eq!(
            "tap:kiln0".parse::<Attach>().unwrap(),
            Attach {
                device: None,
                backend: Backend::Tap("kiln0".into())
            }
        );
        assert_eq!(
            "service0=user".parse::<Attach>().unwrap().device.as_deref(),
            Some("service0")
        );
        assert_eq!("none".parse::<Backend>().unwrap(), Backend::None);
        assert_eq!("fd:7".parse::<Backend>().unwrap(), Backend::Fd(7));
        assert_eq!("fd:0".parse::<Backend>().unwrap(), Backend::Fd(0));
        assert_eq!(
            "service0=fd:12".parse::<Attach>().unwrap(),
            Attach {
                device: Some("service0".into()),
                backend: Backend::Fd(12)
            }
        );
        for bad in [
            "fd:",
            "fd:-1",
            "fd:+3",
            "fd:x",
            "fd:3x",
            "fd: 3",
            "fd:2147483648",
        ] {
            let e = bad.parse::<Backend>().unwrap_err().to_string();
            assert!(e.contains("not a descriptor number"), "{bad}: {e}");
        }
        assert!("fd".parse::<Backend>().unwrap_err().0.contains("fd:N"));
        for bad in [
            "tap:",
            "tap:a/b",
            "tap:0123456789abcdef",
            "bridge",
            "UPPER=user",
            "=user",
        ] {
            assert!(bad.parse::<Attach>().is_err(), "{bad}");
        }
        let c: Ipv4Cidr = "10.0.0.2/24".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 1, 1)));
        assert!("0.0.0.0/0"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .0
            .contains("host address"));
        let all: Ipv4Cidr = "10.0.0.2/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in ["10.0.0.2", "10.0.0.2/33", "10.0.0/24", "/24", "10.0.0.2/x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    fn opts(attach: &[&str], publish: &[&str], ip: Option<&str>, gw: Option<&str>) -> NetOptions {
        NetOptions {
            attach: attach.iter().map(|a| a.parse().unwrap()).collect(),
            publish: publish.iter().map(|s| s.parse().unwrap()).collect(),
            ip: ip.map(|s| s.parse().unwrap()),
            gateway: gw.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn user_mode_is_the_default_with_static_addresses() {
        let plans = plan(&[(1, "service0")], &NetOptions::default()).unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].index, 1);
        assert_eq!(plans[0].backend, Backend::User);
        assert_eq!(plans[0].config.ipv4, [10, 0, 2, 15]);
        assert_eq!(plans[0].config.ipv4_prefix, 24);
        assert_eq!(plans[0].config.ipv4_gateway, [10, 0, 2, 2]);
        assert_eq!(plans[0].config.flags, 0);

        let plans = plan(
            &[(0, "s")],
            &opts(&[], &["8080:80"], Some("192.168.7.9/24"), None),
        )
        .unwrap();
        assert_eq!(plans[0].publish, vec![p("8080:80")]);
        assert_eq!(plans[0].config.ipv4_gateway, [192, 168, 7, 1]);
        let plans = plan(&[(0, "s")], &opts(&[], &[], Some("192.168.7.1/30"), None)).unwrap();
        assert_eq!(plans[0].config.ipv4_gateway, [192, 168, 7, 2]);
        assert_eq!(
            plan(&[(0, "s")], &opts(&[], &[], Some("192.168.7.1/31"), None)),
            Err(PlanError::UserSubnetTooSmall(
                "192.168.7.1/31".parse().unwrap()
            ))
        );
    }

    #[test]
    fn tap_uses_dhcp_unless_given_an_address() {
        let plans = plan(&[(0, "s")], &opts(&["tap:kiln0"], &[], None, None)).unwrap();
        assert_eq!(plans[0].backend, Backend::Tap("kiln0".into()));
        assert_eq!(plans[0].config.flags, net_flags::DHCP4);
        let plans = plan(
            &[(0, "s")],
            &opts(&["tap:kiln0"], &[], Some("10.1.0.2/16"), Some("10.1.0.1")),
        )
        .unwrap();
        assert_eq!(plans[0].config.flags, 0);
        assert_eq!(plans[0].config.ipv4, [10, 1, 0, 2]);
        assert_eq!(plans[0].config.ipv4_prefix, 16);
        assert_eq!(plans[0].config.ipv4_gateway, [10, 1, 0, 1]);
        let plans = plan(
            &[(0, "s")],
            &opts(&["tap:kiln0"], &[], Some("10.1.0.2/16"), None),
        )
        .unwrap();
        assert_eq!(plans[0].config.ipv4_gateway, [0; 4]);
    }

    #[test]
    fn fd_backends_address_like_a_tap_and_are_not_shared() {
        let plans = plan(&[(0, "s")], &opts(&["fd:4"], &[], None, None)).unwrap();
        assert_eq!(plans[0].backend, Backend::Fd(4));
        assert_eq!(plans[0].config.flags, net_flags::DHCP4);
        assert!(plans[0].publish.is_empty());
        let plans = plan(
            &[(0, "s")],
            &opts(&["fd:4"], &[], Some("10.0.0.2/24"), Some("10.0.0.1")),
        )
        .unwrap();
        assert_eq!(plans[0].config.flags, 0);
        assert_eq!(plans[0].config.ipv4, [10, 0, 0, 2]);
        assert_eq!(plans[0].config.ipv4_prefix, 24);
        assert_eq!(plans[0].config.ipv4_gateway, [10, 0, 0, 1]);
        let two = [(0, "a"), (1, "b")];
        assert_eq!(
            plan(&two, &opts(&["a=fd:4", "b=fd:4"], &[], None, None)),
            Err(PlanError::FdTwice(4))
        );
        assert!(plan(&two, &opts(&["a=fd:4", "b=fd:5"], &[], None, None)).is_ok());
        assert_eq!(
            plan(&[(0, "s")], &opts(&["fd:4"], &["80:80"], None, None)),
            Err(PlanError::PublishWithoutUser)
        );
    }

    #[test]
    fn flags_that_do_not_fit_the_image_are_errors() {
        let none: &[(usize, &str)] = &[];
        assert_eq!(
            plan(none, &opts(&[], &["80:80"], None, None)),
            Err(PlanError::NoNetDevice { flag: "-p" })
        );
        assert_eq!(
            plan(none, &opts(&["tap:x"], &[], None, None)),
            Err(PlanError::NoNetDevice { flag: "--net" })
        );
        assert_eq!(plan(none, &NetOptions::default()), Ok(vec![]));
        let two = [(0, "a"), (2, "b")];
        assert!(matches!(
            plan(&two, &opts(&["tap:x"], &[], None, None)),
            Err(PlanError::Ambiguous { .. })
        ));
        assert!(matches!(
            plan(&two, &opts(&["c=tap:x"], &[], None, None)),
            Err(PlanError::UnknownDevice { .. })
        ));
        assert_eq!(
            plan(&two, &opts(&["a=tap:x", "a=user"], &[], None, None)),
            Err(PlanError::Twice("a".into()))
        );
        assert_eq!(
            plan(&two, &opts(&[], &["80:80"], None, None)),
            Err(PlanError::PublishAmbiguous)
        );
        let ok = plan(&two, &opts(&["a=tap:x"], &["80:80"], None, None)).unwrap();
        assert_eq!(ok[1].publish.len(), 1);
        assert_eq!(ok[1].index, 2);
        assert!(ok[0].publish.is_empty());
        let one = [(0, "a")];
        assert_eq!(
            plan(&one, &opts(&["tap:x"], &["80:80"], None, None)),
            Err(PlanError::PublishWithoutUser)
        );
        assert_eq!(
            plan(&one, &opts(&[], &["80:80", "80:81"], None, None)),
            Err(PlanError::PublishTwice {
                port: 80,
                proto: Proto::Tcp
            })
        );
        assert!(plan(&one, &opts(&[], &["80:80", "80:80/udp"], None, None)).is_ok());
        assert_eq!(
            plan(&one, &opts(&["tap:x"], &[], None, Some("10.0.0.1"))),
            Err(PlanError::GatewayWithoutIp)
        );
        assert!(matches!(
            plan(
                &one,
                &opts(&["tap:x"], &[], Some("10.0.0.2/24"), Some("10.0.1.1"))
            ),
            Err(PlanError::GatewayOffLink { .. })
        ));
        assert!(matches!(
            plan(
                &one,
                &opts(&["tap:x"], &[], Some("10.0.0.2/24"), Some("10.0.0.2"))
            ),
            Err(PlanError::GatewayIsGuest(_))
        ));
        assert!(matches!(
            plan(&two, &opts(&[], &[], Some("10.0.0.2/24"), None)),
            Err(PlanError::AddressAmbiguous(_))
        ));
        assert_eq!(
            plan(&one, &opts(&["none"], &[], Some("10.0.0.2/24"), None)),
            Err(PlanError::AddressWithoutBackend)
        );
    }
}
