//! TUN devices: open (or create) a persistent, multi-queue layer-3 TUN device and hand out one
//! file descriptor per queue.
//!
//! The device is made persistent (TUNSETPERSIST), so it outlives the process: a restarted
//! daemon attaches to the same device, and its addresses and routes stay in place. Addresses,
//! MTU and link state are netlink's job, not this module's. Nothing here decides which packets
//! go where.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// TUNSETOFFLOAD bits: the kernel may hand us packets with a partial checksum, and TCP
/// super-segments (TSO) over IPv4 and over IPv6.
pub const TUN_F_CSUM: libc::c_uint = 0x01;
pub const TUN_F_TSO4: libc::c_uint = 0x02;
pub const TUN_F_TSO6: libc::c_uint = 0x04;

/// Size of `struct virtio_net_hdr`, which precedes every packet on a device opened with
/// [`TunOptions::vnet_hdr`].
pub const VNET_HDR_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot open /dev/net/tun: {0}; load the tun module and run with CAP_NET_ADMIN")]
    Open(#[source] io::Error),
    #[error("TUN device name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error(
        "cannot attach queue {queue} of TUN device {name}: {source}; if the device was created with other \
         flags (not multi-queue, or with a packet-info header), delete it (`ip link del {name}`) and start again"
    )]
    Attach {
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error("TUN device {name}: {op}: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl TunError {
    /// The errno of the failed system call, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TunError::Open(e) | TunError::Attach { source: e, .. } | TunError::Ioctl { source: e, .. } => {
                e.raw_os_error()
            }
            TunError::BadName(_) => None,
        }
    }
}

/// How to open the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunOptions {
    /// Number of queues (one file descriptor each); at least 1.
    pub queues: usize,
    /// Prefix every packet with a `virtio_net_hdr` and enable TSO/checksum offload, so reads
    /// return TCP super-segments over IPv4 and writes may carry them.
    pub vnet_hdr: bool,
    /// With `vnet_hdr`, reads return TCP super-segments over IPv6 too (the reader must split
    /// them with IPv6 headers).
    pub ipv6_tso: bool,
}

impl Default for TunOptions {
    fn default() -> Self {
        TunOptions {
            queues: 1,
            vnet_hdr: false,
            ipv6_tso: false,
        }
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a TUN device: reads return one packet, writes take one packet.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    vnet_hdr: bool,
}

impl TunQueue {
    /// Whether every packet read or written is preceded by a [`VNET_HDR_LEN`]-byte header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one packet (non-blocking: `WouldBlock` when the queue is empty).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the buffer is valid for writes of buf.len() bytes; the fd is owned by self.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet made of two parts (a vnet header and the packet), with one writev.
    pub fn send2(&self, head: &[u8], packet: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr().cast_mut().cast(),
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr().cast_mut().cast(),
                iov_len: packet.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths, only read by writev.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet (with its header, on a vnet_hdr device).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer is valid for reads of packet.len() bytes; the fd is owned by self.
        let n = unsafe { libc::write(self.file.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn ioctl_int(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: these TUN ioctls take an integer argument by value.
    let rc = unsafe { libc::ioctl(fd, request as _, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the persistent TUN device `name` (layer 3, no packet-info header, multi-queue) or
/// attaches to the existing one, and returns one non-blocking file descriptor per queue. The
/// device keeps existing after every queue is closed.
pub fn open_tun(name: &str, opts: &TunOptions) -> Result<Vec<TunQueue>, TunError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(TunError::BadName(name.to_string()));
    }
    let mut flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
    if opts.vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    let mut queues = Vec::with_capacity(opts.queues.max(1));
    for queue in 0..opts.queues.max(1) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq lays out.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TunError::Attach {
                name: name.to_string(),
                queue,
                source: io::Error::last_os_error(),
            });
        }
        let ioctl_err = |op: &'static str| {
            move |source| TunError::Ioctl {
                name: name.to_string(),
                op,
                source,
            }
        };
        if queue == 0 {
            ioctl_int(file.as_raw_fd(), TUNSETPERSIST, 1).map_err(ioctl_err("make it persistent"))?;
        }
        if opts.vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which lives across the call.
            if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &size as *const libc::c_int) } < 0 {
                return Err(ioctl_err("set the vnet header size")(io::Error::last_os_error()));
            }
            let tso6 = if opts.ipv6_tso { TUN_F_TSO6 } else { 0 };
            ioctl_int(
                file.as_raw_fd(),
                TUNSETOFFLOAD,
                (TUN_F_CSUM | TUN_F_TSO4 | tso6) as libc::c_ulong,
            )
            .map_err(ioctl_err("enable TSO and checksum offload"))?;
        }
        queues.push(TunQueue {
            file,
            vnet_hdr: opts.vnet_hdr,
        });
    }
    Ok(queues)
}

/// TUNSETSTEERINGEBPF: `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// With `on`, steers every packet the kernel sends into the device to the queue numbered like
/// the CPU it is sent from (CPU modulo the number of queues), with a two-instruction eBPF
/// program (`return bpf_get_smp_processor_id()`): a worker that owns queue N and runs on CPU N
/// then takes packets without a cross-CPU wakeup. Without, the device goes back to choosing a
/// queue by flow hash. The setting belongs to the device and outlives this process.
pub fn steer_by_cpu(queue: &TunQueue, on: bool) -> io::Result<()> {
    let prog = if on { Some(load_cpu_prog()?) } else { None };
    // -1 detaches the program.
    let fd: libc::c_int = prog.as_ref().map_or(-1, |p| p.as_raw_fd());
    // SAFETY: TUNSETSTEERINGEBPF reads an int (a program fd or -1) through the pointer.
    let rc = unsafe {
        libc::ioctl(
            queue.file.as_raw_fd(),
            TUNSETSTEERINGEBPF as _,
            &fd as *const libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The device holds its own reference to the program; our fd can close.
    Ok(())
}

/// Loads `r0 = bpf_get_smp_processor_id(); exit` as a socket-filter program.
fn load_cpu_prog() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }
    let insns = [
        Insn {
            code: 0x85, // BPF_JMP | BPF_CALL
            regs: 0,
            off: 0,
            imm: BPF_FUNC_GET_SMP_PROCESSOR_ID,
        },
        Insn {
            code: 0x95, // BPF_JMP | BPF_EXIT
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    // The first fields of union bpf_attr for BPF_PROG_LOAD; the rest stays zero.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        rest: [u8; 112],
    }
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        rest: [0; 112],
    };
    // SAFETY: bpf(2) reads `size_of::<ProgLoad>()` bytes of attr and the arrays it points at,
    // all of which live across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}
