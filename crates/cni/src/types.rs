//! The CNI wire formats weft-cni reads and writes: network configuration, results, versions.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, ErrorCode};
use crate::invocation::is_valid_interface_name;

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

/// The `cniVersion` of the config on stdin, read as far as stdin is JSON: from a config that is
/// wrong in any other way, even one cut short after that key, so that an error can be reported in
/// the version the runtime asked for. None when stdin is not a JSON object or has no (string,
/// non-empty) cniVersion. A key given twice counts as JSON maps count it: the last one.
pub fn config_version(stdin: &[u8]) -> Option<String> {
    struct Finder<'a>(&'a mut Option<String>);
    impl<'de> DeserializeSeed<'de> for Finder<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Finder<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "cniVersion" {
                    // Recorded at once: a later syntax error must not lose it.
                    *self.0 = map.next_value::<Value>()?.as_str().map(str::to_string);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    let mut found = None;
    let _ = Finder(&mut found).deserialize(&mut serde_json::Deserializer::from_slice(stdin));
    found.filter(|v| !v.is_empty())
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin: weft-cni's own keys and flannel's. It serializes back to
/// a config that parses to the same value (keys it does not know are not kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// subnet.env written by weftd (flannel's key).
    #[serde(rename = "subnetFile", skip_serializing_if = "Option::is_none")]
    pub subnet_file: Option<String>,
    /// Delegate mode: where rendered delegate configs are kept for DEL (flannel's key).
    #[serde(rename = "dataDir", skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Delegate mode: the plugin config to render (flannel's key). Its presence selects the mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Map<String, Value>>,
    /// Built-in mode: the bridge's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(rename = "hairpinMode", skip_serializing_if = "Option::is_none")]
    pub hairpin_mode: Option<bool>,
    /// Built-in mode: a default route via the gateway (true) or only a cluster-network route.
    #[serde(rename = "isDefaultGateway", skip_serializing_if = "Option::is_none")]
    pub is_default_gateway: Option<bool>,
    /// Built-in mode: the address store (host-local's layout, so both can share it).
    #[serde(rename = "ipamDataDir", skip_serializing_if = "Option::is_none")]
    pub ipam_data_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
    #[serde(rename = "prevResult", skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Delegate mode: passed through to the delegate's IPAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Map<String, Value>>,
    #[serde(rename = "runtimeConfig", skip_serializing_if = "Option::is_none")]
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
            if !is_valid_interface_name(b) {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("bridge {b:?} is not a valid interface name (1-15 bytes, no '/', ':' or white space)"),
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
    /// "4" or "6"; only in versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
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
    /// Adapts the fields to `version`: `ips[].version` ("4" or "6") before 1.0.0,
    /// `interfaces[].mtu` from 1.1.0.
    pub fn for_version(mut self, version: &str) -> Self {
        let old = !version_at_least(version, "1.0.0");
        for ip in &mut self.ips {
            let family = if ip.address.addr().is_ipv4() { "4" } else { "6" };
            ip.version = old.then(|| family.to_string());
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
    use proptest::prelude::*;

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
            ips: vec![
                IpConfig {
                    version: None,
                    address: "10.5.72.2/24".parse().unwrap(),
                    gateway: Some("10.5.72.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    version: None,
                    address: "fc00:0:0:1::2/64".parse().unwrap(),
                    gateway: Some("fc00:0:0:1::1".parse().unwrap()),
                    interface: Some(0),
                },
            ],
            routes: vec![],
            dns: Value::Null,
        };
        let old: Value = serde_json::from_str(&r.clone().for_version("0.4.0").to_json()).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["ips"][1]["address"], "fc00:0:0:1::2/64");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new: Value = serde_json::from_str(&r.for_version("1.1.0").to_json()).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        assert_eq!(new["dns"], serde_json::json!({}));
    }

    #[test]
    fn the_version_is_found_in_configs_that_are_bad_otherwise() {
        assert_eq!(config_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(), Some("0.4.0"));
        assert_eq!(
            config_version(br#"{"name":7,"cniVersion":"0.3.1","type":[]}"#).as_deref(),
            Some("0.3.1")
        );
        assert_eq!(
            config_version(br#"{"cniVersion":"0.3.1","name":"#).as_deref(),
            Some("0.3.1")
        );
        assert_eq!(config_version(br#"{"cniVersion":"7.0.0"}"#).as_deref(), Some("7.0.0"));
        assert_eq!(
            config_version(br#"{"cniVersion":"0.3.1","cniVersion":"1.0.0"}"#).as_deref(),
            Some("1.0.0")
        );
        for none in [
            &b"{not json"[..],
            b"",
            b"[1]",
            br#"{"cniVersion":1}"#,
            br#"{"cniVersion":""}"#,
            br#"{"name":"n"}"#,
        ] {
            assert_eq!(config_version(none), None, "{}", String::from_utf8_lossy(none));
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // Quarters: exact in decimal (serde_json reads some other floats back off by an ulp).
            (-4000i32..4000).prop_map(|q| Value::from(f64::from(q) / 4.0)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A value for a key of the config: mostly of the right type, sometimes anything.
    fn value_for(key: &'static str) -> BoxedStrategy<Value> {
        let right: BoxedStrategy<Value> = match key {
            "cniVersion" => {
                prop::sample::select(vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "7.0.0", ""])
                    .prop_map(Value::from)
                    .boxed()
            }
            "name" => "[a-z0-9-]{0,8}".prop_map(Value::from).boxed(),
            "bridge" => prop_oneof!["[a-z0-9]{1,8}", ".{0,20}"].prop_map(Value::from).boxed(),
            "hairpinMode" | "isDefaultGateway" => any::<bool>().prop_map(Value::from).boxed(),
            "delegate" | "ipam" | "runtimeConfig" => prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
            "cni.dev/valid-attachments" => prop::collection::vec(
                ("[a-z0-9]{1,8}", "eth[0-9]").prop_map(|(c, i)| serde_json::json!({"containerID": c, "ifname": i})),
                0..3,
            )
            .prop_map(Value::from)
            .boxed(),
            "dns" | "prevResult" => json_value().boxed(),
            _ => ".{0,16}".prop_map(Value::from).boxed(),
        };
        prop_oneof![4 => right, 1 => json_value()].boxed()
    }

    /// A config: some of weft-cni's and flannel's keys with values of the right or any type,
    /// and an unknown key now and then.
    fn config() -> impl Strategy<Value = Map<String, Value>> {
        const KEYS: &[&str] = &[
            "cniVersion",
            "name",
            "type",
            "subnetFile",
            "dataDir",
            "delegate",
            "bridge",
            "hairpinMode",
            "isDefaultGateway",
            "ipamDataDir",
            "dns",
            "prevResult",
            "cni.dev/valid-attachments",
            "ipam",
            "runtimeConfig",
            "unknownKey",
        ];
        let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = KEYS
            .iter()
            .map(|&k| {
                let present = if matches!(k, "cniVersion" | "name") { 0.95 } else { 0.4 };
                prop::option::weighted(present, value_for(k).prop_map(move |v| (k.to_string(), v))).boxed()
            })
            .collect();
        entries.prop_map(|e| e.into_iter().flatten().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_stdin_never_panics(stdin in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = NetConf::parse(&stdin);
            let _ = config_version(&stdin);
        }

        /// An accepted config keeps the rules, re-encodes to the same config, and its version is
        /// the one errors are reported in; every refusal has a CNI code.
        #[test]
        fn accepted_configs_are_valid_and_round_trip(raw in config()) {
            let stdin = serde_json::to_vec(&raw).unwrap();
            match NetConf::parse(&stdin) {
                Ok((conf, back)) => {
                    prop_assert_eq!(&back, &raw);
                    prop_assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
                    prop_assert!(!conf.name.is_empty());
                    prop_assert!(conf.bridge.as_deref().is_none_or(is_valid_interface_name));
                    let again = serde_json::to_vec(&conf).unwrap();
                    prop_assert_eq!(NetConf::parse(&again).map(|(c, _)| c), Ok(conf.clone()));
                    prop_assert_eq!(config_version(&stdin), Some(conf.cni_version));
                }
                Err(e) => prop_assert!([1, 6, 7].contains(&e.code), "{}", e),
            }
        }

        /// The version is found in any object that has it, however the rest looks, and in any
        /// prefix of it that ends after the version's value.
        #[test]
        fn the_version_survives_a_bad_rest(
            before in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
            version in "[0-9a-z.]{1,8}",
            after in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut text = String::from("{");
            for (k, v) in &before {
                text.push_str(&format!("{}:{v},", Value::from(k.as_str())));
            }
            text.push_str(&format!("\"cniVersion\":{}", Value::from(version.as_str())));
            let version_end = text.len();
            for (k, v) in &after {
                text.push_str(&format!(",{}:{v}", Value::from(k.as_str())));
            }
            text.push('}');
            prop_assert_eq!(config_version(text.as_bytes()), Some(version.clone()));
            let cut = version_end + cut.index(text.len() - version_end + 1);
            prop_assert_eq!(config_version(&text.as_bytes()[..cut]), Some(version));
        }
    }
}
