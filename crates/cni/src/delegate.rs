//! Flannel-compatible delegate mode: a config written for flannel's CNI plugin (`subnetFile`,
//! `dataDir`, `delegate`) works unchanged. ADD renders the delegate's config from subnet.env
//! exactly as flannel does (type `bridge`, `name`, `mtu` = FLANNEL_MTU, `ipMasq` =
//! !FLANNEL_IPMASQ, `isGateway` true, host-local IPAM with one range per node subnet, IPv4 then
//! IPv6, and a route to each cluster network), saves it as `dataDir/<containerID>` and runs the delegate from CNI_PATH; DEL
//! replays the saved config. The saved file is flannel's format, so either plugin can DEL what the
//! other added.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::subnet_env::NodeEnv;
use serde_json::{json, Map, Value};

use crate::error::{CniError, ErrorCode};
use crate::invocation::{Command, Invocation};
use crate::types::{NetConf, DEFAULT_DELEGATE_DATA_DIR};

/// The delegate's config, as flannel's plugin (v1.1.0, the one flannel v0.20.0 ships) renders it
/// (flannel_linux.go getDelegateIPAM, doCmdAdd).
pub fn render(conf: &NetConf, env: &NodeEnv) -> Result<Map<String, Value>, CniError> {
    let mut delegate = conf.delegate.clone().unwrap_or_default();
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "'delegate' dictionary, if present, must have a (string) 'type' field",
        ));
    }
    for owned in ["name", "ipam"] {
        if delegate.contains_key(owned) {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("'delegate' dictionary must not have '{owned}' field, it is set from the network config"),
            ));
        }
    }
    if let Some(rc) = &conf.runtime_config {
        delegate.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    delegate.insert("name".into(), json!(conf.name));
    delegate.entry("type").or_insert(json!("bridge"));
    delegate.entry("ipMasq").or_insert(json!(!env.ipmasq));
    delegate.entry("mtu").or_insert(json!(env.mtu));
    if delegate["type"] == "bridge" {
        delegate.entry("isGateway").or_insert(json!(true));
    }
    delegate.insert("cniVersion".into(), json!(conf.cni_version));

    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert(json!("host-local"));
    // `[[{subnet: v4}], [{subnet: v6}]]`: one range set per family, so host-local gives one
    // address of each; flannel masks FLANNEL_SUBNET to the subnet (net.ParseCIDR).
    let ranges = env
        .families()
        .map(|f| json!([{ "subnet": f.range().to_string() }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        None => Vec::new(),
        Some(Value::Array(r)) => r.clone(),
        Some(_) => {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "ipam.routes must be a list of {\"dst\": ...}",
            ))
        }
    };
    routes.extend(env.families().map(|f| json!({ "dst": f.network.trunc().to_string() })));
    ipam.insert("routes".into(), Value::Array(routes));
    delegate.insert("ipam".into(), Value::Object(ipam));
    Ok(delegate)
}

fn data_dir(conf: &NetConf) -> PathBuf {
    PathBuf::from(conf.data_dir.as_deref().unwrap_or(DEFAULT_DELEGATE_DATA_DIR))
}

