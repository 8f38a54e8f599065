//! `make install` and `make deb` as a user runs them (with the debug binaries CI built, so no
//! release build here): the files where the GNU defaults and Debian expect them, the environment
//! file kept when it exists and declared a conffile, the unit accepted by `systemd-analyze verify`
//! with the exposure score the README states, and the package installed, upgraded over an edited
//! conffile and purged with dpkg in a scratch root. Needs root (dpkg), dpkg-dev and systemd
//! (`make deps` installs them).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root, where the Makefile is.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The directory holding the workspace's binaries of this build (target/debug): the test binary
/// runs from its deps/ subdirectory. `make test` builds weftd and weft-cni there first.
fn bindir_src() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A scratch directory, removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weft-packaging-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (make deps installs the tools)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn make(target: &str, vars: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("make");
    cmd.arg("-s")
        .arg("-C")
        .arg(workspace())
        .arg(target)
        .arg("PROFILE=debug")
        .arg(format!("BINDIR_SRC={}", bindir_src().display()));
    for (name, value) in vars {
        cmd.arg(format!("{name}={}", value.display()));
    }
    run(&mut cmd)
}

/// Every file and symlink under `root`, as paths relative to it.
fn files_under(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, found);
            } else {
                found.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(root, root, &mut found);
    found
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

const INSTALLED: &[&str] = &[
    "etc/default/weftd",
    "opt/cni/bin/weft-cni",
    "usr/local/bin/weft",
    "usr/local/bin/weftd",
    "usr/local/lib/systemd/system/weftd.service",
    "usr/local/lib/tmpfiles.d/weftd.conf",
    "usr/local/share/doc/weft/README.md",
    "usr/local/share/doc/weft/examples/10-weft.conflist",
    "usr/local/share/doc/weft/examples/weftd.default",
];

const PACKAGED: &[&str] = &[
    "etc/default/weftd",
    "lib/systemd/system/weftd.service",
    "usr/bin/weft",
    "usr/bin/weftd",
    "usr/lib/cni/weft-cni",
    "usr/lib/tmpfiles.d/weftd.conf",
    "usr/share/doc/weft/README.md",
    "usr/share/doc/weft/changelog.Debian.gz",
    "usr/share/doc/weft/copyright",
    "usr/share/doc/weft/examples/10-weft.conflist",
    "usr/share/doc/weft/examples/weftd.default",
];

/// `systemd-analyze verify` of weftd.service inside `tree` (an installed tree): a copy of the tree
/// with this host's own units (the targets weftd.service is ordered against), checked with
/// --root so ExecStart= must name the binary the tree installed. Warnings count as failures.
fn verify_unit(tree: &Path) {
    let root = Scratch::new("verify-root");
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(&root.0));
    std::fs::create_dir_all(root.0.join("usr/lib/systemd")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(root.0.join("usr/lib/systemd/")));
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg("weftd.service"));
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify complains:\n{complaints}"
    );
}

/// The overall exposure level `systemd-analyze security` gives the unit file, e.g. "2.3".
fn exposure(unit: &Path) -> String {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string()
}

