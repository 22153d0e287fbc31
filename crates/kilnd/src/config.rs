//! `services.toml`: what kilnd serves. Parsing keeps the byte span of every
//! value so that an error names the line it comes from; [`load`] checks
//! everything that can be checked without binding a port (images are
//! opened and validated, sizes and durations parsed, names and addresses
//! unique, no two services on overlapping addresses). What the host can
//! hold is checked apart, by [`crate::capacity::check`].
//!
//! [`parse_with`] is the whole parser and validator with the image check
//! passed in, so that it runs (and is fuzzed) without a filesystem;
//! [`parse`] and [`load`] give it the real one.

use kiln_tender::size::parse_size;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Guest memory kilnd accepts per instance.
const MEMORY_MIN: u64 = 2 << 20;
const MEMORY_MAX: u64 = 1 << 30;
/// Largest `max_instances`, `concurrency`, `max_starting` and daemon-wide
/// counts.
const INSTANCES_MAX: i64 = 100_000;
/// Largest `max_connections` (per service or daemon-wide).
const CONNECTIONS_MAX: i64 = 10_000_000;
/// Default of `max_starting`: instances of one service starting at once.
pub const MAX_STARTING_DEFAULT: u32 = 4;
/// Default of `[daemon] max_starting`: instances starting at once in all.
pub const DAEMON_MAX_STARTING_DEFAULT: u32 = 64;
/// Default of `first_byte_timeout`.
pub const FIRST_BYTE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Which tender runs a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tender {
    /// hvt where KVM works, else spt (decided by `kiln run`).
    Auto,
    /// The KVM monitor.
    Hvt,
    /// The seccomp process tender.
    Spt,
}

impl Tender {
    /// What `auto` means on this host: hvt when `/dev/kvm` opens for
    /// reading and writing, else spt (decided once).
    pub fn resolve(self) -> Tender {
        static KVM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        match self {
            Tender::Auto => {
                let kvm = *KVM.get_or_init(|| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/kvm")
                        .is_ok()
                });
                if kvm {
                    Tender::Hvt
                } else {
                    Tender::Spt
                }
            }
            t => t,
        }
    }

    /// The `--tender` value of `kiln run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tender::Auto => "auto",
            Tender::Hvt => "hvt",
            Tender::Spt => "spt",
        }
    }
}

/// One validated `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique name, `[a-z0-9_-]`, at most 63 bytes.
    pub name: String,
    /// Absolute path of the image (relative paths are taken from the
    /// config file's directory).
    pub image: PathBuf,
    /// Host address kilnd binds.
    pub listen: SocketAddr,
    /// The guest's TCP port that connections are spliced to.
    pub guest_port: u16,
    /// The tender.
    pub tender: Tender,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Stop an instance after this long without connections.
    pub idle_timeout: Duration,
    /// Most instances running at once.
    pub max_instances: u32,
    /// Keep one instance running even when idle.
    pub warm: bool,
    /// Environment of the image.
    pub env: BTreeMap<String, String>,
    /// Arguments of the image.
    pub args: Vec<String>,
    /// Open connections per instance before kilnd starts another one
    /// (while fewer than `max_instances` run).
    pub concurrency: u32,
    /// CPU time an instance may use in its whole life (RLIMIT_CPU).
    pub cpu_limit: Option<Duration>,
    /// How long a held connection waits for a new instance to be ready.
    pub ready_timeout: Duration,
    /// Client connections of this service open at once (held and
    /// spliced); `None`: a quarter of the daemon-wide cap.
    pub max_connections: Option<u32>,
    /// Instances of this service starting (spawned, not yet READY) at
    /// once; further connections wait for those instead of starting more.
    pub max_starting: u32,
    /// How long kilnd holds a connection whose client has sent nothing
    /// (while its instance starts, or before it may start another one);
    /// zero: never close such a connection and never start an instance
    /// beyond the first for it.
    pub first_byte_timeout: Duration,
    /// Lines of some keys, for errors found after parsing.
    pub lines: Lines,
}

