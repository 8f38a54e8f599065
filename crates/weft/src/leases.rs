//! `weft leases`: the cluster's leases as etcd holds them, one line per node, and the records
//! every node refuses (with why), as weftd's admission decides them.

use std::fmt::Write;

use clap::Args;
use weft_control::etcd::EtcdSubnetManager;
use weft_control::store::subnets_prefix;
use weft_control::{LeaseBook, SubnetStore};
use weft_core::{Lease, Refused};

use weft_control::etcd_args::EtcdArgs;

#[derive(Debug, Clone, Args)]
pub struct LeasesArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print the leases as JSON (key and the stored value).
    #[arg(long)]
    pub json: bool,
}

pub fn render_table(leases: &[Lease]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<8} {}\n",
        "SUBNET", "PUBLIC IP", "BACKEND", "BACKEND DATA"
    );
    for l in leases {
        let backend = if l.attrs.backend_type.is_empty() {
            "udp"
        } else {
            &l.attrs.backend_type
        };
        let data = if l.attrs.backend_data.is_null() {
            String::from("-")
        } else {
            l.attrs.backend_data.to_string()
        };
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<8} {}",
            l.subnet.to_string(),
            l.attrs.public_ip,
            backend,
            data
        );
    }
    out
}

/// The refused records, one per line after a heading; nothing when there are none.
pub fn render_refused(refused: &[Refused]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nREFUSED (no node programs these)\n");
    for r in refused {
        let _ = writeln!(out, "{r}");
    }
    out
}

/// The records weftd's admission refuses, judged against the stored network config (none when
/// there is no valid config to judge by).
async fn refused(etcd: &EtcdSubnetManager) -> anyhow::Result<Vec<Refused>> {
    let Ok(Some(cfg)) = etcd.get_config().await else {
        return Ok(Vec::new());
    };
    let dir = subnets_prefix(etcd.prefix());
    let (stored, revision) = SubnetStore::list(etcd, &dir).await?;
    Ok(LeaseBook::from_listing(&cfg, &dir, &stored, revision)
        .snapshot()
        .refusals()
        .collect())
}

pub fn run(args: &LeasesArgs) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let etcd = EtcdSubnetManager::connect(args.etcd.options()).await?;
        let leases = etcd.list_leases().await?;
        if args.json {
            let items: Vec<_> = leases
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "key": format!("{}/subnets/{}", etcd.prefix(), l.subnet.to_key()),
                        "subnet": l.subnet.to_string(),
                        "value": serde_json::from_str::<serde_json::Value>(&l.attrs.to_json()).unwrap_or_default(),
                    })
                })
                .collect();
            Ok(serde_json::to_string_pretty(&items)? + "\n")
        } else {
            Ok(render_table(&leases) + &render_refused(&refused(&etcd).await?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::{LeaseAttrs, SubnetKey};

    #[test]
    fn table_names_udp_leases_and_backend_data() {
        let leases = [
            Lease {
                subnet: SubnetKey::parse("10.5.3.0-24").unwrap(),
                attrs: LeaseAttrs::new("198.51.100.1".parse().unwrap(), "", serde_json::Value::Null),
            },
            Lease {
                subnet: SubnetKey::parse("10.5.4.0-24").unwrap(),
                attrs: LeaseAttrs::new(
                    "198.51.100.2".parse().unwrap(),
                    "vxlan",
                    serde_json::json!({"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}),
                ),
            },
        ];
        let t = render_table(&leases);
        assert!(t.contains("10.5.3.0/24          198.51.100.1     udp      -"), "{t}");
        assert!(t.contains(r#"vxlan    {"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#), "{t}");
    }

    #[test]
    fn refused_records_follow_the_table_with_their_reason() {
        assert_eq!(render_refused(&[]), "");
        let r = Refused {
            name: "x/10.5.4.0-24".into(),
            reason: weft_core::Refusal::Nested,
        };
        let text = render_refused(&[r]);
        assert!(text.starts_with("\nREFUSED (no node programs these)\n"), "{text}");
        assert!(
            text.contains("lease x/10.5.4.0-24 refused: the key is nested"),
            "{text}"
        );
    }
}
