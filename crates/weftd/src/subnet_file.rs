//! Writing subnet.env atomically (temporary file in the same directory, then rename), so a CNI
//! plugin never reads half a file.

use std::io::Write;
use std::path::Path;

use weft_core::{SubnetEnv, SubnetKey};

pub fn write_atomically(path: &Path, env: &SubnetEnv) -> std::io::Result<()> {
    write_text_atomically(path, &env.render())
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename.
pub fn write_text_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("subnet.env")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The subnets (IPv4, IPv6 or both) from a previous run's subnet.env, if there is a readable one.
pub fn previous_subnet(path: &Path) -> Option<SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    let env = SubnetEnv::parse(&text).ok()?;
    Some(SubnetKey {
        ipv4: env.subnet.map(|n| n.trunc()),
        ipv6: env.ipv6_subnet.map(|n| n.trunc()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("weftd-subnet-file-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.72.1/24".parse().unwrap()),
            mtu: 1450,
            ipmasq: false,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        write_atomically(&path, &env).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), env.render());
        assert_eq!(previous_subnet(&path), Some(SubnetKey::parse("10.5.72.0-24").unwrap()));
        let dual = SubnetEnv {
            ipv6_network: Some("fc00::/48".parse().unwrap()),
            ipv6_subnet: Some("fc00:0:0:9::1/64".parse().unwrap()),
            ..env
        };
        write_atomically(&path, &dual).unwrap();
        assert_eq!(
            previous_subnet(&path),
            Some(SubnetKey::parse("10.5.72.0-24&fc00:0:0:9::-64").unwrap())
        );
        let ipv6_only = SubnetEnv {
            network: None,
            subnet: None,
            ..dual
        };
        write_atomically(&path, &ipv6_only).unwrap();
        assert_eq!(
            previous_subnet(&path),
            Some(SubnetKey::parse("0.0.0.0-0&fc00:0:0:9::-64").unwrap())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
