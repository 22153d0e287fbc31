//! kilnd's HTTP API (JSON), used by `kiln ps/logs/stop/start/reload/down`,
//! and its Prometheus endpoint.
//!
//! ```text
//! GET  /v1/status                   daemon summary
//! GET  /v1/services                 services with their instances and last exits
//! GET  /v1/instances                every instance
//! POST /v1/services/NAME/start      start one instance (up to max_instances)
//! POST /v1/services/NAME/stop       stop its instances (the next connection starts one)
//! GET  /v1/services/NAME/logs?lines=N
//! POST /v1/reload                   re-read the configuration file
//! POST /v1/shutdown                 stop every instance and exit
//! GET  /metrics                     Prometheus text format
//! ```

use crate::capacity::{ConnRefusal, InstanceRefusal, NoStart};
use crate::daemon::{Daemon, Service};
use crate::instance::Instance;
use crate::metrics::{self, DaemonSnapshot, Snapshot};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::Notify;

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    /// A UNIX socket (mode 0600).
    Unix(PathBuf),
    /// A TCP address (keep it on loopback: the API starts and stops things).
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ApiAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for ApiAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(ApiAddr::Unix(p.into()));
        }
        s.strip_prefix("tcp:")
            .unwrap_or(s)
            .parse()
            .map(ApiAddr::Tcp)
            .map_err(|_| format!("\"{s}\" is neither unix:PATH nor ADDR:PORT"))
    }
}

/// The default API address: `$KILN_API`, else a UNIX socket in
/// `$XDG_RUNTIME_DIR`, else `/tmp/kilnd-UID.sock`. The `kiln` CLI uses the
/// same rule.
pub fn default_addr() -> ApiAddr {
    if let Some(a) = std::env::var("KILN_API")
        .ok()
        .and_then(|v| v.parse::<ApiAddr>().ok())
    {
        return a;
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => ApiAddr::Unix(PathBuf::from(d).join("kilnd.sock")),
        // SAFETY: getuid has no preconditions and cannot fail.
        _ => ApiAddr::Unix(format!("/tmp/kilnd-{}.sock", unsafe { libc::getuid() }).into()),
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json_reply(status, json!({ "error": msg.into() }))
}

fn instance_json(i: &Instance) -> Value {
    let c = i.peer.counters();
    json!({
        "id": i.id,
        "service": i.service,
        "pid": i.pid,
        "tender": i.tender,
        "state": i.phase().name(),
        "uptime_ms": i.started.elapsed().as_millis() as u64,
        "started_unix_ms": i.started_unix_ms,
        "ready_ms": match i.ready_us.load(Relaxed) { 0 => Value::Null, us => json!(us as f64 / 1000.0) },
        "connections_active": i.active(),
        "connections_total": c.connections_total.load(Relaxed),
        "bytes_in": c.bytes_to_guest.load(Relaxed),
        "bytes_out": c.bytes_from_guest.load(Relaxed),
        "rss_bytes": i.rss(),
    })
}

fn service_json(s: &Service) -> Value {
    let m = &s.metrics;
    json!({
        "name": s.spec.name,
        "listen": s.bound.to_string(),
        "image": s.spec.image.display().to_string(),
        "guest_port": s.spec.guest_port,
        "tender": s.spec.tender.as_str(),
        "memory": s.spec.memory,
        "idle_timeout_ms": s.spec.idle_timeout.as_millis() as u64,
        "max_instances": s.spec.max_instances,
        "warm": s.spec.warm,
        "instances": s.instances().iter().map(|i| instance_json(i)).collect::<Vec<_>>(),
        "recent_exits": s.history(),
        "starts": m.starts.load(Relaxed),
        "cold_starts": m.cold_starts.load(Relaxed),
        "requests": m.connections.load(Relaxed),
        "requests_failed": m.connections_failed.load(Relaxed),
        "crashes": m.crashes.load(Relaxed),
        "connections_open": s.open_connections(),
        "refused": {
            "connections": ConnRefusal::ALL.iter()
                .map(|r| (r.label().to_string(), json!(m.refused[r.index()].load(Relaxed))))
                .collect::<serde_json::Map<_, _>>(),
            "instances": InstanceRefusal::ALL.iter()
                .map(|r| (r.label().to_string(), json!(m.instance_refusals[r.index()].load(Relaxed))))
                .collect::<serde_json::Map<_, _>>(),
        },
        "last_refusal": s.last_refusal(),
        "connections_reset_on_stop": m.reset_on_stop.load(Relaxed),
    })
}

fn render_metrics(d: &Daemon) -> String {
    let services = d.services();
    let snaps: Vec<Snapshot> = services
        .iter()
        .map(|s| {
            let insts = s.instances();
            let (mut bi, mut bo, mut secs, mut starting, mut ready) = (0, 0, 0.0, 0, 0);
            let mut failed = 0;
            for i in &insts {
                let c = i.peer.counters();
                bi += c.bytes_to_guest.load(Relaxed);
                bo += c.bytes_from_guest.load(Relaxed);
                failed += c.connections_failed.load(Relaxed);
                secs += i.started.elapsed().as_secs_f64();
                match i.phase().name() {
                    "starting" => starting += 1,
                    "ready" => ready += 1,
                    _ => {}
                }
            }
            Snapshot {
                name: &s.spec.name,
                m: &s.metrics,
                live_bytes: (bi, bo),
                live_seconds: secs,
                starting,
                ready,
                live_link_failed: failed,
                open: s.open_connections(),
            }
        })
        .collect();
    metrics::render(
        &snaps,
        &DaemonSnapshot {
            descriptors: d.usage.fds(),
            descriptor_limit: d.usage.limit(),
            connections: d.usage.connections(),
            starting: d.usage.starting(),
        },
    )
}

/// Answers one request.
pub async fn handle(d: Arc<Daemon>, quit: Arc<Notify>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(&d),
        ),
        (&Method::GET, ["v1", "status"]) => {
            let services = d.services();
            let instances: usize = services.iter().map(|s| s.instances().len()).sum();
            json_reply(
                StatusCode::OK,
                json!({
                    "pid": std::process::id(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_ms": d.started.elapsed().as_millis() as u64,
                    "config": d.config_path.display().to_string(),
                    "services": services.len(),
                    "instances": instances,
                    "descriptors": d.usage.fds(),
                    "descriptor_limit": d.usage.limit(),
                    "connections": d.usage.connections(),
                    "max_connections": d.limits().max_connections,
                    "instances_starting": d.usage.starting(),
                    "max_starting": d.limits().max_starting,
                }),
            )
        }
        (&Method::GET, ["v1", "services"]) => json_reply(
            StatusCode::OK,
            Value::Array(d.services().iter().map(|s| service_json(s)).collect()),
        ),
        (&Method::GET, ["v1", "instances"]) => json_reply(
            StatusCode::OK,
            Value::Array(
                d.services()
                    .iter()
                    .flat_map(|s| s.instances())
                    .map(|i| instance_json(&i))
                    .collect(),
            ),
        ),
        (method, ["v1", "services", name, action]) => {
            let Some(s) = d.service(name) else {
                return error(StatusCode::NOT_FOUND, format!("no service \"{name}\""));
            };
            match (method, *action) {
                (&Method::GET, "logs") => {
                    let lines = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("lines="))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(200);
                    reply(
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        s.logs.tail(lines),
                    )
                }
                (&Method::POST, "stop") => {
                    let n = s.stop_all("kiln stop");
                    json_reply(StatusCode::OK, json!({ "service": name, "stopped": n }))
                }
                (&Method::POST, "start") => {
                    let running = s.instances().iter().filter(|i| i.usable()).count();
                    if running >= s.spec.max_instances as usize {
                        return error(
                            StatusCode::CONFLICT,
                            format!(
                                "service \"{name}\" already runs {running} of max_instances = {}",
                                s.spec.max_instances
                            ),
                        );
                    }
                    match s.start(false) {
                        Ok(i) => {
                            let ready = i.ready(s.spec.ready_timeout).await;
                            match ready {
                                Ok(()) => json_reply(StatusCode::OK, instance_json(&i)),
                                Err(e) => error(StatusCode::BAD_GATEWAY, e),
                            }
                        }
                        Err(NoStart::Busy) => error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "{} instances are starting, [daemon] max_starting = {}; try again",
                                d.usage.starting(),
                                d.limits().max_starting
                            ),
                        ),
                        Err(NoStart::Refused(_, e)) => error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("new instance refused: {e}"),
                        ),
                    }
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    format!("no such action: {method} {path}"),
                ),
            }
        }
        (&Method::POST, ["v1", "reload"]) => match d.reload().await {
            Ok(msg) => json_reply(StatusCode::OK, json!({ "reloaded": msg })),
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                format!("{e} (the running configuration stays)"),
            ),
        },
        (&Method::POST, ["v1", "shutdown"]) => {
            quit.notify_one();
            json_reply(StatusCode::OK, json!({ "shutting_down": true }))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", req.method()),
        ),
    }
}

