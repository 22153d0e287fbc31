//! The host resources of one instance: console, clocks and the devices its
//! manifest declares.

use crate::RunConfig;
use kiln_abi::{device, DeviceInfo, DEVICE_NAME_LEN};
use kiln_image::device_name;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

/// Block size of every block device.
pub const BLOCK_SIZE: u32 = 512;

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
    /// Networking is declared but not available yet.
    #[error("the image declares network device '{0}', but this kiln has no network backends yet")]
    NetUnsupported(String),
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
    /// The arguments and environment do not fit the boot block.
    #[error("arguments and environment need {0} bytes, more than the {max} kiln passes to an image", max = crate::BOOT_BLOCK_MAX)]
    BootBlockTooLarge(u64),
}

/// One attached device.
#[derive(Debug)]
pub(crate) enum Device {
    Block { file: File, capacity: u64 },
}

/// The host side of one instance.
#[derive(Debug)]
pub struct Host {
    pub(crate) devices: Vec<(DeviceInfo, Device)>,
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
        let mut devices = Vec::new();
        for d in declared {
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
                _ => return Err(TenderError::NetUnsupported(name.to_string())),
            }
        }
        Ok(Host { devices })
    }

    /// The devices as the image sees them in BootInfo, in manifest order.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|(info, _)| *info).collect()
    }

    /// Descriptors the hypercall path uses besides stdout and stderr: the
    /// sandbox of a tender admits I/O on these and no others.
    pub fn fds(&self) -> Vec<RawFd> {
        self.devices
            .iter()
            .map(|(_, d)| match d {
                Device::Block { file, .. } => file.as_raw_fd(),
            })
            .collect()
    }
}
