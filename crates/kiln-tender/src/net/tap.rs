//! The tap backend: `/dev/net/tun` attached to a tap device, one Ethernet
//! frame per `read` and per `write`, no packet-information header.
//!
//! An existing tap is used as it is (its owner configures addresses and
//! brings it up). One that does not exist is created when the process may
//! (CAP_NET_ADMIN), brought up, and left non-persistent: the kernel removes
//! it when its descriptor closes, that is when the instance ends, however
//! it ends.

use super::{sys, NetError};
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An attached tap.
#[derive(Debug)]
pub struct Tap {
    /// The nonblocking, close-on-exec descriptor.
    pub fd: OwnedFd,
    /// Whether kiln created the device (it vanishes with `fd`).
    pub created: bool,
}

/// Attaches to tap `name`, creating it if it does not exist.
pub fn open(name: &str) -> Result<Tap, NetError> {
    let existed = Path::new("/sys/class/net").join(name).exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(NetError::TunOpen)?;
    let fd = OwnedFd::from(file);
    if let Err(e) = sys::tun_set_tap(&fd, name) {
        let name = name.to_string();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) if existed => NetError::TapDenied(name),
            Some(libc::EPERM | libc::EACCES) => NetError::TapMissing(name),
            Some(libc::EBUSY) => NetError::TapBusy(name),
            Some(libc::EINVAL) if existed => NetError::NotATap(name),
            _ => NetError::TapSetup { name, source: e },
        });
    }
    if !existed {
        sys::link_up(name).map_err(|source| NetError::LinkUp {
            name: name.to_string(),
            source,
        })?;
    }
    Ok(Tap {
        fd,
        created: !existed,
    })
}
