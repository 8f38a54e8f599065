//! Shared harness of the udp backend's root tests: two network namespaces joined by a veth
//! (198.51.100.0/24), a "pod" address per node on a bridge `pod0` (as on cni0), and a backend
//! running on its own thread inside each namespace, as weftd runs inside its own.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::mpsc;

use ipnet::Ipv4Net;
use weft_core::config::{UdpOptions, VxlanOptions};
use weft_core::{Lease, LeaseAttrs, SubnetKey};
use weft_datapath::udp::{ReconcileReport, UdpBackend, UdpCounters, UdpTuning};
use weft_datapath::vxlan::VxlanBackend;

pub const NETWORK: &str = "10.5.0.0/16";

// Each test binary uses a different part of the fixture.
#[allow(unused_imports)]
pub use crate::two_nodes::{in_netns, require_root, run, BackendThread, TwoNodes as Topology};

pub enum Kind {
    Udp(UdpTuning),
    Vxlan,
}

enum Cmd {
    Reconcile(Vec<Lease>, mpsc::Sender<Result<ReconcileReport, String>>),
    Counters(mpsc::Sender<UdpCounters>),
}

/// A backend running on its own thread inside a namespace. Dropping it stops the backend
/// (for udp: the workers stop, flannel0 stays).
pub struct Node {
    thread: BackendThread<Cmd>,
    pub mtu: u32,
    pub backend_data: serde_json::Value,
}

impl Node {
    pub fn start(ns: &str, own: &str, public_ip: Ipv4Addr, kind: Kind) -> Node {
        let own = SubnetKey::v4(own.parse().unwrap());
        let (thread, (mtu, backend_data)) = BackendThread::<Cmd>::spawn(ns, move |nl, ext, mut rx, ready| async move {
            let network: Ipv4Net = NETWORK.parse().unwrap();
            match kind {
                Kind::Udp(tuning) => {
                    let started = async {
                        let opts = UdpOptions { port: 8285 };
                        let mut b = UdpBackend::start_tuned(nl, ext, public_ip, opts, network, tuning).await?;
                        b.set_lease(own).await?;
                        Ok::<_, weft_datapath::udp::UdpError>(b)
                    };
                    let mut backend = match started.await {
                        Ok(b) => b,
                        Err(e) => return ready.send(Err(e.to_string())).unwrap(),
                    };
                    ready.send(Ok((backend.mtu(), backend.backend_data()))).unwrap();
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            Cmd::Reconcile(leases, reply) => {
                                let _ = reply.send(backend.reconcile(&leases).await.map_err(|e| e.to_string()));
                            }
                            Cmd::Counters(reply) => {
                                let _ = reply.send(backend.counters());
                            }
                        }
                    }
                }
                Kind::Vxlan => {
                    let started = async {
                        let opts = VxlanOptions::default();
                        let mut b = VxlanBackend::start(nl, ext, public_ip, opts, network).await?;
                        b.set_lease(own).await?;
                        Ok::<_, weft_datapath::vxlan::VxlanError>(b)
                    };
                    let mut backend = match started.await {
                        Ok(b) => b,
                        Err(e) => return ready.send(Err(e.to_string())).unwrap(),
                    };
                    ready.send(Ok((backend.mtu(), backend.backend_data()))).unwrap();
                    while let Some(cmd) = rx.recv().await {
                        if let Cmd::Reconcile(leases, reply) = cmd {
                            let report = backend.reconcile(&leases).await.map_err(|e| e.to_string());
                            let _ = reply.send(report.map(|r| ReconcileReport {
                                peers: r.peers,
                                ..ReconcileReport::default()
                            }));
                        }
                    }
                }
            }
        })
        .expect("backend starts");
        Node {
            thread,
            mtu,
            backend_data,
        }
    }

    pub fn reconcile(&self, leases: &[Lease]) -> ReconcileReport {
        self.thread
            .ask(|reply| Cmd::Reconcile(leases.to_vec(), reply))
            .expect("reconcile succeeds")
    }

    pub fn counters(&self) -> UdpCounters {
        self.thread.ask(Cmd::Counters)
    }
}

/// A lease as flannel's udp backend writes it: no BackendType, no BackendData.
pub fn udp_lease(subnet: &str, public_ip: &str) -> Lease {
    Lease {
        subnet: SubnetKey::v4(subnet.parse().unwrap()),
        attrs: LeaseAttrs::new(public_ip.parse().unwrap(), "", serde_json::Value::Null),
    }
}

pub fn vxlan_lease(subnet: &str, public_ip: &str, node: &Node) -> Lease {
    Lease {
        subnet: SubnetKey::v4(subnet.parse().unwrap()),
        attrs: LeaseAttrs::new(public_ip.parse().unwrap(), "vxlan", node.backend_data.clone()),
    }
}

/// `ping -c count` from `src` in namespace `ns`; returns (success, output).
pub fn ping(ns: &str, src: &str, dst: &str, count: u32, wait_s: u32) -> (bool, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-W",
            &wait_s.to_string(),
        ])
        .args(["-i", "0.2", "-I", src, dst])
        .output()
        .expect("run ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