/// A bound API listener.
pub enum Listener {
    /// On a UNIX socket.
    Unix(tokio::net::UnixListener),
    /// On TCP.
    Tcp(tokio::net::TcpListener),
}

/// Binds the API address (before any service port, so that a second kilnd
/// fails before it takes anything).
pub async fn bind(addr: &ApiAddr) -> std::io::Result<Listener> {
    Ok(match addr {
        ApiAddr::Unix(path) => Listener::Unix(bind_unix(path)?),
        ApiAddr::Tcp(a) => Listener::Tcp(tokio::net::TcpListener::bind(a).await?),
    })
}

/// Serves the API until the task is dropped. A failed accept (EMFILE
/// when kilnd is at its descriptor limit) is said once and retried after
/// a short pause: the API never stops listening.
pub async fn serve(l: Listener, d: Arc<Daemon>, quit: Arc<Notify>) {
    let mut failing = 0u64;
    loop {
        let accepted = match &l {
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| spawn_conn(s, d.clone(), quit.clone())),
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| spawn_conn(s, d.clone(), quit.clone())),
        };
        match accepted {
            Ok(()) if failing > 0 => {
                eprintln!("kilnd: API: accepting again after {failing} failed accepts");
                failing = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    d.usage.recount();
                }
                if failing == 0 {
                    eprintln!(
                        "kilnd: API: accept failed: {e} (kilnd holds {} of {} descriptors); retrying",
                        d.usage.fds(),
                        d.usage.limit()
                    );
                }
                failing += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn spawn_conn<S>(s: S, d: Arc<Daemon>, quit: Arc<Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let counted = d.usage.api_connection();
    tokio::spawn(async move {
        let _counted = counted;
        let svc = hyper::service::service_fn(move |req| {
            let d = d.clone();
            let quit = quit.clone();
            async move { Ok::<_, Infallible>(handle(d, quit, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    });
}

/// Binds a UNIX socket at `path`, replacing a stale socket file but never
/// a live daemon's.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another kilnd is serving its API on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
