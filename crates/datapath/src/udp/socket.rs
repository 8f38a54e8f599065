//! The UDP sockets of the udp backend: one per worker, all bound to the same address and port
//! with SO_REUSEPORT, with large buffers; and the socket addresses of either family they take.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// A socket address as the kernel takes it: IPv4 (a `sockaddr_in` in the first bytes) or IPv6,
/// with its length. On an IPv6 socket an IPv4 peer is written as `::ffff:a.b.c.d`.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn v4(ip: Ipv4Addr, port: u16) -> Self {
        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_in6 = unsafe { zeroed() };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a sockaddr_in (16 bytes, align 4) fits in a sockaddr_in6 (28 bytes, align 4).
        unsafe {
            std::ptr::write(
                (&mut storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
                sa,
            )
        };
        SockAddr {
            storage,
            len: size_of::<libc::sockaddr_in>() as libc::socklen_t,
        }
    }

    pub fn v6(ip: Ipv6Addr, port: u16) -> Self {
        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_in6 = unsafe { zeroed() };
        storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        storage.sin6_port = port.to_be();
        storage.sin6_addr.s6_addr = ip.octets();
        SockAddr {
            storage,
            len: size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        }
    }

    /// `to` as a socket of the given family takes it (an IPv4 address on an IPv6 socket mapped).
    pub fn for_socket(to: SocketAddr, ipv6_socket: bool) -> Self {
        match to {
            SocketAddr::V4(a) if ipv6_socket => SockAddr::v6(a.ip().to_ipv6_mapped(), a.port()),
            SocketAddr::V4(a) => SockAddr::v4(*a.ip(), a.port()),
            SocketAddr::V6(a) => SockAddr::v6(*a.ip(), a.port()),
        }
    }

    /// The address as the standard library writes it (a mapped IPv4 address as IPv4).
    pub fn socket_addr(&self) -> SocketAddr {
        let port = u16::from_be(self.storage.sin6_port);
        if self.storage.sin6_family == libc::AF_INET6 as libc::sa_family_t {
            let ip = Ipv6Addr::from(self.storage.sin6_addr.s6_addr);
            return match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), port),
                None => SocketAddr::new(ip.into(), port),
            };
        }
        // SAFETY: a non-IPv6 address was written as a sockaddr_in in the first bytes.
        let sa = unsafe { std::ptr::read((&self.storage as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>()) };
        SocketAddr::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)).into(), port)
    }

    /// The receive slot's kernel-written form, `len` bytes long.
    pub fn from_raw(storage: libc::sockaddr_in6, len: libc::socklen_t) -> Self {
        SockAddr { storage, len }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_in6).cast()
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// The same address and port (the bytes the kernel reads: an IPv4 address sits where
    /// `sin6_flowinfo` is, and the rest of a built address is zero).
    pub fn same(&self, other: &SockAddr) -> bool {
        let (a, b) = (&self.storage, &other.storage);
        self.len == other.len
            && a.sin6_family == b.sin6_family
            && a.sin6_port == b.sin6_port
            && a.sin6_flowinfo == b.sin6_flowinfo
            && a.sin6_addr.s6_addr == b.sin6_addr.s6_addr
    }

    /// One datagram with sendto(2).
    pub fn send_to(&self, fd: RawFd, data: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer and address are valid for the call.
        let rc = unsafe { libc::sendto(fd, data.as_ptr().cast(), data.len(), 0, self.as_ptr(), self.len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

pub(crate) fn sockaddr(ip: Ipv4Addr, port: u16) -> SockAddr {
    SockAddr::v4(ip, port)
}

/// Opens a UDP socket bound to `ip:port` with SO_REUSEPORT, so every worker can own one. An
/// IPv6 socket takes IPv4 peers too (as mapped addresses) unless `v6_only`.
pub(crate) fn bind_udp(ip: IpAddr, port: u16, v6_only: bool) -> io::Result<OwnedFd> {
    let family = if ip.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd right away.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if ip.is_ipv6() {
        setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, libc::c_int::from(v6_only))?;
    }
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(&fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    let sa = match ip {
        IpAddr::V4(v4) => SockAddr::v4(v4, port),
        IpAddr::V6(v6) => SockAddr::v6(v6, port),
    };
    // SAFETY: sa is a valid socket address of its length.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_families_round_trip_and_compare() {
        let v4: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:51821".parse().unwrap();
        for (addr, ipv6_socket, len) in [(v4, false, 16), (v4, true, 28), (v6, true, 28)] {
            let sa = SockAddr::for_socket(addr, ipv6_socket);
            assert_eq!(sa.socket_addr(), addr, "a mapped address reads back as IPv4");
            assert_eq!(sa.len() as usize, len);
            assert!(sa.same(&SockAddr::for_socket(addr, ipv6_socket)));
        }
        let other = SockAddr::v4("198.51.100.3".parse().unwrap(), 51820);
        assert!(!SockAddr::for_socket(v4, false).same(&other));
        assert!(!SockAddr::for_socket(v4, true).same(&SockAddr::for_socket(v4, false)));
    }
}
