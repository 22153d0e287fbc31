//! What the integration tests of kiln-cli, kiln-hvt and kilnd share: the
//! repository root, guest images built once per test process, whether hvt
//! and passt are there (with a loud notice when not), scratch directories,
//! free ports and waiting for processes.
//!
//! A dev-dependency only. Each test binary links its own copy, so "once"
//! means once per test process. How a test gets its `kiln` binary stays
//! with the test: kiln-cli passes its own `CARGO_BIN_EXE_kiln`, kilnd
//! builds one with a nested cargo, kiln-hvt looks next to its test binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Says loudly on stderr that something is not tested here, and why.
pub fn skip(why: &str) {
    eprintln!("\n*** SKIPPING: {why} ***\n");
}

/// Builds the guest crate at `dir` (relative to the root) with
/// `kiln build`, once per test process, and returns the image path
/// (`target/kiln/NAME.kiln`). `kiln` is the binary to build with; a test
/// process passes the same one every time.
pub fn image(kiln: &Path, dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    // One build at a time: cargo serializes on the target dir anyway.
    let mut built = BUILT
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(d, _)| d == dir) {
        return p.clone();
    }
    let out = Command::new(kiln)
        .current_dir(root())
        .args(["build", "-q", dir])
        .output()
        .expect("run kiln build");
    assert!(
        out.status.success(),
        "kiln build {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = Path::new(dir).file_name().unwrap().to_string_lossy();
    let path = root().join("target/kiln").join(format!("{name}.kiln"));
    assert!(path.is_file(), "{} was not produced", path.display());
    built.push((dir.to_string(), path.clone()));
    path
}

/// Whether hvt can run here (/dev/kvm opens read-write). Asked once per
/// test process; when it cannot, prints a loud notice that `what` (say
/// "hvt boot tests") is skipped.
pub fn hvt_available(what: &str) -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !ok {
            eprintln!("\n*** SKIPPING {what}: /dev/kvm cannot be opened on this host ***\n");
        }
        ok
    })
}

/// The tenders to test on this host: spt, and hvt where
/// [`hvt_available`] (`what` as there).
pub fn tenders(what: &str) -> Vec<&'static str> {
    if hvt_available(what) {
        vec!["spt", "hvt"]
    } else {
        vec!["spt"]
    }
}

/// Whether `passt` runs here. Asked once per test process; when it does
/// not, says loudly "passt is not installed: `consequence`".
pub fn passt_available(consequence: &str) -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let found = Command::new("passt")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            skip(&format!("passt is not installed: {consequence}"));
        }
        found
    })
}

/// A loopback port that was free a moment ago, for TCP and UDP both.
pub fn free_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        return free_port();
    }
    port
}

/// A fresh, empty directory for one test: under the temporary directory,
/// named after the test process, `tag` and a counter.
pub fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "kiln-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits up to `limit` for a child to exit; `None` when it still runs.
pub fn wait_child(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits up to `limit` until process `pid` is gone (or a zombie about to
/// be reaped); false when it is still there.
pub fn wait_gone(pid: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
