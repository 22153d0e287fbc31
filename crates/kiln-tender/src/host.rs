//! The host resources of one instance: console, clocks and the devices its
//! manifest declares.

use crate::block::BLOCK_SIZE;
use crate::inherit::{self, FdError, InheritError};
use crate::net::{self, Backend, Keep, NetDevice, NetError, PlanError};
use crate::policy::{Disk, HostFds, NetFd};
use crate::ready::ReadySignal;
use crate::RunConfig;
use kiln_abi::{device, DeviceInfo, DEVICE_NAME_LEN, MAX_DEVICES};
use kiln_image::device_name;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

/// Why an instance's host side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TenderError {
    /// A declared device has no backend.
    #[error("the image declares block device '{0}' but no --disk {0}=FILE was given")]
    MissingDisk(String),
    /// A backend for a device the image does not declare.
    #[error("--disk {name}: the image declares no block device named '{name}' (it declares: {declared})")]
    UndeclaredDisk {
        /// The name given.
        name: String,
        /// What the image declares.
        declared: String,
    },
    /// The network flags do not fit the image.
    #[error(transparent)]
    NetPlan(#[from] PlanError),
    /// A network backend could not be set up.
    #[error("network device '{name}'")]
    Net {
        /// Device name.
        name: String,
        /// What went wrong.
        #[source]
        source: NetError,
    },
    /// A disk file could not be opened.
    #[error("cannot open disk '{name}' at {path}")]
    OpenDisk {
        /// Device name.
        name: String,
        /// File path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A disk file's size is not a multiple of the block size.
    #[error("disk '{name}' at {path} is {size} bytes, not a multiple of {BLOCK_SIZE}")]
    DiskSize {
        /// Device name.
        name: String,
        /// File path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// `--ready-fd N` names no usable descriptor.
    #[error(transparent)]
    ReadyFd(#[from] FdError),
    /// One descriptor for two purposes.
    #[error(transparent)]
    FdShared(InheritError),
    /// SIGPIPE could not be ignored.
    #[error("cannot ignore SIGPIPE (needed with --ready-fd and --net fd:N)")]
    Sigpipe(#[source] std::io::Error),
    /// The arguments and environment do not fit the boot block.
    #[error("arguments and environment need {0} bytes, more than the {max} kiln passes to an image", max = crate::BOOT_BLOCK_MAX)]
    BootBlockTooLarge(u64),
}

/// One attached device.
#[derive(Debug)]
pub(crate) enum Device {
    Block {
        file: File,
        capacity: u64,
    },
    Net {
        dev: NetDevice,
        /// Keeps the backend's helper process (passt) for as long as the
        /// device lives.
        _keep: Keep,
    },
    /// A network device lent to a tender's own I/O path (hvt's shared
    /// rings, see [`Host::lend_net`]).
    Lent {
        /// Readable when POLL should report the device ready.
        wake: RawFd,
        /// As for `Net`.
        _keep: Keep,
    },
}

/// The host side of one instance.
#[derive(Debug)]
pub struct Host {
    pub(crate) devices: Vec<(DeviceInfo, Device)>,
    /// READY and `--ready-fd`.
    pub(crate) ready: ReadySignal,
}

impl Host {
    /// Attaches the devices the image's manifest declares, and only those.
    pub fn open(cfg: &RunConfig) -> Result<Host, TenderError> {
        let manifest = cfg.image.manifest();
        let declared = &manifest.devices[..manifest.device_count as usize];
        for (name, _) in &cfg.disks {
            if !declared
                .iter()
                .any(|d| d.kind == device::BLOCK && device_name(d) == name)
            {
                let list: Vec<&str> = declared.iter().map(device_name).collect();
                return Err(TenderError::UndeclaredDisk {
                    name: name.clone(),
                    declared: if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    },
                });
            }
        }
        let nets: Vec<(usize, &str)> = declared
            .iter()
            .enumerate()
            .filter(|(_, d)| d.kind == device::NET)
            .map(|(i, d)| (i, device_name(d)))
            .collect();
        let net_plans = net::plan(&nets, &cfg.net)?;
        // Inherited descriptors first: claiming them makes them
        // close-on-exec, so that no helper started below (passt) keeps
        // them open.
        let ready_fd = match cfg.ready_fd {
            Some(fd) => {
                if net_plans.iter().any(|p| p.backend == Backend::Fd(fd)) {
                    return Err(TenderError::FdShared(InheritError::Shared(fd)));
                }
                inherit::check_ready(fd)?;
                Some(inherit::claim(fd, inherit::READY_FLAG)?)
            }
            None => None,
        };
        let mut sockets = Vec::with_capacity(net_plans.len());
        for plan in &net_plans {
            let socket = net::claim_socket(plan).map_err(|source| TenderError::Net {
                name: device_name(&declared[plan.index]).to_string(),
                source,
            })?;
            sockets.push(socket);
        }
        if ready_fd.is_some() || sockets.iter().any(Option::is_some) {
            // A reader or peer that went away must cost a failed write,
            // not the process.
            net::ignore_sigpipe().map_err(TenderError::Sigpipe)?;
        }
        let mut devices = Vec::new();
        for (index, d) in declared.iter().enumerate() {
            let name = device_name(d);
            match d.kind {
                device::BLOCK => {
                    let path = cfg
                        .disks
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, p)| p.clone())
                        .ok_or_else(|| TenderError::MissingDisk(name.to_string()))?;
                    let open_err = |source| TenderError::OpenDisk {
                        name: name.to_string(),
                        path: path.clone(),
                        source,
                    };
                    let file = File::options()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .map_err(open_err)?;
                    let capacity = file.metadata().map_err(open_err)?.len();
                    if capacity % u64::from(BLOCK_SIZE) != 0 {
                        return Err(TenderError::DiskSize {
                            name: name.to_string(),
                            path,
                            size: capacity,
                        });
                    }
                    let mut info = DeviceInfo {
                        kind: device::BLOCK,
                        unit: BLOCK_SIZE,
                        capacity,
                        ..DeviceInfo::default()
                    };
                    info.name[..DEVICE_NAME_LEN].copy_from_slice(&d.name);
                    devices.push((info, Device::Block { file, capacity }));
                }
                _ => {
                    // `plan` returns one plan per network device.
                    let Some(at) = net_plans.iter().position(|p| p.index == index) else {
                        return Err(PlanError::Unplanned(name.to_string()).into());
                    };
                    let plan = &net_plans[at];
                    let mac = net::random_mac(index);
                    let (dev, keep) =
                        net::attach(plan, d.name, mac, cfg.verbose, sockets[at].take()).map_err(
                            |source| TenderError::Net {
                                name: name.to_string(),
                                source,
                            },
                        )?;
                    let mut info = DeviceInfo {
                        kind: device::NET,
                        unit: net::MTU,
                        mac,
                        net: plan.config,
                        ..DeviceInfo::default()
                    };
                    info.name[..DEVICE_NAME_LEN].copy_from_slice(&d.name);
                    devices.push((info, Device::Net { dev, _keep: keep }));
                }
            }
        }
        Ok(Host {
            devices,
            ready: ReadySignal::new(ready_fd, cfg.started, cfg.verbose),
        })
    }

    /// A host with the given network devices only: for tests of the
    /// hypercall path with fake backends.
    #[cfg(test)]
    pub(crate) fn with_net(devs: Vec<NetDevice>) -> Host {
        let devices = devs
            .into_iter()
            .map(|dev| {
                let info = DeviceInfo {
                    kind: device::NET,
                    unit: net::MTU,
                    ..DeviceInfo::default()
                };
                (
                    info,
                    Device::Net {
                        dev,
                        _keep: Keep::Nothing,
                    },
                )
            })
            .collect();
        Host {
            devices,
            ready: ReadySignal::new(None, std::time::Instant::now(), false),
        }
    }

    /// The devices as the image sees them in BootInfo, in manifest order.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|(info, _)| *info).collect()
    }

    /// The descriptors the hypercall path uses, with the sizes the
    /// sandboxes pin on them ([`crate::Policy::hypercall_path`]): the block
    /// devices' files and capacities (BLOCK_READ and BLOCK_WRITE use
    /// `pread64`/`pwrite64` on these and on no others), the network
    /// backends on the hypercall path with the most each writes at once,
    /// and `--ready-fd`.
    pub fn sandbox_fds(&self) -> HostFds {
        let mut fds = HostFds {
            ready: self.ready_fd(),
            ..HostFds::default()
        };
        for (_, d) in &self.devices {
            match d {
                Device::Block { file, capacity } => fds.disks.push(Disk {
                    fd: file.as_raw_fd(),
                    capacity: *capacity,
                }),
                Device::Net { dev, .. } => {
                    if let Some(fd) = dev.fd() {
                        fds.nets.push(NetFd {
                            fd,
                            largest_write: dev.largest_write() as u64,
                        });
                    }
                }
                Device::Lent { .. } => {}
            }
        }
        fds
    }

    /// The descriptor READY writes its byte to (`--ready-fd`), if any: the
    /// sandboxes allow one `write` on it.
    pub fn ready_fd(&self) -> Option<RawFd> {
        self.ready.fd()
    }

    /// Whether the application has called READY.
    pub fn is_ready(&self) -> bool {
        self.ready.sent()
    }

    /// The network backends' descriptors: NET_READ, NET_WRITE and POLL use
    /// `read`, `write` and `ppoll` on these (and on no others). Empty when
    /// the image has no connected network device; POLL then sleeps with
    /// `clock_nanosleep` as before and needs no `ppoll`.
    pub fn net_fds(&self) -> Vec<RawFd> {
        self.devices
            .iter()
            .filter_map(|(_, d)| match d {
                Device::Net { dev, .. } => dev.fd(),
                Device::Block { .. } | Device::Lent { .. } => None,
            })
            .collect()
    }

    /// The counters of the network device at manifest index `index`.
    pub fn net_stats(&self, index: usize) -> Option<net::Stats> {
        match self.devices.get(index) {
            Some((_, Device::Net { dev, .. })) => Some(dev.stats()),
            _ => None,
        }
    }

    /// Takes the network device at BootInfo index `index` out of the
    /// hypercall path, for a tender that moves its frames itself (hvt's
    /// NET_RINGS). From then on NET_READ and NET_WRITE on it answer ENODEV,
    /// and POLL reports it ready (bit `index`) while `wake` is readable;
    /// the borrower drains `wake`. `None` (and no change) when `index` is
    /// not a network device still on the hypercall path. Allocation-free.
    pub fn lend_net(&mut self, index: u64, wake: RawFd) -> Option<NetDevice> {
        let (_, slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.devices.get_mut(i))?;
        if !matches!(slot, Device::Net { .. }) {
            return None;
        }
        let lent = Device::Lent {
            wake,
            _keep: Keep::Nothing,
        };
        match std::mem::replace(slot, lent) {
            Device::Net { dev, _keep } => {
                *slot = Device::Lent { wake, _keep };
                Some(dev)
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    /// The network device at BootInfo index `index`.
    pub(crate) fn net_device(&mut self, index: u64) -> Option<&mut NetDevice> {
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.devices.get_mut(i))
        {
            Some((_, Device::Net { dev, .. })) => Some(dev),
            _ => None,
        }
    }

    /// POLL: waits until a network device has a frame for NET_READ or the
    /// monotonic clock reaches `deadline_ns`; returns the ready bits (bit
    /// `i` for device `i`). Allocation-free.
    pub(crate) fn poll(&mut self, deadline_ns: u64) -> u64 {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; MAX_DEVICES];
        let mut owner = [0usize; MAX_DEVICES];
        loop {
            // Frames already buffered need no waiting.
            let mut ready = 0u64;
            let mut count = 0;
            for (i, (_, d)) in self.devices.iter_mut().enumerate().take(MAX_DEVICES) {
                if let Device::Lent { wake, .. } = d {
                    fds[count] = libc::pollfd {
                        fd: *wake,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    owner[count] = i;
                    count += 1;
                    continue;
                }
                let Device::Net { dev, .. } = d else {
                    continue;
                };
                if dev.has_buffered_frame() {
                    ready |= 1 << i;
                }
                if let Some(fd) = dev.fd() {
                    fds[count] = libc::pollfd {
                        fd,
                        events: dev.poll_events(),
                        revents: 0,
                    };
                    owner[count] = i;
                    count += 1;
                }
            }
            let now = crate::sys::clock_ns(libc::CLOCK_MONOTONIC);
            // With input already waiting, or the deadline past, look at the
            // descriptors without waiting.
            let timeout = if ready != 0 || deadline_ns <= now {
                Some(0)
            } else if deadline_ns == u64::MAX {
                None
            } else {
                Some(deadline_ns - now)
            };
            if count == 0 {
                if timeout != Some(0) {
                    crate::sys::sleep_until(deadline_ns);
                }
                return ready;
            }
            match net::poll_fds(&mut fds[..count], timeout) {
                Ok(0) => {}
                Ok(_) => {
                    for (slot, pfd) in fds[..count].iter().enumerate() {
                        if pfd.revents == 0 {
                            continue;
                        }
                        let i = owner[slot];
                        let has_input = match self.devices.get_mut(i) {
                            Some((_, Device::Net { dev, .. })) => dev.on_poll(pfd.revents),
                            Some((_, Device::Lent { .. })) => true,
                            _ => false,
                        };
                        if has_input {
                            ready |= 1 << i;
                        }
                    }
                }
                // EINVAL/ENOMEM: nothing sensible to wait on; report what
                // is known rather than spin.
                Err(_) => return ready,
            }
            if ready != 0 || timeout == Some(0) {
                return ready;
            }
            // Woken for output only, or by a partial frame: wait on.
        }
    }
}
