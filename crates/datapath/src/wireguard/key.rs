//! The node's private key in `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`), as flannel keeps
//! it: read when the file exists (base64, a trailing newline tolerated), else generated and
//! written owner-read-only (0400), so a restart keeps the public key every peer already has.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use weft_core::wireguard::{format_key, parse_key, Key};

/// flannel's default key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// The environment variable flannel reads the key file's path from.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("wireguard backend: cannot read the private key file {path}: {source}; fix its permissions or remove it so a new key is generated (peers then learn the new public key from the lease)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wireguard backend: the private key file {path} does not hold a WireGuard key (44 characters of base64, as `wg genkey` writes); fix it or remove it so a new key is generated")]
    Malformed { path: PathBuf },
    #[error("wireguard backend: cannot write the new private key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wireguard backend: no randomness for a new private key: {0}")]
    Random(#[source] std::io::Error),
}

/// The key file's path: `$WIREGUARD_KEY_FILE` when set, else `/run/flannel/wgkey`.
pub fn key_file_path() -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

/// Reads the private key at `path`, or generates one and writes it there when the file does
/// not exist. Returns the key and whether it was generated.
pub fn load_or_generate(path: &Path) -> Result<(Key, bool), KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(&text)
            .map(|k| (k, false))
            .ok_or_else(|| KeyFileError::Malformed { path: path.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key()?;
            write_key(path, &key).map_err(|source| KeyFileError::Write {
                path: path.into(),
                source,
            })?;
            Ok((key, true))
        }
        Err(source) => Err(KeyFileError::Read {
            path: path.into(),
            source,
        }),
    }
}

fn random_key() -> Result<Key, KeyFileError> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `key`.
        let n = unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(KeyFileError::Random(e));
            }
            continue;
        }
        filled += n as usize;
    }
    // Curve25519 clamping happens where the key is used (x25519-dalek); `wg genkey` clamps the
    // stored form too, so do the same for a file identical in kind.
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    Ok(key)
}

fn write_key(path: &Path, key: &Key) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside and renamed, so a crash never leaves half a key; created 0400 (flannel's).
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)?;
    f.write_all(format_key(key).as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-wgkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn generates_once_then_reads_the_same_key() {
        let d = dir("gen");
        let path = d.join("sub/wgkey");
        let (k1, generated) = load_or_generate(&path).unwrap();
        assert!(generated);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 44);
        let (k2, generated) = load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(k1, k2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_trailing_newline_is_tolerated_and_garbage_is_named() {
        let d = dir("read");
        let path = d.join("wgkey");
        std::fs::write(&path, "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY=\n").unwrap();
        assert_eq!(
            format_key(&load_or_generate(&path).unwrap().0),
            "YFd2oJ3FwJb9/0wIxwd1o4pq6Yb9KZpLD1TB/eVrKFY="
        );
        std::fs::write(&path, "hello\n").unwrap();
        let e = load_or_generate(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // A directory where the file should be: unreadable, and the error says which path.
        let e = load_or_generate(&d).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
