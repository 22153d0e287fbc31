//! kilnd's HTTP API (JSON), used by `kiln ps/logs/stop/start/reload/down`,
//! and its Prometheus endpoint. The routes are [`kilnd_api::Route`] (one
//! definition for kilnd and the CLI); who may call them is [`guard`];
//! where the API listens and how it is bound is [`listen`].

pub mod guard;
pub mod listen;

use crate::capacity::{ConnRefusal, InstanceRefusal, NoStart};
use crate::daemon::{Daemon, Service};
use crate::instance::Instance;
use crate::metrics::{self, DaemonSnapshot, Snapshot};
use guard::Policy;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
pub use kilnd_api::ApiAddr;
use kilnd_api::{Route, Token};
pub use listen::{bind, ApiFiles, Bound, Listener};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a client may take to send a request's head (the whole
/// request: no endpoint takes a body); an idle keep-alive connection is
/// closed after as long. `kiln` sends its request at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (answered 431 beyond).
pub const HEADER_MAX: usize = 16 * 1024;
/// Most header lines accepted in one request.
pub const HEADERS_MAX: usize = 32;

/// The default API address: `$KILN_API`, else the UNIX socket `kilnd.sock`
/// in kilnd's run-time directory (`$XDG_RUNTIME_DIR/kilnd`, else
/// `$TMPDIR/kilnd-UID`). The `kiln` CLI uses the same rule.
pub fn default_addr() -> ApiAddr {
    ApiAddr::default_addr()
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

fn no_service(name: &str) -> Resp {
    error(StatusCode::NOT_FOUND, format!("no service \"{name}\""))
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

/// What every connection of one API shares.
pub struct Api {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// Notified by `POST /v1/shutdown`.
    pub quit: Arc<Notify>,
    /// The token TCP requests must carry.
    pub token: Option<Token>,
}

/// Answers one request: refused by the connection's [`Policy`], or routed.
pub async fn handle<B: hyper::body::Body>(api: &Api, policy: &Policy, req: Request<B>) -> Resp {
    if let Err(refusal) = policy.check(&req) {
        let mut r = error(refusal.status(), refusal.to_string());
        if refusal.status() == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"kilnd\""),
            );
        }
        return r;
    }
    let uri = req.uri();
    match Route::parse(req.method().as_str(), uri.path(), uri.query()) {
        Ok(route) => answer(api, route).await,
        Err(e) => error(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.to_string(),
        ),
    }
}

async fn answer(api: &Api, route: Route) -> Resp {
    let d = &api.daemon;
    match route {
        Route::Metrics => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(d),
        ),
        Route::Status => {
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
        Route::Services => json_reply(
            StatusCode::OK,
            Value::Array(d.services().iter().map(|s| service_json(s)).collect()),
        ),
        Route::Instances => json_reply(
            StatusCode::OK,
            Value::Array(
                d.services()
                    .iter()
                    .flat_map(|s| s.instances())
                    .map(|i| instance_json(&i))
                    .collect(),
            ),
        ),
        Route::Logs {
            service: name,
            lines,
        } => match d.service(&name) {
            Some(s) => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                s.logs.tail(lines),
            ),
            None => no_service(&name),
        },
        Route::Stop { service: name } => match d.service(&name) {
            Some(s) => {
                let n = s.stop_all("kiln stop");
                json_reply(StatusCode::OK, json!({ "service": name, "stopped": n }))
            }
            None => no_service(&name),
        },
        Route::Start { service: name } => {
            let Some(s) = d.service(&name) else {
                return no_service(&name);
            };
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
                Ok(i) => match i.ready(s.spec.ready_timeout).await {
                    Ok(()) => json_reply(StatusCode::OK, instance_json(&i)),
                    Err(e) => error(StatusCode::BAD_GATEWAY, e),
                },
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
        Route::Reload => match d.reload().await {
            Ok(msg) => json_reply(StatusCode::OK, json!({ "reloaded": msg })),
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                format!("{e} (the running configuration stays)"),
            ),
        },
        Route::Shutdown => {
            api.quit.notify_one();
            json_reply(StatusCode::OK, json!({ "shutting_down": true }))
        }
    }
}

/// Serves the API until the task is dropped. A failed accept (EMFILE
/// when kilnd is at its descriptor limit) is said once and retried after
/// a short pause: the API never stops listening.
pub async fn serve(l: Listener, api: Arc<Api>) -> std::io::Result<()> {
    enum Bound {
        Unix(tokio::net::UnixListener),
        Tcp(tokio::net::TcpListener),
    }
    let l = match l {
        Listener::Unix(l) => {
            l.set_nonblocking(true)?;
            Bound::Unix(tokio::net::UnixListener::from_std(l)?)
        }
        Listener::Tcp(l) => {
            l.set_nonblocking(true)?;
            Bound::Tcp(tokio::net::TcpListener::from_std(l)?)
        }
    };
    let d = &api.daemon;
    let mut failing = 0u64;
    loop {
        let accepted = match &l {
            Bound::Unix(l) => l.accept().await.map(|(s, _)| {
                tokio::spawn(serve_conn(s, api.clone(), None));
            }),
            Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
                let local = s.local_addr().ok();
                tokio::spawn(serve_conn(s, api.clone(), local));
            }),
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

/// Serves one connection (HTTP/1.1, keep-alive) with kilnd's limits:
/// [`HEADER_TIMEOUT`], [`HEADER_MAX`], [`HEADERS_MAX`]. `local`: the
/// address a TCP connection reached (None on the UNIX socket), which
/// decides whether the [`Policy`] asks for the token.
pub async fn serve_conn<S>(s: S, api: Arc<Api>, local: Option<SocketAddr>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Counted among kilnd's descriptors while it is open.
    let _counted = api.daemon.usage.api_connection();
    let policy = Arc::new(Policy {
        token: local.and(api.token.clone()),
        local,
    });
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let api = api.clone();
        let policy = policy.clone();
        async move { Ok::<_, Infallible>(handle(&api, &policy, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(HEADER_MAX)
        .max_headers(HEADERS_MAX)
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}
