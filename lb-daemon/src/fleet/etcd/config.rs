//! The `[fleet]` table of the config file: the etcd cluster holding the fleet's shared desired
//! state, and this host's name in it.
//!
//! Its presence moves the desired state (active pool or split, epoch, history) from the local
//! state file to etcd: every switch is one etcd transaction and every host applies it from its
//! watch. Without the table nothing about etcd runs (see [`super`]). It is separate from `[bgp]`
//! on purpose (see [`crate::fleet::config`]): either is useful without the other.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{ForwardMode, Problem, ServiceConfig};

/// Default TTL of the lease the host's status lives under: a host that stops (crash, partition)
/// drops out of the fleet view this long after its last keep-alive.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
/// Default bound on connecting to etcd and on each request: a change against an unreachable
/// etcd is refused after about this long instead of hanging.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// `[fleet]`: share the desired state with the other balancer hosts through etcd.
///
/// ```toml
/// [fleet]
/// cluster = "edge1"                        # keys live under /lb/<cluster>/
/// host = "lb1"                             # this host's name (unique in the cluster)
/// endpoints = ["http://10.99.0.1:2379"]
/// # ca_file = "/etc/lb/etcd-ca.pem"        # TLS (https:// endpoints)
/// # cert_file = "/etc/lb/etcd-client.pem"  # client certificate, with key_file
/// # key_file = "/etc/lb/etcd-client.key"
/// # user = "lb"                            # etcd authentication, with password_file
/// # password_file = "/etc/lb/etcd-password"
/// # lease_ttl = "2s"
/// # dial_timeout = "1s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Name of the fleet: its keys live under `/lb/<cluster>/`.
    #[serde(default)]
    pub cluster: String,
    /// This host's name in the fleet (unique; names its status key and its history marks).
    #[serde(default)]
    pub host: String,
    /// etcd client URLs (`http://host:port` or `https://host:port`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Key of `cert_file` (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user (with `password_file`).
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the etcd user's password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TTL of the lease the host status lives under (`1s..=60s`; etcd rounds small TTLs up to its
    /// minimum, 2 s by default).
    #[serde(default = "default_lease_ttl", deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    /// Bound on connecting and on each request (`100ms..=30s`).
    #[serde(default = "default_dial_timeout", deserialize_with = "de_duration")]
    pub dial_timeout: Duration,
}

fn default_lease_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}

fn default_dial_timeout() -> Duration {
    DEFAULT_DIAL_TIMEOUT
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}; expected e.g. \"500ms\" or \"2s\")"
        ))
    })
}

/// Whether `name` may name a cluster or a host: it becomes part of etcd keys.
fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.')
}

impl FleetConfig {
    /// Uses TLS to reach etcd.
    pub fn tls(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Every broken rule of the table, and every service a fleet cannot carry, each under its
    /// dotted key (`fleet.endpoints[0]`, `services[0] (web).mode`, ...).
    pub fn problems(&self, services: &[ServiceConfig]) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |key: String, reason: String| out.push(Problem { key, reason });
        for (key, value) in [("fleet.cluster", &self.cluster), ("fleet.host", &self.host)] {
            if value.is_empty() {
                push(key.into(), "missing: a name of 1-64 characters a-z A-Z 0-9 . _ -".into());
            } else if !is_name(value) {
                push(
                    key.into(),
                    format!(
                        "invalid name {value:?}: use 1-64 characters a-z A-Z 0-9 . _ - (it is part of etcd keys)"
                    ),
                );
            }
        }
        if self.endpoints.is_empty() {
            push(
                "fleet.endpoints".into(),
                "missing: at least one etcd client URL, e.g. \"http://10.0.0.1:2379\"".into(),
            );
        }
        let mut schemes = std::collections::BTreeSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            match endpoint_problem(e) {
                Ok(scheme) => {
                    schemes.insert(scheme);
                }
                Err(why) => push(format!("fleet.endpoints[{i}]"), why),
            }
        }
        if schemes.len() > 1 {
            push("fleet.endpoints".into(), "mixes http:// and https:// endpoints: use one scheme".into());
        }
        if schemes.contains("http") && (self.ca_file.is_some() || self.cert_file.is_some()) {
            push(
                "fleet.endpoints".into(),
                "TLS files are set but the endpoints are http://: use https:// endpoints".into(),
            );
        }
        for (key, path, what) in [
            ("fleet.ca_file", &self.ca_file, "the CA certificate (PEM)"),
            ("fleet.cert_file", &self.cert_file, "the client certificate (PEM)"),
            ("fleet.key_file", &self.key_file, "the client certificate's key (PEM)"),
            ("fleet.password_file", &self.password_file, "the file holding the etcd password"),
        ] {
            if let Some(p) = path {
                crate::fleet::config::check_path(&mut push, key, p, what);
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            push(
                "fleet.cert_file".into(),
                "cert_file and key_file go together (a client certificate and its key)".into(),
            );
        }
        match (&self.user, &self.password_file) {
            (Some(u), _) if u.is_empty() => push("fleet.user".into(), "must not be empty".into()),
            (Some(_), None) => push("fleet.password_file".into(), "missing: user needs password_file".into()),
            (None, Some(_)) => push("fleet.user".into(), "missing: password_file needs user".into()),
            _ => {}
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.lease_ttl) {
            push("fleet.lease_ttl".into(), format!("{:?} is out of range 1s..=60s", self.lease_ttl));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(30)).contains(&self.dial_timeout) {
            push("fleet.dial_timeout".into(), format!("{:?} is out of range 100ms..=30s", self.dial_timeout));
        }
        for (i, s) in services.iter().enumerate() {
            if s.mode == ForwardMode::Nat {
                let label = if s.name.is_empty() {
                    format!("services[{i}]")
                } else {
                    format!("services[{i}] ({})", s.name)
                };
                push(
                    format!("{label}.mode"),
                    "\"nat\" cannot be served by a fleet ([fleet] is set): the hosts share the VIPs and \
                     routers spread a client's packets over them by ECMP, but a NAT backend's replies \
                     must come back through the host that rewrote them; use mode = \"dsr\" (replies go \
                     straight to the client)"
                        .into(),
                );
            }
        }
        out
    }

