//! kilnd's API as an attacker meets it: a web page driving the TCP API,
//! a client that never finishes its request, another user's directory
//! where the socket would go, names that try to become other paths, and
//! guest text meant for the reader's terminal.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A fresh private directory to serve as `XDG_RUNTIME_DIR`.
fn runtime_dir(tag: &str) -> PathBuf {
    let d = scratch(tag).join("run");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// Sends `head` (request line and headers, without the blank line) and
/// reads the whole answer: (status, body).
fn raw_tcp(addr: &str, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{head}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (h, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {head:?}: {raw:?}"));
    let status = h.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// kilnd on TCP 127.0.0.1:PORT with `run` as its XDG_RUNTIME_DIR.
fn tcp_kilnd(tag: &str, config: &str, run: &Path) -> (Kilnd, String) {
    let dir = scratch(tag);
    let path = dir.join("services.toml");
    std::fs::write(&path, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let k = Kilnd::launch(
        dir,
        path,
        &Opts {
            api: Some(addr.clone()),
            env: vec![("XDG_RUNTIME_DIR".into(), run.display().to_string())],
            ..Opts::default()
        },
    );
    (k, addr)
}

#[test]
fn the_tcp_api_requires_the_token_that_kiln_finds_by_itself() {
    let run = runtime_dir("tcp-token");
    let (k, addr) = tcp_kilnd("tcp-token", &probe_service("web", "spt", ""), &run);
    let port = addr.rsplit(':').next().unwrap();
    let host = format!("Host: {addr}");

    let (st, body) = raw_tcp(&addr, &format!("GET /v1/status HTTP/1.1\r\n{host}"));
    assert_eq!(st, 401, "no token: {body}");
    let wrong = "0".repeat(64);
    let (st, body) = raw_tcp(
        &addr,
        &format!("GET /v1/status HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {wrong}"),
    );
    assert_eq!(st, 401, "wrong token: {body}");

    let file = run.join(format!("kilnd/api-{port}.token"));
    let meta = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("no token file {}: {e}\n{}", file.display(), k.log()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(run.join("kilnd"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let (st, body) = raw_tcp(
        &addr,
        &format!("GET /v1/status HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {token}"),
    );
    assert_eq!(st, 200, "right token: {body}");
    assert!(k.log().contains(&file.display().to_string()), "{}", k.log());

    // The CLI reads the token itself.
    let out = Command::new(kiln_bin())
        .args(["ps", "--api", &addr])
        .env("XDG_RUNTIME_DIR", &run)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("web"), "{text}");
    // Without it (another runtime directory) it says what is missing.
    let elsewhere = runtime_dir("tcp-token-other");
    let out = Command::new(kiln_bin())
        .args(["ps", "--api", &addr])
        .env("XDG_RUNTIME_DIR", &elsewhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("token"), "{err}");

    // Stopping kilnd removes the token.
    let mut k = k;
    assert!(k.terminate().success());
    assert!(!file.exists(), "token file left behind");
}

#[test]
fn browser_requests_are_refused_and_cannot_stop_kilnd() {
    let run = runtime_dir("browser");
    let (k, addr) = tcp_kilnd("browser", &probe_service("web", "spt", ""), &run);
    let port = addr.rsplit(':').next().unwrap();
    let token = std::fs::read_to_string(run.join(format!("kilnd/api-{port}.token")))
        .unwrap_or_default()
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");

    // What a page on another site sends with fetch(..., {method: "POST",
    // mode: "no-cors"}) or a form: no token, an Origin.
    let (st, body) = raw_tcp(
        &addr,
        &format!(
            "POST /v1/shutdown HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 0"
        ),
    );
    assert_eq!(st, 403, "{body}");
    // Even with the token (say, leaked into a page), a browser is refused.
    for extra in [
        "Origin: null",
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Mode: no-cors",
    ] {
        let (st, body) = raw_tcp(
            &addr,
            &format!("POST /v1/shutdown HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n{extra}"),
        );
        assert_eq!(st, 403, "{extra}: {body}");
    }
    // DNS rebinding: a name that resolves to 127.0.0.1 but is not ours.
    let (st, body) = raw_tcp(
        &addr,
        &format!("POST /v1/shutdown HTTP/1.1\r\nHost: evil.example:{port}\r\n{auth}"),
    );
    assert_eq!(st, 403, "{body}");

    std::thread::sleep(Duration::from_millis(300));
    let mut k = k;
    assert!(
        k.child.try_wait().unwrap().is_none(),
        "kilnd stopped:\n{}",
        k.log()
    );
    for host in [addr.clone(), format!("localhost:{port}")] {
        let (st, body) = raw_tcp(
            &addr,
            &format!("GET /v1/status HTTP/1.1\r\nHost: {host}\r\n{auth}"),
        );
        assert_eq!(st, 200, "Host: {host}: {body}");
    }
}

#[test]
fn a_client_that_never_finishes_its_request_is_disconnected() {
    let k = Kilnd::start("slow-client", &probe_service("web", "spt", ""));
    let mut s = std::os::unix::net::UnixStream::connect(&k.api).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: local")
        .unwrap();
    // Bounded only so that the test cannot hang: kilnd's header timeout
    // is far shorter.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(r.is_ok(), "kilnd kept a half-sent request open: {r:?}");
    // kilnd itself goes on serving.
    let (st, _) = k.call("GET", "/v1/status");
    assert_eq!(st, 200);
}

#[test]
fn oversized_requests_and_bodies_are_refused() {
    let k = Kilnd::start("big-request", &probe_service("web", "spt", ""));
    let mut s = std::os::unix::net::UnixStream::connect(&k.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let big = "x".repeat(64 * 1024);
    let _ = write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: local\r\nX-Big: {big}\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw:.200}");

    let mut s = std::os::unix::net::UnixStream::connect(&k.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = write!(
        s,
        "POST /v1/reload HTTP/1.1\r\nHost: local\r\nContent-Length: 100000000\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw:.300}");
    assert!(k.log().matches("reloaded").count() == 0, "{}", k.log());
}

#[test]
fn the_default_socket_is_private_from_the_start() {
    // No XDG_RUNTIME_DIR: the socket goes to $TMPDIR/kilnd-UID/, which
    // kilnd creates 0700.
    let tmp = scratch("default-sock");
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let dir = tmp.join(format!("kilnd-{uid}"));
    let config = tmp.join("services.toml");
    std::fs::write(&config, probe_service("web", "spt", "")).unwrap();
    let mut k = Kilnd::launch(
        tmp.clone(),
        config,
        &Opts {
            api: Some(String::new()),
            env: vec![
                ("TMPDIR".into(), tmp.display().to_string()),
                ("XDG_RUNTIME_DIR".into(), String::new()),
            ],
            ..Opts::default()
        },
    );
    k.api = dir.join("kilnd.sock");
    let d = std::fs::symlink_metadata(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), k.log()));
    assert!(d.is_dir());
    assert_eq!(d.permissions().mode() & 0o777, 0o700);
    // The socket is created 0600 by bind itself, under a umask of 0177
    // set just for it (kilnd is single-threaded then), not chmod'ed
    // after: there is no moment at which it exists with wider
    // permissions. A stat after the fact cannot see that moment either
    // way; what it can show is the result.
    let s = std::fs::symlink_metadata(&k.api).unwrap();
    assert_eq!(s.permissions().mode() & 0o777, 0o600);
    assert_eq!(k.call("GET", "/v1/status").0, 200);
    // `kiln` finds the same default.
    let out = Command::new(kiln_bin())
        .arg("ps")
        .env("TMPDIR", &tmp)
        .env("XDG_RUNTIME_DIR", "")
        .env_remove("KILN_API")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(k.terminate().success());
}

#[test]
fn a_runtime_directory_another_user_made_is_refused() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    if uid != 0 {
        kiln_testkit::skip("making a directory owned by another user needs root");
        return;
    }
    let tmp = scratch("hostile-dir");
    let config = tmp.join("services.toml");
    std::fs::write(&config, probe_service("web", "spt", "")).unwrap();
    let dir = tmp.join(format!("kilnd-{uid}"));
    let kilnd = |what: &str| {
        let mut child = Command::new(kilnd_bin())
            .arg("--config")
            .arg(&config)
            .arg("--kiln")
            .arg(kiln_bin())
            .env("TMPDIR", &tmp)
            .env("XDG_RUNTIME_DIR", "")
            .env_remove("KILN_API")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded so that a kilnd that does start (and would serve for
        // ever) fails the test instead of hanging it.
        let status = wait_child(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{what}: {err}");
        assert!(!err.contains("kilnd: ready"), "{what}: {err}");
        err
    };
    let kiln_ps = || {
        let out = Command::new(kiln_bin())
            .arg("ps")
            .env("TMPDIR", &tmp)
            .env("XDG_RUNTIME_DIR", "")
            .env_remove("KILN_API")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // Another user's directory, open to all, perhaps with a socket of
    // theirs in it.
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = kilnd("another user's directory");
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("uid 65534"),
        "{err}"
    );
    let err = kiln_ps();
    assert!(
        err.contains("uid 65534"),
        "kiln must not connect there: {err}"
    );

    // A symbolic link to somewhere else.
    std::fs::remove_dir(&dir).unwrap();
    let elsewhere = tmp.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let err = kilnd("a symbolic link");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_service_name_cannot_become_another_request() {
    let k = Kilnd::start("name-path", &probe_service("web", "spt", ""));
    let api = format!("unix:{}", k.api.display());
    let out = Command::new(kiln_bin())
        .args(["stop", "web/start?", "--api", &api])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("no service \"web/start?\""), "{text}");
    let v = k.service("web");
    assert_eq!(v["starts"], 0, "`kiln stop` started an instance: {v:#}");
    assert!(v["instances"].as_array().unwrap().is_empty(), "{v:#}");

    // kilnd decodes what the CLI encodes: an encoded name of a real
    // service reaches it.
    let (st, body) = k.call("POST", "/v1/services/%77eb/stop");
    assert_eq!(st, 200, "{body}");
    let (st, body) = k.call("GET", "/v1/services/%ff/logs");
    assert_eq!(st, 400, "{body}");
}

/// A service of the console-flood image that prints `line` (TOML-escaped,
/// `bytes` long once unescaped) once.
fn one_line_service(name: &str, line: &str, bytes: usize) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nlisten = \"127.0.0.1:0\"\nguest_port = 80\ntender = \"spt\"\nmemory = \"16M\"\nidle_timeout = \"600s\"\nenv = {{ FLOOD_LINE = \"{line}\", FLOOD_BYTES = \"{}\" }}\n",
        image("tests/images/console-flood").display(),
        bytes + 1
    )
}

/// Escape sequences as the guest prints them (TOML escapes): retitle the
/// terminal, turn the text red.
const HOSTILE: &str = "\\u001b]0;pwned\\u0007\\u001b[31mred";
/// The same, as the reader should see it on a terminal.
const SHOWN: &str = "\\x1b]0;pwned\\x07\\x1b[31mred";
/// The same, raw.
const RAW: &str = "\x1b]0;pwned\x07\x1b[31mred";

#[test]
fn kiln_logs_shows_guest_escape_sequences_on_a_terminal_instead_of_obeying_them() {
    let k = Kilnd::start("escape-logs", &one_line_service("esc", HOSTILE, RAW.len()));
    let (st, body) = k.call("POST", "/v1/services/esc/start");
    assert_eq!(st, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !k
        .call("GET", "/v1/services/esc/logs")
        .1
        .contains("console-flood: done")
    {
        assert!(std::time::Instant::now() < deadline, "{}", k.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let api = format!("unix:{}", k.api.display());
    let logs = |raw: bool| {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["logs", "esc", "--api", &api]);
        if raw {
            cmd.arg("--raw");
        }
        cmd
    };

    let (st, out) = output_on_tty(&mut logs(false));
    let out = String::from_utf8_lossy(&out);
    assert!(st.success(), "{out}");
    assert!(out.contains(SHOWN), "{out:?}");
    assert!(
        !out.contains('\x1b'),
        "a raw ESC reached the terminal: {out:?}"
    );

    let (st, out) = output_on_tty(&mut logs(true));
    let out = String::from_utf8_lossy(&out);
    assert!(st.success(), "{out}");
    assert!(out.contains(RAW), "--raw keeps the bytes: {out:?}");

    // Into a pipe the bytes pass unchanged.
    let out = logs(false).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(RAW));
}

#[test]
fn kilnd_verbose_shows_guest_escape_sequences_on_a_terminal() {
    let dir = scratch("escape-verbose");
    let config = dir.join("services.toml");
    std::fs::write(&config, one_line_service("esc", HOSTILE, RAW.len())).unwrap();
    let k = Kilnd::launch(
        dir,
        config,
        &Opts {
            tty: true,
            ..Opts::default()
        },
    );
    let (st, body) = k.call("POST", "/v1/services/esc/start");
    assert_eq!(st, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !k.log().contains("console-flood: done") {
        assert!(std::time::Instant::now() < deadline, "{}", k.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = k.log();
    assert!(log.contains(&format!("esc#1: {SHOWN}")), "{log:?}");
    assert!(
        !log.contains('\x1b'),
        "a raw ESC reached the terminal: {log:?}"
    );
}
