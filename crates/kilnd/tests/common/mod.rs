//! A real kilnd with real images, driven over its API and real TCP.

#![allow(dead_code, unused_imports)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use kiln_testkit::{free_port, root, scratch, wait_child, wait_gone};

/// The kilnd under test.
pub fn kilnd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kilnd"))
}

/// The kiln binary next to kilnd, built (once) if it is missing or stale.
pub fn kiln_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = kilnd_bin().to_string_lossy().contains("/release/");
            let mut c = Command::new(cargo);
            c.current_dir(root())
                .args(["build", "-q", "-p", "kiln-cli", "--bin", "kiln"]);
            if release {
                c.arg("--release");
            }
            let st = c.status().expect("run cargo build -p kiln-cli");
            assert!(st.success(), "cargo build -p kiln-cli failed");
            let p = kilnd_bin().parent().unwrap().join("kiln");
            assert!(p.is_file(), "{} missing", p.display());
            p
        })
        .clone()
}

/// Builds a guest crate (relative to the root) once, with [`kiln_bin`];
/// returns the image.
pub fn image(dir: &str) -> PathBuf {
    kiln_testkit::image(&kiln_bin(), dir)
}

/// spt, and hvt where it works here (loudly says so when it does not).
pub fn tenders() -> Vec<&'static str> {
    kiln_testkit::tenders("kilnd tests on hvt")
}

/// Waits (bounded) until a process is gone.
pub fn gone(pid: u64) -> bool {
    wait_gone(pid, Duration::from_secs(10))
}

/// One `[[service]]` of the probe image on an ephemeral port.
pub fn probe_service(name: &str, tender: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nlisten = \"127.0.0.1:0\"\nguest_port = 80\ntender = \"{tender}\"\nmemory = \"16M\"\n{extra}\n",
        image("tests/images/kilnd-probe").display()
    )
}

/// How [`Kilnd::launch`] starts kilnd.
#[derive(Default)]
pub struct Opts {
    /// `--api` [default: unix:DIR/api.sock, which [`Kilnd::call`] uses;
    /// an empty string: no `--api`, kilnd's default address].
    pub api: Option<String>,
    /// Without `--verbose` (instances' output is not echoed).
    pub quiet: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// kilnd's standard error is a terminal (a pseudo-terminal this test
    /// reads) rather than a pipe.
    pub tty: bool,
}

/// A pseudo-terminal: (master, slave).
pub fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers given; the
    // name, termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded: both descriptors are open and ours alone.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

/// Runs `cmd` with its standard output on a terminal; returns its exit
/// status and everything it wrote there (then its standard error).
pub fn output_on_tty(cmd: &mut Command) -> (std::process::ExitStatus, Vec<u8>) {
    let (master, slave) = openpty();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn on a terminal");
    // The child holds the only slave descriptor once `cmd` lets go of
    // ours, so reading the master ends (EIO) when the child exits.
    cmd.stdout(Stdio::null());
    let mut out = Vec::new();
    let mut m = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match m.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    out.extend_from_slice(err.as_bytes());
    (st, out)
}

