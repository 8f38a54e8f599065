//! How the runtime invoked the plugin: the `CNI_*` environment variables, validated per verb.

use std::path::PathBuf;

use crate::error::{CniError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// The validated `CNI_*` variables. Fields a verb does not need are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Path of the container's network namespace (empty for a DEL without one).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, passed through to delegates.
    pub args: String,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<PathBuf>,
}

fn invalid_env(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

impl Invocation {
    /// Reads the variables through `get` (the process environment in the binary).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let var = |name: &str| get(name).unwrap_or_default();
        let command = match var("CNI_COMMAND").as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            "" => {
                return Err(invalid_env(
                    "CNI_COMMAND is not set; weft-cni is a CNI plugin run by a container runtime \
                     (CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION)"
                        .into(),
                ))
            }
            other => return Err(invalid_env(format!("CNI_COMMAND={other:?} is not a CNI verb"))),
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let inv = Invocation {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        if per_container {
            validate_container_id(&inv.container_id)?;
            validate_ifname(&inv.ifname)?;
            if command != Command::Del && inv.netns.is_empty() {
                return Err(invalid_env(format!(
                    "CNI_NETNS is not set; {} needs the path of the container's network namespace",
                    command.as_str()
                )));
            }
        }
        Ok(inv)
    }

    /// The `CNI_*` variables that describe this invocation (what a delegate is run with);
    /// [`Invocation::from_env`] reads them back to the same invocation.
    pub fn env_vars(&self) -> [(&'static str, String); 6] {
        [
            ("CNI_COMMAND", self.command.as_str().to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.clone()),
            (
                "CNI_PATH",
                self.path
                    .iter()
                    .map(|p| p.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
        ]
    }
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(invalid_env("CNI_CONTAINERID is not set".into()));
    }
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(invalid_env(format!(
            "CNI_CONTAINERID={id:?} has characters other than letters, digits, '_', '.', '-'"
        )));
    }
    Ok(())
}

/// Whether the kernel takes `name` as an interface name (its dev_valid_name()): 1-15 bytes, not
/// "." or "..", no '/', ':', NUL or byte its isspace() matches (ASCII white space and 0xa0, which
/// occurs inside UTF-8 characters).
pub fn is_valid_interface_name(name: &str) -> bool {
    let bad_byte = |b: u8| matches!(b, b'/' | b':' | 0 | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(bad_byte)
        && !name.contains(char::is_whitespace)
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(invalid_env("CNI_IFNAME is not set".into()));
    }
    if !is_valid_interface_name(name) {
        return Err(invalid_env(format!(
            "CNI_IFNAME={name:?} is not a valid interface name (1-15 bytes, no '/', ':' or white space)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn inv(vars: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Invocation::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_netns_del_does_not() {
        let base = [("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/a:/b")];
        let e = inv(&[&base[..], &[("CNI_COMMAND", "ADD")]].concat()).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let del = inv(&[&base[..], &[("CNI_COMMAND", "DEL")]].concat()).unwrap();
        assert_eq!(del.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn bad_variables_are_code_4() {
        assert_eq!(inv(&[]).unwrap_err().code, 4);
        assert_eq!(inv(&[("CNI_COMMAND", "FOO")]).unwrap_err().code, 4);
        let e = inv(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
        let e = inv(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "a/b")]).unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{e}");
        assert!(inv(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(inv(&[("CNI_COMMAND", "STATUS")]).is_ok());
        // Names the kernel refuses: too long in bytes, a no-break space inside a UTF-8 character.
        for bad in ["eth0eth0eth0eth0", "\u{e0}th0", "a\u{a0}b", "e\0"] {
            let e = inv(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", bad)]).unwrap_err();
            assert!(e.msg.contains("CNI_IFNAME"), "{bad:?}: {e}");
        }
        assert!(inv(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "\u{e9}th0")
        ])
        .is_ok());
    }

    fn var() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            any::<String>().prop_map(Some),
            "[a-zA-Z0-9_.:/ -]{0,20}".prop_map(Some),
        ]
    }

    fn command() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", ""])
                .prop_map(|c| Some(c.to_string())),
            var(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary variables never panic; an accepted invocation keeps the rules of its verb and
        /// reads back the same from the variables it renders (what a delegate is given).
        #[test]
        fn accepted_environments_are_valid_and_round_trip(
            command in command(),
            container_id in var(),
            netns in var(),
            ifname in var(),
            args in var(),
            path in var(),
        ) {
            let vars: HashMap<&str, Option<String>> = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container_id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
                ("CNI_PATH", path),
            ]
            .into_iter()
            .collect();
            let Ok(inv) = Invocation::from_env(|k| vars.get(k).cloned().flatten()) else {
                return Ok(());
            };
            if matches!(inv.command, Command::Add | Command::Del | Command::Check) {
                prop_assert!(validate_container_id(&inv.container_id).is_ok());
                prop_assert!(validate_ifname(&inv.ifname).is_ok());
                prop_assert!(!inv.ifname.is_empty() && inv.ifname.len() <= 15);
                prop_assert!(inv.command == Command::Del || !inv.netns.is_empty());
            }
            prop_assert!(inv.path.iter().all(|p| !p.as_os_str().is_empty()));
            let rendered: HashMap<&str, String> = inv.env_vars().into_iter().collect();
            prop_assert_eq!(Invocation::from_env(|k| rendered.get(k).cloned()), Ok(inv));
        }
    }
}