/// Where a service's keys are written (1-based lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    /// `name`.
    pub name: usize,
    /// `listen`, for errors found when binding.
    pub listen: usize,
    /// `max_instances`, else `name`.
    pub max_instances: usize,
    /// `max_connections`, else `name`.
    pub max_connections: usize,
}

impl ServiceSpec {
    /// Whether `other` describes the same service apart from where it is
    /// written in the file.
    pub fn same_as(&self, other: &ServiceSpec) -> bool {
        let mut a = self.clone();
        a.lines = other.lines.clone();
        a == *other
    }
}

/// The optional `[daemon]` table: limits over all services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Client connections open at once over all services; `None`: half of
    /// kilnd's descriptor limit.
    pub max_connections: Option<u32>,
    /// Instances running at once over all services; `None`: as many as
    /// descriptors, tasks and memory allow (each start is checked).
    pub max_instances: Option<u32>,
    /// Instances starting at once over all services.
    pub max_starting: u32,
    /// Line of the `[daemon]` table (0 when absent), and of its keys.
    pub line: usize,
    /// Line of `max_connections`, else of the table.
    pub max_connections_line: usize,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Daemon-wide limits.
    pub daemon: DaemonSpec,
    /// The services, in file order.
    pub services: Vec<ServiceSpec>,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<Spanned<RawDaemon>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_connections: Option<Spanned<i64>>,
    max_instances: Option<Spanned<i64>>,
    max_starting: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    image: Spanned<String>,
    listen: Spanned<String>,
    guest_port: Spanned<i64>,
    tender: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_instances: Option<Spanned<i64>>,
    warm: Option<bool>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    args: Option<Vec<String>>,
    concurrency: Option<Spanned<i64>>,
    cpu_limit: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_starting: Option<Spanned<i64>>,
    first_byte_timeout: Option<Spanned<String>>,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        reason: format!("cannot read: {e}"),
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    parse(&text, path, &base)
}

/// Validates configuration text; relative image paths are taken from `base`.
pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, base, &check_image)
}

