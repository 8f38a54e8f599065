//! flannel's `wireguard` backend as data: its config keys (with flannel v0.20.0's defaults), the
//! lease's BackendData `{"PublicKey":"<base64>"}` and WireGuard's base64 key format. Pure: the
//! key file and the device live in weft-datapath.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config_error::ConfigError;

/// flannel's default `ListenPort` (IPv4) and `ListenPortV6`.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;
/// What flannel subtracts from the interface MTU for WireGuard (IPv4 and IPv6 alike).
pub const MTU_OVERHEAD: u32 = 80;

/// A Curve25519 key or a preshared key: 32 bytes, written as 44 characters of base64.
pub type Key = [u8; 32];

/// flannel's `Mode`: which address family carries the tunnel for dual-stack leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// One device per family (`flannel-wg`, `flannel-wg-v6`): flannel's default.
    #[default]
    Separate,
    Auto,
    Ipv4,
    Ipv6,
}

impl WireguardMode {
    pub fn name(self) -> &'static str {
        match self {
            WireguardMode::Separate => "separate",
            WireguardMode::Auto => "auto",
            WireguardMode::Ipv4 => "ipv4",
            WireguardMode::Ipv6 => "ipv6",
        }
    }
}

/// Options of the wireguard backend, with flannel's defaults.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct WireguardOptions {
    /// `PSK`: the preshared key every peer gets, if any.
    pub psk: Option<Key>,
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// `PersistentKeepaliveInterval` in seconds; 0 = off.
    pub persistent_keepalive: u16,
    pub mode: WireguardMode,
    /// `MTU`: the underlay MTU to use instead of the interface's (the device gets MTU - 80).
    pub mtu: Option<u32>,
}

impl std::fmt::Debug for WireguardOptions {
    // The PSK is a secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardOptions")
            .field("psk", &self.psk.map(|_| "(hidden)"))
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("mode", &self.mode)
            .field("mtu", &self.mtu)
            .finish()
    }
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn bad(key: &'static str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::BadValue {
        key,
        value: v.to_string(),
        expected,
    }
}

fn uint(
    obj: &Map<String, Value>,
    key: &'static str,
    max: u64,
    expected: &'static str,
) -> Result<Option<u64>, ConfigError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| bad(key, v, expected)),
    }
}

impl WireguardOptions {
    /// Reads the wireguard keys of the config's `Backend` object (matched case-insensitively,
    /// as Go's encoding/json does); an error names the key.
    pub fn parse(backend: &Map<String, Value>) -> Result<Self, ConfigError> {
        let psk = match get(backend, "PSK") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(v @ Value::String(s)) => Some(
                parse_key(s).ok_or_else(|| bad("Backend.PSK", v, "a WireGuard key: 32 bytes in base64 (wg genpsk)"))?,
            ),
            Some(v) => return Err(bad("Backend.PSK", v, "a string (wg genpsk)")),
        };
        let port = |key, default| -> Result<u16, ConfigError> {
            Ok(uint(backend, key, 65535, "a UDP port (1-65535)")?
                .filter(|p| *p != 0)
                .map_or(default, |p| p as u16))
        };
        let listen_port = port("ListenPort", DEFAULT_LISTEN_PORT)?;
        let listen_port_v6 = port("ListenPortV6", DEFAULT_LISTEN_PORT_V6)?;
        let persistent_keepalive = uint(
            backend,
            "PersistentKeepaliveInterval",
            65535,
            "a number of seconds (0-65535; 0 = off)",
        )?
        .unwrap_or(0) as u16;
        let mode = match get(backend, "Mode") {
            None => WireguardMode::Separate,
            // flannel compares the string as written: "Auto" is not a mode there.
            Some(Value::String(s)) => match s.as_str() {
                "separate" => WireguardMode::Separate,
                "auto" => WireguardMode::Auto,
                "ipv4" => WireguardMode::Ipv4,
                "ipv6" => WireguardMode::Ipv6,
                _ => {
                    return Err(bad(
                        "Backend.Mode",
                        &Value::String(s.clone()),
                        "one of \"separate\", \"auto\", \"ipv4\", \"ipv6\"",
                    ))
                }
            },
            Some(v) => {
                return Err(bad(
                    "Backend.Mode",
                    v,
                    "a string: \"separate\", \"auto\", \"ipv4\" or \"ipv6\"",
                ))
            }
        };
        let mtu = match uint(backend, "MTU", 65535, "an MTU (0 or 68-65535)")? {
            None | Some(0) => None,
            Some(m) if m < 68 + u64::from(MTU_OVERHEAD) => {
                return Err(bad(
                    "Backend.MTU",
                    get(backend, "MTU").expect("present"),
                    "an underlay MTU of at least 148 (the device gets MTU - 80)",
                ))
            }
            Some(m) => Some(m as u32),
        };
        Ok(WireguardOptions {
            psk,
            listen_port,
            listen_port_v6,
            persistent_keepalive,
            mode,
            mtu,
        })
    }

    /// The device MTU (and FLANNEL_MTU) for an interface of `iface_mtu`.
    pub fn device_mtu(&self, iface_mtu: u32) -> u32 {
        self.mtu.unwrap_or(iface_mtu).saturating_sub(MTU_OVERHEAD)
    }
}

