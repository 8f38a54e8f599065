//! The CNI wire formats weft-cni reads and writes: network configuration, results, versions.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, ErrorCode};

/// The spec versions whose configs and results weft-cni speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version.
pub const LATEST_VERSION: &str = "1.1.0";

fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(t)
}

/// `v >= min` for two versions of the form major.minor.patch (false when `v` is not one).
pub fn version_at_least(v: &str, min: &str) -> bool {
    match (version_tuple(v), version_tuple(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// Refuses a version weft-cni does not speak (code 1).
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {v:?} is not supported; weft-cni supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin: weft-cni's own keys and flannel's.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// subnet.env written by weftd (flannel's key).
    #[serde(rename = "subnetFile")]
    pub subnet_file: Option<String>,
    /// Delegate mode: where rendered delegate configs are kept for DEL (flannel's key).
    #[serde(rename = "dataDir")]
    pub data_dir: Option<String>,
    /// Delegate mode: the plugin config to render (flannel's key). Its presence selects the mode.
    pub delegate: Option<Map<String, Value>>,
    /// Built-in mode: the bridge's name.
    pub bridge: Option<String>,
    #[serde(rename = "hairpinMode")]
    pub hairpin_mode: Option<bool>,
    /// Built-in mode: a default route via the gateway (true) or only a cluster-network route.
    #[serde(rename = "isDefaultGateway")]
    pub is_default_gateway: Option<bool>,
    /// Built-in mode: the address store (host-local's layout, so both can share it).
    #[serde(rename = "ipamDataDir")]
    pub ipam_data_dir: Option<String>,
    pub dns: Option<Value>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Delegate mode: passed through to the delegate's IPAM.
    pub ipam: Option<Map<String, Value>>,
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: Option<Map<String, Value>>,
}

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DELEGATE_DATA_DIR: &str = "/var/lib/cni/flannel";
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";

impl NetConf {
    /// Parses and validates the config: decoding errors are code 6, missing keys 7, versions 1.
    pub fn parse(stdin: &[u8]) -> Result<(NetConf, Map<String, Value>), CniError> {
        let raw: Map<String, Value> = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("the network configuration on stdin is not a JSON object: {e}"),
            )
        })?;
        let conf: NetConf = serde_json::from_value(Value::Object(raw.clone())).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("the network configuration has a key of the wrong type: {e}"),
            )
        })?;
        if conf.cni_version.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "the network configuration has no cniVersion; add e.g. \"cniVersion\": \"1.0.0\"",
            ));
        }
        check_version(&conf.cni_version)?;
        if conf.name.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "the network configuration has no name; add \"name\": \"<network>\"",
            ));
        }
        if let Some(b) = &conf.bridge {
            if b.is_empty() || b.len() > 15 || b.contains(['/', ' ', ':']) {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("bridge {b:?} is not a valid interface name (1-15 characters, no '/', ':' or space)"),
                ));
            }
        }
        Ok((conf, raw))
    }

    pub fn subnet_file(&self) -> &str {
        self.subnet_file.as_deref().unwrap_or(DEFAULT_SUBNET_FILE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Only from version 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4"; only in versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// An ADD result (also a CHECK's prevResult).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// Adapts the fields to `version`: `ips[].version` before 1.0.0, `interfaces[].mtu` from 1.1.0.
    pub fn for_version(mut self, version: &str) -> Self {
        let old = !version_at_least(version, "1.0.0");
        for ip in &mut self.ips {
            ip.version = old.then(|| "4".to_string());
        }
        if !version_at_least(version, "1.1.0") {
            for i in &mut self.interfaces {
                i.mtu = None;
            }
        }
        if !self.dns.is_object() {
            self.dns = Value::Object(Map::new());
        }
        self.cni_version = version.to_string();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a result always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(!version_at_least("x", "0.4.0"));
        assert!(check_version("0.2.0").is_err());
        assert_eq!(check_version("9.9.9").unwrap_err().code, 1);
    }

    #[test]
    fn parse_reports_codes() {
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"name":"n","type":"weft-cni"}"#).unwrap_err().code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","type":"weft-cni"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.1.0","name":"n","type":"weft-cni"}"#)
                .unwrap_err()
                .code,
            1
        );
        let (conf, _) = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni"}"#).unwrap();
        assert_eq!(conf.subnet_file(), "/run/flannel/subnet.env");
    }

    #[test]
    fn result_fields_follow_the_version() {
        let r = CniResult {
            cni_version: String::new(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.5.72.2/24".parse().unwrap(),
                gateway: Some("10.5.72.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![],
            dns: Value::Null,
        };
        let old: Value = serde_json::from_str(&r.clone().for_version("0.4.0").to_json()).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new: Value = serde_json::from_str(&r.for_version("1.1.0").to_json()).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        assert_eq!(new["dns"], serde_json::json!({}));
    }
}
