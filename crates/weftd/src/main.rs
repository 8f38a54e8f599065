//! weftd: the node daemon. It chooses the external interface, joins the cluster through etcd
//! (config, lease), writes subnet.env, sets up the backend's datapath and keeps the kernel in
//! line with the leases by reconcile until SIGTERM — which leaves the datapath in place, so a
//! restart drops no packet.

mod flags;
mod http;
mod metrics;
mod node;
mod notify;
mod services;
mod subnet_file;

use std::process::ExitCode;

use flags::Flags;

/// What `weftd --version` prints after the name: the version and the git revision built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("WEFT_GIT_REVISION"), ")");

fn main() -> ExitCode {
    let flags = Flags::parse_from_env_and_args();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        // Colours only on a terminal: under systemd the journal would show coloured lines as blobs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if flags.kube_subnet_mgr {
        tracing::error!("--kube-subnet-mgr is not supported: weft keeps leases in etcd; pass --etcd-endpoints instead");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(node::run(flags)) {
        Ok(()) => {
            notify::stopping();
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
