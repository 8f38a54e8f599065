//! Which lease records a node acts on. Every node runs this same decision over the same etcd
//! records, so all nodes agree without talking: a record is refused when it is malformed, does
//! not fit the network config, or claims what an older lease already holds (its subnet, its
//! PublicIP, its VtepMAC); the oldest record by etcd create revision keeps what it claims, and a
//! refused record is admitted again once its conflict is gone. Nothing here knows which node is
//! asking: "is it my own lease" is the backends' question, not this one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use crate::config::{BackendKind, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::mac::{format_mac, is_unicast_mac, parse_mac};

/// One record under `<prefix>/subnets/`, parsed once when it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// The key below the subnets directory, e.g. `10.5.34.0-24`.
    pub name: String,
    /// etcd's create revision: the older record wins a conflict.
    pub created: i64,
    pub parsed: Result<Lease, Refusal>,
}

impl LeaseRecord {
    /// Parses the record stored at `<subnets dir><name>`.
    pub fn parse(name: &str, value: &[u8], created: i64) -> Self {
        LeaseRecord {
            name: name.to_string(),
            created,
            parsed: parse(name, value),
        }
    }
}

fn parse(name: &str, value: &[u8]) -> Result<Lease, Refusal> {
    if name.contains('/') {
        return Err(Refusal::Nested);
    }
    let subnet = SubnetKey::parse(name).map_err(|_| Refusal::BadKey)?;
    let attrs = LeaseAttrs::from_json(name, value).map_err(|e| match e {
        crate::LeaseError::BadValue { reason, .. } => Refusal::BadValue(reason),
        crate::LeaseError::BadKey { .. } => Refusal::BadKey,
    })?;
    Ok(Lease { subnet, attrs })
}

/// Why a record is not acted on. The text completes "lease <key> refused: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the key is nested below the subnets directory; a lease key is one path element such as 10.5.34.0-24")]
    Nested,
    #[error("the key is not a subnet such as 10.5.34.0-24 (or 10.5.34.0-24&fc00:0:0:1::-64)")]
    BadKey,
    #[error("the value is not lease JSON such as {{\"PublicIP\":\"192.0.2.1\",\"PublicIPv6\":null}}: {0}")]
    BadValue(String),
    #[error("subnet {subnet} is not inside Network {network}")]
    OutsideNetwork { subnet: String, network: String },
    #[error("subnet {subnet} is a /{len} but the network's subnets are /{want} ({key} in the network config)")]
    WrongLength {
        subnet: String,
        len: u8,
        want: u8,
        key: &'static str,
    },
    #[error("PublicIP {ip} is {why}: no node can be reached there")]
    BadPublicIp { ip: IpAddr, why: &'static str },
    #[error("BackendType {theirs:?} is not this network's backend {ours:?}")]
    OtherBackend { theirs: String, ours: &'static str },
    #[error("BackendData {0}")]
    BadBackendData(String),
    /// The IPv6 side of a dual-stack lease (BackendV6Data, PublicIPv6) is unusable.
    #[error("{0}")]
    BadBackendV6Data(String),
    #[error("it has no {network} subnet, and this network is {network} only: set EnableIPv4/EnableIPv6 in the config alike on every node")]
    NoSharedFamily { network: &'static str },
    #[error("its {what} {value} is already held by the older lease {holder}")]
    Conflict {
        what: &'static str,
        value: String,
        holder: String,
    },
}

impl Refusal {
    /// Every label [`Refusal::label`] returns, for metrics that list each one.
    pub const LABELS: [&'static str; 10] = [
        "nested_key",
        "malformed_key",
        "malformed_value",
        "outside_network",
        "wrong_subnet_len",
        "bad_public_ip",
        "other_backend",
        "bad_backend_data",
        "conflict",
        "no_shared_family",
    ];

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        let i = match self {
            Refusal::Nested => 0,
            Refusal::BadKey => 1,
            Refusal::BadValue(_) => 2,
            Refusal::OutsideNetwork { .. } => 3,
            Refusal::WrongLength { .. } => 4,
            Refusal::BadPublicIp { .. } => 5,
            Refusal::OtherBackend { .. } => 6,
            Refusal::BadBackendData(_) | Refusal::BadBackendV6Data(_) => 7,
            Refusal::Conflict { .. } => 8,
            Refusal::NoSharedFamily { .. } => 9,
        };
        Self::LABELS[i]
    }
}

/// A record that is not acted on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    pub reason: Refusal,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease {} refused: {}", self.name, self.reason)
    }
}

/// The outcome of [`admit`]: the leases to act on, by subnet, and the records refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admission {
    pub leases: BTreeMap<SubnetKey, LeaseAttrs>,
    pub refused: Vec<Refused>,
}

/// Decides which records are leases to act on. Valid records claim their IPv4 subnet, IPv6
/// subnet, PublicIP, PublicIPv6 and (vxlan) VtepMAC oldest first; a record that claims anything
/// an older one holds is refused, naming the holder.
pub fn admit<'a>(cfg: &NetworkConfig, records: impl IntoIterator<Item = &'a LeaseRecord>) -> Admission {
    Admitter::from_records(cfg, records.into_iter().map(|r| Arc::new(r.clone()))).admission()
}

