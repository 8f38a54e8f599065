//! The etcd subnet manager against a real etcd server started per test.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, free_port, EtcdServer, LogCapture};
use etcd_client::GetOptions;
use weft_control::etcd::{EtcdOptions, EtcdSubnetManager};
use weft_control::{ControlError, LeaseHealth};
use weft_core::{LeaseAttrs, NetworkConfig, SubnetKey};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const CONFIG_KEY: &str = "/coreos.com/network/config";

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::new(
        Ipv4Addr::new(198, 51, 100, last),
        "vxlan",
        serde_json::json!({"VNI": 1, "VtepMAC": format!("c6:d2:32:6f:8f:{last:02x}")}),
    )
}

async fn manager(etcd: &EtcdServer) -> Arc<EtcdSubnetManager> {
    Arc::new(EtcdSubnetManager::connect(etcd.options()).await.unwrap())
}

async fn raw_get(client: &mut etcd_client::Client, key: &str) -> Option<(String, i64)> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (String::from_utf8(kv.value().to_vec()).unwrap(), kv.lease()))
}

#[tokio::test]
async fn acquire_writes_flannels_key_and_value_with_a_ttl() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let cfg = m.put_config(CONFIG).await.unwrap();
    let lease = m
        .acquire_lease(&cfg, attrs(1), Some(SubnetKey::v4("10.5.34.1/24".parse().unwrap())))
        .await
        .unwrap();
    assert_eq!(lease.subnet, SubnetKey::v4("10.5.34.0/24".parse().unwrap()));

    let mut c = etcd.client().await;
    let (value, lease_id) = raw_get(&mut c, "/coreos.com/network/subnets/10.5.34.0-24")
        .await
        .unwrap();
    assert_eq!(
        value,
        r#"{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:01"}}"#
    );
    assert_ne!(lease_id, 0, "the key is bound to an etcd lease");
    let ttl = c.lease_time_to_live(lease_id, None).await.unwrap();
    assert!(
        ttl.granted_ttl() == 10 && ttl.ttl() > 5,
        "granted {} left {}",
        ttl.granted_ttl(),
        ttl.ttl()
    );
    assert_eq!(m.list_leases().await.unwrap(), vec![lease]);
}

#[tokio::test]
async fn two_nodes_get_distinct_subnets_and_a_node_keeps_its_own() {
    let etcd = EtcdServer::start();
    let a = manager(&etcd).await;
    let b = manager(&etcd).await;
    let cfg = a.put_config(CONFIG).await.unwrap();
    let la = a.acquire_lease(&cfg, attrs(1), None).await.unwrap();
    let lb = b.acquire_lease(&cfg, attrs(2), None).await.unwrap();
    assert_ne!(la.subnet, lb.subnet);

    // Node 1 restarts with a new VTEP MAC and a stale subnet.env: it keeps its lease, rewritten.
    let mut newer = attrs(1);
    newer.backend_data = serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"});
    let again = a
        .acquire_lease(
            &cfg,
            newer.clone(),
            Some(SubnetKey::v4("10.5.200.0/24".parse().unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(again.subnet, la.subnet);
    let mut c = etcd.client().await;
    let key = format!("/coreos.com/network/subnets/{}", la.subnet.to_key());
    assert_eq!(raw_get(&mut c, &key).await.unwrap().0, newer.to_json());
    assert_eq!(a.list_leases().await.unwrap().len(), 2);
}

#[tokio::test]
async fn out_of_subnets_is_a_clear_error() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let cfg = m
        .put_config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.1.0"}"#)
        .await
        .unwrap();
    m.acquire_lease(&cfg, attrs(1), None).await.unwrap();
    let e = m.acquire_lease(&cfg, attrs(2), None).await.unwrap_err();
    assert!(matches!(e, ControlError::OutOfSubnets(_)), "{e}");
    assert!(e.to_string().starts_with("out of subnets: all 1 /24 subnets"), "{e}");
}

#[tokio::test]
async fn connect_to_a_dead_endpoint_names_it_and_does_not_hang() {
    let port = free_port();
    let opts = EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let e = EtcdSubnetManager::connect(opts).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach etcd at http://127.0.0.1:{port}: ")),
        "{msg}"
    );
    assert!(
        msg.ends_with("check --etcd-endpoints and that etcd is running"),
        "{msg}"
    );
}

#[tokio::test]
async fn connect_with_retry_succeeds_once_etcd_starts() {
    let (client_port, peer_port) = (free_port(), free_port());
    let opts = EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{client_port}")],
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (logs, _guard) = LogCapture::install();
    let connecting = tokio::spawn(EtcdSubnetManager::connect_with_retry(opts));
    assert!(logs.wait_for("cannot reach etcd at", Duration::from_secs(10)).await);
    assert!(!connecting.is_finished());
    let _etcd = EtcdServer::start_on(client_port, peer_port);
    let m = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("connected within 20 s of etcd starting")
        .unwrap()
        .unwrap();
    assert_eq!(m.get_config().await.unwrap(), None);
}

#[tokio::test]
async fn wait_for_config_waits_reports_a_bad_config_then_returns_a_good_one() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let (logs, _guard) = LogCapture::install();
    let waiting = {
        let m = m.clone();
        tokio::spawn(async move { m.wait_for_config().await })
    };
    assert!(
        logs.wait_for(
            "waiting for the network config at /coreos.com/network/config (write it with etcdctl put",
            Duration::from_secs(5)
        )
        .await
    );
    let mut c = etcd.client().await;
    c.put(CONFIG_KEY, r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, None)
        .await
        .unwrap();
    assert!(
        logs.wait_for(
            "config key /coreos.com/network/config: SubnetLen 31 is larger than 30",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        logs.text()
    );
    let e = m.get_config().await.unwrap_err();
    assert!(matches!(e, ControlError::InvalidConfig { .. }), "{e}");
    assert!(!waiting.is_finished());

    c.put(CONFIG_KEY, CONFIG, None).await.unwrap();
    let cfg = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cfg, NetworkConfig::parse(CONFIG).unwrap());
}

