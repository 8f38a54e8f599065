//! The message arrays of a worker's batched socket calls (recvmmsg, sendmmsg), built once per
//! worker and reused. A call touches only the entries it uses: a wakeup that moves one packet
//! writes a few cache lines instead of rebuilding 64 headers, which on a mostly idle node is
//! most of a packet's cost in user space.

use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, zeroed};
use std::net::IpAddr;
use std::os::fd::RawFd;

use super::socket::SockAddr;

/// Packets per batch (one recvmmsg or sendmmsg).
pub(crate) const BATCH: usize = 64;
/// Room for one cmsg carrying an int or u16 (CMSG_SPACE(4) on 64-bit Linux).
const CMSG_ROOM: usize = 24;
type Cmsg = [u64; CMSG_ROOM / 8];

fn boxed<T>(n: usize) -> Box<[T]> {
    // SAFETY: only instantiated with libc's plain-data structs, for which all-zero is valid.
    (0..n).map(|_| unsafe { zeroed() }).collect()
}

/// The receive side: `BATCH` buffers, each wired once to its iovec, address slot and (with
/// `control`) a cmsg buffer for UDP_GRO's segment size.
pub(crate) struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_in6]>,
    cmsgs: Box<[Cmsg]>,
    msgs: Box<[libc::mmsghdr]>,
    control: bool,
    /// Entries the last call filled, whose lengths the kernel overwrote.
    filled: usize,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` point only into heap allocations this struct
// owns; they stay valid when it moves to the worker's thread and are used only through `&mut self`.
unsafe impl Send for RecvBatch {}

/// One received message: the datagram (with UDP_GRO, several back to back) and its sender.
pub(crate) struct Received<'a> {
    pub data: &'a mut [u8],
    pub from: IpAddr,
    /// Longer than the buffer: cut short by the kernel.
    pub truncated: bool,
    /// With UDP_GRO: the size of each coalesced datagram (the last may be shorter).
    pub segment: Option<usize>,
}

impl RecvBatch {
    pub fn new(buf_len: usize, control: bool) -> Self {
        let mut b = RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; buf_len].into_boxed_slice()).collect(),
            iovs: boxed(BATCH),
            names: boxed(BATCH),
            cmsgs: boxed(BATCH),
            msgs: boxed(BATCH),
            control,
            filled: BATCH,
        };
        for i in 0..BATCH {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr().cast(),
                iov_len: buf_len,
            };
            let h = &mut b.msgs[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_in6).cast();
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            if control {
                h.msg_control = b.cmsgs[i].as_mut_ptr().cast();
            }
        }
        b
    }

    /// Receives up to `BATCH` datagrams without blocking; 0 when there is none.
    pub fn recv(&mut self, fd: RawFd) -> usize {
        for m in &mut self.msgs[..self.filled] {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            m.msg_hdr.msg_controllen = if self.control { CMSG_ROOM as _ } else { 0 };
            m.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every entry points at a buffer, iovec, address slot and cmsg buffer owned by
        // self, of the sizes written into it.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.filled = if rc > 0 { rc as usize } else { 0 };
        self.filled
    }

    /// The sender (address and port) of message `i` of the last [`recv`](Self::recv).
    pub fn source(&self, i: usize) -> SockAddr {
        SockAddr::from_raw(self.names[i], self.msgs[i].msg_hdr.msg_namelen)
    }

    /// Message `i` of the last [`recv`](Self::recv).
    pub fn get(&mut self, i: usize) -> Received<'_> {
        let h = &self.msgs[i].msg_hdr;
        let len = self.msgs[i].msg_len as usize;
        let mut segment = None;
        if self.control && h.msg_controllen > 0 {
            // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if v > 0 {
                            segment = Some(v as usize);
                        }
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        Received {
            from: self.source(i).socket_addr().ip(),
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            segment,
            data: &mut self.bufs[i][..len],
        }
    }
}

/// The send side's arrays; [`SendBatch::fill`] borrows them for one sendmmsg.
pub(crate) struct SendBatch {
    iovs: Box<[libc::iovec]>,
    addrs: Box<[SockAddr]>,
    cmsgs: Box<[Cmsg]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside are written and read only between `fill` and `send`, while the
// `Filling` borrows both this struct and the data they point at.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            iovs: boxed(BATCH),
            addrs: vec![SockAddr::v4(std::net::Ipv4Addr::UNSPECIFIED, 0); BATCH].into_boxed_slice(),
            cmsgs: boxed(BATCH),
            msgs: boxed(BATCH),
        }
    }
}

/// Up to `BATCH` datagrams being queued for one sendmmsg; the data they point at (`'d`) must
/// outlive the call, which the borrow makes sure of.
pub(crate) struct Filling<'s, 'd> {
    batch: &'s mut SendBatch,
    len: usize,
    _data: PhantomData<&'d [u8]>,
}

impl SendBatch {
    pub fn fill<'d>(&mut self) -> Filling<'_, 'd> {
        Filling {
            batch: self,
            len: 0,
            _data: PhantomData,
        }
    }
}

impl<'d> Filling<'_, 'd> {
    /// Queues `data` for `to`; with `segment`, the kernel cuts it into datagrams of that size
    /// (UDP_SEGMENT). At most `BATCH` per batch.
    pub fn push(&mut self, to: SockAddr, data: &'d [u8], segment: Option<u16>) {
        let i = self.len;
        assert!(i < BATCH, "a send batch holds at most {BATCH} messages");
        let b = &mut *self.batch;
        b.addrs[i] = to;
        b.iovs[i] = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        let h = &mut b.msgs[i].msg_hdr;
        h.msg_name = b.addrs[i].as_ptr().cast_mut().cast();
        h.msg_namelen = b.addrs[i].len();
        h.msg_iov = &mut b.iovs[i];
        h.msg_iovlen = 1;
        h.msg_flags = 0;
        match segment {
            Some(size) => {
                h.msg_control = b.cmsgs[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer is CMSG_ROOM bytes, enough for one u16 cmsg.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
                }
            }
            None => {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        self.len += 1;
    }

    /// Sends the queued datagrams, calling `outcome` once per entry, in order, with whether the
    /// kernel took it (a refused one is skipped and the rest still go).
    pub fn send(self, fd: RawFd, mut outcome: impl FnMut(usize, Result<(), io::Error>)) {
        let mut sent = 0;
        while sent < self.len {
            // SAFETY: entries sent..len point at addresses and cmsgs in the batch and at data
            // borrowed for 'd, all alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.batch.msgs[sent..].as_mut_ptr(),
                    (self.len - sent) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                outcome(sent, Err(err));
                sent += 1;
                continue;
            }
            for i in sent..sent + rc as usize {
                outcome(i, Ok(()));
            }
            sent += rc as usize;
        }
    }
}
