//! The operator CLI against a lab cluster, run as a user runs it.

mod common;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

fn weft_in_host(lab: &Lab, node: usize, args: &[&str]) -> std::process::Output {
    let mut cmd = vec![env!("CARGO_BIN_EXE_weft")];
    cmd.extend_from_slice(args);
    lab.exec_in_host(node, &cmd).unwrap()
}

#[test]
fn weft_leases_lists_every_node_and_a_dead_etcd_is_a_clear_error() {
    let lab = up(spec(&lab_name("ccl"), 2, BackendKind::Vxlan));
    let dir = lab.dir().display().to_string();
    let tls = [
        format!("--etcd-cafile={dir}/ca.pem"),
        format!("--etcd-certfile={dir}/client.pem"),
        format!("--etcd-keyfile={dir}/client-key.pem"),
    ];
    let mut args = vec!["leases", "--etcd-endpoints=https://198.51.100.254:2379"];
    args.extend(tls.iter().map(String::as_str));
    let out = weft_in_host(&lab, 1, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for node in 1..=2 {
        let subnet = lab.subnet_env(node).unwrap().subnet.unwrap().trunc().to_string();
        let line = text
            .lines()
            .find(|l| l.starts_with(&subnet))
            .unwrap_or_else(|| panic!("{subnet} listed:\n{text}"));
        assert!(
            line.contains(&format!("198.51.100.{node}")) && line.contains("vxlan"),
            "{line}"
        );
        assert!(line.contains(&vtep_mac(&lab, node)), "{line}");
    }
    assert!(
        !text.contains("REFUSED"),
        "nothing refused in a healthy cluster:\n{text}"
    );

    // A record claiming node 2's VtepMAC is listed as refused, naming the lease that holds it.
    let mac2 = vtep_mac(&lab, 2);
    let rogue = format!(
        r#"{{"PublicIP":"198.51.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac2}"}}}}"#
    );
    lab.etcd_put("/coreos.com/network/subnets/10.5.250.0-24", &rogue)
        .unwrap();
    let out = weft_in_host(&lab, 1, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    let holder = lab.subnet_env(2).unwrap().subnet.unwrap().trunc().network().to_string();
    assert!(
        text.contains(&format!(
            "lease 10.5.250.0-24 refused: its VtepMAC {mac2} is already held by the older lease {holder}-24"
        )),
        "{text}"
    );
    assert!(lab.etcd_delete("/coreos.com/network/subnets/10.5.250.0-24").unwrap());

    let mut dead = vec!["leases", "--etcd-endpoints=https://198.51.100.254:2999"];
    dead.extend(tls.iter().map(String::as_str));
    let out = weft_in_host(&lab, 1, &dead);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach etcd at https://198.51.100.254:2999"),
        "{err}"
    );
}
