//! Shared by the boot tests: building images once and running `kiln`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The kiln binary under test.
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root());
    c
}

/// Builds the crate at `dir` (relative to the root) once per test process
/// and returns the image path.
pub fn image(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // One build at a time: cargo serializes on the target dir anyway.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(d, _)| d == dir) {
        return p.clone();
    }
    let out = kiln()
        .args(["build", "-q", dir])
        .output()
        .expect("run kiln build");
    assert!(
        out.status.success(),
        "kiln build {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = Path::new(dir)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let path = root().join("target/kiln").join(format!("{name}.kiln"));
    assert!(path.is_file(), "{} was not produced", path.display());
    built.push((dir.to_string(), path.clone()));
    path
}

/// Whether hvt can run here; prints a loud notice when it cannot.
pub fn hvt_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !ok {
            eprintln!(
                "\n*** SKIPPING hvt boot tests: /dev/kvm cannot be opened on this host ***\n"
            );
        }
        ok
    })
}

/// The tenders to test on this host.
pub fn tenders() -> Vec<&'static str> {
    let mut t = vec!["spt"];
    if hvt_available() {
        t.push("hvt");
    }
    t
}

/// Result of one `kiln run`.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn finish(out: Output) -> Run {
    use std::os::unix::process::ExitStatusExt;
    Run {
        status: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kiln run --tender T [extra...] IMAGE [args...]`.
pub fn run(tender: &str, image: &Path, extra: &[&str], args: &[&str]) -> Run {
    let mut c = kiln();
    c.args(["run", "--tender", tender]).args(extra).arg(image);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    finish(c.output().expect("run kiln"))
}
