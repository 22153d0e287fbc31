//! `kiln up/ps/logs/stop/start/reload/down`: the CLI side of kilnd's API.
//! A tiny blocking HTTP/1.1 client: one request per connection, on a UNIX
//! socket or TCP.

use kilnd_api::addr::AddrError;
use kilnd_api::rundir::{self, RunDirError};
use kilnd_api::term::escape_controls;
use kilnd_api::token::{self, TokenError};
use kilnd_api::{ApiAddr, Route, Token};
use serde_json::Value;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where kilnd's API is: `unix:PATH` or `ADDR:PORT`.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// kilnd's API address [default: $KILN_API, else
    /// unix:$XDG_RUNTIME_DIR/kilnd/kilnd.sock, else unix:/tmp/kilnd-UID/kilnd.sock].
    /// On TCP, kiln sends the token kilnd wrote beside that default socket.
    #[arg(long, value_name = "ADDR", global = true)]
    pub api: Option<String>,
}

impl ApiArgs {
    fn addr(&self) -> Result<ApiAddr, ApiError> {
        match &self.api {
            Some(a) => a.parse().map_err(ApiError::Addr),
            None => Ok(ApiAddr::default_addr()),
        }
    }
}

/// An API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `--api` is not an address.
    #[error("--api: {0}")]
    Addr(#[source] AddrError),
    /// kilnd's run-time directory is not safe to use.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The TCP API's token cannot be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// kilnd is not there.
    #[error("cannot reach kilnd at {addr}: {source} (is it running? start it with `kiln up services.toml`)")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("kilnd at {0}: {1}")]
    Io(String, std::io::Error),
    /// kilnd answered with an error.
    #[error("{0}")]
    Refused(String),
    /// kilnd answered something that is not HTTP.
    #[error("kilnd at {0} sent a malformed answer")]
    Malformed(String),
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Sends one request; returns the status and body.
///
/// Before it connects to the default socket or reads a token, it checks
/// that kilnd's run-time directory is this user's and private: in a
/// shared `/tmp` another user could have made it, with a socket of theirs.
pub fn call(api: &ApiArgs, route: &Route) -> Result<(u16, Vec<u8>), ApiError> {
    let addr = api.addr()?;
    let shown = addr.to_string();
    let connect = |e| ApiError::Connect {
        addr: shown.clone(),
        source: e,
    };
    let (mut s, host, auth): (Box<dyn Stream>, String, Option<Token>) = match &addr {
        ApiAddr::Unix(p) => {
            if addr.in_rundir() {
                rundir::check(&rundir::path())?;
            }
            let s = std::os::unix::net::UnixStream::connect(p).map_err(connect)?;
            (Box::new(s), "localhost".into(), None)
        }
        ApiAddr::Tcp(a) => {
            let dir = rundir::path();
            rundir::check(&dir)?;
            let t = Token::read(&token::file(&dir, a.port()))?;
            let s = std::net::TcpStream::connect(a).map_err(connect)?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            (Box::new(s), a.to_string(), Some(t))
        }
    };
    let io = |e| ApiError::Io(shown.clone(), e);
    let auth = auth
        .map(|t| format!("Authorization: {}\r\n", t.header_value()))
        .unwrap_or_default();
    write!(
        s,
        "{} {} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n",
        route.method(),
        route.path()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).ok_or_else(|| ApiError::Malformed(shown.clone()))
}

fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    if let Some(n) = length {
        body.truncate(n);
    }
    Some((status, body))
}

/// A JSON answer, or the error kilnd gave.
fn call_json(api: &ApiArgs, route: &Route) -> Result<Value, ApiError> {
    let (status, body) = call(api, route)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::Malformed(api.addr().map(|a| a.to_string()).unwrap_or_default()))?;
    if status >= 400 {
        let msg = v["error"].as_str().unwrap_or("request failed").to_string();
        return Err(ApiError::Refused(msg));
    }
    Ok(v)
}

fn fail(e: ApiError) -> ExitCode {
    eprintln!("kiln: {e}");
    ExitCode::FAILURE
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn ago(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.0}h{:02.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    }
}

/// `kiln ps`.
pub fn ps(api: &ApiArgs, json: bool) -> ExitCode {
    let v = match call_json(api, &Route::Services) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    print!("{}", ps_table(&v));
    ExitCode::SUCCESS
}

