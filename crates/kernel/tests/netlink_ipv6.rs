//! Root tests of the netlink wrapper's IPv6 side on real namespaces: routes via a gateway and
//! onlink, NDP neighbour entries, FDB entries with IPv6 destinations, a VXLAN device over an IPv6
//! underlay, and a ping6 between two namespaces through it. Each test makes its own namespaces
//! `wnl-<a|b>-<unique>`, removed on drop even when it fails; what the wrapper wrote is checked
//! with iproute2 (`ip`, `bridge`), the tools an operator would look with.
//!
//! Run: `cargo test -p weft-kernel --test netlink_ipv6` as root.

mod common;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Command;

use common::{require_root, Netns};
use ipnet::IpNet;
use weft_kernel::netlink::{
    block_on_in_netns, in_netns, netns_path, AddrFamily, Netlink, NetlinkError, RouteSpec, VethSpec, VxlanSpec,
};

/// A node: namespace `wnl-<suffix>-<unique>` with DAD off (addresses usable at once) and lo up.
fn node(suffix: &str) -> Netns {
    let ns = Netns::named(&format!("wnl-{suffix}"));
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
    ns.run(&["ip", "link", "set", "lo", "up"]);
    ns
}

impl Netns {
    fn file(&self) -> File {
        File::open(netns_path(&self.0)).unwrap()
    }

