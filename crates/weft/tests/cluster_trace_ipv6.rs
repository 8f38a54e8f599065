//! `weft trace` with IPv6 addresses on a dual-stack lab (`weft lab up --dual-stack`): a pod's
//! IPv6 address to another node's pod over vxlan (`flannel-v6.1`) and host-gw, the IPv4 trace of
//! the same nodes, then breaks made on purpose on the IPv6 side and named.

mod common;

use std::net::IpAddr;

use common::*;
use weft::lab::topology::underlay_ipv6;
use weft::lab::Lab;
use weft_core::BackendKind;

/// Runs `weft trace --json src dst` on host 1 with its subnet file (or `subnet_file`).
fn trace(lab: &Lab, src: IpAddr, dst: IpAddr, subnet_file: Option<&str>) -> Traced {
    let file = subnet_file
        .map(str::to_string)
        .unwrap_or_else(|| common::subnet_file(lab, 1).display().to_string());
    run_trace(lab, src, dst, &file)
}

fn dual(name: &str, backend: BackendKind) -> Lab {
    let mut s = spec(&lab_name(name), 2, backend);
    s.dual_stack = true;
    // weftd must not add forward rules the test wants to control.
    s.weftd_args.push("--iptables-forward-rules=false".into());
    up(s)
}

fn pod6(lab: &Lab, node: usize) -> IpAddr {
    lab.pod_ip6(node).unwrap().into()
}

fn pod4(lab: &Lab, node: usize) -> IpAddr {
    lab.pod_ip(node).unwrap().into()
}

