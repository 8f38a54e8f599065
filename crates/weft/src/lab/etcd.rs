//! The lab's etcd: the real `etcd` binary inside the switch namespace, TLS with client-cert auth,
//! and a small client that reaches it from a thread that has entered that namespace.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use super::certs::CertPaths;
use super::error::{LabError, Result};
use super::netns::in_netns;
use super::process;

/// The switch's address on the underlay; etcd listens there.
pub const ETCD_IP: &str = "198.51.100.254";
/// The switch's IPv6 address on a dual-stack underlay; etcd listens there too, for hosts
/// without IPv4 (IPv6-only labs).
pub const ETCD_IPV6: &str = "2001:db8::fe";
pub const ETCD_PORT: u16 = 2379;

pub fn endpoint() -> String {
    format!("https://{ETCD_IP}:{ETCD_PORT}")
}

pub fn endpoint_v6() -> String {
    format!("https://[{ETCD_IPV6}]:{ETCD_PORT}")
}

/// Starts etcd in `ns` with its data under `dir/etcd-data` and its log in `dir/etcd.log`; with
/// `ipv6` it also listens at [`endpoint_v6`].
pub fn start(ns: &str, dir: &Path, certs: &CertPaths, ipv6: bool) -> Result<u32> {
    let data_dir = dir.join("etcd-data");
    let path = |p: &Path| p.display().to_string();
    let mut listen = format!("{},https://127.0.0.1:{ETCD_PORT}", endpoint());
    if ipv6 {
        listen.push_str(&format!(",{}", endpoint_v6()));
    }
    let args = vec![
        "--name=lab".to_string(),
        format!("--data-dir={}", path(&data_dir)),
        format!("--listen-client-urls={listen}"),
        format!("--advertise-client-urls={}", endpoint()),
        "--listen-peer-urls=http://127.0.0.1:2380".to_string(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".to_string(),
        "--initial-cluster=lab=http://127.0.0.1:2380".to_string(),
        "--initial-cluster-state=new".to_string(),
        format!("--cert-file={}", path(&certs.server_cert)),
        format!("--key-file={}", path(&certs.server_key)),
        format!("--trusted-ca-file={}", path(&certs.ca)),
        "--client-cert-auth".to_string(),
    ];
    process::spawn_detached(ns, "etcd", &args, &dir.join("etcd.log"))
}

/// How to reach the lab's etcd: from namespace `ns`, at `endpoint`, with the client certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EtcdAccess {
    pub ns: String,
    pub endpoint: String,
    pub certs: CertPaths,
}

const OP_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdAccess {
    /// TLS with the lab's client certificate, short connect and request timeouts.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| LabError::io("reading certificate", p, e));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.certs.ca)?))
            .identity(Identity::from_pem(
                read(&self.certs.client_cert)?,
                read(&self.certs.client_key)?,
            ));
        Ok(ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(OP_TIMEOUT))
    }

    /// Runs one etcd operation on a fresh connection, on a thread inside the switch namespace.
    fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let options = self.connect_options()?;
        let endpoint = self.endpoint.clone();
        let what = what.to_string();
        in_netns(&self.ns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LabError::Other(format!("building a tokio runtime: {e}")))?;
            runtime.block_on(async {
                let work = async {
                    let client = Client::connect([endpoint.as_str()], Some(options)).await?;
                    op(client).await
                };
                match tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(2), work).await {
                    Ok(result) => result.map_err(|source| LabError::Etcd {
                        what: what.clone(),
                        source,
                    }),
                    Err(_) => Err(LabError::Timeout {
                        what: format!("etcd {what} at {endpoint}"),
                        seconds: OP_TIMEOUT.as_secs() + 2,
                        detail: String::new(),
                    }),
                }
            })
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let k = key.to_string();
        self.run(&format!("get {key}"), |mut c| async move {
            let resp = c.get(k, None).await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    /// Every key under `prefix` with its value, sorted by key.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let p = prefix.to_string();
        self.run(&format!("get --prefix {prefix}"), |mut c| async move {
            let resp = c.get(p, Some(GetOptions::new().with_prefix())).await?;
            let mut kvs: Vec<(String, Vec<u8>)> = resp
                .kvs()
                .iter()
                .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec()))
                .collect();
            kvs.sort();
            Ok(kvs)
        })
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_vec());
        self.run(&format!("put {key}"), |mut c| async move {
            c.put(k, v, None).await?;
            Ok(())
        })
    }

    /// Deletes a key; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let k = key.to_string();
        self.run(&format!("delete {key}"), |mut c| async move {
            Ok(c.delete(k, None).await?.deleted() > 0)
        })
    }

    /// Waits until etcd answers a read, failing early (with the log's tail) if it exits.
    pub fn wait_ready(&self, pid: u32, log: &Path, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let attempt = self.get("/coreos.com/network/config");
            if attempt.is_ok() {
                return Ok(());
            }
            if !process::alive(pid) {
                return Err(LabError::Exited {
                    what: format!("etcd (pid {pid})"),
                    detail: format!("; tail of {}:\n{}", log.display(), process::log_tail(log, 15)),
                });
            }
            if Instant::now() >= deadline {
                let last = attempt.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(LabError::Timeout {
                    what: format!("etcd at {} to answer", self.endpoint),
                    seconds: within.as_secs(),
                    detail: format!(
                        " (last error: {last}); tail of {}:\n{}",
                        log.display(),
                        process::log_tail(log, 15)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
