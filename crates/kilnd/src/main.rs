//! `kilnd`: the kiln daemon.

// Each instance's network link runs in kilnd, and a panic while handling
// one (a defect in the network stack that a guest's frames reach) must end
// that link alone: kiln-peer catches it at the link's edge, which only
// works when panics unwind.
#[cfg(panic = "abort")]
compile_error!(
    "kilnd must be built with panic = \"unwind\": a panic in one instance's network link would otherwise end kilnd and every instance"
);

use clap::Parser;
use kilnd::api::{self, ApiAddr};
use kilnd::capacity::{self, Host};
use kilnd::config;
use kilnd::daemon::{Daemon, Verbosity};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "kilnd",
    version,
    about = "Start kiln unikernels on demand and scale them to zero",
    long_about = "kilnd binds every service's host address itself. A connection to a \
                  service with no running instance starts one, is held (with any bytes \
                  already sent) until the instance's application says READY, and is then \
                  spliced through. Instances idle for their service's idle_timeout are \
                  stopped. The kiln CLI talks to kilnd through its API: kiln ps, kiln logs, \
                  kiln stop, kiln start, kiln reload, kiln down.",
    after_help = "Signals: SIGHUP reloads the configuration (a bad one is reported and the \
                  running one stays); SIGINT and SIGTERM stop every instance and exit.\n\n\
                  Example services.toml:\n  \
                  [[service]]\n  \
                  name = \"http-hello\"\n  \
                  image = \"target/kiln/http.kiln\"   # relative to this file\n  \
                  listen = \"127.0.0.1:8080\"\n  \
                  guest_port = 80\n  \
                  tender = \"spt\"                    # or \"hvt\", \"auto\"\n  \
                  memory = \"32M\"\n  \
                  idle_timeout = \"30s\"\n  \
                  max_instances = 4\n  \
                  warm = false\n  \
                  env = { GREETING = \"hi\" }\n  \
                  args = []\n  \
                  # optional: concurrency = 16, cpu_limit = \"10m\", ready_timeout = \"10s\",\n  \
                  # max_connections = (a quarter of the daemon's), max_starting = 4,\n  \
                  # first_byte_timeout = \"10s\" (\"0\": never close a silent client)\n\n  \
                  [daemon]                          # optional, limits over all services\n  \
                  max_connections = 10000           # default: half the descriptor limit\n  \
                  max_instances = 5000              # default: what descriptors and tasks allow\n  \
                  max_starting = 64\n\n\
                  --check (and every start and reload) refuses a configuration the host can never \
                  hold (one service's max_instances beyond the descriptors, tasks or memory, the \
                  warm services together beyond the descriptors or tasks) and warns, with the \
                  numbers, when all services at their peak would not fit."
)]
struct Args {
    /// The services file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Where the API listens: unix:PATH or ADDR:PORT [default: $KILN_API, else
    /// unix:$XDG_RUNTIME_DIR/kilnd/kilnd.sock, else unix:/tmp/kilnd-UID/kilnd.sock].
    /// On TCP every request needs the token kilnd writes next to that
    /// default socket (api-PORT.token); kiln reads it by itself.
    #[arg(long, value_name = "ADDR")]
    api: Option<ApiAddr>,
    /// The kiln binary that runs instances [default: the one next to kilnd,
    /// else `kiln` on PATH].
    #[arg(long, value_name = "PATH")]
    kiln: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Also echo every line instances print (kilnd always reports instance
    /// starts, READY, stops and exits, and keeps instance output for
    /// `kiln logs`).
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Report only crashes and errors.
    #[arg(short, long)]
    quiet: bool,
}

fn kiln_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("--kiln {}: no such file", p.display()))
        };
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kiln")))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kiln"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "cannot find the kiln binary next to kilnd or on PATH; pass --kiln PATH".to_string()
        })
}

/// Marks every descriptor kilnd inherited (beyond 0-2) close-on-exec, so
/// that none reaches a tender: kilnd opens all of its own that way.
fn cloexec_inherited() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on
    // descriptors of this process; nothing else runs yet.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number only changes its flags
        // (or fails with EBADF for the directory's, closed by now).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// The configuration at `path`, checked against the host; warnings are
