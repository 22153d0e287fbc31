//! Networking end to end: real images (examples/http, examples/echo)
//! served through `-p` (user mode, passt) on every tender that supports it,
//! and through a tap device inside a network namespace the test creates
//! (root only), with malformed and oversized frames injected on the tap
//! while the instance keeps serving. Clients are plain std sockets; traffic
//! goes only to loopback or into the test's own namespaces.
//!
//! Tests that cannot run here (no root, no passt, a tender without network
//! support) say so loudly on stderr and pass.

mod common;

use common::{image, kiln, tcp_syn_frame, tenders};
use kiln_testkit::{free_port, passt_available, skip, wait_gone};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for anything to happen (a hang, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn have_passt() -> bool {
    passt_available("user-mode networking tests do not run")
}

/// A running `kiln run`, its output collected line by line.
struct Instance {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    seen: VecDeque<String>,
}

impl Instance {
    /// `[ip netns exec NS] kiln run -v --tender T ARGS... IMAGE`.
    fn start(tender: &str, args: &[&str], image: &Path, netns: Option<&str>) -> Instance {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kiln")]);
                c.current_dir(common::root());
                c
            }
            None => kiln(),
        };
        cmd.args(["run", "-v", "--tender", tender])
            .args(args)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kiln");
        let (tx, lines) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (pipe, tag) in [
            (Box::new(out) as Box<dyn Read + Send>, "out"),
            (Box::new(err), "err"),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("[{tag}] {line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Instance {
            child,
            lines,
            log,
            seen: VecDeque::new(),
        }
    }

    fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`; `Err(output)` when the
    /// instance ends or nothing comes.
    fn wait_for(&mut self, needle: &str) -> Result<String, String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        let started = Instant::now();
        loop {
            let left = PATIENCE.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_back(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.output())
                }
            }
        }
    }

    fn expect(&mut self, needle: &str) -> String {
        match self.wait_for(needle) {
            Ok(l) => l,
            Err(out) => panic!("no line with {needle:?}; output:\n{out}"),
        }
    }

    /// The passt pid from the `-v` line, if user mode.
    fn passt_pid(&mut self) -> Option<u64> {
        let line = self.wait_for("passt pid").ok()?;
        let rest = line.split("passt pid ").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the instance (by its pid) and returns its output.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the readers drain.
        std::thread::sleep(Duration::from_millis(50));
        self.output()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tenders whose networking works here. hvt is tried once with a real
/// image; a tender without network support is skipped loudly.
fn net_tenders() -> Vec<&'static str> {
    static LIST: OnceLock<Vec<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list = vec!["spt"];
        if !tenders().contains(&"hvt") {
            return list;
        }
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:80");
        let mut inst = Instance::start("hvt", &["-p", &publish], &image("examples/http"), None);
        let works = inst.wait_for("http: listening").is_ok()
            && http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/health")
                .is_ok_and(|r| r.body == "ok\n" || r.body == "ok");
        let out = inst.stop();
        if works {
            list.push("hvt");
        } else {
            skip(&format!(
                "hvt has no working network support yet; its network tests do not run. Its output:\n{out}"
            ));
        }
        list
    })
    .clone()
}

/// One HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: String,
    body: String,
}

/// Reads one response (with Content-Length) from `stream`.
fn read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => head.push(byte[0]),
            // A socket read with a timeout is not restarted after the
            // process is stopped and resumed (or frozen and thawed).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers: head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, PATIENCE)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_write_timeout(Some(PATIENCE))?;
    Ok(s)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut s)
}

/// Closes `s` with a reset (SO_LINGER with a zero timeout).
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct of the size given; the socket is open.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(s);
}

/// GET /, /json and /health on one keep-alive connection, then requests
/// cut short by a reset, then a fresh GET: the server answers throughout.
fn exercise_http(addr: SocketAddr, who: &str) {
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{who}: connect {addr}: {e}"));
    for (path, want) in [
        ("/", "Hello from kiln!"),
        ("/json", "\"server\":\"kiln\""),
        ("/health", "ok"),
    ] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
        let r = read_response(&mut s).unwrap_or_else(|e| panic!("{who}: GET {path}: {e}"));
        assert_eq!(r.status, 200, "{who}: GET {path}: {r:?}");
        assert!(r.body.contains(want), "{who}: GET {path}: {r:?}");
    }
    let r = {
        write!(s, "GET /nothing-here HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
        read_response(&mut s).unwrap()
    };
    assert_eq!(r.status, 404, "{who}: {r:?}");
    drop(s);
    // Peers that reset mid-request.
    for _ in 0..50 {
        let s = connect(addr).unwrap();
        (&s).write_all(b"GET / HTTP/1.1\r\nHost: ki").unwrap();
        reset(s);
    }
    let r = http_get(addr, "/").unwrap_or_else(|e| panic!("{who}: GET after resets: {e}"));
    assert_eq!(r.status, 200, "{who}: {r:?}");
    assert!(r.headers.contains("HTTP/1.1 200"), "{who}: {r:?}");
}

#[test]
fn http_over_a_published_port_and_passt_ends_with_the_instance() {
    if !have_passt() {
        return;
    }
    let img = image("examples/http");
    for t in net_tenders() {
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:80");
        let mut inst = Instance::start(t, &["-p", &publish], &img, None);
        inst.expect("http: listening on :80");
        inst.expect("http: address 10.0.2.15/24");
        let passt = inst.passt_pid().expect("the -v line names passt's pid");
        exercise_http(SocketAddr::from(([127, 0, 0, 1], port)), t);
        assert!(inst.alive(), "{t}: {}", inst.output());
        let out = inst.stop();
        assert!(
            wait_gone(passt, PATIENCE),
            "{t}: passt {passt} outlived its instance\n{out}"
        );
        // The port is free again.
        TcpListener::bind(("127.0.0.1", port)).unwrap();

        // An instance that ends by itself takes its passt along too.
        let mut inst = Instance::start(t, &["-p", &publish, "-e", "PORT=none"], &img, None);
        let passt = inst.passt_pid().expect("the -v line names passt's pid");
        inst.expect("PORT must be a port number");
        let status = inst.child.wait().unwrap();
        assert_eq!(status.code(), Some(2), "{t}: {}", inst.output());
        assert!(
            wait_gone(passt, PATIENCE),
            "{t}: passt {passt} outlived its instance\n{}",
            inst.output()
        );
    }
}

#[test]
fn a_published_port_in_use_is_a_clear_error() {
    if !have_passt() {
        return;
    }
    let img = image("examples/http");
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    for t in tenders() {
        let out = kiln()
            .args(["run", "--tender", t, "-p", &format!("{port}:80")])
            .arg(&img)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{t}: {err}");
        assert!(
            err.contains(&format!(
                "cannot publish tcp port 0.0.0.0:{port}: the port is already in use"
            )),
            "{t}: {err}"
        );
    }
}

#[test]
fn bad_network_flags_exit_2_and_flags_need_a_network_device() {
    let hello = image("examples/hello");
    for (flag, value, says) in [
        ("-p", "80", "is not [ADDR:]HOST_PORT:GUEST_PORT"),
        ("-p", "8080:0", "guest port '0' is not a port number"),
        ("-p", "8080:80/sctp", "unknown protocol 'sctp'"),
        ("--net", "bridge", "is not a network backend"),
        ("--net", "tap:", "is not a valid interface name"),
        ("--ip", "10.0.0.2", "is not ADDR/PREFIX"),
        ("--ip", "10.0.0.2/40", "prefix length 40 is above 32"),
        ("--gateway", "10.0.0", "invalid"),
    ] {
        let out = kiln()
            .args(["run", flag, value])
            .arg(&hello)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    for t in tenders() {
        for args in [
            &["-p", "8080:80"][..],
            &["--net", "tap:kiln0"],
            &["--ip", "10.0.0.2/24"],
        ] {
            let out = kiln()
                .args(["run", "--tender", t])
                .args(args)
                .arg(&hello)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{t} {args:?}: {err}");
            assert!(
                err.contains("but the image declares no network device"),
                "{t} {args:?}: {err}"
            );
        }
    }
    // Flags that contradict each other for an image with a network device.
    let http = image("examples/http");
    for (args, says) in [
        (
            &["--net", "tap:kiln0", "-p", "8080:80"][..],
            "no network device uses it",
        ),
        (&["--gateway", "10.0.0.1"], "--gateway needs --ip"),
        (
            &["--net", "other=user"],
            "declares no network device named 'other'",
        ),
    ] {
        let out = kiln()
            .args(["run", "--tender", "spt"])
            .args(args)
            .arg(&http)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Sends `data` on a fresh connection (from a second thread, so that
/// large transfers do not deadlock), half-closes, and reads to EOF.
fn tcp_round_trip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut s = connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 253 + seed) as u8).collect()
}

/// UDP echoes through `addr` from a socket on `from`, one datagram of each
/// size, each compared byte for byte.
fn udp_echoes(addr: SocketAddr, from: Ipv4Addr, sizes: &[usize], who: &str) {
    let udp = UdpSocket::bind((from, 0)).unwrap();
    let mut buf = vec![0u8; 65536];
    for &size in sizes {
        let data = pattern(size, 7 + size);
        // UDP may lose a datagram (an ARP exchange, a fragment): retry. A
        // late echo of an earlier try or size has another length: skipped.
        let mut answered = false;
        'tries: for _ in 0..5 {
            udp.send_to(&data, addr)
                .unwrap_or_else(|e| panic!("{who}: send {size} bytes: {e}"));
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                udp.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    break;
                };
                assert_eq!(peer, addr, "{who}");
                if n == size {
                    assert!(
                        buf[..n] == data[..],
                        "{who}: the UDP echo of {size} bytes differs"
                    );
                    answered = true;
                    break 'tries;
                }
            }
        }
        assert!(answered, "{who}: no UDP echo of {size} bytes");
    }
}

/// TCP echoes of several sizes, `concurrent` connections at once, and
/// UDP echoes up to the largest datagram one frame carries. Larger ones are
/// lost without harm on the paths this is used on (passt, and a tap whose
/// MTU is above the guest's); those that arrive in fragments are covered by
/// `udp_beyond_the_mtu_and_bulk_tcp_both_ways_over_a_tap`.
fn exercise_echo(addr: SocketAddr, concurrent: usize, udp_from: Option<Ipv4Addr>, who: &str) {
    for size in [0, 1, 1400, 1500, 9000, 100_000] {
        let data = pattern(size, size);
        let got = tcp_round_trip(addr, data.clone());
        assert!(
            got == data,
            "{who}: TCP echo of {size} bytes came back as {} bytes",
            got.len()
        );
    }

    // All connections open at once, then each one used.
    let mut conns: Vec<TcpStream> = (0..concurrent)
        .map(|i| connect(addr).unwrap_or_else(|e| panic!("{who}: connection {i}: {e}")))
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("connection {i:04} says hello\n").as_bytes())
            .unwrap_or_else(|e| panic!("{who}: write on connection {i}: {e}"));
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let want = format!("connection {i:04} says hello\n");
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{who}: read on connection {i}: {e}"));
        assert_eq!(got, want.as_bytes(), "{who}: connection {i}");
    }
    drop(conns);

    let Some(from) = udp_from else {
        return;
    };
    udp_echoes(addr, from, &[0, 1, 1400, 1472], who);
    // Larger datagrams reach the guest in frames above its MTU here (passt
    // does not fragment; a tap whose MTU is larger fragments to that MTU),
    // which the tender drops, without harm: the next small one is answered.
    let udp = UdpSocket::bind((from, 0)).unwrap();
    let mut buf = vec![0u8; 65536];
    for size in [1500, 9000, 60_000] {
        udp.send_to(&pattern(size, 1), addr).unwrap();
    }
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok((n, _)) = udp.recv_from(&mut buf) {
        assert!(n <= 1472, "{who}: a {n}-byte datagram came back whole");
    }
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answered = false;
    for _ in 0..5 {
        udp.send_to(b"still there?", addr).unwrap();
        if let Ok((n, _)) = udp.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"still there?", "{who}");
            answered = true;
            break;
        }
    }
    assert!(answered, "{who}: no UDP echo after oversized datagrams");
}

/// UDP through passt stays at 1,472 bytes (one frame): the passt we run
/// (Debian's 0.0~git20230309) neither fragments nor reassembles. A larger
/// datagram from the host reaches the guest as one frame above the MTU of
/// 1500 (passt wrote a 3,042-byte frame for a 3,000-byte datagram), which
/// the tender drops; fragments from the guest come out as their first
/// fragment alone, a datagram cut to 1,472 bytes. Over a tap, the host's
/// kernel fragments and reassembles: see
/// `udp_beyond_the_mtu_and_bulk_tcp_both_ways_over_a_tap`.
#[test]
fn tcp_and_udp_echo_over_published_ports() {
    if !have_passt() {
        return;
    }
    let img = image("examples/echo");
    for t in net_tenders() {
        let port = free_port();
        let tcp = format!("127.0.0.1:{port}:7");
        let udp = format!("127.0.0.1:{port}:7/udp");
        let mut inst = Instance::start(t, &["-p", &tcp, "-p", &udp], &img, None);
        inst.expect("echo: listening on :7");
        exercise_echo(
            SocketAddr::from(([127, 0, 0, 1], port)),
            200,
            Some(Ipv4Addr::LOCALHOST),
            t,
        );
        assert!(inst.alive(), "{t}: {}", inst.output());
        inst.stop();
    }
}

// ---------------------------------------------------------------------
// Tap devices inside a network namespace (root only).

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists for one test.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Netns {
    /// A fresh namespace with loopback up, or `None` (loudly) when this
    /// host does not allow it.
    fn new() -> Option<Netns> {
        if !is_root() {
            skip("tap tests need root (network namespaces and tap devices)");
            return None;
        }
        let name = format!(
            "kiln-test-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = ip(&["netns", "add", &name]) {
            skip(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap();
    }

    fn has_link(&self, name: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", name]).is_ok()
    }

    /// A persistent tap `name` with the host side at `addr` (CIDR), up.
    fn tap(&self, name: &str, addr: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        self.ip(&["addr", "add", addr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace file descriptor that stays open
            // across the call; it changes only this (new, short-lived)
            // thread's network namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A raw AF_PACKET socket bound to interface `ifname` (of the calling
/// thread's namespace).
struct RawLink {
    fd: std::os::fd::OwnedFd,
}

impl RawLink {
    fn open(ifname: &str) -> RawLink {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; all zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        RawLink { fd }
    }

    /// Sends one frame; the kernel may refuse some (too short for it).
    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        n == frame.len() as isize
    }
}

/// Frames meant to hurt: bad headers, lies about lengths, fragments,
/// garbage, jumbo frames, aimed at `mac`/`ip`.
fn hostile_frames(mac: [u8; 6], ip: [u8; 4]) -> Vec<Vec<u8>> {
    let src = [0x02, 0xee, 0, 0, 0, 1];
    let eth = |dst: [u8; 6], ethertype: u16, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let ipv4 = |total_len: u16, ihl: u8, flags_frag: u16, proto: u8, body: &[u8]| {
        let mut h = vec![
            0x40 | ihl,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            64,
            proto,
            0,
            0,
            10,
            77,
            0,
            1,
        ];
        h[2..4].copy_from_slice(&total_len.to_be_bytes());
        h[6..8].copy_from_slice(&flags_frag.to_be_bytes());
        h.extend_from_slice(&ip);
        h.extend_from_slice(body);
        h
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut frames = vec![
        // Header only; and a truncated IPv4 header.
        eth(mac, 0x0800, &[]),
        eth(mac, 0x0800, &[0x45, 0, 0]),
        // IPv4 claiming 65535 bytes in a small frame; IHL below 5; IHL 15
        // with no options present.
        eth(mac, 0x0800, &ipv4(65535, 5, 0, 6, &[0; 20])),
        eth(mac, 0x0800, &ipv4(40, 2, 0, 6, &[0; 20])),
        eth(mac, 0x0800, &ipv4(40, 15, 0, 6, &[0; 20])),
        // Fragments (first, middle, overlapping) of a datagram that never
        // completes.
        eth(mac, 0x0800, &ipv4(1500, 5, 0x2000, 17, &[0xab; 1480])),
        eth(mac, 0x0800, &ipv4(1500, 5, 0x2000 | 100, 17, &[0xcd; 1480])),
        eth(mac, 0x0800, &ipv4(1500, 5, 50, 17, &[0xef; 1480])),
        // TCP SYN to port 80 with a garbage checksum and a data offset of 15.
        eth(
            mac,
            0x0800,
            &ipv4(
                40,
                5,
                0,
                6,
                &[
                    0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xf0, 0x02, 0xff, 0xff, 0xde, 0xad,
                    0, 0,
                ],
            ),
        ),
        // ARP with impossible sizes; broadcast junk; IPv6 junk; VLAN tag.
        eth(mac, 0x0806, &[0, 1, 8, 0, 200, 200, 0, 1]),
        eth([0xff; 6], 0x0806, &[0xff; 28]),
        eth(mac, 0x86dd, &[0x60, 0, 0, 0, 0xff, 0xff, 58, 255]),
        eth(mac, 0x8100, &[0, 1, 8, 0, 0x45]),
        // Jumbo frames (the tap's MTU is raised for them): the tender drops
        // anything longer than MTU + 14.
        eth(mac, 0x0800, &ipv4(8986, 5, 0, 17, &vec![0x11; 8966])),
        eth(mac, 0x0800, &vec![0x22; 16_000]),
    ];
    // A well-formed SYN to port 80 from the unspecified address 0.0.0.0
    // (smoltcp before 0.13.1 panicked on it).
    frames.push(tcp_syn_frame((src, [0; 4], 12345), (mac, ip, 80)));
    // Random bytes behind a plausible header, in random lengths.
    for _ in 0..2000 {
        let len = (rand() % 1600) as usize;
        let body: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        let ethertype = [0x0800, 0x0806, 0x86dd, rand() as u16][(rand() % 4) as usize];
        frames.push(eth(mac, ethertype, &body));
    }
    frames
}

/// The MAC the instance announced (`net: NAME up, mac 02-6b-...`).
fn guest_mac(inst: &mut Instance) -> [u8; 6] {
    let line = inst.expect("up, mac ");
    let text = line
        .split("mac ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(['-', ':']).enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

#[test]
fn http_and_echo_over_a_tap_survive_hostile_frames() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.tap("ktap0", "10.77.0.1/24");
    // Let jumbo frames through the host side, to reach the tender.
    ns.ip(&["link", "set", "ktap0", "mtu", "16100"]);
    let http = image("examples/http");
    let echo = image("examples/echo");
    for t in net_tenders() {
        let args = [
            "--net",
            "tap:ktap0",
            "--ip",
            "10.77.0.2/24",
            "--gateway",
            "10.77.0.1",
        ];
        let mut inst = Instance::start(t, &args, &http, Some(&ns.name));
        inst.expect("http: listening on :80");
        inst.expect("http: address 10.77.0.2/24");
        let mac = guest_mac(&mut inst);
        let addr = SocketAddr::from(([10, 77, 0, 2], 80));
        let who = format!("{t} over tap");
        let who2 = who.clone();
        ns.run(move || exercise_http(addr, &who2));

        let frames = hostile_frames(mac, [10, 77, 0, 2]);
        let count = frames.len();
        let sent = ns.run(move || {
            let link = RawLink::open("ktap0");
            frames.iter().filter(|f| link.send(f)).count()
        });
        assert!(
            sent > count / 2,
            "{who}: only {sent} of {count} frames went out"
        );
        let who2 = who.clone();
        ns.run(move || exercise_http(addr, &who2));
        assert!(inst.alive(), "{who}: {}", inst.output());
        inst.stop();

        let mut inst = Instance::start(t, &args, &echo, Some(&ns.name));
        inst.expect("echo: listening on :7");
        let addr = SocketAddr::from(([10, 77, 0, 2], 7));
        let who2 = who.clone();
        ns.run(move || exercise_echo(addr, 200, Some(Ipv4Addr::new(10, 77, 0, 1)), &who2));
        assert!(inst.alive(), "{who}: {}", inst.output());
        inst.stop();
    }
}

/// Over a tap with the guest's MTU (1500): UDP echoes of every size up to
/// the largest IPv4 datagram (the host's kernel sends datagrams above 1,472
/// bytes in fragments and reassembles those the guest sends); then a bulk
/// TCP echo in both directions at once (16 MB written while the echo is
/// read back), byte for byte: flow control and window updates under a full
/// receive buffer on both sides. (Through passt the bulk echo can stall;
/// the README says why.)
#[test]
fn udp_beyond_the_mtu_and_bulk_tcp_both_ways_over_a_tap() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.tap("kfrag0", "10.80.0.1/24");
    let echo = image("examples/echo");
    for t in net_tenders() {
        let args = ["--net", "tap:kfrag0", "--ip", "10.80.0.2/24"];
        let mut inst = Instance::start(t, &args, &echo, Some(&ns.name));
        inst.expect("echo: listening on :7");
        let addr = SocketAddr::from(([10, 80, 0, 2], 7));
        let who = format!("{t} over a tap");
        let who2 = who.clone();
        ns.run(move || {
            udp_echoes(
                addr,
                Ipv4Addr::new(10, 80, 0, 1),
                &[0, 1, 1472, 1473, 3000, 8192, 20_000, 65_507],
                &who2,
            )
        });
        let data = pattern(16 << 20, 7);
        let sent = data.clone();
        let got = ns.run(move || tcp_round_trip(addr, sent));
        assert_eq!(got.len(), data.len(), "{who}: echoed length");
        assert!(got == data, "{who}: the echo differs from what was sent");
        assert!(inst.alive(), "{who}: {}", inst.output());
        inst.stop();
    }
}

#[test]
fn user_mode_works_on_a_host_with_only_loopback() {
    if !have_passt() {
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    // The namespace has `lo` and nothing else: no interface, no route.
    let img = image("examples/http");
    for t in net_tenders() {
        let mut inst = Instance::start(t, &["-p", "127.0.0.1:8080:80"], &img, Some(&ns.name));
        inst.expect("http: listening on :80");
        let who = format!("{t} with only loopback");
        ns.run(move || exercise_http(SocketAddr::from(([127, 0, 0, 1], 8080)), &who));
        assert!(inst.alive(), "{t}: {}", inst.output());
        inst.stop();
    }
}

#[test]
fn a_tap_created_by_kiln_goes_away_with_the_instance() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let http = image("examples/http");
    for t in net_tenders() {
        assert!(!ns.has_link("knew0"));
        let mut inst = Instance::start(
            t,
            &["--net", "tap:knew0", "--ip", "10.78.0.2/24"],
            &http,
            Some(&ns.name),
        );
        inst.expect("http: listening on :80");
        let line = inst.expect("net service0: tap knew0");
        assert!(line.contains("created"), "{t}: {line}");
        assert!(
            ns.has_link("knew0"),
            "{t}: the tap is not there while the instance runs"
        );
        // It came up: give the host side an address and talk to the guest.
        ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "knew0"]);
        let addr = SocketAddr::from(([10, 78, 0, 2], 80));
        let r = ns.run(move || http_get(addr, "/health"));
        assert_eq!(r.unwrap().status, 200, "{t}");
        inst.stop();
        let started = Instant::now();
        while ns.has_link("knew0") && started.elapsed() < PATIENCE {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!ns.has_link("knew0"), "{t}: the tap outlived the instance");
    }
}

#[test]
fn tap_errors_are_clear() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let http = image("examples/http");
    // Something that is not a tap: a tun device, and a veth.
    ns.ip(&["tuntap", "add", "dev", "ktun0", "mode", "tun"]);
    ns.ip(&[
        "link", "add", "kveth0", "type", "veth", "peer", "name", "kveth1",
    ]);
    // A tap already attached to a running instance.
    ns.tap("kbusy0", "10.79.0.1/24");
    let mut first = Instance::start("spt", &["--net", "tap:kbusy0"], &http, Some(&ns.name));
    first.expect("http: listening on :80");
    for (tap, says) in [
        ("ktun0", "'ktun0' exists and is not a tap device"),
        ("kveth0", "'kveth0' exists and is not a tap device"),
        ("kbusy0", "tap device 'kbusy0' is in use by another process"),
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_kiln")])
            .args(["run", "--tender", "spt", "--net", &format!("tap:{tap}")])
            .arg(&http)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{tap}: {err}");
        assert!(err.contains(says), "{tap}: {err}");
    }
    first.stop();
}