/// [`parse`] with the image check passed in: `check_image` gets the
/// image's path (joined to `base`) and says what is wrong with it.
pub fn parse_with(
    text: &str,
    path: &Path,
    base: &Path,
    check_image: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<Config, ConfigError> {
    let err = |span: Option<std::ops::Range<usize>>, reason: String| ConfigError {
        path: path.to_path_buf(),
        line: span.map(|s| line_of(text, s.start)),
        reason,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| err(e.span(), one_line(e.message())))?;
    let daemon = match &raw.daemon {
        None => DaemonSpec {
            max_starting: DAEMON_MAX_STARTING_DEFAULT,
            ..DaemonSpec::default()
        },
        Some(d) => daemon(d.get_ref())
            .map(|mut spec| {
                spec.line = line_of(text, d.span().start);
                spec.max_connections_line = d
                    .get_ref()
                    .max_connections
                    .as_ref()
                    .map_or(spec.line, |v| line_of(text, v.span().start));
                spec
            })
            .map_err(|(span, reason)| err(Some(span), format!("[daemon]: {reason}")))?,
    };
    let mut services: Vec<ServiceSpec> = Vec::new();
    for s in &raw.service {
        let r = s.get_ref();
        let spec = service(r, base, check_image).map_err(|(span, reason)| {
            let name = r.name.get_ref();
            err(Some(span), format!("service \"{name}\": {reason}"))
        })?;
        let at = |v: &Spanned<String>| Some(v.span());
        if services.iter().any(|o| o.name == spec.name) {
            return Err(err(
                at(&r.name),
                format!("service \"{}\" is declared twice", spec.name),
            ));
        }
        if let Some(o) = services.iter().find(|o| overlaps(o.listen, spec.listen)) {
            let how = if o.listen == spec.listen {
                "is already used by".to_string()
            } else {
                format!("overlaps {} of", o.listen)
            };
            return Err(err(
                at(&r.listen),
                format!(
                    "service \"{}\": listen address {} {how} service \"{}\" (one port, one service)",
                    spec.name, spec.listen, o.name
                ),
            ));
        }
        let mut spec = spec;
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let name_line = line(r.name.span());
        spec.lines = Lines {
            name: name_line,
            listen: line(r.listen.span()),
            max_instances: r
                .max_instances
                .as_ref()
                .map_or(name_line, |v| line(v.span())),
            max_connections: r
                .max_connections
                .as_ref()
                .map_or(name_line, |v| line(v.span())),
        };
        services.push(spec);
    }
    Ok(Config {
        path: path.to_path_buf(),
        daemon,
        services,
    })
}

/// Whether two listen addresses cannot both be bound: the same port (not
/// 0, which the kernel picks) and either the same address, or a wildcard
/// that covers the other. `0.0.0.0` covers every IPv4 address and `[::]`
/// every address of both families (Linux binds it dual-stack), so `[::]:P`
/// overlaps anything on `P`; `[::1]:P` and `127.0.0.1:P` do not overlap.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let wild_v6 = |x: &SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    if a.ip() == b.ip() || wild_v6(&a) || wild_v6(&b) {
        return true;
    }
    a.is_ipv4() && b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn daemon(d: &RawDaemon) -> Result<DaemonSpec, Bad> {
    let count = |v: &Option<Spanned<i64>>, key: &str, max: i64| match v {
        None => Ok(None),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref() as u32)),
        Some(n) => Err((n.span(), format!("{key} must be between 1 and {max}"))),
    };
    Ok(DaemonSpec {
        max_connections: count(&d.max_connections, "max_connections", CONNECTIONS_MAX)?,
        max_instances: count(&d.max_instances, "max_instances", INSTANCES_MAX)?,
        max_starting: count(&d.max_starting, "max_starting", INSTANCES_MAX)?
            .unwrap_or(DAEMON_MAX_STARTING_DEFAULT),
        line: 0,
        max_connections_line: 0,
    })
}

type Bad = (std::ops::Range<usize>, String);

