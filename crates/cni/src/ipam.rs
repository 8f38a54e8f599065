//! The built-in address store: one file per reserved address, in the on-disk layout of the
//! standard `host-local` plugin (`<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.0`, and the `lock` file every writer `flock`s), so weft-cni and host-local
//! (flannel's delegate) can share one node without handing out an address twice.
//!
//! Both address families share a store, as they share host-local's: one file per address, and a
//! `last_reserved_ip.<range>` per range, numbered as flannel's IPAM ranges are (IPv4 first).
//! The gateway and (IPv4) the network and broadcast addresses are never handed out; IPv6 hands out
//! the subnet's last address too, as host-local does.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, ErrorCode};

const LINE_BREAK: &str = "\r\n";
/// host-local's hint of where range `range_id`'s next search starts.
fn last_reserved_file(range_id: usize) -> String {
    format!("last_reserved_ip.{range_id}")
}

/// An address as a number, for both families (IPv4 in the low 32 bits).
fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The addresses of a node subnet that may be handed out, in order, starting after `last`
/// (wrapping around), as host-local walks them: from the network address + 1 to the broadcast
/// address - 1 (IPv4) or the last address (IPv6), without the gateway.
pub fn candidates(subnet: IpNet, gateway: IpAddr, last: Option<IpAddr>) -> impl Iterator<Item = IpAddr> {
    let subnet = subnet.trunc();
    let is_v4 = matches!(subnet, IpNet::V4(_));
    let first = to_u128(subnet.network()) + 1;
    // Exclusive; an IPv6 /0 loses its very last address to the overflow.
    let end = if is_v4 {
        to_u128(subnet.broadcast())
    } else {
        to_u128(subnet.broadcast()).saturating_add(1)
    };
    let count = end.saturating_sub(first);
    let start = match last.filter(|l| l.is_ipv4() == is_v4).map(to_u128) {
        Some(l) if (first..end).contains(&l) => l + 1 - first,
        _ => 0,
    };
    let from_u128 = move |n: u128| -> IpAddr {
        if is_v4 {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        }
    };
    (0..count)
        .map(move |i| from_u128(first + (start + i) % count))
        .filter(move |ip| *ip != gateway)
}

/// One network's reservations.
#[derive(Debug, Clone)]
pub struct AddressStore {
    dir: PathBuf,
}

/// A reservation read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl Reservation {
    /// The address a file of the store reserves: its name, when that is an address spelled as
    /// `IpAddr` prints it (so that releasing it removes this very file; IPv6 in RFC 5952's form,
    /// as host-local's Go names it). Other files (`lock`, `last_reserved_ip.0`, anything else)
    /// are not reservations.
    pub fn ip_of_file(name: &str) -> Option<IpAddr> {
        name.parse::<IpAddr>().ok().filter(|ip| ip.to_string() == name)
    }

    /// Reads a reservation file: `<containerID>\r\n<ifname>` (host-local's format; a bare `\n`
    /// is taken too), or only the container ID (host-local's older format). Surrounding white
    /// space is ignored; bytes that are not UTF-8 are replaced, so the reservation still counts.
    pub fn parse(ip: IpAddr, content: &[u8]) -> Reservation {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        let (container_id, ifname) = match text.split_once(LINE_BREAK).or_else(|| text.split_once('\n')) {
            Some((id, ifname)) => (id.trim().to_string(), ifname.trim().to_string()),
            None => (text.to_string(), String::new()),
        };
        Reservation {
            ip,
            container_id,
            ifname,
        }
    }

    /// The file content [`Reservation::parse`] reads back.
    pub fn file_content(&self) -> String {
        format!("{}{LINE_BREAK}{}", self.container_id, self.ifname)
    }
}

/// `last_reserved_ip.<range>`: where the next search starts; anything but one address is ignored.
pub fn parse_last_reserved(content: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(content).ok()?.trim().parse().ok()
}