/// [`admit`] kept up to date record by record. A change re-decides only the records that share a
/// claim with it, directly or through others (normally none), so its cost follows the change,
/// not the size of the cluster; the outcome is always what [`admit`] gives for the same records.
#[derive(Debug, Clone)]
pub struct Admitter {
    cfg: NetworkConfig,
    /// By record name; the names are shared (`Arc<str>`) with the claimant lists, so a record
    /// costs one copy of its name however many claims it makes.
    records: HashMap<Arc<str>, Entry>,
    /// The valid records claiming each claim, oldest first (almost always one, kept inline).
    claimants: HashMap<Claim, Claimants>,
}

/// The records claiming one claim: (create revision, name), oldest first.
type Claimants = SmallVec<[(i64, Arc<str>); 1]>;

#[derive(Debug, Clone)]
struct Entry {
    created: i64,
    /// The record (shared with whoever keeps the records) and its claims, when it passes its
    /// own checks.
    valid: Option<(Arc<LeaseRecord>, Box<[Claim]>)>,
    outcome: Result<(), Refusal>,
}

impl Entry {
    /// The admitted lease, or the refusal.
    fn decision(&self) -> (Option<(SubnetKey, &LeaseAttrs)>, Option<&Refusal>) {
        match (&self.outcome, &self.valid) {
            (Ok(()), Some((record, _))) => match &record.parsed {
                Ok(lease) => (Some((lease.subnet, &lease.attrs)), None),
                Err(_) => (None, None),
            },
            (Err(r), _) => (None, Some(r)),
            (Ok(()), None) => (None, None),
        }
    }
}

/// What one change to the records changed in the decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decisions {
    /// Leases admitted or changed (Some), or no longer admitted (None); removals come first.
    pub leases: Vec<(SubnetKey, Option<LeaseAttrs>)>,
    /// Records refused now or for a new reason (Some), or no longer refused (None).
    pub refusals: Vec<(String, Option<Refusal>)>,
}

impl Decisions {
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.refusals.is_empty()
    }
}

impl Admitter {
    pub fn new(cfg: &NetworkConfig) -> Self {
        Admitter {
            cfg: cfg.clone(),
            records: HashMap::new(),
            claimants: HashMap::new(),
        }
    }

    /// The admission of a whole listing, decided in one pass.
    pub fn from_records(cfg: &NetworkConfig, records: impl IntoIterator<Item = Arc<LeaseRecord>>) -> Self {
        let mut admitter = Admitter::new(cfg);
        let mut valid = BTreeSet::new();
        for record in records {
            let entry = admitter.entry(&record);
            let name: Arc<str> = record.name.as_str().into();
            if let Some((_, claims)) = &entry.valid {
                for claim in claims.iter() {
                    admitter.claim(*claim, entry.created, &name);
                }
                valid.insert((entry.created, name.clone()));
            }
            admitter.records.insert(name, entry);
        }
        admitter.decide(&valid);
        admitter
    }

    /// A record was written (created or changed).
    pub fn put(&mut self, record: Arc<LeaseRecord>) -> Decisions {
        let entry = self.entry(&record);
        self.replace(&record.name, Some(entry))
    }

    fn entry(&self, record: &Arc<LeaseRecord>) -> Entry {
        let checked = match &record.parsed {
            Ok(lease) => check(&self.cfg, lease).map(|mac| claims(lease, mac)),
            Err(reason) => Err(reason.clone()),
        };
        let (outcome, valid) = match checked {
            Ok(claims) => (Ok(()), Some((record.clone(), claims.into_boxed_slice()))),
            Err(reason) => (Err(reason), None),
        };
        Entry {
            created: record.created,
            valid,
            outcome,
        }
    }

    /// A record was deleted.
    pub fn remove(&mut self, name: &str) -> Decisions {
        self.replace(name, None)
    }

    /// The whole decision, as [`admit`] returns it.
    pub fn admission(&self) -> Admission {
        let mut admission = Admission::default();
        for (name, entry) in &self.records {
            match entry.decision() {
                (Some((subnet, attrs)), _) => {
                    admission.leases.insert(subnet, attrs.clone());
                }
                (_, Some(reason)) => admission.refused.push(Refused {
                    name: name.to_string(),
                    reason: reason.clone(),
                }),
                _ => {}
            }
        }
        admission.refused.sort_by(|a, b| a.name.cmp(&b.name));
        admission
    }

