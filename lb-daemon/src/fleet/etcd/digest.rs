//! The digest of the part of a host's config that decides where a new flow goes: the ring size,
//! and every service's VIPs, pools, backends and weights. The hosts of a fleet build their
//! Maglev tables from these, so a flow that ECMP moves to another host keeps its backend only
//! when every host has the same digest. Each host publishes its digest in its status; `lbctl
//! status` and `lb_fleet_config_mismatch` flag the hosts whose digest differs from this one's.
//!
//! Data-plane indices are left out on purpose: they are local to a host (kept in its state file
//! across reloads) and the tables map to backend addresses alike whatever the indices.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use crate::engine::layout::Layout;

/// `sha256:` and the first 16 hex digits of the SHA-256 of the canonical text of `layout` with
/// `ring_size` (services, pools and backends in config order, as the tables are built).
pub fn config_digest(ring_size: u32, layout: &Layout) -> String {
    let mut text = format!("ring {ring_size}\n");
    for s in &layout.services {
        let _ = writeln!(text, "service {} {}", s.name, if s.dsr { "dsr" } else { "nat" });
        for v in &s.vips {
            let _ = writeln!(text, "vip {}", v.addr);
        }
        for p in &s.pools {
            let _ = writeln!(text, "pool {} min_healthy {}", p.name, p.min_healthy);
            for b in &p.backends {
                let _ = writeln!(text, "backend {} weight {}", b.addr, b.weight);
            }
        }
    }
    let hash = Sha256::digest(text.as_bytes());
    let mut out = String::from("sha256:");
    for byte in &hash[..8] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The live hosts (by name) whose published digest differs from `own`. A host that publishes
/// none (an older version) is not counted: nothing is known of its config.
pub fn mismatched<'a>(own: &str, hosts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Vec<String> {
    hosts.into_iter().filter(|(_, d)| d.is_some_and(|d| d != own)).map(|(h, _)| h.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::tests::CONFIG;

    fn layout_of(toml: &str) -> (u32, Layout) {
        let config = Config::from_toml_str(toml).unwrap();
        (config.ring_size, crate::engine::layout::plan(&config, &mut Default::default()).unwrap())
    }

    fn digest_of(toml: &str) -> String {
        let (ring, layout) = layout_of(toml);
        config_digest(ring, &layout)
    }

    #[test]
    fn same_config_same_digest_and_any_weight_backend_or_ring_change_shows() {
        let d = digest_of(CONFIG);
        assert!(d.starts_with("sha256:") && d.len() == 7 + 16, "{d}");
        assert_eq!(d, digest_of(CONFIG), "stable");
        // Comments and the file's layout do not matter.
        assert_eq!(d, digest_of(&format!("# a comment\n{CONFIG}")));
        assert_ne!(d, digest_of(&CONFIG.replace("10.0.2.2:8080", "10.0.2.3:8080")), "a backend");
        assert_ne!(d, digest_of(&CONFIG.replace("ring_size = 401", "ring_size = 409")), "the ring size");
        let (ring, mut layout) = layout_of(CONFIG);
        layout.services[0].pools[1].backends[0].weight = 3;
        assert_ne!(d, config_digest(ring, &layout), "a weight");
        // Indices are local to a host: not part of the digest.
        let (ring, mut layout) = layout_of(CONFIG);
        layout.services[0].pools[1].backends[0].index = 42;
        assert_eq!(d, config_digest(ring, &layout));
    }

    #[test]
    fn mismatched_hosts_are_those_publishing_another_digest() {
        let hosts = [("lb1", Some("sha256:aa")), ("lb2", Some("sha256:bb")), ("lb3", None)];
        assert_eq!(mismatched("sha256:aa", hosts), ["lb2"]);
        assert!(mismatched("sha256:bb", [("lb2", Some("sha256:bb"))]).is_empty());
    }

    #[test]
    fn a_host_with_other_weights_is_flagged_in_the_view_and_the_metrics() {
        use super::super::memory::MemStore;
        use super::super::tests::{host, host_with};
        let store = MemStore::default();
        let other = CONFIG.replace("\"10.0.2.2:8080\"]", "{ addr = \"10.0.2.2:8080\", weight = 3 }]");
        let (a, b, c) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"), host_with(&store, 3, "lb3", &other));
        for _ in 0..2 {
            for h in [&a, &b, &c] {
                h.step();
            }
        }
        let v = a.node.view();
        assert_eq!(v.hosts.len(), 3, "{v:?}");
        assert_eq!(v.config_mismatch, ["lb3"]);
        let flagged: Vec<(&str, bool)> =
            v.hosts.iter().map(|h| (h.host.as_str(), h.config_mismatch)).collect();
        assert_eq!(flagged, [("lb1", false), ("lb2", false), ("lb3", true)]);
        assert_eq!(v.config_digest, v.hosts[1].config_digest);
        // From lb3's side both others differ.
        assert_eq!(c.node.view().config_mismatch, ["lb1", "lb2"]);
        let mut metrics = String::new();
        a.node.render_metrics(&mut metrics);
        assert!(metrics.contains("\nlb_fleet_config_mismatch 1\n"), "{metrics}");
        let mut metrics = String::new();
        c.node.render_metrics(&mut metrics);
        assert!(metrics.contains("\nlb_fleet_config_mismatch 2\n"), "{metrics}");
    }
}