#[test]
fn trace_walks_the_ipv6_vxlan_path_and_names_ipv6_breaks() {
    let mut lab = dual("ct6", BackendKind::Vxlan);
    let (src, dst) = (pod6(&lab, 1), pod6(&lab, 2));
    assert!(
        lab.wait_ping(1, dst, std::time::Duration::from_secs(5)),
        "{}",
        lab.status()
    );

    let t = trace(&lab, src, dst, None);
    assert!(t.ok && t.causes.is_empty(), "healthy IPv6 path: {}", t.text);
    assert_eq!(t.json["backend"], "vxlan");
    let env2 = lab.subnet_env(2).unwrap();
    let s2 = env2.ipv6_subnet.unwrap().trunc();
    let hop = s2.network().to_string();
    let mac2 = host_out(&lab, 2, &["cat", "/sys/class/net/flannel-v6.1/address"])
        .trim()
        .to_string();
    let public2 = underlay_ipv6(2).to_string();
    assert!(
        t.entry("subnet.env").contains("FLANNEL_IPV6_SUBNET=fc00:"),
        "{}",
        t.text
    );
    assert!(
        t.entry("lease")
            .contains(&format!("PublicIPv6 {public2} backend vxlan BackendV6Data"))
            && t.entry("lease").contains(&mac2),
        "{}",
        t.text
    );
    assert!(
        t.entry("route").contains(&format!("{s2} nhid"))
            && t.entry("route")
                .ends_with(&format!("via {hop} dev flannel-v6.1 onlink table main")),
        "{}",
        t.text
    );
    assert_eq!(t.entry("ip_forward"), "net.ipv6.conf.all.forwarding = 1");
    assert_eq!(
        t.entry("neighbour"),
        format!("{hop} dev flannel-v6.1 lladdr {mac2} PERMANENT")
    );
    assert_eq!(
        t.entry("fdb"),
        format!("{mac2} dev flannel-v6.1 dst {public2} self permanent")
    );
    assert!(t.entry("underlay").contains("dev eth0"), "{}", t.text);
    assert!(
        t.entry("mtu")
            .starts_with("flannel-v6.1 1430, eth0 1500, FLANNEL_MTU 1430, cni0 1430"),
        "{}",
        t.text
    );

    // The IPv4 trace of the same dual-stack nodes is clean too (FLANNEL_MTU is the IPv6 VTEP's).
    let t4 = trace(&lab, pod4(&lab, 1), pod4(&lab, 2), None);
    assert!(t4.ok && t4.causes.is_empty(), "healthy IPv4 path: {}", t4.text);
    assert!(t4.entry("route").contains("dev flannel.1"), "{}", t4.text);

    // Families mixed: an error that says so, not a walk.
    let mut args = vec![
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        pod4(&lab, 1).to_string(),
        dst.to_string(),
    ];
    args.extend(etcd_flags(&lab));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec_in_host(1, &args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("different address families"),
        "{stderr}"
    );

    // A node that is not dual stack: its subnet.env has no IPv6 lines.
    let v4_only = lab.dir().join("h1/subnet-v4-only.env");
    let env = std::fs::read_to_string(subnet_file(&lab, 1)).unwrap();
    std::fs::write(
        &v4_only,
        env.lines()
            .filter(|l| !l.starts_with("FLANNEL_IPV6_"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let t = trace(&lab, src, dst, Some(&v4_only.display().to_string()));
    assert_eq!(t.causes, ["ipv6_not_enabled"], "{}", t.text);
    assert!(t.message("subnet.env").contains("EnableIPv6"), "{}", t.text);

    // weftd repairs a deleted entry the moment the kernel reports it: stop it (the datapath stays
    // in place) so the breaks below are still there when trace looks.
    lab.stop_node(1).unwrap();
    let run = |cmd: &[&str]| assert!(lab.exec_in_host(1, cmd).unwrap().status.success(), "{cmd:?}");

    run(&["ip", "-6", "neigh", "del", &hop, "dev", "flannel-v6.1"]);
    let t = trace(&lab, src, dst, None);
    assert!(!t.ok && t.causes == ["missing_neighbour"], "{}", t.text);
    let m = t.message("neighbour");
    assert!(
        m.contains(&format!("flannel-v6.1 has no neighbour entry for {hop}"))
            && m.contains(&format!(
                "ip neigh replace {hop} lladdr {mac2} dev flannel-v6.1 nud permanent"
            )),
        "{m}"
    );
    assert_eq!(t.step("fdb")["status"], "ok", "{}", t.text);
    // The fix the message gives repairs it.
    run(&[
        "ip",
        "neigh",
        "replace",
        &hop,
        "lladdr",
        &mac2,
        "dev",
        "flannel-v6.1",
        "nud",
        "permanent",
    ]);
    let t = trace(&lab, src, dst, None);
    assert!(t.ok, "{}", t.text);

    // No FDB entry for the IPv6 VTEP's MAC, then one to an address that is not the lease's PublicIPv6.
    run(&["bridge", "fdb", "del", &mac2, "dev", "flannel-v6.1", "dst", &public2]);
    let t = trace(&lab, src, dst, None);
    assert_eq!(t.causes, ["missing_fdb"], "{}", t.text);
    run(&[
        "bridge",
        "fdb",
        "append",
        &mac2,
        "dev",
        "flannel-v6.1",
        "dst",
        "2001:db8::9",
        "self",
        "permanent",
    ]);
    let t = trace(&lab, src, dst, None);
    assert!(
        t.causes.first().map(String::as_str) == Some("fdb_destination_mismatch"),
        "{}",
        t.text
    );
    assert!(
        t.message("fdb").contains(&format!("lease says PublicIPv6 {public2}")),
        "{}",
        t.text
    );
    run(&[
        "bridge",
        "fdb",
        "del",
        &mac2,
        "dev",
        "flannel-v6.1",
        "dst",
        "2001:db8::9",
    ]);
    run(&[
        "bridge",
        "fdb",
        "append",
        &mac2,
        "dev",
        "flannel-v6.1",
        "dst",
        &public2,
        "self",
        "permanent",
    ]);

    run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
    let t = trace(&lab, src, dst, None);
    assert_eq!(t.causes, ["ip_forward_disabled"], "{}", t.text);
    assert!(
        t.message("ip_forward")
            .contains("sysctl -w net.ipv6.conf.all.forwarding=1"),
        "{}",
        t.text
    );
    run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    run(&["ip6tables", "-P", "FORWARD", "DROP"]);
    let t = trace(&lab, src, dst, None);
    assert_eq!(t.causes, ["forward_dropped"], "{}", t.text);
    assert!(
        t.message("forward")
            .contains("ip6tables -A FORWARD -s fc00::/48 -j ACCEPT"),
        "{}",
        t.text
    );
    run(&["ip6tables", "-P", "FORWARD", "ACCEPT"]);
    let t4 = trace(&lab, pod4(&lab, 1), pod4(&lab, 2), None);
    assert!(t4.ok, "the IPv4 side was never touched: {}", t4.text);

    run(&["ip", "-6", "route", "del", &s2.to_string()]);
    let t = trace(&lab, src, dst, None);
    assert!(
        !t.ok && matches!(t.causes[0].as_str(), "no_route" | "route_not_into_overlay"),
        "{}",
        t.text
    );
    assert!(t.message("route").contains(&dst.to_string()), "{}", t.text);

    // weftd back: it reprograms the route, and the trace is clean again.
    lab.start_node(1).unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || trace(&lab, src, dst, None).ok),
        "{}",
        trace(&lab, src, dst, None).text
    );
}

#[test]
fn trace_walks_the_ipv6_host_gw_path() {
    let mut lab = dual("ch6", BackendKind::HostGw);
    let (src, dst) = (pod6(&lab, 1), pod6(&lab, 2));
    assert!(
        lab.wait_ping(1, dst, std::time::Duration::from_secs(5)),
        "{}",
        lab.status()
    );
    let public2 = underlay_ipv6(2).to_string();
    let s2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();

    let t = trace(&lab, src, dst, None);
    assert!(t.ok && t.causes.is_empty(), "healthy IPv6 host-gw path: {}", t.text);
    assert_eq!(t.json["backend"], "host-gw");
    assert!(
        t.entry("route").starts_with(&format!("{s2} "))
            && t.entry("route")
                .ends_with(&format!("via {public2} dev eth0 table main")),
        "{}",
        t.text
    );
    assert!(
        t.entry("lease")
            .contains(&format!("PublicIPv6 {public2} backend host-gw")),
        "{}",
        t.text
    );
    // After the ping the gateway's IPv6 neighbour entry is resolved.
    assert!(
        t.entry("neighbour").starts_with(&format!("{public2} dev eth0 lladdr")),
        "{}",
        t.text
    );

    lab.stop_node(1).unwrap();
    let run = |cmd: &[&str]| assert!(lab.exec_in_host(1, cmd).unwrap().status.success(), "{cmd:?}");
    // A stale route via another IPv6 address of the underlay.
    run(&[
        "ip",
        "-6",
        "route",
        "replace",
        &s2.to_string(),
        "via",
        "2001:db8::9",
        "dev",
        "eth0",
    ]);
    let t = trace(&lab, src, dst, None);
    assert_eq!(t.causes, ["route_mismatches_lease"], "{}", t.text);
    assert!(
        t.message("route")
            .contains(&format!("the lease says the node is at {public2}")),
        "{}",
        t.text
    );
}