/// `kilnd --check` of `text`, written to `path`: its exit code and
/// standard error.
pub fn check(path: &std::path::Path, text: &str) -> (Option<i32>, String) {
    std::fs::write(path, text).unwrap();
    let out = Command::new(kilnd_bin())
        .arg("--check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running kilnd.
pub struct Kilnd {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub api: PathBuf,
    pub stderr: Arc<Mutex<String>>,
}

impl Kilnd {
    /// Starts kilnd on `config` text in a fresh directory and waits until
    /// it says it is ready.
    pub fn start(tag: &str, config: &str) -> Kilnd {
        let dir = scratch(tag);
        let path = dir.join("services.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_in(dir, path)
    }

    /// Starts kilnd on an existing file.
    pub fn start_in(dir: PathBuf, config: PathBuf) -> Kilnd {
        Self::launch(dir, config, &Opts::default())
    }

    /// Starts kilnd on `config` text in a fresh directory with a
    /// descriptor limit (soft and hard) of `nofile`.
    pub fn start_limited(tag: &str, config: &str, nofile: u64) -> Kilnd {
        let dir = scratch(tag);
        let path = dir.join("services.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_with(dir, path, move |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    /// Starts kilnd on an existing file; `customize` may change its
    /// command (limits, inherited descriptors) before it is spawned.
    pub fn start_with(
        dir: PathBuf,
        config: PathBuf,
        customize: impl FnOnce(&mut Command),
    ) -> Kilnd {
        Self::launch_with(dir, config, &Opts::default(), customize)
    }

    /// Starts kilnd on an existing file with `opts`.
    pub fn launch(dir: PathBuf, config: PathBuf, opts: &Opts) -> Kilnd {
        Self::launch_with(dir, config, opts, |_| {})
    }

    /// [`Kilnd::launch`], with `customize` changing the command before it
    /// is spawned.
    pub fn launch_with(
        dir: PathBuf,
        config: PathBuf,
        opts: &Opts,
        customize: impl FnOnce(&mut Command),
    ) -> Kilnd {
        let api = dir.join("api.sock");
        let mut cmd = Command::new(kilnd_bin());
        customize(&mut cmd);
        cmd.arg("--config").arg(&config);
        match &opts.api {
            Some(a) if a.is_empty() => {}
            Some(a) => {
                cmd.arg("--api").arg(a);
            }
            None => {
                cmd.arg("--api").arg(format!("unix:{}", api.display()));
            }
        }
        cmd.arg("--kiln").arg(kiln_bin());
        if !opts.quiet {
            cmd.arg("--verbose");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let tty = opts.tty.then(openpty);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &tty {
                Some((_, slave)) => Stdio::from(slave.try_clone().unwrap()),
                None => Stdio::piped(),
            })
            .spawn()
            .expect("spawn kilnd");
        drop(cmd);
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let err: Box<dyn Read + Send> = match tty {
                // Our slave descriptor goes; kilnd's keeps the terminal open.
                Some((master, _slave)) => Box::new(std::fs::File::from(master)),
                None => Box::new(child.stderr.take().unwrap()),
            };
            let log = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    // A terminal ends lines with \r\n.
                    let line = line.trim_end_matches('\r').to_string();
                    if line.starts_with("kilnd: ready") {
                        let _ = tx.send(());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let k = Kilnd {
            child,
            dir,
            config,
            api,
            stderr,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("kilnd did not become ready:\n{}", k.log());
        }
        k
    }

    /// What kilnd printed so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// One API request.
    pub fn call(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.api).expect("connect to API");
        // A kilnd whose API stopped accepting fails the test, not hangs it.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: kilnd\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        if let Err(e) = s.read_to_string(&mut raw) {
            panic!(
                "no answer from the API to {method} {path}: {e}\n{}",
                self.log()
            );
        }
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP answer");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    /// One sample of `/metrics`, by its name and labels
    /// (`kilnd_requests_total{service="web"}`); 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (st, text) = self.call("GET", "/metrics");
        assert_eq!(st, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    /// `GET /v1/services`.
    pub fn services(&self) -> Value {
        let (st, body) = self.call("GET", "/v1/services");
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// One service's JSON.
    pub fn service(&self, name: &str) -> Value {
        self.services()
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// The address kilnd bound for a service.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.service(name)["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits (bounded) until `cond` holds for a service's JSON.
    pub fn wait_for(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.service(name);
            if cond(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {v:#}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_child(&mut self.child, Duration::from_secs(20)).expect("kilnd did not exit on SIGTERM")
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive client of the probe image.
pub struct Client {
    pub s: TcpStream,
}

/// What the probe answered: its boot id and the echoed body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub boot: u64,
    pub body: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect to service");
        // Fails only on a connection already reset (refused by kilnd).
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        Client { s }
    }

    /// Sends one request (without waiting for the answer). A connection
    /// kilnd refused may fail here: its [`Client::answer`] is `None`.
    pub fn send(&mut self, path: &str, body: &[u8]) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = self.s.write_all(head.as_bytes());
        let _ = self.s.write_all(body);
    }

    /// Reads one answer; `None` when the connection ends first.
    pub fn answer(&mut self) -> Option<Answer> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                // A socket read with a timeout is not restarted after the
                // process is stopped and resumed, or frozen and thawed
                // (signal(7)): seen here as a spurious EINTR.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Said on the test's output, which is shown when it fails.
                other => {
                    eprintln!(
                        "client {:?}: no answer after {} bytes of head: {other:?}",
                        self.s.local_addr(),
                        head.len()
                    );
                    return None;
                }
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).ok()?;
        let text_end = body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b' ')
            .nth(1)
            .map(|(i, _)| i)
            .unwrap();
        let prefix = String::from_utf8_lossy(&body[..text_end]).into_owned();
        let mut it = prefix.split(' ');
        let boot = it.next().unwrap().parse().unwrap();
        let n: usize = it.next().unwrap().parse().unwrap();
        let rest = body[text_end + 1..].to_vec();
        assert_eq!(rest.len(), n);
        Some(Answer { boot, body: rest })
    }

    /// One request and its answer.
    pub fn request(&mut self, path: &str, body: &[u8]) -> Option<Answer> {
        self.send(path, body);
        self.answer()
    }
}

/// A body of `n` recognisable bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