    fn replace(&mut self, name: &str, entry: Option<Entry>) -> Decisions {
        let old = self.records.remove(name);
        let mut seeds: Vec<Claim> = Vec::new();
        if let Some((_, claims)) = old.as_ref().and_then(|o| o.valid.as_ref()) {
            for claim in claims.iter() {
                self.unclaim(*claim, old.as_ref().map_or(0, |o| o.created), name);
            }
            seeds.extend(claims.iter());
        }
        if let Some(entry) = entry {
            let shared: Arc<str> = name.into();
            if let Some((_, claims)) = &entry.valid {
                for claim in claims.iter() {
                    self.claim(*claim, entry.created, &shared);
                }
                seeds.extend(claims.iter());
            }
            self.records.insert(shared, entry);
        }
        // Everything that shares a claim with the old or new record, transitively.
        let component = self.component(&seeds);
        let before: Vec<(Arc<str>, Entry)> = component
            .iter()
            .filter(|(_, n)| &**n != name)
            .filter_map(|(_, n)| Some((n.clone(), self.records.get(n)?.clone())))
            .collect();
        self.decide(&component);

        let mut decisions = Decisions::default();
        let mut compare = |name: &str, before: Option<&Entry>, after: Option<&Entry>| {
            let (lease_before, refusal_before) = before.map_or((None, None), Entry::decision);
            let (lease_after, refusal_after) = after.map_or((None, None), Entry::decision);
            if lease_before != lease_after {
                match (lease_before, lease_after) {
                    (_, Some((subnet, attrs))) => decisions.leases.push((subnet, Some(attrs.clone()))),
                    (Some((subnet, _)), None) => decisions.leases.push((subnet, None)),
                    (None, None) => {}
                }
            }
            if refusal_before != refusal_after {
                decisions.refusals.push((name.to_string(), refusal_after.cloned()));
            }
        };
        compare(name, old.as_ref(), self.records.get(name));
        for (other, was) in &before {
            compare(other, Some(was), self.records.get(other));
        }
        // Removals first: two records can name one subnet, and the one admitted now must stay.
        decisions.leases.sort_by_key(|(_, attrs)| attrs.is_some());
        decisions
    }

    fn claim(&mut self, claim: Claim, created: i64, name: &Arc<str>) {
        let list = self.claimants.entry(claim).or_default();
        let at = list.partition_point(|(c, n)| (*c, &**n) < (created, &**name));
        list.insert(at, (created, name.clone()));
    }

    fn unclaim(&mut self, claim: Claim, created: i64, name: &str) {
        if let Some(list) = self.claimants.get_mut(&claim) {
            list.retain(|(c, n)| (*c, &**n) != (created, name));
            if list.is_empty() {
                self.claimants.remove(&claim);
            }
        }
    }

    /// The valid records reachable from `seeds` through shared claims, oldest first.
    fn component(&self, seeds: &[Claim]) -> BTreeSet<(i64, Arc<str>)> {
        let mut members = BTreeSet::new();
        let mut seen: HashSet<Claim> = HashSet::new();
        let mut todo: Vec<Claim> = seeds.to_vec();
        while let Some(claim) = todo.pop() {
            if !seen.insert(claim) {
                continue;
            }
            for member in self.claimants.get(&claim).into_iter().flatten() {
                if members.insert(member.clone()) {
                    if let Some((_, claims)) = self.records.get(&member.1).and_then(|e| e.valid.as_ref()) {
                        todo.extend(claims.iter().filter(|c| !seen.contains(c)));
                    }
                }
            }
        }
        members
    }

    /// Decides the records of one component, oldest first: each keeps its claims unless an
    /// older admitted record holds one of them.
    fn decide(&mut self, component: &BTreeSet<(i64, Arc<str>)>) {
        let mut holders: HashMap<Claim, Arc<str>> = HashMap::new();
        for (_, name) in component {
            let Some(entry) = self.records.get_mut(name) else {
                continue;
            };
            let Some((_, claims)) = &entry.valid else { continue };
            let conflict = claims.iter().find_map(|c| holders.get(c).map(|h| (*c, h.clone())));
            entry.outcome = match conflict {
                Some((claim, holder)) => Err(Refusal::Conflict {
                    what: claim.what(),
                    value: claim.to_string(),
                    holder: holder.to_string(),
                }),
                None => {
                    for claim in claims.iter() {
                        holders.insert(*claim, name.clone());
                    }
                    Ok(())
                }
            };
        }
    }
}

/// What a lease holds exclusively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Claim {
    Subnet(Ipv4Net),
    Ipv6Subnet(Ipv6Net),
    PublicIp(Ipv4Addr),
    PublicIpv6(Ipv6Addr),
    VtepMac([u8; 6]),
    /// wireguard: two leases with one key would leave peers guessing which node it is.
    PublicKey([u8; 32]),
}

impl Claim {
    fn what(&self) -> &'static str {
        match self {
            Claim::Subnet(_) => "subnet",
            Claim::Ipv6Subnet(_) => "IPv6 subnet",
            Claim::PublicIp(_) => "PublicIP",
            Claim::PublicIpv6(_) => "PublicIPv6",
            Claim::VtepMac(_) => "VtepMAC",
            Claim::PublicKey(_) => "PublicKey",
        }
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Subnet(n) => write!(f, "{n}"),
            Claim::Ipv6Subnet(n) => write!(f, "{n}"),
            Claim::PublicIp(ip) => write!(f, "{ip}"),
            Claim::PublicIpv6(ip) => write!(f, "{ip}"),
            Claim::VtepMac(mac) => write!(f, "{}", format_mac(mac)),
            Claim::PublicKey(key) => write!(f, "{}", crate::wireguard::format_key(key)),
        }
    }
}

