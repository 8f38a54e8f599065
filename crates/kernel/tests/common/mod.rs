//! The fixture of weft-kernel's root tests: a named network namespace per test, with a unique
//! name, removed on drop even when the test fails.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test, with what to do, unless it runs as root: a root test never passes silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root (it creates network namespaces): run it as root, as `make test` and CI do"
    );
}

/// A named network namespace (`ip netns add`), removed on drop.
pub struct Netns(pub String);

impl Netns {
    /// `<prefix>-<pid>-<n>-<nanos>`: unique across tests and concurrent runs.
    pub fn named(prefix: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:x}-{}-{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff
        );
        let status = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(status.success(), "ip netns add {name} failed");
        Netns(name)
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
