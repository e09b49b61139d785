//! The `[sync]` table: flow-state sync between the balancer hosts of a fleet (see
//! [`super`]). Absent: nothing listens, nothing is sent, and the ring buffer is not read.
//!
//! ```toml
//! [sync]
//! listen = "10.0.0.11:7946"          # this host's sync address on the segment
//! key_file = "/etc/lb/sync.key"      # shared by every host of the fleet, mode 0600
//! peers = ["10.0.0.12:7946"]         # the other hosts; optional with [fleet] (etcd's live hosts)
//! interval = "100ms"                 # records are batched and sent this often
//! peer_timeout = "2s"                # a peer silent this long is dropped (re-synced on return)
//! ready_timeout = "5s"               # joining: wait at most this for the peers' flows
//! queue_limit = 100000               # records queued per peer; beyond: dropped and counted
//! bulk_limit = 1048576               # most flows one bulk transfer carries
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::Problem;

/// Default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Default `peer_timeout`.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `ready_timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `queue_limit`.
pub const DEFAULT_QUEUE_LIMIT: usize = 100_000;
/// Default `bulk_limit`.
pub const DEFAULT_BULK_LIMIT: usize = 1 << 20;
/// Shortest accepted key (bytes of the key file, surrounding whitespace trimmed).
pub const MIN_KEY_BYTES: usize = 16;

/// `[sync]`: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Address and port this host accepts its peers' connections on.
    pub listen: SocketAddr,
    /// File holding the fleet's shared secret (at least [`MIN_KEY_BYTES`] bytes): every frame
    /// is authenticated with HMAC-SHA256 under it.
    pub key_file: PathBuf,
    /// The other hosts' sync addresses.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// How often queued records are sent (10ms..=5s): flows younger than this (plus a
    /// round trip) may be lost with their host.
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A peer that acknowledges nothing for this long is dropped (its queue emptied) and
    /// connected again, with a bulk transfer, when it answers (at least 3 × `interval`).
    #[serde(default = "default_peer_timeout", deserialize_with = "de_duration")]
    pub peer_timeout: Duration,
    /// A starting host announces its VIPs once every peer sent its flows, or is unreachable,
    /// or after this long (1s..=10m).
    #[serde(default = "default_ready_timeout", deserialize_with = "de_duration")]
    pub ready_timeout: Duration,
    /// Records queued per peer (1000..=10,000,000); a slow or gone peer's excess is dropped and
    /// counted, never buffered without bound.
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Most flows sent in one bulk transfer (to a peer that connects or returns).
    #[serde(default = "default_bulk_limit")]
    pub bulk_limit: usize,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_peer_timeout() -> Duration {
    DEFAULT_PEER_TIMEOUT
}
fn default_ready_timeout() -> Duration {
    DEFAULT_READY_TIMEOUT
}
fn default_queue_limit() -> usize {
    DEFAULT_QUEUE_LIMIT
}
fn default_bulk_limit() -> usize {
    DEFAULT_BULK_LIMIT
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}; expected e.g. \"100ms\" or \"2s\")"
        ))
    })
}

impl SyncConfig {
    /// Every broken rule of the table, under its dotted key (`sync.peers[1]`, ...).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |key: String, reason: String| out.push(Problem { key, reason });
        if self.listen.port() == 0 {
            push(
                "sync.listen".into(),
                format!("{} has no port: give the port peers connect to", self.listen),
            );
        }
        if self.listen.ip().is_unspecified() {
            push(
                "sync.listen".into(),
                format!("{} is a wildcard: give this host's address on the segment", self.listen),
            );
        }
        if self.key_file.as_os_str().is_empty() || !self.key_file.is_absolute() {
            push("sync.key_file".into(), format!("{:?} is not an absolute path", self.key_file));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("sync.peers[{i}]");
            if *peer == self.listen {
                push(key, format!("{peer} is this host's own sync.listen"));
            } else if self.peers[..i].contains(peer) {
                push(key, format!("{peer} is listed twice"));
            } else if peer.port() == 0 || peer.ip().is_unspecified() {
                push(key, format!("{peer} is not an address a peer listens on"));
            }
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(5)).contains(&self.interval) {
            push("sync.interval".into(), format!("{:?} is outside 10ms..=5s", self.interval));
        }
        if self.peer_timeout < 3 * self.interval || self.peer_timeout > Duration::from_secs(600) {
            push(
                "sync.peer_timeout".into(),
                format!(
                    "{:?} must be at least 3 × sync.interval ({:?}) and at most 10m",
                    self.peer_timeout,
                    3 * self.interval
                ),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.ready_timeout) {
            push("sync.ready_timeout".into(), format!("{:?} is outside 1s..=10m", self.ready_timeout));
        }
        if !(1000..=10_000_000).contains(&self.queue_limit) {
            push("sync.queue_limit".into(), format!("{} is outside 1000..=10000000", self.queue_limit));
        }
        if !(1..=(1 << 27)).contains(&self.bulk_limit) {
            push("sync.bulk_limit".into(), format!("{} is outside 1..=134217728", self.bulk_limit));
        }
        out
    }

