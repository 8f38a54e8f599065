//! `weft`: weft's operator CLI. Each subcommand's work lives in the library (`weft::lab`, ...).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What `weft --version` prints after the name: the version and the git revision built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("WEFT_GIT_REVISION"), ")");

#[derive(Debug, Parser)]
#[command(name = "weft", version = VERSION, about = "weft operator tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A multi-host weft cluster on this machine, built from network namespaces.
    #[command(subcommand)]
    Lab(weft::lab::cli::LabCommand),
    /// The cluster's leases as etcd holds them (same --etcd-* flags as weftd).
    Leases(weft::leases::LeasesArgs),
    /// How a packet travels from a local pod to a pod address, from this node's live tables.
    Trace(weft::trace::TraceArgs),
    /// mk-docker-opts: turn subnet.env into dockerd options (--bip, --ip-masq, --mtu).
    DockerOpts(weft::docker_opts::DockerOptsArgs),
}

fn main() -> ExitCode {
    // Output piped into `head` and the like ends quietly when the reader goes, as other
    // command-line tools do, rather than panicking on EPIPE.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(command) => command.run().map_err(anyhow::Error::from),
        Command::DockerOpts(args) => weft::docker_opts::run_docker_opts(&args)
            .map(|_| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Trace(args) => weft::trace::run(&args),
        Command::Leases(args) => weft::leases::run(&args).map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
