//! sd_notify for systemd's `Type=notify`: `READY=1` once subnet.env is written (units ordered
//! after weftd, and `systemctl start`, wait for it), `STOPPING=1` on SIGTERM. One datagram to the
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@');
//! nothing at all when systemd did not ask (the variable is unset). A failure is logged, never
//! fatal: the network works whether or not systemd hears about it.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd that weftd is ready (subnet.env written), with a status line for
/// `systemctl status`.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}\n"));
}

/// Tells systemd that weftd is stopping (the datapath stays in place).
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping; the datapath stays in place\n");
}

fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!(socket = %socket.to_string_lossy(), "cannot notify systemd ({e}); it will not see weftd's state");
    }
}

/// Sends `state` (newline-separated `KEY=value` assignments) to the notification socket
/// `socket`, as `$NOTIFY_SOCKET` names it.
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = socket_addr(socket)?;
    let sent = UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes", state.len())));
    }
    Ok(())
}

fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an abstract socket name starting with '@'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(listener: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("weftd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=subnet 10.5.72.1/24\n").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=subnet 10.5.72.1/24\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        let name = format!("weftd-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1\n");
    }

    #[test]
    fn refuses_a_relative_name() {
        let e = send(OsStr::new("notify.sock"), "READY=1\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
