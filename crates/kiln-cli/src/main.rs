//! `kiln`: build Rust unikernels and run them.
#![forbid(unsafe_code)]

mod build;
mod daemon;
mod inspect;
mod run;

use clap::{Parser, Subcommand};
use kilnd_api::Route;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build Rust unikernels and run them on hvt (KVM) or spt (seccomp process)",
    long_about = "kiln turns a Rust crate that uses kiln-rt into one small bootable image \
                  and runs it in milliseconds, on its own KVM monitor (hvt) or inside a \
                  seccomp-confined process (spt).",
    after_help = "Examples:\n  \
        kiln build examples/hello            build target/kiln/hello.kiln\n  \
        kiln run examples/hello -- a b c     build if needed, boot, pass arguments\n  \
        kiln run --tender spt target/kiln/hello.kiln\n  \
        kiln inspect target/kiln/hello.kiln\n  \
        kiln up services.toml                run kilnd: start services on demand\n  \
        kiln ps                              kilnd's services and instances"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a kiln-rt crate into a bootable image (target/kiln/NAME.kiln).
    #[command(
        after_help = "Examples:\n  kiln build examples/hello\n  kiln build --out-dir /tmp/images ."
    )]
    Build(build::BuildArgs),
    /// Boot an image (or build a crate and boot it) and wait for it to end.
    ///
    /// The exit status is the image's exit code; 134 when it aborted (panic),
    /// 139 when it crashed (CPU fault, forbidden system call, bad hypercall),
    /// 125 when it could not be started.
    #[command(after_help = "Examples:\n  \
        kiln run examples/hello -- a b c\n  \
        kiln run --tender hvt --mem 64M -e GREETING=hi target/kiln/hello.kiln\n  \
        kiln run --disk data=disk.img target/kiln/store.kiln\n  \
        kiln run -p 8080:80 examples/http     then: curl http://127.0.0.1:8080/\n  \
        kiln run --net tap:kiln0 --ip 10.0.0.2/24 --gateway 10.0.0.1 examples/http\n  \
        kiln run --net fd:4 --ip 10.0.0.2/24 --ready-fd 3 IMAGE   (from kilnd)")]
    Run(run::RunArgs),
    /// Show an image's ABI version, entry point, segments, manifest and size.
    Inspect {
        /// The image file.
        image: PathBuf,
    },
    /// Run kilnd in the foreground with a services file (same as
    /// `kilnd --config FILE`).
    #[command(
        after_help = "Example:\n  kiln up services.toml    then, from another terminal: kiln ps"
    )]
    Up {
        /// The services file.
        config: PathBuf,
        /// Also echo every line instances print.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// List kilnd's services and instances: state, uptime, requests, memory.
    Ps {
        /// Print kilnd's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// Print the console output of a service's instances (and kilnd's lines
    /// about them).
    Logs {
        /// The service.
        service: String,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value = "200")]
        lines: usize,
        /// Write control characters and escape sequences the guest printed
        /// as they are (on a terminal they are otherwise shown as `\x1b`...).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// Stop a service's instances now (the next connection starts one again).
    Stop {
        /// The service.
        service: String,
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// Start one instance of a service ahead of demand and wait until it is ready.
    Start {
        /// The service.
        service: String,
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// Make kilnd re-read its services file (a bad file is reported and the
    /// running configuration stays).
    Reload {
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
    /// Stop every instance and kilnd itself.
    Down {
        #[command(flatten)]
        api: daemon::ApiArgs,
    },
}

/// An error and its causes on one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}

/// Prints an error with its chain of causes.
pub(crate) fn report(err: &dyn std::error::Error) {
    eprintln!("kiln: {}", chain(err));
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    match cli.command {
        Command::Build(args) => match build::build(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run::run(args, started),
        Command::Up {
            config,
            verbose,
            api,
        } => daemon::up(config, &api, verbose),
        Command::Ps { json, api } => daemon::ps(&api, json),
        Command::Logs {
            service,
            lines,
            raw,
            api,
        } => daemon::logs(&api, &service, lines, raw),
        Command::Stop { service, api } => daemon::service_action(&api, &Route::Stop { service }),
        Command::Start { service, api } => daemon::service_action(&api, &Route::Start { service }),
        Command::Reload { api } => daemon::daemon_action(&api, &Route::Reload),
        Command::Down { api } => daemon::daemon_action(&api, &Route::Shutdown),
        Command::Inspect { image } => match inspect::inspect(&image) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(&e);
                ExitCode::from(kiln_abi::EXIT_TENDER_ERROR)
            }
        },
    }
}