/// printed.
fn load(path: &std::path::Path, host: &Host) -> Result<config::Config, String> {
    let cfg = config::load(path).map_err(|e| e.to_string())?;
    for w in capacity::check(&cfg, host).map_err(|e| e.to_string())? {
        eprintln!("kilnd: warning: {}: {w}", path.display());
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    cloexec_inherited();
    // Before anything else opens a descriptor: the descriptor budget is
    // the hard limit.
    capacity::raise_nofile();
    let args = Args::parse();
    let host = Host::probe();
    let cfg = match load(&args.config, &host) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kilnd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "kilnd: {}: {} services, all images valid, the host can hold them ({} descriptors, {} tasks, {} MiB of memory and swap)",
            args.config.display(),
            cfg.services.len(),
            host.descriptors,
            host.tasks,
            host.memory >> 20
        );
        return ExitCode::SUCCESS;
    }
    let kiln = match kiln_binary(args.kiln) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kilnd: {e}");
            return ExitCode::from(2);
        }
    };
    let api = args.api.unwrap_or_else(api::default_addr);
    // Before the runtime starts its threads: the UNIX socket is bound
    // under a umask set for that moment, and the umask is per process.
    let bound = match api::bind(&api) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kilnd: API {api}: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kilnd: cannot start the runtime: {e}");
            bound.files.remove();
            return ExitCode::FAILURE;
        }
    };
    let verbosity = match (args.quiet, args.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Output,
        _ => Verbosity::Events,
    };
    rt.block_on(run(cfg, kiln, api, bound, verbosity))
}

async fn run(
    cfg: config::Config,
    kiln: PathBuf,
    api_addr: ApiAddr,
    bound: api::Bound,
    verbosity: Verbosity,
) -> ExitCode {
    let config_path = cfg.path.clone();
    let daemon = Daemon::new(kiln, config_path.clone(), verbosity);
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("kilnd: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let files = bound.files;
    // What is open now (runtime, signals, the API listener) is the base
    // of kilnd's descriptor count.
    daemon.usage.recount();
    if let Err(e) = daemon.apply(cfg).await {
        eprintln!("kilnd: {e}");
        files.remove();
        return ExitCode::from(2);
    }
    let quit = Arc::new(Notify::new());
    let api_task = tokio::spawn(api::serve(
        bound.listener,
        Arc::new(api::Api {
            daemon: daemon.clone(),
            quit: quit.clone(),
            token: bound.token,
        }),
    ));
    for s in daemon.services() {
        eprintln!(
            "kilnd: {}: {} -> port {} of {} ({}, {} MiB, idle {} ms, up to {}{}, {} connections)",
            s.spec.name,
            s.bound,
            s.spec.guest_port,
            s.spec.image.display(),
            s.spec.tender.as_str(),
            s.spec.memory >> 20,
            s.spec.idle_timeout.as_millis(),
            s.spec.max_instances,
            if s.spec.warm { ", warm" } else { "" },
            daemon.limits().service_connections(&s.spec)
        );
    }
    let token = match &files.token_file {
        Some(f) => format!(" (token in {})", f.display()),
        None => String::new(),
    };
    eprintln!(
        "kilnd: ready; API on {api_addr}{token}; pid {}; {} of {} descriptors in use",
        std::process::id(),
        daemon.usage.fds(),
        daemon.usage.limit()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.notified() => break,
            _ = hup.recv() => match daemon.reload().await {
                Ok(msg) => eprintln!("kilnd: reloaded {}: {msg}", config_path.display()),
                Err(e) => eprintln!("kilnd: reload failed, keeping the running configuration: {e}"),
            },
        }
    }
    eprintln!("kilnd: stopping every instance");
    api_task.abort();
    daemon.shutdown().await;
    files.remove();
    eprintln!("kilnd: stopped");
    ExitCode::SUCCESS
}
