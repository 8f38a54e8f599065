//! The built-in address store: one file per reserved address, in the on-disk layout of the
//! standard `host-local` plugin (`<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.0`, and the `lock` file every writer `flock`s), so weft-cni and host-local
//! (flannel's delegate) can share one node without handing out an address twice.
//!
//! The gateway, network and broadcast addresses are never handed out.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, ErrorCode};

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.0";

/// The addresses of a node subnet that may be handed out, in order, starting after `last`
/// (wrapping around), as host-local walks them.
pub fn candidates(subnet: Ipv4Net, gateway: Ipv4Addr, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
    let subnet = subnet.trunc();
    let first = u32::from(subnet.network()) + 1;
    let end = u32::from(subnet.broadcast()); // exclusive
    let count = end.saturating_sub(first);
    let start = match last.map(u32::from) {
        Some(l) if (first..end).contains(&l) => l + 1 - first,
        _ => 0,
    };
    (0..count)
        .map(move |i| Ipv4Addr::from(first + (start + i) % count))
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
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

impl Reservation {
    /// The address a file of the store reserves: its name, when that is an IPv4 address spelled
    /// as `Ipv4Addr` prints it (so that releasing it removes this very file). Other files
    /// (`lock`, `last_reserved_ip.0`, anything else) are not reservations.
    pub fn ip_of_file(name: &str) -> Option<Ipv4Addr> {
        name.parse::<Ipv4Addr>().ok().filter(|ip| ip.to_string() == name)
    }

    /// Reads a reservation file: `<containerID>\r\n<ifname>` (host-local's format; a bare `\n`
    /// is taken too), or only the container ID (host-local's older format). Surrounding white
    /// space is ignored; bytes that are not UTF-8 are replaced, so the reservation still counts.
    pub fn parse(ip: Ipv4Addr, content: &[u8]) -> Reservation {
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

/// `last_reserved_ip.0`: where the next search starts; anything but one address is ignored.
pub fn parse_last_reserved(content: &[u8]) -> Option<Ipv4Addr> {
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

    /// Reserves the next free address of `subnet` for the container and returns it.
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, CniError> {
        let _lock = self.lock()?;
        let last = std::fs::read(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|b| parse_last_reserved(&b));
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
                    let _ = std::fs::write(self.dir.join(LAST_RESERVED), ip.to_string());
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
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, CniError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.container_id == container_id && (r.ifname == ifname || r.ifname.is_empty()))
            .map(|r| r.ip)
            .collect())
    }

    /// Releases this container interface's addresses; none is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, CniError> {
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

    fn remove(&self, ip: Ipv4Addr) -> Result<(), CniError> {
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

    #[test]
    fn candidates_skip_network_gateway_broadcast_and_wrap() {
        let subnet: Ipv4Net = "10.5.72.1/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 5, 72, 1);
        let all: Vec<_> = candidates(subnet, gw, None).map(|ip| ip.octets()[3]).collect();
        assert_eq!(all, vec![2, 3, 4, 5, 6]);
        let after: Vec<_> = candidates(subnet, gw, Some(Ipv4Addr::new(10, 5, 72, 4)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(after, vec![5, 6, 2, 3, 4]);
        // A last address outside the range restarts at the beginning.
        let outside: Vec<_> = candidates(subnet, gw, Some(Ipv4Addr::new(10, 9, 9, 9)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(outside, all);
    }

    #[test]
    fn allocate_release_and_exhaustion() {
        let dir = tmpdir("alloc");
        let store = AddressStore::open(&dir, "net").unwrap();
        let subnet: Ipv4Net = "10.5.72.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 5, 72, 1);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(store.allocate(subnet, gw, &format!("c{i}"), "eth0").unwrap());
        }
        assert_eq!(
            got.iter().map(|ip| ip.octets()[3]).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        let e = store.allocate(subnet, gw, "c9", "eth0").unwrap_err();
        assert_eq!(e.code, 100);
        assert!(e.msg.contains("no free address left in 10.5.72.0/29"), "{e}");
        // host-local's file format.
        assert_eq!(
            std::fs::read_to_string(store.dir().join("10.5.72.3")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![Ipv4Addr::new(10, 5, 72, 3)]);
        assert!(store.release("c1", "eth0").unwrap().is_empty());
        assert_eq!(
            store.allocate(subnet, gw, "c10", "eth0").unwrap(),
            Ipv4Addr::new(10, 5, 72, 3)
        );
        let stale = store.release_unless(|r| r.container_id == "c0").unwrap();
        assert_eq!(stale.len(), 4);
        assert_eq!(store.find("c0", "eth0").unwrap(), vec![Ipv4Addr::new(10, 5, 72, 2)]);
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
        let ip = Ipv4Addr::new(10, 5, 72, 2);
        let r = Reservation::parse(ip, b"abc\r\neth0");
        assert_eq!((r.container_id.as_str(), r.ifname.as_str()), ("abc", "eth0"));
        assert_eq!(Reservation::parse(ip, b"abc\n").ifname, "");
        assert_eq!(Reservation::parse(ip, b"abc\xff\r\neth0").container_id, "abc\u{fffd}");
        assert_eq!(Reservation::ip_of_file("10.5.72.2"), Some(ip));
        for not_ours in ["10.5.072.2", "lock", "last_reserved_ip.0", "10.5.72.2 ", "::1"] {
            assert_eq!(Reservation::ip_of_file(not_ours), None, "{not_ours}");
        }
        assert_eq!(parse_last_reserved(b"10.5.72.9\n"), Some(Ipv4Addr::new(10, 5, 72, 9)));
        assert_eq!(parse_last_reserved(b"\xff"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any file content reads as some reservation, and that reservation written back reads
        /// the same (a fixed point after one read).
        #[test]
        fn reservation_files_never_panic_and_round_trip(content in prop::collection::vec(any::<u8>(), 0..64)) {
            let ip = Ipv4Addr::new(10, 5, 72, 2);
            let r = Reservation::parse(ip, &content);
            prop_assert_eq!(Reservation::parse(ip, r.file_content().as_bytes()), r);
            let _ = parse_last_reserved(&content);
        }

        /// What weft-cni writes for a valid container ID and interface name reads back exactly.
        #[test]
        fn written_reservations_read_back(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}", ifname in "[a-z0-9@.-]{1,15}") {
            let r = Reservation { ip: Ipv4Addr::new(10, 5, 72, 3), container_id: id, ifname };
            prop_assert_eq!(Reservation::parse(r.ip, r.file_content().as_bytes()), r);
        }

        /// A file name is a reservation only when it is the address's own spelling, so that
        /// releasing it removes that file; an accepted last address prints back the same.
        #[test]
        fn file_names_name_their_address(name in prop_oneof!["[0-9.]{0,16}", ".{0,16}"], ip in any::<[u8; 4]>()) {
            if let Some(parsed) = Reservation::ip_of_file(&name) {
                prop_assert_eq!(parsed.to_string(), name);
            }
            let ip = Ipv4Addr::from(ip);
            prop_assert_eq!(Reservation::ip_of_file(&ip.to_string()), Some(ip));
            prop_assert_eq!(parse_last_reserved(ip.to_string().as_bytes()), Some(ip));
        }
    }
}
