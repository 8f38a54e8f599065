//! Docker daemon options from subnet.env, in the exact format of flannel's `mk-docker-opts.sh`:
//! one `DOCKER_OPT_<NAME>="<value>"` line per option (sorted by name, as the script's `set`
//! listing is), then `DOCKER_OPTS="<existing> --bip=... --ip-masq=... --mtu=..."`.
//! Pure rendering; reading subnet.env and writing the output file belong to the caller.

use crate::SubnetEnv;

/// The script's flags, minus the file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptsFormat {
    /// `-i`: one `DOCKER_OPT_*` line per option.
    pub individual: bool,
    /// `-c`: the combined line. When neither `-i` nor `-c` is given, both are written.
    pub combined: bool,
    /// `-k`: the combined line's variable name (`DOCKER_OPTS`).
    pub combined_key: String,
    /// Cleared by `-m`: leave `--ip-masq` out (for old Docker versions).
    pub ip_masq: bool,
    /// The value the combined variable already had in the caller's environment; the script
    /// starts from it (followed by one space when it is not empty).
    pub existing_combined: String,
}

impl Default for DockerOptsFormat {
    fn default() -> Self {
        DockerOptsFormat {
            individual: false,
            combined: false,
            combined_key: "DOCKER_OPTS".to_string(),
            ip_masq: true,
            existing_combined: String::new(),
        }
    }
}

/// The `(name, value)` options, in the order the script writes them.
pub fn docker_options(env: &SubnetEnv, format: &DockerOptsFormat) -> Vec<(&'static str, String)> {
    // The script sets --bip only when FLANNEL_SUBNET is there (not in an IPv6-only network).
    let mut opts: Vec<_> = env
        .subnet
        .map(|s| ("DOCKER_OPT_BIP", format!("--bip={s}")))
        .into_iter()
        .collect();
    if format.ip_masq {
        // Docker masquerades only when weft does not.
        opts.push(("DOCKER_OPT_IPMASQ", format!("--ip-masq={}", !env.ipmasq)));
    }
    opts.push(("DOCKER_OPT_MTU", format!("--mtu={}", env.mtu)));
    opts
}

/// The whole output file.
pub fn render_docker_opts(env: &SubnetEnv, format: &DockerOptsFormat) -> String {
    let (individual, combined) = if !format.individual && !format.combined {
        (true, true)
    } else {
        (format.individual, format.combined)
    };
    let mut out = String::new();
    let mut all = format.existing_combined.clone();
    if !all.is_empty() {
        all.push(' ');
    }
    for (name, value) in docker_options(env, format) {
        if individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        all.push(' ');
        all.push_str(&value);
    }
    if combined {
        out.push_str(&format!("{}=\"{all}\"\n", format.combined_key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ipmasq: bool) -> SubnetEnv {
        SubnetEnv {
            network: Some("10.1.0.0/16".parse().unwrap()),
            subnet: Some("10.1.74.1/24".parse().unwrap()),
            mtu: 1472,
            ipmasq,
            ipv6_network: None,
            ipv6_subnet: None,
        }
    }

    #[test]
    fn default_writes_individual_then_combined() {
        assert_eq!(
            render_docker_opts(&env(false), &DockerOptsFormat::default()),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
             DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
             DOCKER_OPT_MTU=\"--mtu=1472\"\n\
             DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }

    #[test]
    fn flags_select_lines_key_and_masquerade() {
        let combined_only = DockerOptsFormat {
            combined: true,
            combined_key: "EXTRA".into(),
            ip_masq: false,
            ..Default::default()
        };
        assert_eq!(
            render_docker_opts(&env(true), &combined_only),
            "EXTRA=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
        );
        let individual_only = DockerOptsFormat {
            individual: true,
            ..Default::default()
        };
        assert_eq!(
            render_docker_opts(&env(true), &individual_only),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
        );
    }

    #[test]
    fn existing_combined_value_is_kept_in_front() {
        let format = DockerOptsFormat {
            combined: true,
            existing_combined: "--debug".into(),
            ..Default::default()
        };
        assert_eq!(
            render_docker_opts(&env(false), &format),
            "DOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }
}