impl AddressStore {
    /// The store of network `name` under `data_dir`, created if missing.
    pub fn open(data_dir: &Path, name: &str) -> Result<Self, CniError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("network name {name:?} cannot name a directory; use letters, digits, '-', '_', '.'"),
            ));
        }
        let dir = data_dir.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("create address store {}", dir.display()), &e))?;
        Ok(AddressStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Flock<File>, CniError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("open {}", path.display()), &e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| CniError::new(ErrorCode::IoFailure, format!("lock {}: {errno}", path.display())))
    }

    /// Reserves the next free address of `subnet` (range `range_id` of the network, as numbered
    /// in host-local's `ranges`) for the container and returns it.
    pub fn allocate(
        &self,
        subnet: IpNet,
        gateway: IpAddr,
        range_id: usize,
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr, CniError> {
        let _lock = self.lock()?;
        let last_reserved = self.dir.join(last_reserved_file(range_id));
        let last = std::fs::read(&last_reserved).ok().and_then(|b| parse_last_reserved(&b));
        for ip in candidates(subnet, gateway, last) {
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let owner = Reservation {
                        ip,
                        container_id: container_id.to_string(),
                        ifname: ifname.to_string(),
                    }
                    .file_content();
                    if let Err(e) = f.write_all(owner.as_bytes()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(CniError::io(format!("write {}", path.display()), &e));
                    }
                    // Only a hint for where the next search starts: a failure costs nothing.
                    let _ = std::fs::write(&last_reserved, ip.to_string());
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CniError::io(format!("reserve {}", path.display()), &e)),
            }
        }
        Err(CniError::new(
            ErrorCode::AddressesExhausted,
            format!(
                "no free address left in {} for container {container_id}: every address is reserved in {}; \
                 delete unused containers (or run CNI GC) to release some",
                subnet.trunc(),
                self.dir.display()
            ),
        ))
    }

    /// Every reservation of the store.
    pub fn list(&self) -> Result<Vec<Reservation>, CniError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| CniError::io(format!("read {}", self.dir.display()), &e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(Reservation::ip_of_file) else {
                continue;
            };
            let Ok(content) = std::fs::read(entry.path()) else {
                continue; // released meanwhile
            };
            out.push(Reservation::parse(ip, &content));
        }
        Ok(out)
    }

    /// The addresses reserved for this container interface.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.container_id == container_id && (r.ifname == ifname || r.ifname.is_empty()))
            .map(|r| r.ip)
            .collect())
    }

    /// Releases this container interface's addresses; none is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let _lock = self.lock()?;
        let ips = self.find(container_id, ifname)?;
        for ip in &ips {
            self.remove(*ip)?;
        }
        Ok(ips)
    }

    /// Releases every reservation `keep` rejects and returns them.
    pub fn release_unless(&self, keep: impl Fn(&Reservation) -> bool) -> Result<Vec<Reservation>, CniError> {
        let _lock = self.lock()?;
        let stale: Vec<Reservation> = self.list()?.into_iter().filter(|r| !keep(r)).collect();
        for r in &stale {
            self.remove(r.ip)?;
        }
        Ok(stale)
    }

    fn remove(&self, ip: IpAddr) -> Result<(), CniError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CniError::io(format!("release {}", path.display()), &e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-cni-ipam-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn last_octet(ip: IpAddr) -> u8 {
        match ip {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        }
    }

    #[test]
    fn candidates_skip_network_gateway_broadcast_and_wrap() {
        let subnet: IpNet = "10.5.72.1/29".parse().unwrap();
        let gw = v4(10, 5, 72, 1);
        let all: Vec<_> = candidates(subnet, gw, None).map(last_octet).collect();
        assert_eq!(all, vec![2, 3, 4, 5, 6]);
        let after: Vec<_> = candidates(subnet, gw, Some(v4(10, 5, 72, 4))).map(last_octet).collect();
        assert_eq!(after, vec![5, 6, 2, 3, 4]);
        // A last address outside the range (or of the other family) restarts at the beginning.
        let outside: Vec<_> = candidates(subnet, gw, Some(v4(10, 9, 9, 9))).map(last_octet).collect();
        assert_eq!(outside, all);
        let other: Vec<_> = candidates(subnet, gw, Some("::4".parse().unwrap()))
            .map(last_octet)
            .collect();
        assert_eq!(other, all);
    }

    #[test]
    fn ipv6_candidates_run_to_the_last_address_as_host_locals_do() {
        let subnet: IpNet = "fc00:0:0:1::1/125".parse().unwrap();
        let gw: IpAddr = "fc00:0:0:1::1".parse().unwrap();
        let all: Vec<_> = candidates(subnet, gw, None).map(|ip| ip.to_string()).collect();
        assert_eq!(
            all,
            [
                "fc00:0:0:1::2",
                "fc00:0:0:1::3",
                "fc00:0:0:1::4",
                "fc00:0:0:1::5",
                "fc00:0:0:1::6",
                "fc00:0:0:1::7"
            ]
        );
        let after: Vec<_> = candidates(subnet, gw, Some("fc00:0:0:1::7".parse().unwrap()))
            .map(last_octet)
            .collect();
        assert_eq!(after, vec![2, 3, 4, 5, 6, 7]);
        // A /64 is walked lazily.
        let big: IpNet = "fc00:0:0:2::/64".parse().unwrap();
        let first: Vec<_> = candidates(big, "fc00:0:0:2::1".parse().unwrap(), None)
            .take(2)
            .collect();
        assert_eq!(
            first,
            [
                "fc00:0:0:2::2".parse::<IpAddr>().unwrap(),
                "fc00:0:0:2::3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn allocate_release_and_exhaustion() {
        let dir = tmpdir("alloc");
        let store = AddressStore::open(&dir, "net").unwrap();
        let subnet: IpNet = "10.5.72.0/29".parse().unwrap();
        let gw = v4(10, 5, 72, 1);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(store.allocate(subnet, gw, 0, &format!("c{i}"), "eth0").unwrap());
        }
        assert_eq!(got.into_iter().map(last_octet).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
        let e = store.allocate(subnet, gw, 0, "c9", "eth0").unwrap_err();
        assert_eq!(e.code, 100);
        assert!(e.msg.contains("no free address left in 10.5.72.0/29"), "{e}");
        // host-local's file format.
        assert_eq!(
            std::fs::read_to_string(store.dir().join("10.5.72.3")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![v4(10, 5, 72, 3)]);
        assert!(store.release("c1", "eth0").unwrap().is_empty());
        assert_eq!(store.allocate(subnet, gw, 0, "c10", "eth0").unwrap(), v4(10, 5, 72, 3));
        let stale = store.release_unless(|r| r.container_id == "c0").unwrap();
        assert_eq!(stale.len(), 4);
        assert_eq!(store.find("c0", "eth0").unwrap(), vec![v4(10, 5, 72, 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_families_share_one_store_with_a_hint_per_range() {
        let dir = tmpdir("dual");
        let store = AddressStore::open(&dir, "net").unwrap();
        let (net4, gw4): (IpNet, IpAddr) = ("10.5.72.0/24".parse().unwrap(), v4(10, 5, 72, 1));
        let (net6, gw6): (IpNet, IpAddr) = ("fc00:0:0:1::/64".parse().unwrap(), "fc00:0:0:1::1".parse().unwrap());
        let a4 = store.allocate(net4, gw4, 0, "c0", "eth0").unwrap();
        let a6 = store.allocate(net6, gw6, 1, "c0", "eth0").unwrap();
        assert_eq!(
            (a4.to_string(), a6.to_string()),
            ("10.5.72.2".into(), "fc00:0:0:1::2".into())
        );
        // host-local's names: the address as Go prints it, last_reserved_ip.<range index>.
        assert_eq!(
            std::fs::read_to_string(store.dir().join("fc00:0:0:1::2")).unwrap(),
            "c0\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(store.dir().join("last_reserved_ip.0")).unwrap(),
            "10.5.72.2"
        );
        assert_eq!(
            std::fs::read_to_string(store.dir().join("last_reserved_ip.1")).unwrap(),
            "fc00:0:0:1::2"
        );
        assert_eq!(
            store.allocate(net6, gw6, 1, "c1", "eth0").unwrap().to_string(),
            "fc00:0:0:1::3"
        );
        let mut mine = store.find("c0", "eth0").unwrap();
        mine.sort();
        assert_eq!(mine, vec![a4, a6]);
        let mut freed = store.release("c0", "eth0").unwrap();
        freed.sort();
        assert_eq!(freed, vec![a4, a6]);
        assert!(store.find("c0", "eth0").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_network_names_are_refused() {
        let dir = tmpdir("names");
        assert_eq!(AddressStore::open(&dir, "../x").unwrap_err().code, 7);
        assert_eq!(AddressStore::open(&dir, "..").unwrap_err().code, 7);
    }

    #[test]
    fn reservation_files_of_host_local_are_read() {
        let ip = v4(10, 5, 72, 2);
        let r = Reservation::parse(ip, b"abc\r\neth0");
        assert_eq!((r.container_id.as_str(), r.ifname.as_str()), ("abc", "eth0"));
        assert_eq!(Reservation::parse(ip, b"abc\n").ifname, "");
        assert_eq!(Reservation::parse(ip, b"abc\xff\r\neth0").container_id, "abc\u{fffd}");
        assert_eq!(Reservation::ip_of_file("10.5.72.2"), Some(ip));
        assert_eq!(Reservation::ip_of_file("fc00:0:0:1::2"), "fc00:0:0:1::2".parse().ok());
        for not_ours in [
            "10.5.072.2",
            "lock",
            "last_reserved_ip.0",
            "10.5.72.2 ",
            "fc00:0:0:1:0::2",
            "FC00::2",
        ] {
            assert_eq!(Reservation::ip_of_file(not_ours), None, "{not_ours}");
        }
        assert_eq!(parse_last_reserved(b"10.5.72.9\n"), Some(v4(10, 5, 72, 9)));
        assert_eq!(parse_last_reserved(b"fc00::9\n"), "fc00::9".parse().ok());
        assert_eq!(parse_last_reserved(b"\xff"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any file content reads as some reservation, and that reservation written back reads
        /// the same (a fixed point after one read).
        #[test]
        fn reservation_files_never_panic_and_round_trip(content in prop::collection::vec(any::<u8>(), 0..64)) {
            let ip = v4(10, 5, 72, 2);
            let r = Reservation::parse(ip, &content);
            prop_assert_eq!(Reservation::parse(ip, r.file_content().as_bytes()), r);
            let _ = parse_last_reserved(&content);
        }

        /// What weft-cni writes for a valid container ID and interface name reads back exactly.
        #[test]
        fn written_reservations_read_back(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}", ifname in "[a-z0-9@.-]{1,15}") {
            let r = Reservation { ip: v4(10, 5, 72, 3), container_id: id, ifname };
            prop_assert_eq!(Reservation::parse(r.ip, r.file_content().as_bytes()), r);
        }

        /// A file name is a reservation only when it is the address's own spelling, so that
        /// releasing it removes that file; an accepted last address prints back the same.
        #[test]
        fn file_names_name_their_address(
            name in prop_oneof!["[0-9.]{0,16}", "[0-9a-fA-F:.]{0,24}", ".{0,16}"],
            ip in prop_oneof![
                any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())),
                any::<[u8; 16]>().prop_map(|a| IpAddr::V6(a.into())),
            ],
        ) {
            if let Some(parsed) = Reservation::ip_of_file(&name) {
                prop_assert_eq!(parsed.to_string(), name);
            }
            prop_assert_eq!(Reservation::ip_of_file(&ip.to_string()), Some(ip));
            prop_assert_eq!(parse_last_reserved(ip.to_string().as_bytes()), Some(ip));
        }
    }
}