/// Parses a WireGuard key as `wg` writes it: 44 characters of standard base64 for 32 bytes;
/// surrounding whitespace (a key file's trailing newline) is tolerated.
pub fn parse_key(text: &str) -> Option<Key> {
    let text = text.trim();
    if text.len() != 44 {
        return None;
    }
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// A key as `wg` writes it.
pub fn format_key(key: &Key) -> String {
    STANDARD.encode(key)
}

/// What a wireguard lease's BackendData says about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardLeaseData {
    pub public_key: Key,
    /// Newer flannel (v0.26.6+) publishes its listen port; v0.20.0 does not, and its peers
    /// are reached at our own ListenPort.
    pub port: Option<u16>,
}

impl WireguardLeaseData {
    /// Parses `{"PublicKey":"<base64>"}` (with an optional `"Port":N`); the error completes
    /// "BackendData ".
    pub fn parse(data: &Value) -> Result<Self, String> {
        let Some(key) = data.get("PublicKey") else {
            return Err("has no PublicKey".into());
        };
        let public_key = key
            .as_str()
            .and_then(parse_key)
            .ok_or_else(|| format!("PublicKey {key} is not a WireGuard public key (32 bytes in base64)"))?;
        let port = match data.get("Port") {
            None | Some(Value::Null) => None,
            Some(p) => match p.as_u64() {
                Some(0) => None,
                Some(n) if n <= 65535 => Some(n as u16),
                _ => return Err(format!("Port {p} is not a UDP port")),
            },
        };
        Ok(WireguardLeaseData { public_key, port })
    }

    /// The BackendData flannel v0.20.0 writes: `{"PublicKey":"<base64>"}`.
    pub fn to_json(public_key: &Key) -> Value {
        serde_json::json!({ "PublicKey": format_key(public_key) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WireguardOptions, ConfigError> {
        let v: Value = serde_json::from_str(json).unwrap();
        WireguardOptions::parse(v.as_object().unwrap())
    }

    const KEY: &str = "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY=";

    #[test]
    fn flannel_defaults() {
        let o = parse(r#"{"Type":"wireguard"}"#).unwrap();
        assert_eq!(o.listen_port, 51820);
        assert_eq!(o.listen_port_v6, 51821);
        assert_eq!(o.persistent_keepalive, 0);
        assert_eq!(o.mode, WireguardMode::Separate);
        assert_eq!(o.psk, None);
        assert_eq!(o.mtu, None);
        assert_eq!(o.device_mtu(1500), 1420, "interface MTU - 80");
    }

    #[test]
    fn keys_are_read_case_insensitively() {
        let o = parse(&format!(
            r#"{{"type":"wireguard","psk":"{KEY}","listenport":5000,"ListenPortV6":5001,"persistentkeepaliveinterval":25,"Mode":"auto","mtu":9000}}"#
        ))
        .unwrap();
        assert_eq!(o.psk, parse_key(KEY));
        assert_eq!((o.listen_port, o.listen_port_v6), (5000, 5001));
        assert_eq!(o.persistent_keepalive, 25);
        assert_eq!(o.mode, WireguardMode::Auto);
        assert_eq!(o.device_mtu(1500), 8920);
        assert!(!format!("{o:?}").contains(KEY), "the PSK is never printed");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (json, key) in [
            (r#"{"PSK":"not a key"}"#, "Backend.PSK"),
            (r#"{"PSK":7}"#, "Backend.PSK"),
            (r#"{"ListenPort":70000}"#, "ListenPort"),
            (r#"{"ListenPortV6":-1}"#, "ListenPortV6"),
            (
                r#"{"PersistentKeepaliveInterval":"25s"}"#,
                "PersistentKeepaliveInterval",
            ),
            (r#"{"Mode":"Auto"}"#, "Backend.Mode"),
            (r#"{"MTU":100}"#, "Backend.MTU"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.to_string().starts_with(key), "{json}: {e}");
        }
    }

    #[test]
    fn keys_parse_as_wg_writes_them() {
        let k = parse_key(&format!("{KEY}\n")).unwrap();
        assert_eq!(format_key(&k), KEY);
        assert_eq!(parse_key(" \t"), None);
        assert_eq!(parse_key(&KEY[..43]), None);
        assert_eq!(
            parse_key("YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKF=="),
            None,
            "31 bytes"
        );
    }

    #[test]
    fn lease_data_round_trips_and_accepts_newer_flannels_port() {
        let k = parse_key(KEY).unwrap();
        let v = WireguardLeaseData::to_json(&k);
        assert_eq!(v.to_string(), format!(r#"{{"PublicKey":"{KEY}"}}"#));
        assert_eq!(
            WireguardLeaseData::parse(&v).unwrap(),
            WireguardLeaseData {
                public_key: k,
                port: None
            }
        );
        let newer = serde_json::json!({"PublicKey": KEY, "Port": 51830});
        assert_eq!(WireguardLeaseData::parse(&newer).unwrap().port, Some(51830));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"PublicKey": "abc"}),
            serde_json::json!({"PublicKey": 5}),
            serde_json::json!({"PublicKey": KEY, "Port": 99999}),
        ] {
            assert!(WireguardLeaseData::parse(&bad).is_err(), "{bad}");
        }
    }
}
