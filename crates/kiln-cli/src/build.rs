//! `kiln build`: drives cargo with the flags that make a kiln image.
//!
//! An application is an ordinary Cargo crate that depends on kiln-rt. kiln
//! builds it for x86_64-unknown-linux-gnu with the stable toolchain, static
//! and non-PIE, linked at kiln_abi::IMAGE_BASE by kiln-rt's linker script,
//! with `panic = "abort"` and size optimizations, then checks the result
//! with the same validator every tender uses.

use kiln_image::{Image, ImageError};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Arguments of `kiln build`.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The application crate: a directory holding Cargo.toml.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Where images are written [default: $KILN_TARGET_DIR or target/kiln].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The path holds no crate.
    #[error("{0} is not a crate directory (no Cargo.toml in it)")]
    NotACrate(PathBuf),
    /// cargo could not be started.
    #[error("cannot run cargo")]
    Spawn(#[source] std::io::Error),
    /// cargo failed.
    #[error("cargo build of {0} failed (see the messages above)")]
    Cargo(PathBuf),
    /// The crate has no binary target.
    #[error("{0} built no executable: an image crate needs a [[bin]] target (src/main.rs)")]
    NoExecutable(PathBuf),
    /// The output is not a valid image.
    #[error("{path} is not a valid kiln image (does the crate call kiln_rt::entry!?)")]
    Image {
        /// The built file.
        path: PathBuf,
        /// What the validator found.
        #[source]
        source: ImageError,
    },
    /// Copying the image failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// The directory images go to.
pub fn out_dir(args: &BuildArgs) -> PathBuf {
    args.out_dir
        .clone()
        .or_else(|| std::env::var_os("KILN_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/kiln"))
}

/// The rustc flags of a kiln image.
pub fn rustflags() -> Vec<&'static str> {
    vec![
        "-Crelocation-model=static",
        "-Ctarget-cpu=x86-64",
        "-Clink-arg=-nostartfiles",
        "-Clink-arg=-nostdlib",
        "-Clink-arg=-static",
        "-Clink-arg=-no-pie",
        "-Clink-arg=-Wl,--build-id=none",
        "-Clink-arg=-Tkiln.ld",
    ]
}

/// Builds every binary of the crate at `args.path`; returns the images.
pub fn build(args: &BuildArgs) -> Result<Vec<PathBuf>, BuildError> {
    let manifest = args.path.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(args.path.clone()));
    }
    let out = out_dir(args);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(out.join("cargo"))
        .args(["--message-format", "json-render-diagnostics"]);
    for setting in [
        "profile.release.panic=\"abort\"",
        "profile.release.opt-level=\"s\"",
        "profile.release.lto=true",
        "profile.release.codegen-units=1",
        "profile.release.debug=false",
        "profile.release.strip=true",
        "profile.release.incremental=false",
    ] {
        cmd.args(["--config", setting]);
    }
    if args.quiet {
        cmd.arg("--quiet");
    }
    // Flags from the caller's environment would change how images link.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags().join("\x1f"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());

    let mut child = cmd.spawn().map_err(BuildError::Spawn)?;
    let mut executables = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" {
                if let Some(exe) = msg["executable"].as_str() {
                    executables.push(PathBuf::from(exe));
                }
            }
        }
    }
    let status = child.wait().map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Cargo(args.path.clone()));
    }
    if executables.is_empty() {
        return Err(BuildError::NoExecutable(args.path.clone()));
    }
    std::fs::create_dir_all(&out).map_err(|e| BuildError::Write(out.clone(), e))?;
    let mut images = Vec::new();
    for exe in executables {
        let image = install(&exe, &out)?;
        if !args.quiet {
            let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "kiln: built {} ({:.1} KiB)",
                image.display(),
                size as f64 / 1024.0
            );
        }
        images.push(image);
    }
    Ok(images)
}

/// Validates a built executable and copies it to `out/NAME.kiln`.
fn install(exe: &Path, out: &Path) -> Result<PathBuf, BuildError> {
    Image::load(exe).map_err(|source| BuildError::Image {
        path: exe.to_path_buf(),
        source,
    })?;
    let name = exe.file_stem().unwrap_or_default().to_string_lossy();
    let dest = out.join(format!("{name}.kiln"));
    // Copy through a temporary name so a running instance never sees half a file.
    let tmp = out.join(format!(".{name}.kiln.tmp"));
    std::fs::copy(exe, &tmp).map_err(|e| BuildError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, &dest).map_err(|e| BuildError::Write(dest.clone(), e))?;
    Ok(dest)
}
