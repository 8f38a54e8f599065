//! flannel's `wireguard` backend as data: its config keys (with flannel v0.20.0's defaults), the
//! lease's BackendData `{"PublicKey":"<base64>"}` and WireGuard's base64 key format. Pure: the
//! key file and the device live in weft-datapath.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config_error::ConfigError;

/// flannel's default `ListenPort` (IPv4) and `ListenPortV6`.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;
/// What flannel subtracts from the interface MTU for WireGuard (IPv4 and IPv6 alike).
pub const MTU_OVERHEAD: u32 = 80;

/// flannel's device names: the IPv4 (or only) device, and Mode separate's IPv6 device.
pub const DEVICE_V4: &str = "flannel-wg";
pub const DEVICE_V6: &str = "flannel-wg-v6";

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

/// The underlay family a device reaches its peers over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFamily {
    /// PublicIP.
    Ipv4,
    /// PublicIPv6.
    Ipv6,
    /// Mode auto: per peer, by [`auto_endpoint`].
    Auto,
}

/// One WireGuard device: its name, its UDP port, the pod families it carries and how its
/// peers' endpoints are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePlan {
    pub name: &'static str,
    pub listen_port: u16,
    pub ipv4: bool,
    pub ipv6: bool,
    pub endpoints: EndpointFamily,
}

impl DevicePlan {
    /// The address a peer with these public addresses is reached at (None: it has none of the
    /// device's family). `local_v4`/`local_v6`: this node's underlay addresses.
    pub fn endpoint(
        &self,
        remote_v4: Option<Ipv4Addr>,
        remote_v6: Option<Ipv6Addr>,
        local_v4: Option<Ipv4Addr>,
        local_v6: Option<Ipv6Addr>,
    ) -> Option<IpAddr> {
        match self.endpoints {
            EndpointFamily::Ipv4 => remote_v4.map(IpAddr::V4),
            EndpointFamily::Ipv6 => remote_v6.map(IpAddr::V6),
            EndpointFamily::Auto => auto_endpoint(remote_v4, remote_v6, local_v4.is_some(), local_v6),
        }
    }
}

