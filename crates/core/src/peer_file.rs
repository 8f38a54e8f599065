//! The udp backend's peer table as weftd publishes it next to subnet.env, so `weft trace` can
//! show which node weftd sends a destination's packets to: a JSON array of
//! `{"subnet":"10.5.3.0/24","public_ip":"198.51.100.3"}`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub const PEER_FILE_NAME: &str = "weft-udp-peers.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// Where the peer table lives for a given `--subnet-file`: the same directory.
pub fn peer_file_for(subnet_file: &Path) -> PathBuf {
    subnet_file.parent().unwrap_or(Path::new(".")).join(PEER_FILE_NAME)
}

pub fn render(peers: &[PeerEntry]) -> String {
    serde_json::to_string(peers).expect("peer entries always serialize") + "\n"
}

pub fn parse(text: &str) -> Result<Vec<PeerEntry>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_next_to_subnet_env() {
        let peers = [PeerEntry {
            subnet: "10.5.3.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(198, 51, 100, 3),
        }];
        let text = render(&peers);
        assert_eq!(text, "[{\"subnet\":\"10.5.3.0/24\",\"public_ip\":\"198.51.100.3\"}]\n");
        assert_eq!(parse(&text).unwrap(), peers);
        assert_eq!(
            peer_file_for(Path::new("/run/flannel/subnet.env")),
            Path::new("/run/flannel/weft-udp-peers.json")
        );
    }
}