/// The table `kiln ps` prints for kilnd's `/v1/services` answer.
pub fn ps_table(v: &Value) -> String {
    let mut rows: Vec<[String; 9]> = vec![[
        "SERVICE", "INSTANCE", "STATE", "PID", "TENDER", "UPTIME", "ACTIVE", "REQUESTS", "MEMORY",
    ]
    .map(String::from)];
    let mut notes = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for s in v.as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?").to_string();
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        if instances.is_empty() {
            rows.push([
                name.clone(),
                "-".into(),
                "idle (none running)".into(),
                "-".into(),
                s["tender"].as_str().unwrap_or("").into(),
                "-".into(),
                "0".into(),
                s["requests"].to_string(),
                "-".into(),
            ]);
        }
        for i in &instances {
            rows.push([
                name.clone(),
                format!("#{}", i["id"]),
                i["state"].as_str().unwrap_or("?").into(),
                i["pid"].to_string(),
                i["tender"].as_str().unwrap_or("").into(),
                ago(i["uptime_ms"].as_u64().unwrap_or(0)),
                i["connections_active"].to_string(),
                i["connections_total"].to_string(),
                mib(i["rss_bytes"].as_u64().unwrap_or(0)),
            ]);
        }
        if let Some(r) = s["last_refusal"].as_object() {
            notes.push(format!(
                "{name}: {} ({} ago)",
                r.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("refused"),
                ago(now.saturating_sub(r.get("unix_ms").and_then(Value::as_u64).unwrap_or(now)))
            ));
        }
        if let Some(last) = s["recent_exits"].as_array().and_then(|a| a.last()) {
            if last["crashed"].as_bool() == Some(true) {
                notes.push(format!(
                    "{name}: instance #{} {} ({} ago); the next request starts a new one",
                    last["instance"],
                    last["reason"].as_str().unwrap_or("ended"),
                    ago(now.saturating_sub(last["unix_ms"].as_u64().unwrap_or(now)))
                ));
            }
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// `kiln logs NAME`: guest text, shown escaped on a terminal unless `raw`.
pub fn logs(api: &ApiArgs, service: &str, lines: usize, raw: bool) -> ExitCode {
    let route = Route::Logs {
        service: service.into(),
        lines,
    };
    match call(api, &route) {
        Ok((200, body)) => {
            let escape = !raw && std::io::stdout().is_terminal();
            let _ = std::io::stdout().write_all(&for_output(&body, escape));
            ExitCode::SUCCESS
        }
        Ok((_, body)) => fail(refusal(&body)),
        Err(e) => fail(e),
    }
}

fn refusal(body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ApiError::Refused(v["error"].as_str().unwrap_or("request failed").to_string())
}

/// What `kiln logs` writes for kilnd's answer: with control characters
/// escaped when it goes to a terminal, unchanged otherwise.
fn for_output(body: &[u8], escape: bool) -> Vec<u8> {
    if escape {
        escape_controls(&String::from_utf8_lossy(body))
            .into_owned()
            .into_bytes()
    } else {
        body.to_vec()
    }
}

/// `kiln stop NAME`, `kiln start NAME`.
pub fn service_action(api: &ApiArgs, route: &Route) -> ExitCode {
    match call_json(api, route) {
        Ok(v) => {
            match route {
                Route::Stop { service } => {
                    println!("{service}: stopped {} instance(s)", v["stopped"])
                }
                Route::Start { service } => println!(
                    "{service}: instance #{} ready after {} ms (pid {})",
                    v["id"], v["ready_ms"], v["pid"]
                ),
                _ => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `kiln reload`, `kiln down`.
pub fn daemon_action(api: &ApiArgs, route: &Route) -> ExitCode {
    match call_json(api, route) {
        Ok(v) => {
            match route {
                Route::Reload => {
                    println!("kilnd: reloaded: {}", v["reloaded"].as_str().unwrap_or(""))
                }
                _ => println!("kilnd: stopping every instance and exiting"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `kiln up FILE`: runs kilnd in the foreground (replaces this process).
pub fn up(config: PathBuf, api: &ApiArgs, verbose: bool) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let kilnd = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kilnd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kilnd"));
    let mut cmd = std::process::Command::new(&kilnd);
    cmd.arg("--config").arg(config);
    if let Some(a) = &api.api {
        cmd.arg("--api").arg(a);
    }
    if verbose {
        cmd.arg("--verbose");
    }
    let e = cmd.exec();
    eprintln!(
        "kiln: cannot run {}: {e} (build it with `cargo build --release -p kilnd`)",
        kilnd.display()
    );
    ExitCode::from(kiln_abi::EXIT_TENDER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_parse() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nhello world";
        assert_eq!(parse_response(raw), Some((404, b"hello".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
        assert_eq!(parse_response(b"HTTP/1.1 abc\r\n\r\n"), None);
    }

    #[test]
    fn logs_escape_guest_controls_only_for_a_terminal() {
        let body = b"1.000 #1 out \x1b]0;pwned\x07\x1b[31mred\n2.000 #1 out \xc2\x9b2J\tok\n";
        let shown = String::from_utf8(for_output(body, true)).unwrap();
        assert_eq!(
            shown,
            "1.000 #1 out \\x1b]0;pwned\\x07\\x1b[31mred\n2.000 #1 out \\u{9b}2J\tok\n"
        );
        assert_eq!(for_output(body, false), body.to_vec());
    }

    #[test]
    fn ps_table_shows_instances_idle_services_and_crashes() {
        let v = json!([
            {"name": "web", "tender": "spt", "requests": 7, "instances": [
                {"id": 3, "state": "ready", "pid": 42, "tender": "spt", "uptime_ms": 1500,
                 "connections_active": 1, "connections_total": 7, "rss_bytes": 2097152}
            ], "recent_exits": []},
            {"name": "db", "tender": "hvt", "requests": 1, "instances": [],
             "recent_exits": [{"instance": 2, "crashed": true, "reason": "crashed (status 139)", "unix_ms": 0}],
             "last_refusal": {"what": "instance", "reason": "descriptors",
                              "message": "new instance refused: kilnd holds 150 of its 160 descriptors", "unix_ms": 0}}
        ]);
        let t = ps_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SERVICE"), "{t}");
        assert!(lines[1].contains("web") && lines[1].contains("#3") && lines[1].contains("ready"));
        assert!(
            lines[1].contains("2.0 MiB") && lines[1].contains("1.5s"),
            "{t}"
        );
        assert!(lines[2].contains("db") && lines[2].contains("idle"), "{t}");
        assert!(
            lines[3].contains("db: new instance refused") && lines[3].contains("descriptors"),
            "{t}"
        );
        assert!(
            lines[4].contains("#2") && lines[4].contains("status 139"),
            "{t}"
        );
    }
}
