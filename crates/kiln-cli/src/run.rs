//! `kiln run`: choose a tender and hand it the image.

use crate::build::{self, BuildArgs};
use crate::{chain, report};
use kiln_abi::EXIT_TENDER_ERROR;
use kiln_image::Image;
use kiln_tender::net::{Attach, Backend, Ipv4Cidr, NetOptions, Publish};
use kiln_tender::size::parse_size;
use kiln_tender::{inherit, RunConfig};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Smallest and largest guest memory kiln accepts.
const MEM_MIN: u64 = 2 << 20;
const MEM_MAX: u64 = 1 << 30;

/// Which tender runs the image.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenderChoice {
    /// hvt where /dev/kvm opens and a VM can be created, else spt.
    Auto,
    /// kiln's KVM monitor: the image runs at CPL3 in its own VM.
    Hvt,
    /// The process tender: the image runs in this process under seccomp.
    Spt,
}

/// Arguments of `kiln run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// An image file (NAME.kiln), or a crate directory to build first.
    pub target: PathBuf,
    /// Arguments passed to the image (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// The tender.
    #[arg(long, value_enum, default_value = "auto")]
    pub tender: TenderChoice,
    /// Guest memory: heap and stack (and, on hvt, the image itself).
    #[arg(long, default_value = "32M", value_parser = parse_mem)]
    pub mem: u64,
    /// An environment variable for the image (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// A host file backing a block device the image declares (repeatable).
    #[arg(long = "disk", value_name = "NAME=FILE", value_parser = parse_disk)]
    pub disks: Vec<(String, PathBuf)>,
    /// How the image's network device reaches the host (repeatable, one per
    /// device): `user` (the default: user-mode networking through passt,
    /// IPv4, no root needed), `tap:NAME` (an existing tap device, or a new
    /// one that lasts as long as the instance, as root), or `none` (not
    /// connected), or `fd:N` (an inherited descriptor N: an AF_UNIX
    /// SOCK_DGRAM or SOCK_SEQPACKET socket whose peer, such as kilnd,
    /// exchanges one Ethernet frame per message; addresses as for a tap).
    /// For an image with several network devices, name one:
    /// `--net service0=tap:kiln0`.
    #[arg(
        long = "net",
        value_name = "[DEVICE=]BACKEND",
        help_heading = "Networking"
    )]
    pub net: Vec<Attach>,
    /// Publish a guest port on the host through user-mode networking
    /// (repeatable): HOST_PORT:GUEST_PORT, optionally preceded by the host
    /// address to bind (default: all) and followed by /udp (default /tcp).
    /// Examples: -p 8080:80, -p 127.0.0.1:8080:80, -p 5353:53/udp.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[ADDR:]HOST:GUEST[/udp]",
        help_heading = "Networking"
    )]
    pub publish: Vec<Publish>,
    /// The guest's static IPv4 address and prefix length. With a tap
    /// device the guest otherwise asks DHCP; in user mode it defaults to
    /// 10.0.2.15/24.
    #[arg(long, value_name = "ADDR/PREFIX", help_heading = "Networking")]
    pub ip: Option<Ipv4Cidr>,
    /// The guest's IPv4 default gateway (with --ip). User mode defaults to
    /// 10.0.2.2, or the first address of the --ip subnet; through it the
    /// guest reaches the host's loopback.
    #[arg(long, value_name = "ADDR", help_heading = "Networking")]
    pub gateway: Option<Ipv4Addr>,
    /// Tell the process that started kiln when the application is ready to
    /// serve: N is an inherited descriptor (the write end of a pipe, or a
    /// socket) that gets one byte, 'R', when the application first listens
    /// with its address configured (kiln-rt's READY hypercall). It stays
    /// open until the instance ends, so the reader sees end of file then.
    /// Used by kilnd to hold a connection until the instance can take it.
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<RawFd>,
    /// Say which tender was picked, and print timings and counters.
    #[arg(short, long)]
    pub verbose: bool,
}

fn parse_mem(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(MEM_MIN..=MEM_MAX).contains(&n) || n % kiln_abi::PAGE_SIZE != 0 {
        return Err(format!(
            "{s}: guest memory must be a multiple of 4 KiB between 2M and 1G"
        ));
    }
    Ok(n)
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_disk(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not NAME=FILE")),
    }
}

/// Checks the inherited descriptors the flags name (`--net fd:N`,
/// `--ready-fd N`) before kiln opens anything itself, so that a number
/// that passes names the parent's descriptor and not one of kiln's.
fn check_inherited(args: &RunArgs) -> Result<(), inherit::InheritError> {
    let net: Vec<RawFd> = args
        .net
        .iter()
        .filter_map(|a| match a.backend {
            Backend::Fd(fd) => Some(fd),
            _ => None,
        })
        .collect();
    inherit::check_inherited(&inherit::Kernel, &net, args.ready_fd)
}

/// Runs the image; returns only when it could not be started (the tender
/// ends the process itself once the guest runs). `started` is when the
/// process started, for the `-v` ready time.
pub fn run(args: RunArgs, started: Instant) -> ExitCode {
    if let Err(msg) = check_inherited(&args) {
        eprintln!("kiln: {msg}");
        return ExitCode::from(EXIT_TENDER_ERROR);
    }
    let path = if args.target.is_dir() {
        let built = build::build(&BuildArgs {
            path: args.target.clone(),
            out_dir: None,
            quiet: !args.verbose,
        });
        match built {
            Ok(images) if images.len() == 1 => images[0].clone(),
            Ok(images) => {
                eprintln!(
                    "kiln: {} builds {} images; run one of them by path",
                    args.target.display(),
                    images.len()
                );
                return ExitCode::from(EXIT_TENDER_ERROR);
            }
            Err(e) => {
                report(&e);
                return ExitCode::from(EXIT_TENDER_ERROR);
            }
        }
    } else {
        args.target.clone()
    };
    let image = match Image::load(&path) {
        Ok(image) => image,
        Err(e) => {
            eprintln!("kiln: cannot run {}", path.display());
            report(&e);
            return ExitCode::from(EXIT_TENDER_ERROR);
        }
    };
    let name = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let cfg = RunConfig {
        image,
        args: std::iter::once(name).chain(args.args).collect(),
        env: args.env,
        mem_size: args.mem,
        disks: args.disks,
        verbose: args.verbose,
        net: NetOptions {
            attach: args.net,
            publish: args.publish,
            ip: args.ip,
            gateway: args.gateway,
        },
        ready_fd: args.ready_fd,
        started,
    };
    let tender = match args.tender {
        TenderChoice::Auto => match kiln_hvt::probe() {
            Ok(()) => {
                verbose(&cfg, "tender hvt (auto: /dev/kvm is usable)");
                TenderChoice::Hvt
            }
            Err(why) => {
                verbose(
                    &cfg,
                    &format!("tender spt (auto: hvt is unavailable: {why})"),
                );
                TenderChoice::Spt
            }
        },
        chosen => chosen,
    };
    // The tenders return only errors: once the guest runs, they end the process.
    let failed = match tender {
        TenderChoice::Hvt => {
            let Err(e) = kiln_hvt::run(cfg);
            chain(&e)
        }
        _ => {
            let Err(e) = kiln_spt::run(cfg);
            chain(&e)
        }
    };
    eprintln!("kiln: cannot start the instance: {failed}");
    ExitCode::from(EXIT_TENDER_ERROR)
}

fn verbose(cfg: &RunConfig, msg: &str) {
    if cfg.verbose {
        eprintln!("kiln: {msg}");
    }
}