#[tokio::test]
async fn put_config_refuses_an_invalid_config() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let e = m.put_config(r#"{"SubnetLen":24}"#).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config key /coreos.com/network/config: Network is missing"),
        "{e}"
    );
    assert_eq!(m.get_config().await.unwrap(), None, "nothing was written");
}

#[tokio::test]
async fn a_lease_deleted_by_someone_else_is_recreated() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let cfg = m.put_config(CONFIG).await.unwrap();
    let lease = m.acquire_lease(&cfg, attrs(1), None).await.unwrap();
    let (logs, _guard) = LogCapture::install();
    let watcher = m.spawn_lease_watcher(&cfg);
    let keeper = m.spawn_lease_keeper(cfg, lease.clone(), Some(watcher.snapshots.clone()));
    let key = format!("/coreos.com/network/subnets/{}", lease.subnet.to_key());

    let mut c = etcd.client().await;
    assert!(eventually(Duration::from_secs(5), || keeper.renewals.load(Ordering::Relaxed) >= 1).await);
    c.delete(key.as_str(), None).await.unwrap();
    let msg = format!(
        "lease {} was deleted by someone else; re-acquiring it",
        lease.subnet.to_key()
    );
    assert!(logs.wait_for(&msg, Duration::from_secs(5)).await, "{}", logs.text());
    let mut back = None;
    for _ in 0..100 {
        back = raw_get(&mut c, &key).await;
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back.unwrap().0, lease.attrs.to_json());
    assert_eq!(keeper.lease.borrow().subnet, lease.subnet);
    assert_eq!(*keeper.health.borrow(), LeaseHealth::Held);

    // Revoking the etcd lease (as its expiry would) is healed the same way.
    let id = raw_get(&mut c, &key).await.unwrap().1;
    c.lease_revoke(id).await.unwrap();
    let mut healed = false;
    for _ in 0..100 {
        if let Some((v, new_id)) = raw_get(&mut c, &key).await {
            healed = v == lease.attrs.to_json() && new_id != id;
            if healed {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed);
    keeper.task.abort();
    watcher.task.abort();
}

#[tokio::test]
async fn keeper_renews_so_the_lease_outlives_its_ttl() {
    let etcd = EtcdServer::start();
    let opts = EtcdOptions {
        lease_ttl: Duration::from_secs(3),
        renew_margin: Duration::from_secs(2),
        ..etcd.options()
    };
    let m = Arc::new(EtcdSubnetManager::connect(opts).await.unwrap());
    let cfg = m.put_config(CONFIG).await.unwrap();
    let lease = m.acquire_lease(&cfg, attrs(1), None).await.unwrap();
    let keeper = m.spawn_lease_keeper(cfg, lease.clone(), None);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut c = etcd.client().await;
    let key = format!("/coreos.com/network/subnets/{}", lease.subnet.to_key());
    let (_, id) = raw_get(&mut c, &key).await.expect("the lease outlived its 3 s TTL");
    assert!(keeper.renewals.load(Ordering::Relaxed) >= 3);
    // The same etcd lease was kept alive, not replaced.
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().granted_ttl(), 3);
    keeper.task.abort();
}