fn claims(lease: &Lease, vtep_macs: Vec<[u8; 6]>) -> Vec<Claim> {
    let mut claims = Vec::with_capacity(4);
    // An IPv6-only lease's PublicIP is flannel's 0.0.0.0 placeholder, which claims nothing.
    if let Some(v4) = lease.subnet.ipv4 {
        claims.extend([Claim::Subnet(v4), Claim::PublicIp(lease.attrs.public_ip)]);
    }
    claims.extend(lease.subnet.ipv6.map(Claim::Ipv6Subnet));
    claims.extend(lease.attrs.public_ipv6.map(Claim::PublicIpv6));
    claims.extend(vtep_macs.into_iter().map(Claim::VtepMac));
    if lease.attrs.backend_type == "wireguard" {
        // flannel publishes one key in both (its two devices share the key file).
        for data in [&lease.attrs.backend_data, &lease.attrs.backend_v6_data] {
            let key = crate::wireguard::WireguardLeaseData::parse(data).ok();
            if let Some(claim) = key.map(|d| Claim::PublicKey(d.public_key)) {
                if !claims.contains(&claim) {
                    claims.push(claim);
                }
            }
        }
    }
    claims
}

/// The checks of one lease against the network config; returns its VtepMACs for vxlan (the
/// IPv6 VTEP's too when the lease is dual stack). Each family the lease and the network share is
/// checked; a family the network does not enable is ignored.
fn check(cfg: &NetworkConfig, lease: &Lease) -> Result<Vec<[u8; 6]>, Refusal> {
    let v4 = cfg.ipv4.zip(lease.subnet.ipv4);
    let v6 = cfg.ipv6.zip(lease.subnet.ipv6);
    if v4.is_none() && v6.is_none() {
        return Err(Refusal::NoSharedFamily {
            network: if cfg.ipv4.is_some() { "IPv4" } else { "IPv6" },
        });
    }
    if let Some((pool, subnet)) = v4 {
        check_subnet(pool.network.into(), pool.subnet_len, subnet.into(), "SubnetLen")?;
        if let Some(why) = unreachable_ipv4(lease.attrs.public_ip, pool.network) {
            return Err(Refusal::BadPublicIp {
                ip: lease.attrs.public_ip.into(),
                why,
            });
        }
    }
    if let Some((pool, subnet)) = v6 {
        check_subnet(pool.network.into(), pool.subnet_len, subnet.into(), "IPv6SubnetLen")?;
        let Some(ip) = lease.attrs.public_ipv6 else {
            return Err(Refusal::BadBackendV6Data(
                "it has an IPv6 subnet but no PublicIPv6 to reach it at".into(),
            ));
        };
        if let Some(why) = unreachable_ipv6(ip) {
            return Err(Refusal::BadPublicIp { ip: ip.into(), why });
        }
    }
    let theirs = lease.attrs.backend_type.as_str();
    let ours = cfg.backend.lease_backend_type();
    let same_backend = theirs == ours || (cfg.backend == BackendKind::Udp && theirs == "udp");
    if !same_backend {
        return Err(Refusal::OtherBackend {
            theirs: theirs.to_string(),
            ours,
        });
    }
    match cfg.backend {
        BackendKind::Vxlan => {
            let mut macs = Vec::with_capacity(2);
            if v4.is_some() {
                macs.push(vxlan_data(&lease.attrs.backend_data, cfg.vxlan.vni)?);
            }
            if v6.is_some() {
                let mac = vxlan_data(&lease.attrs.backend_v6_data, cfg.vxlan.vni).map_err(|e| match e {
                    Refusal::BadBackendData(what) => Refusal::BadBackendV6Data(format!("BackendV6Data {what}")),
                    other => other,
                })?;
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
            Ok(macs)
        }
        BackendKind::HostGw | BackendKind::Udp => Ok(Vec::new()),
        BackendKind::Wireguard => {
            let parse = crate::wireguard::WireguardLeaseData::parse;
            if v4.is_some() {
                parse(&lease.attrs.backend_data).map_err(Refusal::BadBackendData)?;
            }
            // Every Mode reaches the IPv6 side with BackendV6Data's key (flannel's single
            // device takes it from there too).
            if v6.is_some() {
                parse(&lease.attrs.backend_v6_data)
                    .map_err(|e| Refusal::BadBackendV6Data(format!("BackendV6Data {e}")))?;
            }
            Ok(Vec::new())
        }
    }
}

/// A lease's subnet of one family: inside the network, and a /`subnet_len` (`len_key`).
fn check_subnet(network: IpNet, subnet_len: u8, subnet: IpNet, len_key: &'static str) -> Result<(), Refusal> {
    if !network.contains(&subnet) || subnet.prefix_len() <= network.prefix_len() {
        return Err(Refusal::OutsideNetwork {
            subnet: subnet.to_string(),
            network: network.to_string(),
        });
    }
    if subnet.prefix_len() != subnet_len {
        return Err(Refusal::WrongLength {
            subnet: subnet.to_string(),
            len: subnet.prefix_len(),
            want: subnet_len,
            key: len_key,
        });
    }
    Ok(())
}

/// Why `ip` cannot be a node's underlay address, if it cannot.
fn unreachable_ipv4(ip: Ipv4Addr, network: Ipv4Net) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.octets()[0] >= 240 {
        Some("a reserved (class E) address")
    } else if network.contains(&ip) {
        Some("inside the cluster Network, so the tunnel would be routed into itself")
    } else {
        None
    }
}