fn assert_version(binary: &Path, name: &str) {
    let text = stdout(&run(Command::new(binary).arg("--version")));
    let prefix = format!("{name} {} (git ", env!("CARGO_PKG_VERSION"));
    let revision = text
        .trim()
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{} --version printed {text:?}", binary.display()));
    assert!(
        revision == "unknown" || (revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{} --version names no git revision: {text:?}",
        binary.display()
    );
}

#[test]
fn make_install_lays_out_the_files_and_keeps_an_existing_config() {
    let dest = Scratch::new("install");
    make("install", &[("DESTDIR", &dest.0)]);
    assert_eq!(files_under(&dest.0), set(INSTALLED));

    let env_file = dest.0.join("etc/default/weftd");
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert!(env_text.contains("#FLANNELD_ETCD_ENDPOINTS="), "{env_text}");
    assert!(
        env_text.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "the example environment file must set nothing:\n{env_text}"
    );
    let unit = std::fs::read_to_string(dest.0.join("usr/local/lib/systemd/system/weftd.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/weftd $WEFTD_ARGS",
        "EnvironmentFile=-/etc/default/weftd",
        "Type=notify",
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}:\n{unit}");
    }
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dest.0.join("usr/local/share/doc/weft/examples/10-weft.conflist")).unwrap(),
    )
    .unwrap();
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["weft-cni", "portmap"]);
    assert_version(&dest.0.join("usr/local/bin/weftd"), "weftd");
    assert_version(&dest.0.join("usr/local/bin/weft"), "weft");
    verify_unit(&dest.0);

    // An administrator's environment file stays as it is, the second install and every later one.
    let kept = Scratch::new("install-kept");
    std::fs::create_dir_all(kept.0.join("etc/default")).unwrap();
    std::fs::write(kept.0.join("etc/default/weftd"), "FLANNELD_IFACE=eth9\n").unwrap();
    let out = make("install", &[("DESTDIR", &kept.0)]);
    assert!(stdout(&out).contains("keeping the existing"), "{}", stdout(&out));
    make("install", &[("DESTDIR", &kept.0)]);
    assert_eq!(
        std::fs::read_to_string(kept.0.join("etc/default/weftd")).unwrap(),
        "FLANNELD_IFACE=eth9\n"
    );
    assert_eq!(files_under(&kept.0), set(INSTALLED));
}

#[test]
fn make_deb_builds_a_package_in_debians_places() {
    let out_dir = Scratch::new("deb");
    let built = make("deb", &[("DEB_OUT", &out_dir.0), ("DEB_COMPRESS", Path::new("none"))]);
    let deb = PathBuf::from(stdout(&built).lines().last().unwrap().trim());
    assert!(deb.is_file(), "make deb printed {deb:?}");

    let listing = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let packaged: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            l.split_whitespace()
                .nth(5)
                .unwrap()
                .trim_start_matches("./")
                .to_string()
        })
        .collect();
    assert_eq!(packaged, set(PACKAGED));

    let field = |name: &str| stdout(&run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name)));
    assert_eq!(field("Package").trim(), "weft");
    assert!(field("Version").starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))));
    let depends = field("Depends");
    assert!(depends.contains("iptables | nftables"), "Depends: {depends}");
    assert!(depends.contains("libc6 (>= "), "Depends: {depends}");
    let conffiles = stdout(&run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/default/weftd");

    let tree = Scratch::new("deb-tree");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&tree.0));
    let unit_path = tree.0.join("lib/systemd/system/weftd.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.lines().any(|l| l == "ExecStart=/usr/bin/weftd $WEFTD_ARGS"),
        "{unit}"
    );
    assert_version(&tree.0.join("usr/bin/weftd"), "weftd");
    verify_unit(&tree.0);

    // The exposure score is the README's, and no worse than 2.3.
    let score = exposure(&unit_path);
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level {score}")),
        "systemd-analyze security scores weftd.service {score}: the README must say so"
    );
    run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=23", "--no-pager"])
        .arg(&unit_path));

    // dpkg in a scratch root: install, edit the conffile, reinstall (kept), purge (gone).
    let root = Scratch::new("dpkg-root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.0.join(dir)).unwrap();
    }
    for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.0.join(file), "").unwrap();
    }
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.0.display()))
            .args(["--log=/dev/null", "--force-depends", "--force-script-chrootless"])
            .args(args);
        run(&mut cmd)
    };
    let deb_arg = deb.display().to_string();
    dpkg(&["--install", &deb_arg]);
    let conf = root.0.join("etc/default/weftd");
    let mut edited = std::fs::read_to_string(&conf).unwrap();
    edited.push_str("FLANNELD_IFACE=eth9\n");
    std::fs::write(&conf, &edited).unwrap();
    dpkg(&["--install", &deb_arg]);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    dpkg(&["--remove", "weft"]);
    assert!(conf.exists(), "removing the package must keep its conffile");
    assert!(!root.0.join("usr/bin/weftd").exists());
    dpkg(&["--purge", "weft"]);
    assert!(!conf.exists(), "purging the package must remove its conffile");
}
