//! WireGuard's cross-platform userspace API, read-only: one unix socket per device,
//! `<dir>/flannel-wg.sock` (and `flannel-wg-v6.sock`; default dir `/var/run/wireguard`, where
//! `wg` looks), that answers `get=1` with the device and its peers, so `wg show flannel-wg`
//! works on weft's device as on a kernel one. `set=1` is
//! refused (EPERM): the peers come from the leases, not from `wg set`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weft_core::wireguard::Key;

use super::worker::Shared;

/// Where `wg` looks for userspace devices.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `get=1` answer for the device's current state.
pub(crate) fn render_get(shared: &Shared, listen_port: u16) -> String {
    use std::fmt::Write;
    let id = &shared.identity;
    let mut out = String::new();
    let _ = writeln!(out, "private_key={}", hex(&id.secret.to_bytes()));
    let _ = writeln!(out, "listen_port={listen_port}");
    let table = shared.table.load();
    for peer in table.peers() {
        let s = &peer.state;
        let _ = writeln!(out, "public_key={}", hex(&s.public_key));
        let _ = writeln!(out, "preshared_key={}", hex(&id.psk.unwrap_or([0; 32])));
        let _ = writeln!(out, "protocol_version=1");
        let _ = writeln!(out, "endpoint={}", peer.spec.endpoint);
        let ns = s.last_handshake_ns.load(Ordering::Relaxed);
        let _ = writeln!(out, "last_handshake_time_sec={}", ns / 1_000_000_000);
        let _ = writeln!(out, "last_handshake_time_nsec={}", ns % 1_000_000_000);
        let _ = writeln!(out, "tx_bytes={}", s.tx_bytes.load(Ordering::Relaxed));
        let _ = writeln!(out, "rx_bytes={}", s.rx_bytes.load(Ordering::Relaxed));
        let _ = writeln!(out, "persistent_keepalive_interval={}", id.keepalive);
        for net in peer.spec.allowed_ips() {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// The socket's path for `device` in `dir`.
pub fn socket_path(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{device}.sock"))
}

/// Binds `<dir>/<device>.sock` (replacing a stale one; owner-only, as wireguard-go's) and serves
/// it on a thread until `stop`.
pub(crate) fn serve(
    dir: &Path,
    device: &str,
    shared: Arc<Shared>,
    listen_port: u16,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let path = socket_path(dir, device);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("weft-wg-uapi".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    if let Err(e) = answer(conn, &shared, listen_port) {
                        tracing::debug!("wireguard userspace API: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    tracing::warn!("wireguard userspace API: accept: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

/// Answers the requests of one connection (each `get=1` or `set=1`, ended by a blank line).
fn answer(conn: UnixStream, shared: &Shared, listen_port: u16) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = conn.try_clone()?;
    let mut lines = BufReader::new(conn).lines();
    while let Some(line) = lines.next() {
        let op = line?;
        if op.is_empty() {
            continue;
        }
        // The rest of the request, up to its blank line.
        for l in lines.by_ref() {
            if l?.is_empty() {
                break;
            }
        }
        let reply = match op.as_str() {
            "get=1" => render_get(shared, listen_port),
            // EPERM: peers are set from the leases.
            _ => "errno=1\n\n".to_string(),
        };
        writer.write_all(reply.as_bytes())?;
    }
    Ok(())
}