    /// The etcd user's password: the first line of `password_file`.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading fleet.password_file {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or_default().trim_end().to_owned();
        anyhow::ensure!(!line.is_empty(), "fleet.password_file {} is empty", path.display());
        Ok(Some(line))
    }
}

/// `http` or `https` when `e` is a usable client URL, else why not.
fn endpoint_problem(e: &str) -> Result<&'static str, String> {
    let (scheme, rest) = if let Some(r) = e.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = e.strip_prefix("https://") {
        ("https", r)
    } else {
        return Err(format!("{e:?} is not an http:// or https:// URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if authority.contains('/') || !port_ok {
        return Err(format!("{e:?}: expected {scheme}://host:port (e.g. {scheme}://10.0.0.1:2379)"));
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{DSR, problems};
    use std::time::Duration;

    const FLEET: &str =
        "\n[fleet]\ncluster = \"edge1\"\nhost = \"lb1\"\nendpoints = [\"http://10.99.0.1:2379\"]\n";

    #[test]
    fn no_fleet_table_means_no_fleet() {
        let c = Config::from_toml_str(DSR).unwrap();
        assert_eq!(c.fleet, None);
        Config::from_toml_str(&DSR.replace("\"dsr\"", "\"nat\"")).unwrap();
    }

    #[test]
    fn defaults_and_explicit_values() {
        let c = Config::from_toml_str(&format!("{DSR}{FLEET}")).unwrap();
        let f = c.fleet.unwrap();
        assert_eq!((f.cluster.as_str(), f.host.as_str()), ("edge1", "lb1"));
        assert_eq!(f.endpoints, vec!["http://10.99.0.1:2379".to_string()]);
        assert_eq!(f.lease_ttl, super::DEFAULT_LEASE_TTL);
        assert_eq!(f.dial_timeout, super::DEFAULT_DIAL_TIMEOUT);
        assert!(!f.tls());
        let c = Config::from_toml_str(&format!(
            "{DSR}\n[fleet]\ncluster = \"c\"\nhost = \"h\"\nendpoints = [\"https://e1:2379\", \"https://e2:2379\"]\n\
             ca_file = \"/x/ca.pem\"\ncert_file = \"/x/c.pem\"\nkey_file = \"/x/c.key\"\nuser = \"lb\"\n\
             password_file = \"/x/pw\"\nlease_ttl = \"5s\"\ndial_timeout = \"250ms\"\n"
        ))
        .unwrap();
        let f = c.fleet.unwrap();
        assert!(f.tls());
        assert_eq!(f.lease_ttl, Duration::from_secs(5));
        assert_eq!(f.dial_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let p = problems(&format!(
            "{DSR}\n[fleet]\ncluster = \"a/b\"\nendpoints = [\"10.0.0.1:2379\", \"http://x\"]\n\
             cert_file = \"c.pem\"\nuser = \"lb\"\nlease_ttl = \"0s\"\n"
        ));
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "fleet.cluster",
            "fleet.host",
            "fleet.endpoints[0]",
            "fleet.endpoints[1]",
            "fleet.cert_file",
            "fleet.password_file",
            "fleet.lease_ttl",
        ] {
            assert!(keys.contains(&want), "{want} missing in {p:?}");
        }
        assert!(p.iter().any(|(k, r)| k == "fleet.host" && r.starts_with("missing")), "{p:?}");
        let p = problems(&format!("{DSR}\n[fleet]\ncluster = \"c\"\nhost = \"h\"\nendpoints = []\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "fleet.endpoints");
        let e = Config::from_toml_str(&format!("{DSR}{FLEET}lease = \"2s\"\n")).unwrap_err();
        assert!(e.to_string().contains("lease"), "{e}");
        let e = Config::from_toml_str(&format!("{DSR}{FLEET}dial_timeout = \"soon\"\n")).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }

    #[test]
    fn tls_and_password_files_are_checked_as_every_fleet_path() {
        let p = problems(&format!(
            "{DSR}\n[fleet]\ncluster = \"c\"\nhost = \"h\"\nendpoints = [\"https://e:2379\"]\n\
             ca_file = \"ca.pem\"\nkey_file = \"/x/k\\\"ey\"\ncert_file = \"/x/c.pem\"\n"
        ));
        assert!(p.iter().any(|(k, r)| k == "fleet.ca_file" && r.contains("not an absolute path")), "{p:?}");
        assert!(p.iter().any(|(k, r)| k == "fleet.key_file" && r.contains("quote")), "{p:?}");
        assert!(!p.iter().any(|(k, _)| k == "fleet.cert_file"), "{p:?}");
    }

    #[test]
    fn tls_files_need_https_endpoints() {
        let p = problems(&format!("{DSR}{FLEET}ca_file = \"/x/ca.pem\"\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("https://"), "{p:?}");
    }

    #[test]
    fn nat_in_a_fleet_is_refused_saying_why() {
        let p = problems(&format!("{}{FLEET}", DSR.replace("\"dsr\"", "\"nat\"")));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "services[0] (web).mode");
        assert!(p[0].1.contains("[fleet]") && p[0].1.contains("ECMP") && p[0].1.contains("dsr"), "{p:?}");
    }
}
