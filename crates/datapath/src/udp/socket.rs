//! The UDP sockets of the udp backend: one per worker, all bound to the same address and port
//! with SO_REUSEPORT, with large buffers; and the batched send/receive calls.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Socket buffer size asked for (SO_*BUFFORCE as root, else capped by net.core.*mem_max).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

/// Opens a UDP socket bound to `ip:port` with SO_REUSEPORT, so every worker can own one.
pub(crate) fn bind_udp(ip: Ipv4Addr, port: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(&fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    let sa = sockaddr(ip, port);
    // SAFETY: sa is a valid sockaddr_in of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Enables UDP GSO-compatible receive coalescing (UDP_GRO); false when the kernel refuses.
pub(crate) fn enable_udp_gro(fd: &OwnedFd) -> bool {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Makes the kernel hand each datagram to the socket of the reuseport group numbered like the
/// CPU that receives it (a classic BPF program returning the CPU id). Sockets are numbered in
/// the order they were bound. Attach to one socket after the whole group is bound.
pub(crate) fn steer_by_cpu(fd: &OwnedFd) -> io::Result<()> {
    // SKF_AD_OFF + SKF_AD_CPU: load the current CPU into A; then return A.
    let filter = [
        libc::sock_filter {
            code: 0x20, // BPF_LD | BPF_W | BPF_ABS
            jt: 0,
            jf: 0,
            k: (-0x1000i32 + 36) as u32,
        },
        libc::sock_filter {
            code: 0x16, // BPF_RET | BPF_A
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: the program and its instructions live across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