#[tokio::test]
async fn watcher_follows_puts_deletes_and_recovers_after_compaction_and_an_outage() {
    let mut etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let (logs, _guard) = LogCapture::install();
    let w = m.spawn_lease_watcher(&NetworkConfig::parse(CONFIG).unwrap());
    let mut snaps = w.snapshots.clone();
    let mut c = etcd.client().await;
    let k1 = SubnetKey::v4("10.5.1.0/24".parse().unwrap());
    let k2 = SubnetKey::v4("10.5.2.0/24".parse().unwrap());
    let key = |k: &SubnetKey| format!("/coreos.com/network/subnets/{}", k.to_key());

    let wait = |snaps: &mut tokio::sync::watch::Receiver<_>, want: Vec<SubnetKey>| {
        let mut snaps = snaps.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(15),
                snaps.wait_for(|s: &Arc<weft_control::LeaseSnapshot>| {
                    s.synced && s.leases.keys().copied().collect::<Vec<_>>() == want
                }),
            )
            .await
            .is_ok()
        }
    };

    c.put(key(&k1), attrs(1).to_json(), None).await.unwrap();
    assert!(wait(&mut snaps, vec![k1]).await);
    // Malformed records are skipped, not fatal.
    c.put("/coreos.com/network/subnets/bogus", "{}", None).await.unwrap();
    c.put(key(&k2), "not json", None).await.unwrap();
    c.put(key(&k2), attrs(2).to_json(), None).await.unwrap();
    assert!(wait(&mut snaps, vec![k1, k2]).await);
    assert_eq!(snaps.borrow().leases[&k2], attrs(2));
    // A key nested below the subnets directory that ends in k2's subnet is refused, and neither
    // its put nor its delete touches k2's lease.
    let nested = "/coreos.com/network/subnets/x/10.5.2.0-24";
    let refusals = w.refusals.load(Ordering::Relaxed);
    c.put(nested, attrs(9).to_json(), None).await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(15),
        snaps.wait_for(|s| s.refused.contains_key("x/10.5.2.0-24")),
    )
    .await
    .expect("the nested key is refused")
    .unwrap()
    .clone();
    assert_eq!(refused.refused["x/10.5.2.0-24"].label(), "nested_key");
    assert_eq!(refused.leases.keys().copied().collect::<Vec<_>>(), vec![k1, k2]);
    assert_eq!(
        w.refusals.load(Ordering::Relaxed),
        refusals + 1,
        "the nested key is counted once"
    );
    c.delete(nested, None).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(15), snaps.wait_for(|s| s.refused.len() == 1))
        .await
        .expect("the nested key's delete is seen")
        .unwrap()
        .clone();
    assert_eq!(after.leases[&k2], attrs(2), "k2 survives the nested key's delete");
    assert!(
        logs.text().contains("lease x/10.5.2.0-24 refused: the key is nested"),
        "{}",
        logs.text()
    );
    c.delete(key(&k1), None).await.unwrap();
    assert!(wait(&mut snaps, vec![k2]).await);

    // Compact everything: the live watch keeps working, and so do later changes.
    let rev = c
        .get("x", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(rev, None).await.unwrap();
    c.put(key(&k1), attrs(1).to_json(), None).await.unwrap();
    assert!(wait(&mut snaps, vec![k1, k2]).await);

    // An outage: changes made while the watch was down (and compacted away) still show up.
    let restarts = w.restarts.load(Ordering::Relaxed);
    etcd.stop();
    assert!(eventually(Duration::from_secs(30), || !w.snapshots.borrow().synced).await);
    etcd.restart();
    let mut c = etcd.client().await;
    c.delete(key(&k2), None).await.unwrap();
    let rev = c
        .get("x", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(rev, None).await.unwrap();
    assert!(
        wait(&mut snaps, vec![k1]).await,
        "{:?}\n{}\n{}",
        snaps.borrow(),
        logs.text(),
        etcd.log()
    );
    assert!(w.restarts.load(Ordering::Relaxed) > restarts);
    w.task.abort();
}

#[tokio::test]
async fn config_watcher_reports_invalid_and_changed_configs() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let running = m.put_config(CONFIG).await.unwrap();
    let (logs, _guard) = LogCapture::install();
    let task = m.spawn_config_watcher(running);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = etcd.client().await;
    c.put(CONFIG_KEY, r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, None)
        .await
        .unwrap();
    assert!(
        logs.wait_for(
            "config key /coreos.com/network/config: SubnetLen 31 is larger than 30",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        logs.text()
    );
    c.put(CONFIG_KEY, r#"{"Network":"10.6.0.0/16"}"#, None).await.unwrap();
    assert!(
        logs.wait_for(
            "the network config changed; restart weftd to apply it",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        logs.text()
    );
    task.abort();
}

#[tokio::test]
async fn delete_lease_removes_the_key() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let cfg = m.put_config(CONFIG).await.unwrap();
    let lease = m.acquire_lease(&cfg, attrs(1), None).await.unwrap();
    assert!(m.delete_lease(&lease.subnet).await.unwrap());
    assert!(!m.delete_lease(&lease.subnet).await.unwrap());
    assert!(m.list_leases().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dead_endpoint_next_to_a_live_one_is_tolerated() {
    // flannel's default endpoints list :4001 first, which is usually closed.
    let etcd = EtcdServer::start();
    let opts = EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{},{}", free_port(), etcd.url)],
        ..etcd.options()
    };
    let m = EtcdSubnetManager::connect(opts).await.unwrap();
    let cfg = m.put_config(CONFIG).await.unwrap();
    for i in 1..=5 {
        m.acquire_lease(&cfg, attrs(i), None).await.unwrap();
    }
    assert_eq!(m.list_leases().await.unwrap().len(), 5);
}