fn unreachable_ipv6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// vxlan's BackendData: a unicast VtepMAC, and our VNI when it names one.
fn vxlan_data(data: &serde_json::Value, vni: u32) -> Result<[u8; 6], Refusal> {
    let bad = |what: String| Err(Refusal::BadBackendData(what));
    let Some(mac) = data.get("VtepMAC") else {
        return bad("has no VtepMAC".into());
    };
    let Some(parsed) = mac.as_str().and_then(parse_mac) else {
        return bad(format!(
            "VtepMAC {mac} is not a MAC address such as \"c6:d2:32:6f:8f:44\""
        ));
    };
    if !is_unicast_mac(&parsed) {
        return bad(format!("VtepMAC {mac} is not a unicast address"));
    }
    match data.get("VNI") {
        None => Ok(parsed),
        Some(v) if v.as_u64() == Some(u64::from(vni)) => Ok(parsed),
        Some(v) => bad(format!("VNI {v} is not this network's VNI {vni}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn vxlan() -> NetworkConfig {
        cfg(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#)
    }

    fn rec(name: &str, created: i64, value: &str) -> LeaseRecord {
        LeaseRecord::parse(name, value.as_bytes(), created)
    }

    fn vx(ip: &str, mac: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    }

    /// The healthy three-node cluster the bad records are added to.
    fn healthy() -> Vec<LeaseRecord> {
        vec![
            rec("10.42.1.0-24", 10, &vx("198.51.100.1", "02:00:00:00:00:01")),
            rec("10.42.2.0-24", 11, &vx("198.51.100.2", "02:00:00:00:00:02")),
            rec("10.42.3.0-24", 12, &vx("198.51.100.3", "02:00:00:00:00:03")),
        ]
    }

    fn names(a: &Admission) -> Vec<String> {
        a.leases.keys().map(|k| k.to_key()).collect()
    }

    fn refusal_of<'a>(a: &'a Admission, name: &str) -> &'a Refusal {
        &a.refused
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not refused: {a:?}"))
            .reason
    }

    fn dual(ip: &str, ip6: &str, mac: &str, mac6: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        )
    }

    #[test]
    fn dual_stack_leases_need_a_usable_ipv6_side_and_claim_its_mac() {
        let c =
            cfg(r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#);
        let records = vec![
            rec(
                "10.42.1.0-24&fc00:0:0:1::-64",
                10,
                &dual("198.51.100.1", "2001:db8::1", "02:00:00:00:00:01", "02:00:00:00:06:01"),
            ),
            // IPv4 only in a dual-stack cluster (e.g. a node that has not switched yet): admitted,
            // it is reached over IPv4.
            rec("10.42.2.0-24", 11, &vx("198.51.100.2", "02:00:00:00:00:02")),
            // The IPv6 VTEP's MAC of node 1 again.
            rec(
                "10.42.3.0-24&fc00:0:0:3::-64",
                12,
                &dual("198.51.100.3", "2001:db8::3", "02:00:00:00:00:03", "02:00:00:00:06:01"),
            ),
            // No BackendV6Data.
            rec(
                "10.42.4.0-24&fc00:0:0:4::-64",
                13,
                &vx("198.51.100.4", "02:00:00:00:00:04").replace("null", "\"2001:db8::4\""),
            ),
            // An IPv6 subnet and no PublicIPv6.
            rec(
                "10.42.5.0-24&fc00:0:0:5::-64",
                14,
                &vx("198.51.100.5", "02:00:00:00:00:05"),
            ),
        ];
        let a = admit(&c, &records);
        assert_eq!(names(&a), ["10.42.1.0-24&fc00:0:0:1::-64", "10.42.2.0-24"]);
        assert_eq!(
            refusal_of(&a, "10.42.3.0-24&fc00:0:0:3::-64").to_string(),
            "its VtepMAC 02:00:00:00:06:01 is already held by the older lease 10.42.1.0-24&fc00:0:0:1::-64"
        );
        assert_eq!(
            refusal_of(&a, "10.42.4.0-24&fc00:0:0:4::-64").to_string(),
            "BackendV6Data has no VtepMAC"
        );
        assert_eq!(
            refusal_of(&a, "10.42.5.0-24&fc00:0:0:5::-64").to_string(),
            "it has an IPv6 subnet but no PublicIPv6 to reach it at"
        );
        assert_eq!(
            refusal_of(&a, "10.42.5.0-24&fc00:0:0:5::-64").label(),
            "bad_backend_data"
        );
        // The same records in an IPv4-only network: the IPv6 side is not looked at.
        let a = admit(&vxlan(), &records);
        assert_eq!(a.leases.len(), 5, "{a:?}");
    }

    fn v6_only(ip6: &str, mac6: &str) -> String {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        )
    }

    #[test]
    fn ipv6_only_leases_claim_no_ipv4_and_need_their_ipv6_side() {
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#);
        let records = vec![
            rec(
                "0.0.0.0-0&fc00:0:0:1::-64",
                10,
                &v6_only("2001:db8::1", "02:00:00:00:06:01"),
            ),
            // Same PublicIP 0.0.0.0 and the same empty IPv4 part: no conflict over either.
            rec(
                "0.0.0.0-0&fc00:0:0:2::-64",
                11,
                &v6_only("2001:db8::2", "02:00:00:00:06:02"),
            ),
            // A dual-stack node's lease: its IPv6 side is used.
            rec(
                "10.42.3.0-24&fc00:0:0:3::-64",
                12,
                &dual("198.51.100.3", "2001:db8::3", "02:00:00:00:00:03", "02:00:00:00:06:03"),
            ),
            // IPv4 only: nothing to reach in this network.
            rec("10.42.4.0-24", 13, &vx("198.51.100.4", "02:00:00:00:00:04")),
            // Node 1's PublicIPv6 again.
            rec(
                "0.0.0.0-0&fc00:0:0:5::-64",
                14,
                &v6_only("2001:db8::1", "02:00:00:00:06:05"),
            ),
            // Outside IPv6Network.
            rec(
                "0.0.0.0-0&fc01:0:0:6::-64",
                15,
                &v6_only("2001:db8::6", "02:00:00:00:06:06"),
            ),
        ];
        let a = admit(&c, &records);
        assert_eq!(
            names(&a),
            [
                "0.0.0.0-0&fc00:0:0:1::-64",
                "0.0.0.0-0&fc00:0:0:2::-64",
                "10.42.3.0-24&fc00:0:0:3::-64"
            ]
        );
        let r = refusal_of(&a, "10.42.4.0-24");
        assert_eq!(r.label(), "no_shared_family");
        assert!(
            r.to_string()
                .starts_with("it has no IPv6 subnet, and this network is IPv6 only"),
            "{r}"
        );
        assert_eq!(refusal_of(&a, "0.0.0.0-0&fc00:0:0:5::-64").label(), "conflict");
        assert_eq!(refusal_of(&a, "0.0.0.0-0&fc01:0:0:6::-64").label(), "outside_network");
        // In an IPv4 network the IPv6-only leases are refused, and the rest admitted as before.
        let a = admit(&vxlan(), &records);
        assert_eq!(names(&a), ["10.42.3.0-24&fc00:0:0:3::-64", "10.42.4.0-24"]);
        assert_eq!(refusal_of(&a, "0.0.0.0-0&fc00:0:0:1::-64").label(), "no_shared_family");
    }

    #[test]
    fn a_healthy_cluster_is_admitted_whole() {
        let a = admit(&vxlan(), &healthy());
        assert_eq!(names(&a), ["10.42.1.0-24", "10.42.2.0-24", "10.42.3.0-24"]);
        assert!(a.refused.is_empty());
    }

    /// Each bad record, added alone, is refused for its reason and leaves the healthy leases as they were.
    #[test]
    fn every_bad_record_is_refused_and_healthy_leases_stay() {
        let cases: Vec<(LeaseRecord, &str)> = vec![
            (
                rec("x/10.42.2.0-24", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "nested_key",
            ),
            (
                rec("10.42.2.1-24", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "malformed_key",
            ),
            (rec("10.42.9.0-24", 20, "{not json"), "malformed_value"),
            (
                rec("10.43.9.0-24", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "outside_network",
            ),
            (
                rec("10.42.0.0-16", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "outside_network",
            ),
            (
                rec("10.42.2.0-25", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "wrong_subnet_len",
            ),
            (
                rec("10.42.1.128-25", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "wrong_subnet_len",
            ),
            (
                rec("10.42.2.0-23", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "wrong_subnet_len",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("127.0.0.1", "02:00:00:00:00:09")),
                "bad_public_ip",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("0.0.0.0", "02:00:00:00:00:09")),
                "bad_public_ip",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("224.0.0.1", "02:00:00:00:00:09")),
                "bad_public_ip",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("255.255.255.255", "02:00:00:00:00:09")),
                "bad_public_ip",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("10.42.1.5", "02:00:00:00:00:09")),
                "bad_public_ip",
            ),
            (
                rec(
                    "10.42.9.0-24",
                    20,
                    r#"{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
                ),
                "other_backend",
            ),
            (
                rec("10.42.9.0-24", 20, r#"{"PublicIP":"198.51.100.9","PublicIPv6":null}"#),
                "other_backend",
            ),
            (
                rec(
                    "10.42.9.0-24",
                    20,
                    r#"{"PublicIP":"198.51.100.9","BackendType":"vxlan","BackendData":{"VNI":99,"VtepMAC":"02:00:00:00:00:09"}}"#,
                ),
                "bad_backend_data",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("198.51.100.9", "01:00:5e:00:00:01")),
                "bad_backend_data",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("198.51.100.9", "00:00:00:00:00:00")),
                "bad_backend_data",
            ),
            (
                rec(
                    "10.42.9.0-24",
                    20,
                    r#"{"PublicIP":"198.51.100.9","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
                ),
                "bad_backend_data",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("198.51.100.2", "02:00:00:00:00:09")),
                "conflict",
            ),
            (
                rec("10.42.9.0-24", 20, &vx("198.51.100.9", "02:00:00:00:00:02")),
                "conflict",
            ),
            (
                rec("10.42.2.0-24&fc00::-64", 20, &vx("198.51.100.9", "02:00:00:00:00:09")),
                "conflict",
            ),
        ];
        for (bad, label) in cases {
            let mut records = healthy();
            let name = bad.name.clone();
            records.push(bad);
            let a = admit(&vxlan(), &records);
            assert_eq!(names(&a), ["10.42.1.0-24", "10.42.2.0-24", "10.42.3.0-24"], "{name}");
            assert_eq!(a.leases, admit(&vxlan(), &healthy()).leases, "{name}");
            assert_eq!(a.refused.len(), 1, "{name}: {a:?}");
            assert_eq!(
                refusal_of(&a, &name).label(),
                label,
                "{name}: {}",
                refusal_of(&a, &name)
            );
        }
    }

    #[test]
    fn the_older_record_keeps_what_it_claims_and_the_younger_waits() {
        // A rogue record written before the real node's claims its VtepMAC: the rogue is older, so it
        // wins, deterministically on every node; once it is gone the real one is admitted.
        let mut records = healthy();
        records.push(rec("10.42.9.0-24", 5, &vx("198.51.100.9", "02:00:00:00:00:02")));
        let a = admit(&vxlan(), &records);
        assert!(a.leases.contains_key(&SubnetKey::parse("10.42.9.0-24").unwrap()));
        let Refusal::Conflict { what, value, holder } = refusal_of(&a, "10.42.2.0-24") else {
            panic!("{a:?}")
        };
        assert_eq!(
            (*what, value.as_str(), holder.as_str()),
            ("VtepMAC", "02:00:00:00:00:02", "10.42.9.0-24")
        );
        records.pop();
        assert_eq!(admit(&vxlan(), &records).refused, vec![]);
    }

    #[test]
    fn equal_revisions_are_ordered_by_key_so_every_node_agrees() {
        let a = rec("10.42.8.0-24", 7, &vx("198.51.100.8", "02:00:00:00:00:08"));
        let b = rec("10.42.9.0-24", 7, &vx("198.51.100.8", "02:00:00:00:00:09"));
        let one = admit(&vxlan(), [&a, &b]);
        let other = admit(&vxlan(), [&b, &a]);
        assert_eq!(one, other);
        assert_eq!(names(&one), ["10.42.8.0-24"]);
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let mut records = healthy();
        records.push(rec("10.42.9.0-24", 20, &vx("198.51.100.1", "02:00:00:00:00:09")));
        let a = admit(&vxlan(), &records);
        assert_eq!(
            a.refused[0].to_string(),
            "lease 10.42.9.0-24 refused: its PublicIP 198.51.100.1 is already held by the older lease 10.42.1.0-24"
        );
        let r = rec("10.42.2.0-25", 1, &vx("198.51.100.9", "02:00:00:00:00:09"));
        assert_eq!(
            admit(&vxlan(), [&r]).refused[0].to_string(),
            "lease 10.42.2.0-25 refused: subnet 10.42.2.0/25 is a /25 but the network's subnets are /24 (SubnetLen in the network config)"
        );
    }

    #[test]
    fn udp_accepts_flannels_empty_backend_type_and_host_gw_needs_its_own() {
        let udp = cfg(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"udp"}}"#);
        let plain = rec("10.42.1.0-24", 1, r#"{"PublicIP":"198.51.100.1","PublicIPv6":null}"#);
        let named = rec("10.42.2.0-24", 2, r#"{"PublicIP":"198.51.100.2","BackendType":"udp"}"#);
        let vxl = rec("10.42.3.0-24", 3, &vx("198.51.100.3", "02:00:00:00:00:03"));
        let a = admit(&udp, [&plain, &named, &vxl]);
        assert_eq!(names(&a), ["10.42.1.0-24", "10.42.2.0-24"]);
        assert_eq!(a.refused[0].reason.label(), "other_backend");
        let hostgw = cfg(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#);
        let hg = rec(
            "10.42.4.0-24",
            4,
            r#"{"PublicIP":"198.51.100.4","BackendType":"host-gw"}"#,
        );
        assert_eq!(names(&admit(&hostgw, [&plain, &hg])), ["10.42.4.0-24"]);
    }

    #[test]
    fn wireguard_needs_a_public_key_and_accepts_newer_flannels_port() {
        let c = cfg(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"wireguard"}}"#);
        let wg = |ip: &str, data: &str| {
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{data}}}"#)
        };
        let key = "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY=";
        let records = vec![
            rec(
                "10.42.1.0-24",
                1,
                &wg("198.51.100.1", &format!(r#"{{"PublicKey":"{key}"}}"#)),
            ),
            rec(
                "10.42.2.0-24",
                2,
                &wg(
                    "198.51.100.2",
                    r#"{"PublicKey":"uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM=","Port":51830}"#,
                ),
            ),
            rec("10.42.3.0-24", 3, &wg("198.51.100.3", r#"{"PublicKey":"not-a-key"}"#)),
            rec("10.42.4.0-24", 4, &wg("198.51.100.4", "{}")),
        ];
        let a = admit(&c, &records);
        assert_eq!(names(&a), ["10.42.1.0-24", "10.42.2.0-24"]);
        for name in ["10.42.3.0-24", "10.42.4.0-24"] {
            let r = refusal_of(&a, name);
            assert_eq!(r.label(), "bad_backend_data", "{name}: {r}");
        }
        assert!(refusal_of(&a, "10.42.3.0-24").to_string().contains("PublicKey"));
    }

    #[test]
    fn wireguard_ipv6_sides_need_a_backend_v6_data_public_key() {
        let dual = cfg(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard"}}"#,
        );
        let v6_only =
            cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard"}}"#);
        let (k1, k2) = (
            "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY=",
            "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM=",
        );
        let lease = |ip: &str, ip6: &str, data: &str, data6: &str| {
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"wireguard","BackendData":{data},"BackendV6Data":{data6}}}"#
            )
        };
        let key = |k: &str| format!(r#"{{"PublicKey":"{k}"}}"#);
        let records = vec![
            rec(
                "10.42.1.0-24&fc00:0:0:1::-64",
                1,
                &lease("198.51.100.1", "2001:db8::1", &key(k1), &key(k1)),
            ),
            rec(
                "10.42.2.0-24&fc00:0:0:2::-64",
                2,
                &lease("198.51.100.2", "2001:db8::2", &key(k2), "null"),
            ),
            rec(
                "10.42.3.0-24&fc00:0:0:3::-64",
                3,
                &lease("198.51.100.3", "2001:db8::3", &key(k2), r#"{"PublicKey":"x"}"#),
            ),
            rec(
                "0.0.0.0-0&fc00:0:0:4::-64",
                4,
                &lease("0.0.0.0", "2001:db8::4", "null", &key(k2)),
            ),
        ];
        let a = admit(&dual, &records);
        assert_eq!(names(&a), ["0.0.0.0-0&fc00:0:0:4::-64", "10.42.1.0-24&fc00:0:0:1::-64"]);
        for name in ["10.42.2.0-24&fc00:0:0:2::-64", "10.42.3.0-24&fc00:0:0:3::-64"] {
            let r = refusal_of(&a, name);
            assert_eq!(r.label(), "bad_backend_data", "{name}: {r}");
            assert!(r.to_string().starts_with("BackendV6Data"), "{r}");
        }
        // IPv6-only: BackendData is not looked at; one key in both is one claim.
        let a = admit(&v6_only, [&records[0], &records[3]]);
        assert_eq!(names(&a), ["0.0.0.0-0&fc00:0:0:4::-64", "10.42.1.0-24&fc00:0:0:1::-64"]);
    }

    #[test]
    fn a_public_key_is_held_by_the_oldest_lease() {
        let c = cfg(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"wireguard"}}"#);
        let wg = |ip: &str, key: &str| {
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}"}}}}"#
            )
        };
        let (k1, k2) = (
            "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY=",
            "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM=",
        );
        let records = vec![
            rec("10.42.5.0-24", 1, &wg("198.51.100.1", k1)),
            rec("10.42.2.0-24", 2, &wg("198.51.100.2", k1)),
            rec("10.42.3.0-24", 3, &wg("198.51.100.3", k2)),
        ];
        let a = admit(&c, &records);
        assert_eq!(names(&a), ["10.42.3.0-24", "10.42.5.0-24"]);
        let r = refusal_of(&a, "10.42.2.0-24");
        assert_eq!(r.label(), "conflict");
        assert!(r.to_string().contains(&format!("PublicKey {k1}")), "{r}");
    }

    #[test]
    fn every_label_is_listed() {
        let all = [
            Refusal::Nested,
            Refusal::BadKey,
            Refusal::BadValue(String::new()),
            Refusal::OutsideNetwork {
                subnet: String::new(),
                network: String::new(),
            },
            Refusal::WrongLength {
                subnet: String::new(),
                len: 0,
                want: 0,
                key: "",
            },
            Refusal::BadPublicIp {
                ip: Ipv4Addr::UNSPECIFIED.into(),
                why: "",
            },
            Refusal::OtherBackend {
                theirs: String::new(),
                ours: "",
            },
            Refusal::BadBackendData(String::new()),
            Refusal::Conflict {
                what: "",
                value: String::new(),
                holder: String::new(),
            },
            Refusal::NoSharedFamily { network: "" },
        ];
        let labels: Vec<_> = all.iter().map(Refusal::label).collect();
        assert_eq!(labels, Refusal::LABELS);
    }
}
