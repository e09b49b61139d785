//! The `[bgp]` table of the config file: where the daemon writes the BIRD include file of the VIPs
//! it announces, and how it tells BIRD to re-read it.
//!
//! # Why a top-level `[bgp]` and not `[fleet.bgp]`
//!
//! Announcing the VIPs by BGP and sharing the desired state in etcd are two separate choices:
//! - the `[fleet]` table (etcd: cluster, host, endpoints) will switch the desired state from the
//!   local state file to etcd. Its mere presence changes where switches are stored, so it must
//!   not appear just because BGP is wanted;
//! - BGP alone is useful without etcd (anycast hosts each switched by their own CI step, or one
//!   host that must withdraw its VIPs when its pool dies), and etcd alone is useful without BGP
//!   (hosts behind an L4 switch that spreads by health checks).
//!
//! So each feature has its own table, each inert when absent: no `[bgp]`, no file is written and
//! `birdc` is never run. What ECMP forbids (NAT, see below) is tied to `[bgp]`, since it is the
//! ECMP spreading that breaks it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ForwardMode, Problem, ServiceConfig};

/// Default control socket of Debian's `bird2` package.
pub const DEFAULT_BIRDC_SOCKET: &str = "/run/bird/bird.ctl";

/// Default `birdc` program (looked up on `PATH`).
pub const DEFAULT_BIRDC: &str = "birdc";

/// `[bgp]`: announce the VIPs this host can serve by BGP, through a local BIRD 2.
///
/// ```toml
/// [bgp]
/// include_file = "/etc/bird/lb-vips.conf"   # rendered by the daemon, included by bird.conf
/// birdc_socket = "/run/bird/bird.ctl"       # default
/// birdc = "birdc"                           # default (PATH); or an absolute path
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// The BIRD include file the daemon renders (absolute path; replaced atomically). BIRD's
    /// `bird.conf` includes it at the top level; it defines the static protocols
    /// [`super::bird::PROTOCOL_V4`] and [`super::bird::PROTOCOL_V6`].
    #[serde(default)]
    pub include_file: PathBuf,
    /// BIRD's control socket, passed to `birdc -s` (absolute path).
    #[serde(default = "default_birdc_socket")]
    pub birdc_socket: PathBuf,
    /// The `birdc` program: a name looked up on `PATH`, or an absolute path.
    #[serde(default = "default_birdc")]
    pub birdc: PathBuf,
}

fn default_birdc_socket() -> PathBuf {
    PathBuf::from(DEFAULT_BIRDC_SOCKET)
}

fn default_birdc() -> PathBuf {
    PathBuf::from(DEFAULT_BIRDC)
}

impl BgpConfig {
    /// Every broken rule of the table, and every service BGP cannot carry, each under its
    /// dotted key (`bgp.include_file`, `services[0] (web).mode`, ...).
    pub fn problems(&self, services: &[ServiceConfig]) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |key: String, reason: String| out.push(Problem { key, reason });
        check_path(&mut push, "bgp.include_file", &self.include_file, "the file BIRD includes");
        check_path(&mut push, "bgp.birdc_socket", &self.birdc_socket, "BIRD's control socket");
        if self.include_file.as_os_str() == self.birdc_socket.as_os_str()
            && !self.include_file.as_os_str().is_empty()
        {
            push("bgp.include_file".into(), "is the same path as bgp.birdc_socket".into());
        }
        let birdc = self.birdc.as_os_str();
        if birdc.is_empty() {
            push("bgp.birdc".into(), "must not be empty (default \"birdc\")".into());
        } else if birdc.as_encoded_bytes().contains(&b'/') && !self.birdc.is_absolute() {
            push(
                "bgp.birdc".into(),
                format!(
                    "{:?} is a relative path: give a program name looked up on PATH or an absolute path",
                    self.birdc
                ),
            );
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
                    "\"nat\" cannot be announced by BGP ([bgp] is set): routers spread a client's \
                     packets over several hosts by ECMP, but a NAT backend's replies must come back \
                     through the host that rewrote them; use mode = \"dsr\" (replies go straight \
                     to the client)"
                        .into(),
                );
            }
        }
        out
    }
}

/// An absolute path, without characters that would break a file name in a log or a BIRD
/// `include "…";` line. Every path of the fleet's tables (`[bgp]`, `[fleet]`) is checked here.
pub(crate) fn check_path(push: &mut impl FnMut(String, String), key: &str, path: &Path, what: &str) {
    if path.as_os_str().is_empty() {
        push(key.into(), format!("missing: the absolute path of {what}"));
        return;
    }
    if !path.is_absolute() {
        push(key.into(), format!("{path:?} is not an absolute path"));
    }
    if path.as_os_str().as_encoded_bytes().iter().any(|&b| b == b'"' || b.is_ascii_control()) {
        push(key.into(), format!("{path:?} contains a quote or a control character"));
    }
    if path.file_name().is_none() {
        push(key.into(), format!("{path:?} does not name a file"));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{DSR, problems};

    #[test]
    fn no_bgp_table_means_no_bgp() {
        let c = Config::from_toml_str(DSR).unwrap();
        assert_eq!(c.bgp, None);
        // NAT stays allowed without [bgp].
        Config::from_toml_str(&DSR.replace("\"dsr\"", "\"nat\"")).unwrap();
    }

    #[test]
    fn defaults_and_explicit_values() {
        let c = Config::from_toml_str(&format!("{DSR}\n[bgp]\ninclude_file = \"/etc/bird/lb-vips.conf\"\n"))
            .unwrap();
        let bgp = c.bgp.unwrap();
        assert_eq!(bgp.include_file.to_str(), Some("/etc/bird/lb-vips.conf"));
        assert_eq!(bgp.birdc_socket.to_str(), Some(super::DEFAULT_BIRDC_SOCKET));
        assert_eq!(bgp.birdc.to_str(), Some("birdc"));
        let c = Config::from_toml_str(&format!(
            "{DSR}\n[bgp]\ninclude_file = \"/x/v.conf\"\nbirdc_socket = \"/x/b.ctl\"\nbirdc = \"/usr/sbin/birdc\"\n"
        ))
        .unwrap();
        assert_eq!(c.bgp.unwrap().birdc.to_str(), Some("/usr/sbin/birdc"));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let p = problems(&format!("{DSR}\n[bgp]\nbirdc_socket = \"bird.ctl\"\nbirdc = \"bin/birdc\"\n"));
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["bgp.include_file", "bgp.birdc_socket", "bgp.birdc"], "{p:?}");
        assert!(p[0].1.starts_with("missing"), "{p:?}");
        assert!(p[1].1.contains("not an absolute path"), "{p:?}");
        let p = problems(&format!("{DSR}\n[bgp]\ninclude_file = \"/x/a\\\"b\"\nbirdc = \"\"\n"));
        assert!(p.iter().any(|(k, r)| k == "bgp.include_file" && r.contains("quote")), "{p:?}");
        assert!(p.iter().any(|(k, _)| k == "bgp.birdc"), "{p:?}");
        // Unknown keys are refused by the parser, with the key's name.
        let e = Config::from_toml_str(&format!("{DSR}\n[bgp]\ninclude_file = \"/x\"\nsocket = \"/y\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("socket"), "{e}");
    }

    #[test]
    fn nat_with_bgp_is_refused_saying_why() {
        let p = problems(&format!(
            "{}\n[bgp]\ninclude_file = \"/x/v.conf\"\n",
            DSR.replace("\"dsr\"", "\"nat\"")
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "services[0] (web).mode");
        assert!(p[0].1.contains("ECMP") && p[0].1.contains("dsr"), "{p:?}");
    }
}