/// flannel's Mode auto (`selectPublicEndpoint`): a peer with one public address is reached at
/// it; with both, at its IPv4 address when that is not private (RFC 1918) and we have IPv4,
/// else at its IPv6 address when neither it nor ours is private (RFC 4193, fc00::/7), else at
/// its IPv4 address.
pub fn auto_endpoint(
    remote_v4: Option<Ipv4Addr>,
    remote_v6: Option<Ipv6Addr>,
    local_v4: bool,
    local_v6: Option<Ipv6Addr>,
) -> Option<IpAddr> {
    let ula = |ip: &Ipv6Addr| ip.octets()[0] & 0xfe == 0xfc;
    match (remote_v4, remote_v6) {
        (None, v6) => v6.map(IpAddr::V6),
        (Some(v4), None) => Some(IpAddr::V4(v4)),
        (Some(v4), Some(_)) if !v4.is_private() && local_v4 => Some(IpAddr::V4(v4)),
        (Some(_), Some(v6)) if !ula(&v6) && local_v6.is_some_and(|l| !ula(&l)) => Some(IpAddr::V6(v6)),
        (Some(v4), Some(_)) => Some(IpAddr::V4(v4)),
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

    /// Refuses a Mode whose underlay family the network does not enable: `ipv6` reaches peers
    /// at their PublicIPv6, which flannel publishes only with EnableIPv6; `ipv4` at their
    /// PublicIP, which an IPv6-only (EnableIPv4 false) network has not.
    pub fn check_families(&self, ipv4: bool, ipv6: bool) -> Result<(), ConfigError> {
        let expected = match self.mode {
            WireguardMode::Ipv6 if !ipv6 => {
                "\"separate\", \"auto\" or \"ipv4\" when EnableIPv6 is false (Mode \"ipv6\" reaches peers at their PublicIPv6, which needs EnableIPv6 and IPv6Network)"
            }
            WireguardMode::Ipv4 if !ipv4 => {
                "\"separate\", \"auto\" or \"ipv6\" when EnableIPv4 is false (Mode \"ipv4\" reaches peers at their PublicIP, which an IPv6-only network has not)"
            }
            _ => return Ok(()),
        };
        Err(ConfigError::BadValue {
            key: "Backend.Mode",
            value: format!("{:?}", self.mode.name()),
            expected,
        })
    }

    /// The WireGuard devices of a network enabling `ipv4` and/or `ipv6`, as flannel v0.20.0 lays
    /// them out: Mode separate makes one device per family (`flannel-wg` on ListenPort for
    /// IPv4, `flannel-wg-v6` on ListenPortV6 for IPv6, each reaching peers over its own
    /// family); the other modes make one `flannel-wg` on ListenPort carrying both families.
    pub fn devices(&self, ipv4: bool, ipv6: bool) -> Vec<DevicePlan> {
        let endpoints = match self.mode {
            WireguardMode::Separate => {
                let v4 = DevicePlan {
                    name: DEVICE_V4,
                    listen_port: self.listen_port,
                    ipv4: true,
                    ipv6: false,
                    endpoints: EndpointFamily::Ipv4,
                };
                let v6 = DevicePlan {
                    name: DEVICE_V6,
                    listen_port: self.listen_port_v6,
                    ipv4: false,
                    ipv6: true,
                    endpoints: EndpointFamily::Ipv6,
                };
                return [ipv4.then_some(v4), ipv6.then_some(v6)].into_iter().flatten().collect();
            }
            WireguardMode::Auto => EndpointFamily::Auto,
            WireguardMode::Ipv4 => EndpointFamily::Ipv4,
            WireguardMode::Ipv6 => EndpointFamily::Ipv6,
        };
        vec![DevicePlan {
            name: DEVICE_V4,
            listen_port: self.listen_port,
            ipv4,
            ipv6,
            endpoints,
        }]
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
    fn devices_per_mode_as_flannel() {
        let o = parse(r#"{"ListenPort":5000,"ListenPortV6":5001}"#).unwrap();
        let names = |d: &[DevicePlan]| {
            d.iter()
                .map(|d| (d.name, d.listen_port, d.ipv4, d.ipv6))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&o.devices(true, true)),
            [("flannel-wg", 5000, true, false), ("flannel-wg-v6", 5001, false, true)]
        );
        assert_eq!(names(&o.devices(false, true)), [("flannel-wg-v6", 5001, false, true)]);
        assert_eq!(names(&o.devices(true, false)), [("flannel-wg", 5000, true, false)]);
        for (mode, family) in [
            ("auto", EndpointFamily::Auto),
            ("ipv4", EndpointFamily::Ipv4),
            ("ipv6", EndpointFamily::Ipv6),
        ] {
            let o = parse(&format!(r#"{{"Mode":"{mode}","ListenPortV6":5001}}"#)).unwrap();
            let d = o.devices(true, true);
            assert_eq!(names(&d), [("flannel-wg", 51820, true, true)], "{mode}");
            assert_eq!(d[0].endpoints, family);
        }
        assert!(parse(r#"{"Mode":"ipv6"}"#)
            .unwrap()
            .check_families(true, false)
            .is_err());
        assert!(parse(r#"{"Mode":"ipv4"}"#)
            .unwrap()
            .check_families(false, true)
            .is_err());
        assert!(parse(r#"{"Mode":"auto"}"#).unwrap().check_families(false, true).is_ok());
    }

    #[test]
    fn auto_mode_picks_the_endpoint_as_flannel() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
        let g = v6("2001:db8::2");
        // One address: that one.
        assert_eq!(auto_endpoint(v4("10.0.0.2"), None, true, g), Some(ip("10.0.0.2")));
        assert_eq!(
            auto_endpoint(None, v6("2001:db8::3"), false, g),
            Some(ip("2001:db8::3"))
        );
        // A public IPv4 address wins when we have IPv4.
        assert_eq!(
            auto_endpoint(v4("198.51.100.3"), v6("2001:db8::3"), true, g),
            Some(ip("198.51.100.3"))
        );
        // A private one gives way to global IPv6 on both sides...
        assert_eq!(
            auto_endpoint(v4("10.0.0.3"), v6("2001:db8::3"), true, g),
            Some(ip("2001:db8::3"))
        );
        // ...but not to ULAs: then IPv4.
        assert_eq!(
            auto_endpoint(v4("10.0.0.3"), v6("fd00::3"), true, g),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(
            auto_endpoint(v4("10.0.0.3"), v6("2001:db8::3"), true, v6("fd00::2")),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(auto_endpoint(None, None, true, g), None);
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
