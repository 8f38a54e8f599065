//! A real etcd server per test (`/usr/bin/etcd` on free loopback ports, its own data directory),
//! killed on drop, and a log capture to assert on what weft tells the operator.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_control::etcd::EtcdOptions;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// TLS files for a server started with [`EtcdServer::start_tls`].
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    tls: bool,
}

impl EtcdServer {
    pub fn start() -> Self {
        Self::start_on(free_port(), free_port())
    }

    /// Starts on given ports (so a test can point a client at it before it runs).
    pub fn start_on(client_port: u16, peer_port: u16) -> Self {
        let mut s = Self::new(client_port, peer_port, false);
        s.spawn(&[]);
        s
    }

    pub fn start_tls(dir_files: impl FnOnce(&Path) -> TlsFiles) -> (Self, TlsFiles) {
        let mut s = Self::new(free_port(), free_port(), true);
        let files = dir_files(s.dir.path());
        let args = [
            format!("--cert-file={}", files.server_cert.display()),
            format!("--key-file={}", files.server_key.display()),
            format!("--trusted-ca-file={}", files.ca.display()),
            "--client-cert-auth".to_string(),
        ];
        s.spawn(&args);
        (s, files)
    }

    fn new(client_port: u16, peer_port: u16, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        EtcdServer {
            child: None,
            client_port,
            peer_port,
            url: format!("{scheme}://127.0.0.1:{client_port}"),
            dir: tempfile::tempdir().unwrap(),
            tls,
        }
    }

    fn spawn(&mut self, extra: &[String]) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting /usr/bin/etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen on {} within 15 s",
                self.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server, keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(!self.tls);
        self.stop();
        self.spawn(&[]);
    }

    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.url.clone()],
            lease_ttl: Duration::from_secs(10),
            renew_margin: Duration::from_secs(7),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// A raw client, for the test to play "someone else".
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url.as_str()], None).await.unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Captures this thread's log lines (tokio::test runs tasks on the test's thread).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let cap = LogCapture::default();
        let writer = cap.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter("weft_control=debug")
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (cap, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `cond` every 50 ms until true or `within` elapses.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
