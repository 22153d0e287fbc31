//! `kilnd`: the kiln daemon.

use clap::Parser;
use kilnd::api::{self, ApiAddr};
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
                  # optional: concurrency = 16, cpu_limit = \"10m\", ready_timeout = \"10s\""
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

/// Lets kilnd hold a descriptor set of several per instance.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kilnd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "kilnd: {}: {} services, all images valid",
            args.config.display(),
            cfg.services.len()
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
    raise_fd_limit();
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
            "kilnd: {}: {} -> port {} of {} ({}, {} MiB, idle {} ms, up to {}{})",
            s.spec.name,
            s.bound,
            s.spec.guest_port,
            s.spec.image.display(),
            s.spec.tender.as_str(),
            s.spec.memory >> 20,
            s.spec.idle_timeout.as_millis(),
            s.spec.max_instances,
            if s.spec.warm { ", warm" } else { "" }
        );
    }
    let token = match &files.token_file {
        Some(f) => format!(" (token in {})", f.display()),
        None => String::new(),
    };
    eprintln!(
        "kilnd: ready; API on {api_addr}{token}; pid {}",
        std::process::id()
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
