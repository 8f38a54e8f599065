//! `weft docker-opts`: mk-docker-opts.sh's replacement. Reads subnet.env and writes dockerd
//! options (`--bip`, `--ip-masq`, `--mtu`) in the script's exact format, with its flags.

use std::path::PathBuf;

use weft_core::docker_opts::{render_docker_opts, DockerOptsFormat};
use weft_core::{SubnetEnv, SubnetEnvError};

#[derive(Debug, thiserror::Error)]
pub enum DockerOptsError {
    #[error("cannot read {path} (is weftd running and has it written subnet.env? -f names another file)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid subnet.env")]
    Parse {
        path: PathBuf,
        #[source]
        source: SubnetEnvError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The flags of mk-docker-opts.sh.
#[derive(Debug, Clone, clap::Args)]
pub struct DockerOptsArgs {
    /// Path to the subnet env file.
    #[arg(short = 'f', default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Path of the Docker env file to write.
    #[arg(short = 'd', default_value = "/run/docker_opts.env")]
    pub output: PathBuf,
    /// Output each Docker option as an individual var, e.g. DOCKER_OPT_MTU=1500.
    #[arg(short = 'i')]
    pub individual: bool,
    /// Output the combined Docker options into the DOCKER_OPTS var.
    #[arg(short = 'c')]
    pub combined: bool,
    /// Name of the combined options variable.
    #[arg(short = 'k', default_value = "DOCKER_OPTS")]
    pub combined_key: String,
    /// Do not output --ip-masq (for older Docker versions).
    #[arg(short = 'm')]
    pub no_ip_masq: bool,
}

/// Renders the file's text; `existing` is the combined variable's current value (the script
/// starts from `$DOCKER_OPTS`).
pub fn docker_opts_text(args: &DockerOptsArgs, existing: Option<String>) -> Result<String, DockerOptsError> {
    let text = std::fs::read_to_string(&args.subnet_file).map_err(|source| DockerOptsError::Read {
        path: args.subnet_file.clone(),
        source,
    })?;
    let env = SubnetEnv::parse(&text).map_err(|source| DockerOptsError::Parse {
        path: args.subnet_file.clone(),
        source,
    })?;
    Ok(render_docker_opts(
        &env,
        &DockerOptsFormat {
            individual: args.individual,
            combined: args.combined,
            combined_key: args.combined_key.clone(),
            ip_masq: !args.no_ip_masq,
            existing_combined: existing.unwrap_or_default(),
        },
    ))
}

/// Writes the options file (atomically) and returns what was written.
pub fn run_docker_opts(args: &DockerOptsArgs) -> Result<String, DockerOptsError> {
    let text = docker_opts_text(args, std::env::var(&args.combined_key).ok())?;
    let write_err = |source| DockerOptsError::Write {
        path: args.output.clone(),
        source,
    };
    let mut tmp = args.output.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, &text).map_err(write_err)?;
    std::fs::rename(&tmp, &args.output).map_err(write_err)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DockerOptsArgs,
    }

    #[test]
    fn flags_parse_like_the_script_and_file_is_written() {
        let dir = std::env::temp_dir().join(format!("weft-docker-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = dir.join("subnet.env");
        std::fs::write(
            &env,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let out = dir.join("docker_opts.env");
        let cli = Cli::parse_from([
            "x",
            "-f",
            env.to_str().unwrap(),
            "-d",
            out.to_str().unwrap(),
            "-c",
            "-k",
            "WEFT_TEST_UNSET_KEY",
        ]);
        let text = run_docker_opts(&cli.args).unwrap();
        assert_eq!(
            text,
            "WEFT_TEST_UNSET_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
        let missing = Cli::parse_from(["x", "-f", "/nonexistent/subnet.env"]);
        let e = docker_opts_text(&missing.args, None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/subnet.env"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
