//! What `kiln run` asks of a tender.

use kiln_image::Image;
use std::path::PathBuf;

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
}