fn service(
    s: &RawService,
    base: &Path,
    check_image: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<ServiceSpec, Bad> {
    let bad = |v: std::ops::Range<usize>, m: String| (v, m);
    let name = s.name.get_ref();
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(bad(
            s.name.span(),
            "name must be 1 to 63 characters of a-z, 0-9, '-' and '_'".into(),
        ));
    }
    let image = base.join(s.image.get_ref());
    check_image(&image).map_err(|m| {
        bad(
            s.image.span(),
            format!("image \"{}\": {m}", s.image.get_ref()),
        )
    })?;
    let image = image.canonicalize().unwrap_or(image);
    let listen: SocketAddr = s.listen.get_ref().parse().map_err(|_| {
        bad(
            s.listen.span(),
            format!(
                "listen \"{}\" is not an address and port such as 127.0.0.1:8080",
                s.listen.get_ref()
            ),
        )
    })?;
    let guest_port = u16::try_from(*s.guest_port.get_ref())
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(s.guest_port.span(), "guest_port must be 1 to 65535".into()))?;
    let tender = match &s.tender {
        None => Tender::Auto,
        Some(t) => match t.get_ref().as_str() {
            "auto" => Tender::Auto,
            "hvt" => Tender::Hvt,
            "spt" => Tender::Spt,
            other => {
                return Err(bad(
                    t.span(),
                    format!("tender \"{other}\" is not one of \"auto\", \"hvt\", \"spt\""),
                ))
            }
        },
    };
    let memory = match &s.memory {
        None => 32 << 20,
        Some(m) => {
            let v = parse_size(m.get_ref()).map_err(|e| bad(m.span(), format!("memory {e}")))?;
            if !(MEMORY_MIN..=MEMORY_MAX).contains(&v) {
                return Err(bad(m.span(), "memory must be between 2M and 1G".into()));
            }
            v
        }
    };
    let duration = |d: &Option<Spanned<String>>, key: &str, default: Duration| match d {
        None => Ok(default),
        Some(d) => parse_duration(d.get_ref()).map_err(|e| bad(d.span(), format!("{key} {e}"))),
    };
    let idle_timeout = duration(&s.idle_timeout, "idle_timeout", Duration::from_secs(30))?;
    let ready_timeout = duration(&s.ready_timeout, "ready_timeout", Duration::from_secs(10))?;
    if ready_timeout.is_zero() {
        let span = s.ready_timeout.as_ref().map(|d| d.span()).unwrap_or(0..0);
        return Err(bad(span, "ready_timeout must be more than 0".into()));
    }
    let cpu_limit = match &s.cpu_limit {
        None => None,
        Some(d) => {
            let v =
                parse_duration(d.get_ref()).map_err(|e| bad(d.span(), format!("cpu_limit {e}")))?;
            if v < Duration::from_secs(1) {
                return Err(bad(
                    d.span(),
                    "cpu_limit must be at least 1s (the kernel counts whole seconds)".into(),
                ));
            }
            Some(v)
        }
    };
    let first_byte_timeout = duration(
        &s.first_byte_timeout,
        "first_byte_timeout",
        FIRST_BYTE_TIMEOUT_DEFAULT,
    )?;
    let count = |v: &Option<Spanned<i64>>, key: &str, max: i64| match v {
        None => Ok(None),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref() as u32)),
        Some(n) => Err(bad(n.span(), format!("{key} must be between 1 and {max}"))),
    };
    let max_instances = count(&s.max_instances, "max_instances", INSTANCES_MAX)?.unwrap_or(1);
    let concurrency = count(&s.concurrency, "concurrency", INSTANCES_MAX)?.unwrap_or(16);
    let max_starting =
        count(&s.max_starting, "max_starting", INSTANCES_MAX)?.unwrap_or(MAX_STARTING_DEFAULT);
    let max_connections = count(&s.max_connections, "max_connections", CONNECTIONS_MAX)?;
    let env = s
        .env
        .as_ref()
        .map(|e| e.get_ref().clone())
        .unwrap_or_default();
    if let Some(e) = &s.env {
        if let Some(k) = e.get_ref().keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(bad(
                e.span(),
                format!("env key \"{k}\" must be non-empty and must not contain '='"),
            ));
        }
    }
    Ok(ServiceSpec {
        name: name.clone(),
        image,
        listen,
        guest_port,
        tender,
        memory,
        idle_timeout,
        max_instances,
        warm: s.warm.unwrap_or(false),
        env,
        args: s.args.clone().unwrap_or_default(),
        concurrency,
        cpu_limit,
        ready_timeout,
        max_connections,
        max_starting,
        first_byte_timeout,
        lines: Lines::default(),
    })
}

/// Opens and validates an image: a kiln image with exactly one network
/// device, which kilnd connects.
pub fn check_image(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Err("no such file (build it with `kiln build`)".into());
    }
    let image = kiln_image::Image::load(path).map_err(|e| error_chain(&e))?;
    let m = image.manifest();
    let nets = m.devices[..m.device_count as usize]
        .iter()
        .filter(|d| d.kind == kiln_abi::device::NET)
        .count();
    match nets {
        1 => Ok(()),
        0 => Err("declares no network device, so nothing could be served".into()),
        n => Err(format!(
            "declares {n} network devices; kilnd connects images with exactly one"
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(&format!(": {x}"));
        c = x.source();
    }
    s
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `250ms`, `30s`, `5m`, `1h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("\"{s}\" is not a duration (examples: 250ms, 30s, 5m, 1h)");
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("\"{s}\" is too long"))
}

#[cfg(test)]
mod tests;