    /// Runs the netlink conversation `f` inside the namespace.
    fn netlink<T: Send, Fut>(&self, f: impl FnOnce(Netlink) -> Fut + Send) -> T
    where
        Fut: std::future::Future<Output = Result<T, NetlinkError>>,
    {
        block_on_in_netns(self.file().as_fd(), f).unwrap_or_else(|e| panic!("in {}: {e}", self.0))
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Two namespaces joined by a veth `u0` (created by the wrapper, the far end straight in `b`),
/// addressed fd00:1::1/64 and fd00:1::2/64: an IPv6 underlay.
fn two_nodes() -> (Netns, Netns) {
    let (a, b) = (node("a"), node("b"));
    let peer_ns = b.file();
    a.netlink(|nl| async move {
        let spec = VethSpec {
            name: "u0",
            peer_name: "u0",
            mtu: 1500,
            master: None,
            up: true,
            peer_netns: Some(peer_ns.as_fd()),
        };
        nl.create_veth(&spec).await?;
        let u0 = nl.require_link_named("underlay", "u0").await?;
        nl.add_addr(u0.index, net("fd00:1::1/64")).await
    });
    b.netlink(|nl| async move {
        let u0 = nl.require_link_named("underlay", "u0").await?;
        nl.set_link_up(u0.index).await?;
        nl.add_addr(u0.index, net("fd00:1::2/64")).await
    });
    (a, b)
}

#[test]
fn ipv6_routes_via_a_gateway_and_onlink_are_written_read_back_replaced_and_deleted() {
    require_root();
    let (a, _b) = two_nodes();
    let index = a.netlink(|nl| async move { Ok(nl.require_link_named("test", "u0").await?.index) });
    let via = RouteSpec {
        dst: net("fd00:99::/64"),
        gateway: Some(ip("fd00:1::2")),
        oif: index,
        onlink: false,
    };
    // The gateway is on no connected prefix: only onlink makes it reachable.
    let onlink = RouteSpec {
        dst: net("fd00:98::/64"),
        gateway: Some(ip("fd00:77::1")),
        oif: index,
        onlink: true,
    };
    let (listed, both, v4, fib) = a.netlink(|nl| async move {
        nl.replace_route(&via).await?;
        nl.replace_route(&onlink).await?;
        nl.replace_route(&onlink).await?; // idempotent
        let listed = nl.list_routes(Some(AddrFamily::Ipv6)).await?;
        let both = nl.list_routes(None).await?;
        let v4 = nl.list_routes(Some(AddrFamily::Ipv4)).await?;
        let fib = nl.route_fib_match(ip("fd00:99::5")).await?;
        Ok((listed, both, v4, fib))
    });
    let specs: Vec<RouteSpec> = listed.iter().filter_map(|r| r.spec()).collect();
    assert!(specs.contains(&via) && specs.contains(&onlink), "{listed:#?}");
    assert_eq!(listed.iter().filter(|r| r.dst == onlink.dst).count(), 1, "{listed:#?}");
    assert!(
        both.iter().any(|r| r.spec() == Some(via)),
        "a listing of both families has it"
    );
    assert!(v4.iter().all(|r| matches!(r.dst, IpNet::V4(_))), "{v4:#?}");
    let fib = fib.expect("fd00:99::5 is routed");
    assert_eq!((fib.dst, fib.gateway, fib.oif), (via.dst, via.gateway, Some(index)));
    let shown = a.run(&["ip", "-6", "route", "show", "fd00:98::/64"]);
    assert!(
        shown.contains("via fd00:77::1 dev u0") && shown.contains("onlink"),
        "{shown}"
    );
    let shown = a.run(&["ip", "-6", "route", "show", "fd00:99::/64"]);
    assert!(shown.contains("via fd00:1::2 dev u0"), "{shown}");

    // Replace: the same destination through another gateway, still one route.
    let moved = RouteSpec {
        gateway: Some(ip("fd00:1::3")),
        ..via
    };
    let after = a.netlink(|nl| async move {
        nl.replace_route(&moved).await?;
        nl.list_routes(Some(AddrFamily::Ipv6)).await
    });
    let at_dst: Vec<_> = after.iter().filter(|r| r.dst == via.dst).collect();
    assert_eq!(at_dst.len(), 1, "{at_dst:#?}");
    assert_eq!(at_dst[0].gateway, moved.gateway);

    // Delete, twice: gone, and a route already gone is no error.
    a.netlink(|nl| async move {
        nl.delete_route(&moved).await?;
        nl.delete_route(&moved).await?;
        nl.delete_route_at_metric(&onlink, 0).await
    });
    assert_eq!(a.run(&["ip", "-6", "route", "show", "fd00:99::/64"]), "");
    assert_eq!(a.run(&["ip", "-6", "route", "show", "fd00:98::/64"]), "");
}

#[test]
fn an_ipv6_neighbour_entry_is_permanent_replaced_and_deleted() {
    require_root();
    let (a, _b) = two_nodes();
    let (mac1, mac2) = ([0x02, 0, 0, 0, 0, 0x0b], [0x02, 0, 0, 0, 0, 0x0c]);
    let (index, v6, v4) = a.netlink(|nl| async move {
        let index = nl.require_link_named("test", "u0").await?.index;
        nl.replace_neighbour(index, ip("fd00:1::9"), mac1).await?;
        nl.replace_neighbour(index, ip("fd00:1::9"), mac1).await?; // idempotent
        let v6 = nl.list_neighbours(index, Some(AddrFamily::Ipv6)).await?;
        let v4 = nl.list_neighbours(index, Some(AddrFamily::Ipv4)).await?;
        Ok((index, v6, v4))
    });
    let entry = v6.iter().find(|n| n.ip == ip("fd00:1::9")).expect("listed");
    assert!(entry.is_permanent() && entry.mac == Some(mac1), "{entry:?}");
    assert!(v4.is_empty(), "{v4:?}");
    let shown = a.run(&["ip", "-6", "neigh", "show", "dev", "u0"]);
    assert!(
        shown.contains("fd00:1::9 lladdr 02:00:00:00:00:0b PERMANENT"),
        "{shown}"
    );

    a.netlink(|nl| async move { nl.replace_neighbour(index, ip("fd00:1::9"), mac2).await });
    let shown = a.run(&["ip", "-6", "neigh", "show", "fd00:1::9", "dev", "u0"]);
    assert!(shown.contains("lladdr 02:00:00:00:00:0c PERMANENT"), "{shown}");

    a.netlink(|nl| async move {
        nl.delete_neighbour(index, ip("fd00:1::9")).await?;
        nl.delete_neighbour(index, ip("fd00:1::9")).await
    });
    assert_eq!(a.run(&["ip", "-6", "neigh", "show", "fd00:1::9", "dev", "u0"]), "");
}

fn vxlan_spec(local: &str, dev_index: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel-v6.1".into(),
        vni: 1,
        port: 8472,
        local: ip(local),
        dev_index,
        learning: false,
        gbp: false,
        mtu: 1430,
        mac: None,
    }
}

#[test]
fn a_vxlan_device_over_ipv6_takes_fdb_entries_with_ipv6_destinations() {
    require_root();
    let (a, _b) = two_nodes();
    let mac = [0x02, 0, 0, 0, 0, 0x0b];
    let (first, again, fdb) = a.netlink(|nl| async move {
        let u0 = nl.require_link_named("underlay", "u0").await?;
        let spec = vxlan_spec("fd00:1::1", u0.index);
        let first = nl.ensure_vxlan(&spec).await?;
        let again = nl.ensure_vxlan(&spec).await?;
        nl.replace_fdb(first.index, mac, ip("fd00:1::2")).await?;
        nl.replace_fdb(first.index, mac, ip("fd00:1::2")).await?; // idempotent
        nl.append_fdb(first.index, [0; 6], ip("fd00:1::2")).await?;
        nl.append_fdb(first.index, [0; 6], ip("fd00:1::3")).await?;
        let fdb = nl.list_fdb(first.index).await?;
        Ok((first, again, fdb))
    });
    assert_eq!(again.index, first.index, "an existing matching device is adopted");
    let v = first.vxlan.as_ref().expect("a vxlan device");
    assert_eq!((v.vni, v.port, v.local), (1, 8472, Some(ip("fd00:1::1"))));
    let details = a.run(&["ip", "-d", "link", "show", "flannel-v6.1"]);
    assert!(
        details.contains("local fd00:1::1") && details.contains("dev u0"),
        "{details}"
    );

    let ours = fdb.iter().find(|e| e.mac == mac).expect("listed");
    assert_eq!(ours.dst, Some(ip("fd00:1::2")));
    assert!(ours.is_permanent() && ours.is_self);
    let flood: Vec<_> = fdb.iter().filter(|e| e.mac == [0; 6]).filter_map(|e| e.dst).collect();
    assert_eq!(flood, vec![ip("fd00:1::2"), ip("fd00:1::3")]);
    let shown = a.run(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(
        shown.contains("02:00:00:00:00:0b dst fd00:1::2 self permanent"),
        "{shown}"
    );

    // Replace moves the MAC to another VTEP; delete removes it, twice without error.
    let index = first.index;
    a.netlink(|nl| async move { nl.replace_fdb(index, mac, ip("fd00:1::7")).await });
    let shown = a.run(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(
        shown.contains("02:00:00:00:00:0b dst fd00:1::7 self permanent"),
        "{shown}"
    );
    assert!(!shown.contains("02:00:00:00:00:0b dst fd00:1::2"), "{shown}");
    a.netlink(|nl| async move {
        nl.delete_fdb(index, mac, ip("fd00:1::7")).await?;
        nl.delete_fdb(index, mac, ip("fd00:1::7")).await
    });
    let shown = a.run(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(!shown.contains("02:00:00:00:00:0b"), "{shown}");

    // A device asked for with an IPv4 local is recreated, keeping its MAC.
    let v4 = a.netlink(|nl| async move {
        let u0 = nl.require_link_named("underlay", "u0").await?;
        nl.add_addr(u0.index, net("198.51.100.1/24")).await?;
        nl.ensure_vxlan(&vxlan_spec("198.51.100.1", u0.index)).await
    });
    assert_eq!(v4.vxlan.and_then(|v| v.local), Some(ip("198.51.100.1")));
    assert_eq!(v4.mac, first.mac, "the MAC survives the recreation");
}

/// One node's end of the IPv6 overlay: its VXLAN device, MAC and overlay address.
struct Vtep {
    index: u32,
    mac: [u8; 6],
}

/// flannel-v6.1 over the underlay address `local`, holding `overlay` (a /128), up.
fn vtep(ns: &Netns, local: &'static str, overlay: &'static str) -> Vtep {
    ns.netlink(|nl| async move {
        let u0 = nl.require_link_named("underlay", "u0").await?;
        let dev = nl.ensure_vxlan(&vxlan_spec(local, u0.index)).await?;
        nl.ensure_addr(dev.index, net(overlay)).await?;
        nl.set_link_up(dev.index).await?;
        Ok(Vtep {
            index: dev.index,
            mac: dev.mac.expect("a VXLAN device has a MAC"),
        })
    })
}

/// What flannel programs for one remote node: route `subnet via vtep_ip onlink`, neighbour
/// `vtep_ip -> mac`, FDB `mac -> underlay`.
fn program_peer(ns: &Netns, me: &Vtep, subnet: &'static str, vtep_ip: &'static str, mac: [u8; 6], underlay: &str) {
    let underlay = ip(underlay);
    let index = me.index;
    ns.netlink(|nl| async move {
        nl.replace_neighbour(index, ip(vtep_ip), mac).await?;
        nl.replace_fdb(index, mac, underlay).await?;
        nl.replace_route(&RouteSpec {
            dst: net(subnet),
            gateway: Some(ip(vtep_ip)),
            oif: index,
            onlink: true,
        })
        .await
    });
}

#[test]
fn ping6_crosses_two_namespaces_through_vxlan_over_ipv6() {
    require_root();
    let (a, b) = two_nodes();
    let va = vtep(&a, "fd00:1::1", "fd00:5:a::/128");
    let vb = vtep(&b, "fd00:1::2", "fd00:5:b::/128");
    program_peer(&a, &va, "fd00:5:b::/64", "fd00:5:b::", vb.mac, "fd00:1::2");
    program_peer(&b, &vb, "fd00:5:a::/64", "fd00:5:a::", va.mac, "fd00:1::1");

    let out = Command::new("ip")
        .args(["netns", "exec", &a.0, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2"])
        .arg("fd00:5:b::")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0% packet loss"),
        "ping6: {text}"
    );
    // The only way there is the tunnel: the overlay addresses are on no other device.
    let path = a.run(&["ip", "-6", "route", "get", "fd00:5:b::"]);
    assert!(path.contains("via fd00:5:b:: dev flannel-v6.1"), "{path}");
}

#[test]
fn ensure_addr_makes_an_ipv6_address_the_only_global_one_and_keeps_link_local_and_ipv4() {
    require_root();
    let (a, _b) = two_nodes();
    let addrs = a.netlink(|nl| async move {
        let u0 = nl.require_link_named("underlay", "u0").await?;
        nl.add_addr(u0.index, net("198.51.100.1/24")).await?;
        nl.ensure_addr(u0.index, net("fd00:1::5/64")).await?;
        nl.ensure_addr(u0.index, net("fd00:1::5/64")).await?; // idempotent
        nl.list_link_addrs(u0.index, None).await
    });
    let shown = a.run(&["ip", "addr", "show", "dev", "u0"]);
    assert!(addrs.contains(&net("fd00:1::5/64")), "{addrs:?}");
    assert!(
        !addrs.contains(&net("fd00:1::1/64")),
        "the other global address went: {shown}"
    );
    assert!(addrs.contains(&net("198.51.100.1/24")), "IPv4 is left alone: {shown}");
    assert!(
        shown.contains("inet6 fe80::"),
        "link-local is the kernel's and stays: {shown}"
    );
    assert!(
        shown.contains("inet6 fd00:1::5/64") && !shown.contains("fd00:1::1/64"),
        "{shown}"
    );
}

#[test]
fn kernel_notifications_report_ipv6_routes_ndp_entries_and_ipv6_fdb_destinations() {
    use std::time::Duration;
    use weft_kernel::monitor::{subscribe, KernelEvent};

    require_root();
    let (a, _b) = two_nodes();
    let mac = [0x02, 0, 0, 0, 0, 0x0b];
    let seen = a.netlink(|nl| async move {
        let mut events = subscribe()?;
        let u0 = nl.require_link_named("underlay", "u0").await?;
        let vx = nl.ensure_vxlan(&vxlan_spec("fd00:1::1", u0.index)).await?;
        let route = RouteSpec {
            dst: net("fd00:99::/64"),
            gateway: Some(ip("fd00:1::2")),
            oif: u0.index,
            onlink: false,
        };
        nl.replace_route(&route).await?;
        nl.replace_neighbour(u0.index, ip("fd00:1::9"), mac).await?;
        nl.replace_fdb(vx.index, mac, ip("fd00:1::2")).await?;
        nl.delete_route(&route).await?;
        let (mut added, mut gone, mut neighbour, mut fdb) = (false, false, false, false);
        while !(added && gone && neighbour && fdb) {
            let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await else {
                break;
            };
            match event {
                KernelEvent::RouteAdded(r) if r.spec() == Some(route) => added = true,
                KernelEvent::RouteGone(r) if r.dst == route.dst => gone = true,
                KernelEvent::NeighbourChanged { index, neighbour: n } if index == u0.index => {
                    neighbour |= n.ip == ip("fd00:1::9") && n.mac == Some(mac) && n.is_permanent()
                }
                KernelEvent::FdbChanged { index, entry } if index == vx.index => {
                    fdb |= entry.mac == mac && entry.dst == Some(ip("fd00:1::2"))
                }
                _ => {}
            }
        }
        Ok((added, gone, neighbour, fdb))
    });
    assert_eq!(
        seen,
        (true, true, true, true),
        "(route added, route gone, NDP entry, FDB entry)"
    );
}

#[test]
fn entering_something_that_is_not_a_network_namespace_keeps_the_errno() {
    require_root();
    let mnt = File::open("/proc/self/ns/mnt").unwrap();
    let e = in_netns(mnt.as_fd(), || ()).unwrap_err();
    assert!(matches!(e, NetlinkError::EnterNetns { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        Netlink::new_in(mnt.as_fd(), runtime.handle()).unwrap_err().errno(),
        Some(libc::EINVAL)
    );
}
