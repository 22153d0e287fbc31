//! What `kiln run` asks of a tender.

use kiln_image::Image;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Instant;

/// Everything a tender needs to run one instance.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The validated image.
    pub image: Image,
    /// The command line the image sees; `args[0]` is the image's name.
    pub args: Vec<String>,
    /// The environment the image sees, each `KEY=VALUE`.
    pub env: Vec<String>,
    /// Guest memory in bytes (hvt: all of guest-physical memory; spt: the heap
    /// and stack together).
    pub mem_size: u64,
    /// Block devices: manifest name and the host file backing it.
    pub disks: Vec<(String, PathBuf)>,
    /// Print timings and counters to stderr.
    pub verbose: bool,
    /// Network backends, published ports and addresses.
    pub net: crate::net::NetOptions,
    /// `--ready-fd N`: an inherited descriptor (a pipe's write end or a
    /// socket) that gets one byte, `b'R'`, when the application calls
    /// READY. The tender takes ownership of it (see [`crate::inherit`]):
    /// it must not be owned by anything else in this process.
    pub ready_fd: Option<RawFd>,
    /// When `kiln run` started: the origin of the `-v` ready time.
    pub started: Instant,
}
