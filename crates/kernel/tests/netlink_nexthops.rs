//! Root tests of the wrapper's nexthop objects on a real namespace: IPv4 onlink and IPv6
//! gateway nexthops, routes that point at them, replacing a nexthop under its routes, reading a
//! route's nexthop back (also when the kernel leaves the gateway out of route dumps), deleting,
//! and the notification a deleted nexthop sends. Each test makes its own namespace
//! `wnh-<unique>`, removed on drop even when it fails; what the wrapper wrote is checked with
//! `ip` as an operator would.
//!
//! Run: `cargo test -p weft-kernel --test netlink_nexthops` as root.

mod common;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use common::{require_root, Netns};
use ipnet::IpNet;
use weft_kernel::monitor::{subscribe, KernelEvent};
use weft_kernel::netlink::{block_on_in_netns, netns_path, AddrFamily, Netlink, NetlinkError, NexthopSpec, VethSpec};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A namespace with a veth pair `u0`/`u1` up, u0 addressed 192.0.2.1/24 and fd00:1::1/64.
fn node() -> Netns {
    let ns = Netns::named("wnh");
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
    ns.run(&["ip", "link", "set", "lo", "up"]);
    netlink(&ns, |nl| async move {
        nl.create_veth(&VethSpec {
            name: "u0",
            peer_name: "u1",
            mtu: 1500,
            master: None,
            up: true,
            peer_netns: None,
        })
        .await?;
        let u1 = nl.require_link_named("veth", "u1").await?;
        nl.set_link_up(u1.index).await?;
        let u0 = nl.require_link_named("veth", "u0").await?;
        nl.add_addr(u0.index, net("192.0.2.1/24")).await?;
        nl.add_addr(u0.index, net("fd00:1::1/64")).await
    });
    ns
}

fn netlink<T: Send, Fut>(ns: &Netns, f: impl FnOnce(Netlink) -> Fut + Send) -> T
where
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
{
    let file = File::open(netns_path(&ns.0)).unwrap();
    block_on_in_netns(file.as_fd(), f).unwrap_or_else(|e| panic!("in {}: {e}", ns.0))
}