fn find_plugin(inv: &Invocation, plugin: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("delegate type {plugin:?} is not a plugin name"),
        ));
    }
    if inv.path.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_PATH is not set; delegate mode needs it to find the delegate plugin",
        ));
    }
    inv.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!(
                    "delegate plugin {plugin:?} is not in CNI_PATH ({}); install it there or change delegate.type",
                    inv.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs the delegate with `command` and `config` on stdin; its stdout on success.
fn invoke(inv: &Invocation, command: Command, config: &[u8], plugin: &str) -> Result<Vec<u8>, CniError> {
    let path = find_plugin(inv, plugin)?;
    let vars = Invocation { command, ..inv.clone() }.env_vars();
    let mut child = Process::new(&path)
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("run delegate {}", path.display()), &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config)
            .map_err(|e| CniError::io(format!("write the config to delegate {plugin}"), &e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for delegate {plugin}"), &e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    // The delegate's own CNI error keeps its code; anything else is ours.
    #[derive(serde::Deserialize)]
    struct Wire {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    Err(match serde_json::from_slice::<Wire>(&out.stdout) {
        Ok(w) => CniError {
            code: w.code,
            msg: format!("delegate {plugin} {} failed: {}", command.as_str(), w.msg),
            details: w.details,
        },
        Err(_) => CniError::new(
            ErrorCode::DelegateFailed,
            format!(
                "delegate {plugin} {} failed ({}): {}",
                command.as_str(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        ),
    })
}

fn plugin_type(config: &Map<String, Value>) -> String {
    config
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string()
}

fn saved_path(conf: &NetConf, inv: &Invocation) -> PathBuf {
    data_dir(conf).join(&inv.container_id)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CniError::io(format!("create {}", dir.display()), &e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| CniError::io(format!("save the delegate config to {}", path.display()), &e))
}

/// ADD: render, save, delegate; on failure the delegate's DEL and the saved file undo it.
pub fn add(conf: &NetConf, inv: &Invocation, env: &NodeEnv) -> Result<Vec<u8>, CniError> {
    let rendered = render(conf, env)?;
    let plugin = plugin_type(&rendered);
    let bytes = serde_json::to_vec(&rendered).expect("a JSON map serializes");
    let saved = saved_path(conf, inv);
    write_private(&saved, &bytes)?;
    match invoke(inv, Command::Add, &bytes, &plugin) {
        Ok(out) => Ok(out),
        Err(e) => {
            if invoke(inv, Command::Del, &bytes, &plugin).is_ok() {
                let _ = std::fs::remove_file(&saved);
            }
            Err(e)
        }
    }
}

/// DEL: replays the saved config; a container never added (no saved file) is success.
pub fn del(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    let saved = saved_path(conf, inv);
    let bytes = match std::fs::read(&saved) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CniError::io(format!("read {}", saved.display()), &e)),
    };
    let Ok(config) = serde_json::from_slice::<Map<String, Value>>(&bytes) else {
        // Unreadable: nothing can be replayed; the interface goes away with the namespace.
        let _ = std::fs::remove_file(&saved);
        return Ok(());
    };
    invoke(inv, Command::Del, &bytes, &plugin_type(&config))?;
    let _ = std::fs::remove_file(&saved);
    Ok(())
}

/// CHECK: the container must have a saved config. (The container side is then checked by the
/// caller like a built-in container: flannel's plugin answers CHECK with success without looking,
/// and the delegate bridge's own CHECK fails on the route-without-gateway flannel's IPAM renders.)
pub fn check(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    let saved = saved_path(conf, inv);
    if saved.is_file() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "no delegate config saved for container {} at {}",
                inv.container_id,
                saved.display()
            ),
        ))
    }
}

/// GC: forgets saved configs of containers not in `cni.dev/valid-attachments`, then lets the
/// delegate collect its own garbage with the freshly rendered config.
pub fn gc(conf: &NetConf, inv: &Invocation, env: &NodeEnv) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(data_dir(conf)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !valid.iter().any(|a| a.container_id == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let mut rendered = render(conf, env)?;
    if let Some(v) = conf.valid_attachments.as_ref() {
        let list: Vec<Value> = v
            .iter()
            .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        rendered.insert("cni.dev/valid-attachments".into(), Value::Array(list));
    }
    let bytes = serde_json::to_vec(&rendered).expect("a JSON map serializes");
    invoke(inv, Command::Gc, &bytes, &plugin_type(&rendered)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> NodeEnv {
        crate::subnet_env::parse(
            "subnet.env",
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap()
    }

    #[test]
    fn renders_both_ranges_and_routes_for_dual_stack_and_one_for_ipv6_only() {
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .unwrap();
        let dual = crate::subnet_env::parse(
            "subnet.env",
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n\
             FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let r = render(&conf, &dual).unwrap();
        assert_eq!(
            r["ipam"],
            json!({"type": "host-local",
                   "ranges": [[{"subnet": "10.5.72.0/24"}], [{"subnet": "fc00:0:0:1::/64"}]],
                   "routes": [{"dst": "10.5.0.0/16"}, {"dst": "fc00::/48"}]})
        );
        let v6 = crate::subnet_env::parse(
            "subnet.env",
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let r = render(&conf, &v6).unwrap();
        assert_eq!(
            r["ipam"],
            json!({"type": "host-local", "ranges": [[{"subnet": "fc00:0:0:1::/64"}]], "routes": [{"dst": "fc00::/48"}]})
        );
    }

    #[test]
    fn renders_flannels_delegate_config() {
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .unwrap();
        let r = Value::Object(render(&conf, &env()).unwrap());
        assert_eq!(
            r,
            json!({
                "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "hairpinMode": true,
                "isDefaultGateway": true, "ipMasq": false, "mtu": 1450, "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.5.72.0/24"}]],
                         "routes": [{"dst": "10.5.0.0/16"}]}
            })
        );
    }

    #[test]
    fn delegate_keys_win_and_owned_keys_are_refused() {
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"type":"ipvlan","mtu":1400,"ipMasq":true},
                "ipam":{"routes":[{"dst":"192.0.2.0/24"}]}}"#,
        )
        .unwrap();
        let r = render(&conf, &env()).unwrap();
        assert_eq!(
            (r["type"].clone(), r["mtu"].clone(), r["ipMasq"].clone()),
            (json!("ipvlan"), json!(1400), json!(true))
        );
        assert!(r.get("isGateway").is_none());
        assert_eq!(
            r["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24"}, {"dst": "10.5.0.0/16"}])
        );
        let (conf, _) =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"name":"x"}}"#).unwrap();
        assert_eq!(render(&conf, &env()).unwrap_err().code, 7);
    }
}