    /// Where the peers come from: with `[fleet]` from the live hosts in etcd (`peers` then
    /// optional, added to them); without, `peers` must name at least one host, or the sync
    /// would have no one to share flows with.
    pub fn membership_problems(&self, fleet: bool) -> Vec<Problem> {
        if fleet || !self.peers.is_empty() {
            return Vec::new();
        }
        vec![Problem {
            key: "sync.peers".into(),
            reason: "is empty and there is no [fleet] to learn the peers from: list the other \
                     hosts' sync addresses, or configure [fleet]"
                .into(),
        }]
    }

    /// Reads the shared key: at least [`MIN_KEY_BYTES`] bytes, surrounding whitespace trimmed;
    /// refused when others may read it.
    pub fn read_key(&self) -> anyhow::Result<Vec<u8>> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let path = &self.key_file;
        let meta = std::fs::metadata(path).with_context(|| format!("sync.key_file {}", path.display()))?;
        anyhow::ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "sync.key_file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
        let text =
            std::fs::read(path).with_context(|| format!("reading sync.key_file {}", path.display()))?;
        let key = text.trim_ascii().to_vec();
        anyhow::ensure!(
            key.len() >= MIN_KEY_BYTES,
            "sync.key_file {} holds {} byte(s); the fleet's key needs at least {MIN_KEY_BYTES} \
             (e.g. `head -c 32 /dev/urandom | base64 > {}`)",
            path.display(),
            key.len(),
            path.display()
        );
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{self, DSR as BASE};

    fn problems(table: &str) -> Vec<(String, String)> {
        test_support::problems(&format!("{BASE}\n[sync]\n{table}"))
    }

    #[test]
    fn no_sync_table_means_no_sync_and_defaults_apply() {
        assert_eq!(Config::from_toml_str(BASE).unwrap().sync, None);
        let c = Config::from_toml_str(&format!(
            "{BASE}\n[sync]\nlisten = \"10.0.0.1:7946\"\nkey_file = \"/etc/lb/sync.key\"\npeers = [\"10.0.0.2:7946\"]\n"
        ))
        .unwrap();
        let s = c.sync.unwrap();
        assert_eq!(s.interval, super::DEFAULT_INTERVAL);
        assert_eq!(s.peer_timeout, super::DEFAULT_PEER_TIMEOUT);
        assert_eq!(s.queue_limit, super::DEFAULT_QUEUE_LIMIT);
        assert_eq!(s.peers, vec!["10.0.0.2:7946".parse().unwrap()]);
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let p = problems(
            "listen = \"0.0.0.0:0\"\nkey_file = \"sync.key\"\npeers = [\"10.0.0.2:7946\", \"10.0.0.2:7946\"]\n\
             interval = \"1ms\"\npeer_timeout = \"1ms\"\nqueue_limit = 5\n",
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "sync.listen",
                "sync.listen",
                "sync.key_file",
                "sync.peers[1]",
                "sync.interval",
                "sync.peer_timeout",
                "sync.queue_limit"
            ],
            "{p:?}"
        );
        let p = problems("listen = \"10.0.0.1:7946\"\nkey_file = \"/k\"\npeers = [\"10.0.0.1:7946\"]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("own sync.listen"), "{p:?}");
        // Unknown keys and bad durations are refused by the parser, naming them.
        let e = Config::from_toml_str(&format!(
            "{BASE}\n[sync]\nlisten = \"10.0.0.1:1\"\nkey_file = \"/k\"\nport = 1\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = Config::from_toml_str(&format!(
            "{BASE}\n[sync]\nlisten = \"10.0.0.1:1\"\nkey_file = \"/k\"\ninterval = \"soon\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn peers_are_needed_only_without_the_fleet() {
        let p = problems("listen = \"10.0.0.1:7946\"\nkey_file = \"/k\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "sync.peers");
        assert!(p[0].1.contains("[fleet]"), "{p:?}");
        let c = Config::from_toml_str(&format!(
            "{BASE}\n[sync]\nlisten = \"10.0.0.1:7946\"\nkey_file = \"/k\"\npeers = [\"10.0.0.2:7946\"]\n"
        ))
        .unwrap();
        let mut s = c.sync.unwrap();
        s.peers.clear();
        assert!(s.membership_problems(true).is_empty(), "with [fleet] the peers come from etcd");
        assert_eq!(s.membership_problems(false).len(), 1);
    }

    #[test]
    fn the_key_must_be_long_enough_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let cfg = |p: &std::path::Path| super::SyncConfig {
            listen: "10.0.0.1:7946".parse().unwrap(),
            key_file: p.to_path_buf(),
            peers: Vec::new(),
            interval: super::DEFAULT_INTERVAL,
            peer_timeout: super::DEFAULT_PEER_TIMEOUT,
            ready_timeout: super::DEFAULT_READY_TIMEOUT,
            queue_limit: super::DEFAULT_QUEUE_LIMIT,
            bulk_limit: super::DEFAULT_BULK_LIMIT,
        };
        assert!(cfg(&path).read_key().is_err(), "missing file");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(cfg(&path).read_key().unwrap_err().to_string().contains("at least 16"));
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(cfg(&path).read_key().unwrap(), b"0123456789abcdef0123");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cfg(&path).read_key().unwrap_err().to_string().contains("chmod 600"));
    }
}
