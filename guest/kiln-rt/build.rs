//! Makes `kiln.ld` available to the final link: copies it into `OUT_DIR` and
//! adds that directory to the linker search path, so that an image built with
//! `-Clink-arg=-Tkiln.ld` (what `kiln build` passes) finds it.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("kiln.ld", out.join("kiln.ld")).expect("copy kiln.ld into OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=kiln.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
