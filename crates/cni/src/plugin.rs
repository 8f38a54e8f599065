//! One plugin invocation: environment + stdin in, stdout + exit status out. Chooses the mode
//! (delegate when the config has `delegate`, else built-in) and gates verbs by version.

use serde_json::{json, Value};

use crate::error::{CniError, ErrorCode};
use crate::invocation::{Command, Invocation};
use crate::netns::NetnsFile;
use crate::subnet_env::read as read_subnet_env;
use crate::types::{check_version, config_version, version_at_least, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::{builtin, delegate};

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

fn version_reply(stdin: &[u8]) -> Outcome {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| check_version(v).is_ok())
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    Outcome {
        stdout: json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
            .to_string()
            .into_bytes(),
        exit_code: 0,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("start the netlink runtime", &e))
}

/// Runs one invocation. `env` reads the `CNI_*` variables. An error is reported in the config's
/// cniVersion whenever stdin has one, however wrong the rest is; else in the newest version.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match run_inner(env, stdin) {
        Ok(stdout) => Outcome { stdout, exit_code: 0 },
        Err(e) => {
            let version = config_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
            Outcome {
                stdout: e.to_json(&version).into_bytes(),
                exit_code: 1,
            }
        }
    }
}

fn run_inner(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let inv = Invocation::from_env(env)?;
    if inv.command == Command::Version {
        return Ok(version_reply(stdin).stdout);
    }
    let (conf, _raw) = NetConf::parse(stdin)?;
    let needs = match inv.command {
        Command::Check => Some("0.4.0"),
        Command::Status | Command::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = needs {
        if !version_at_least(&conf.cni_version, min) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "{} needs cniVersion {min} or later; the config says {}",
                    inv.command.as_str(),
                    conf.cni_version
                ),
            ));
        }
    }
    if inv.command == Command::Status {
        return read_subnet_env(conf.subnet_file())
            .map(|_| Vec::new())
            .map_err(|e| CniError::new(ErrorCode::PluginNotAvailable, e.msg));
    }
    // The container's namespace is checked before anything is created, in both modes.
    let netns = match inv.command {
        Command::Add | Command::Check => Some(NetnsFile::open(&inv.netns)?),
        _ => None,
    };
    let netns = || netns.as_ref().expect("opened above for ADD and CHECK");
    if conf.delegate.is_some() {
        return match inv.command {
            Command::Add => delegate::add(&conf, &inv, &read_subnet_env(conf.subnet_file())?),
            Command::Del => delegate::del(&conf, &inv).map(|_| Vec::new()),
            Command::Check => {
                delegate::check(&conf, &inv)?;
                runtime()?
                    .block_on(builtin::check_container(&conf, &inv, netns()))
                    .map(|_| Vec::new())
            }
            Command::Gc => delegate::gc(&conf, &inv, &read_subnet_env(conf.subnet_file())?).map(|_| Vec::new()),
            Command::Status | Command::Version => unreachable!("answered above"),
        };
    }
    runtime()?.block_on(async {
        match inv.command {
            Command::Add => {
                let env = read_subnet_env(conf.subnet_file())?;
                builtin::add(&conf, &inv, netns(), &env)
                    .await
                    .map(|r| r.to_json().into_bytes())
            }
            Command::Del => builtin::del(&conf, &inv).await.map(|_| Vec::new()),
            Command::Check => {
                let env = read_subnet_env(conf.subnet_file())?;
                builtin::check(&conf, &inv, netns(), &env).await.map(|_| Vec::new())
            }
            Command::Gc => builtin::gc(&conf).await.map(|_| Vec::new()),
            Command::Status | Command::Version => unreachable!("answered above"),
        }
    })
}