#[test]
fn routes_point_at_nexthops_of_either_family_and_follow_a_replaced_nexthop() {
    require_root();
    let ns = node();
    let u0 = netlink(&ns, |nl| async move { nl.require_link_named("veth", "u0").await }).index;
    let v4 = NexthopSpec {
        id: 0x7700_0002,
        gateway: ip("10.5.2.0"),
        oif: u0,
        onlink: true,
    };
    let v6 = NexthopSpec {
        id: 0x7780_0002,
        gateway: ip("fd00:1::2"),
        oif: u0,
        onlink: false,
    };
    let (nexthops, routes) = netlink(&ns, |nl| async move {
        for spec in [v4, v6] {
            // Twice: idempotent.
            nl.replace_nexthop(&spec).await?;
            nl.replace_nexthop(&spec).await?;
        }
        nl.replace_route_via_nexthop(net("10.5.2.0/24"), v4.id).await?;
        nl.replace_route_via_nexthop(net("10.5.2.0/24"), v4.id).await?;
        nl.replace_route_via_nexthop(net("fd00:99::/64"), v6.id).await?;
        Ok((nl.list_nexthops(None).await?, nl.list_routes(None).await?))
    });
    let mut specs: Vec<_> = nexthops.iter().filter_map(|n| n.spec()).collect();
    specs.sort();
    assert_eq!(specs, vec![v4, v6]);
    let shown = ns.run(&["ip", "route", "show", "10.5.2.0/24"]);
    assert!(shown.contains("nhid 1996488706"), "{shown}");
    let r4 = routes.iter().find(|r| r.dst == net("10.5.2.0/24")).unwrap();
    assert_eq!(
        (r4.nexthop_id, r4.gateway, r4.oif, r4.onlink),
        (Some(v4.id), Some(v4.gateway), Some(u0), true)
    );
    let r6 = routes.iter().find(|r| r.dst == net("fd00:99::/64")).unwrap();
    assert_eq!(
        (r6.nexthop_id, r6.gateway, r6.oif),
        (Some(v6.id), Some(v6.gateway), Some(u0))
    );

    // A replaced nexthop carries its route along.
    let moved = NexthopSpec {
        gateway: ip("10.5.2.1"),
        ..v4
    };
    netlink(&ns, |nl| async move { nl.replace_nexthop(&moved).await });
    let shown = ns.run(&["ip", "route", "show", "10.5.2.0/24"]);
    assert!(shown.contains("via 10.5.2.1"), "{shown}");

    // An id that is taken is EEXIST for add.
    let e = netlink(&ns, |nl| async move { Ok(nl.add_nexthop(&v4).await) }).unwrap_err();
    assert!(e.is_exists(), "{e}");

    // Without compat mode the kernel leaves the gateway out of route dumps; the wrapper reads
    // it from the nexthop.
    ns.run(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"]);
    let routes = netlink(&ns, |nl| async move { nl.list_routes(Some(AddrFamily::Ipv4)).await });
    let r4 = routes.iter().find(|r| r.dst == net("10.5.2.0/24")).unwrap();
    assert_eq!((r4.gateway, r4.oif, r4.onlink), (Some(ip("10.5.2.1")), Some(u0), true));
    ns.run(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=1"]);

    // A route that points at a nexthop is deleted by its id; then the nexthops go.
    let left = netlink(&ns, |nl| async move {
        nl.delete_route_via_nexthop(net("fd00:99::/64"), v6.id, 0).await?;
        nl.delete_route_via_nexthop(net("fd00:99::/64"), v6.id, 0).await?;
        nl.delete_nexthop(v4.id).await?;
        nl.delete_nexthop(v4.id).await?;
        nl.delete_nexthop(v6.id).await?;
        Ok((nl.list_nexthops(None).await?, nl.list_routes(None).await?))
    });
    assert_eq!(left.0, vec![]);
    assert!(left.1.iter().all(|r| r.nexthop_id.is_none()), "{:?}", left.1);
    assert!(
        !left.1.iter().any(|r| r.dst == net("10.5.2.0/24")),
        "the nexthop's route went with it"
    );
}

#[test]
fn a_deleted_nexthop_is_notified_although_its_routes_go_silently() {
    require_root();
    let ns = node();
    let name = ns.0.clone();
    let seen = netlink(&ns, |nl| async move {
        let mut events = subscribe()?;
        let u0 = nl.require_link_named("veth", "u0").await?;
        let spec = NexthopSpec {
            id: 0x7700_0003,
            gateway: ip("10.5.3.0"),
            oif: u0.index,
            onlink: true,
        };
        nl.replace_nexthop(&spec).await?;
        nl.replace_route_via_nexthop(net("10.5.3.0/24"), spec.id).await?;
        let status = std::process::Command::new("ip")
            .args(["-n", &name, "nexthop", "del", "id", &spec.id.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (mut added, mut route_added, mut gone) = (false, false, false);
        while !(added && route_added && gone) {
            let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await else {
                break;
            };
            match event {
                KernelEvent::NexthopChanged(n) if n.spec() == Some(spec) => added = true,
                KernelEvent::RouteAdded(r) if r.nexthop_id == Some(spec.id) => route_added = true,
                KernelEvent::NexthopGone(n) if n.id == spec.id => gone = true,
                _ => {}
            }
        }
        Ok((added, route_added, gone))
    });
    assert_eq!(seen, (true, true, true), "(nexthop added, route added, nexthop gone)");
}

#[test]
fn a_batch_answers_each_change_in_order_and_a_failure_stays_with_its_change() {
    use weft_kernel::netlink::Batch;
    require_root();
    let ns = node();
    let (results, routes, neighbours) = netlink(&ns, |nl| async move {
        let u0 = nl.require_link_named("veth", "u0").await?.index;
        let mut first = Batch::default();
        for i in 0..200u32 {
            first.replace_nexthop(&NexthopSpec {
                id: 0x7700_0000 + i,
                gateway: IpAddr::from([10, 5, i as u8, 0]),
                oif: u0,
                onlink: true,
            });
            first.replace_neighbour(u0, IpAddr::from([10, 5, i as u8, 0]), [2, 0, 0, 0, 0, i as u8]);
        }
        let mut results = nl.send_batch(first).await;
        let mut second = Batch::default();
        for i in 0..200u32 {
            second.replace_route_via_nexthop(format!("10.5.{i}.0/24").parse().unwrap(), 0x7700_0000 + i);
        }
        // Points at a nexthop that does not exist: refused, alone.
        second.replace_route_via_nexthop(net("10.6.0.0/24"), 0x7700_9999);
        second.delete_neighbour(u0, ip("10.9.9.9"));
        results.extend(nl.send_batch(second).await);
        let routes = nl.list_routes(Some(AddrFamily::Ipv4)).await?;
        let neighbours = nl.list_neighbours(u0, Some(AddrFamily::Ipv4)).await?;
        Ok((results, routes, neighbours))
    });
    assert_eq!(results.len(), 602);
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        failed,
        vec![600],
        "only the route to a missing nexthop fails: {:?}",
        results[600]
    );
    assert_eq!(routes.iter().filter(|r| r.nexthop_id.is_some()).count(), 200);
    assert_eq!(neighbours.iter().filter(|n| n.is_permanent()).count(), 200);
}
