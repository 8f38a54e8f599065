//! Where the udp workers run. With one worker per CPU, the TUN device hands a packet to the
//! queue numbered like the CPU that sends it and the socket group hands a datagram to the
//! socket numbered like the CPU that receives it, so worker N gets the packets of CPU N. Under
//! light traffic (pings, RPCs) worker N is pinned to CPU N: every wakeup is then a context
//! switch on the CPU that already holds the packet, not an interrupt to wake an idle CPU, which
//! on a virtual machine costs tens of microseconds per hop. Under heavy traffic the worker runs
//! free, so the scheduler can spread the sender, the worker and the receiver over the cores.

use std::io;
use std::mem::{size_of, zeroed};
use std::time::{Duration, Instant};

/// How often a worker decides whether to be pinned, and the packets per window above which it
/// runs free (10 000 packets/s: far above request/response traffic, far below a bulk stream).
const WINDOW: Duration = Duration::from_millis(100);
const BUSY_PER_WINDOW: u64 = 1000;

/// The CPUs this process may run on, when they are exactly 0..n (so worker N can own CPU N).
pub(crate) fn cpus_in_order() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) < 0 {
            return None;
        }
        set
    };
    // SAFETY: CPU_ISSET reads inside the set for indexes below CPU_SETSIZE.
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let n = allowed.len();
    (n > 0 && allowed.iter().enumerate().all(|(i, &cpu)| i == cpu)).then_some(n)
}

/// A worker's pinning decision, taken once per window from the packets it moved.
pub(crate) struct Placement {
    cpu: usize,
    cpus: usize,
    pinned: bool,
    window_start: Instant,
    moved: u64,
}

impl Placement {
    /// Starts pinned to `cpu` of CPUs 0..`cpus` (a node at rest has light traffic).
    pub fn new(cpu: usize, cpus: usize) -> Self {
        let mut p = Placement {
            cpu,
            cpus,
            pinned: false,
            window_start: Instant::now(),
            moved: 0,
        };
        p.set(true);
        p
    }

    /// Counts `moved` packets; at the end of a window, pins or unpins the calling thread.
    pub fn account(&mut self, moved: u64) {
        self.moved += moved;
        if self.window_start.elapsed() < WINDOW {
            return;
        }
        let busy = self.moved > BUSY_PER_WINDOW;
        self.set(!busy);
        self.moved = 0;
        self.window_start = Instant::now();
    }

    fn set(&mut self, pinned: bool) {
        if self.pinned == pinned {
            return;
        }
        let cpus = if pinned { self.cpu..self.cpu + 1 } else { 0..self.cpus };
        match set_affinity(cpus) {
            Ok(()) => self.pinned = pinned,
            Err(e) => tracing::debug!("udp worker: cannot change CPU affinity: {e}"),
        }
    }
}

fn set_affinity(cpus: std::ops::Range<usize>) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for indexes below CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's allowed CPUs.
    fn allowed() -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it; CPU_ISSET reads inside.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set), 0);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn cpus_count_only_when_numbered_from_zero() {
        std::thread::spawn(|| {
            set_affinity(0..1).unwrap();
            assert_eq!(cpus_in_order(), Some(1));
            if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
                set_affinity(1..2).unwrap();
                assert_eq!(cpus_in_order(), None, "CPU 1 alone is not 0..n");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_is_pinned_while_light_and_free_while_busy() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            eprintln!("skipped: needs two CPUs");
            return;
        }
        std::thread::spawn(move || {
            set_affinity(0..cpus).unwrap();
            let mut p = Placement::new(1, cpus);
            assert_eq!(allowed(), vec![1], "starts pinned");
            p.account(BUSY_PER_WINDOW + 1);
            std::thread::sleep(WINDOW);
            p.account(0);
            assert_eq!(allowed(), (0..cpus).collect::<Vec<_>>(), "a busy window frees it");
            std::thread::sleep(WINDOW);
            p.account(3);
            assert_eq!(allowed(), vec![1], "a light window pins it again");
        })
        .join()
        .unwrap();
    }
}
