//! Checks of the host the daemon runs on, at start (and, for forwarding, on every reload): the
//! things that make traffic fail or state vanish while every command reports success. Each
//! problem is logged loudly with its fix and kept in a [`Warnings`] list that the status and
//! `/v1/health` show.
//!
//! - Forwarding: `bpf_fib_lookup` refuses to resolve next hops for packets that arrive on an
//!   interface that does not forward (`net.ipv4.conf.<if>.forwarding`, and the IPv6 one for IPv6
//!   VIPs or backends): every new connection is dropped (`drop_no_next_hop`).
//! - bpffs: a bpffs that is not the host's (the daemon mounted its own, e.g. under
//!   `ip netns exec`, which gives the process a private mount namespace) dies with the process,
//!   and with it the pins: forwarding stops at exit and nothing can adopt the state.
//! - Open files: the soft `RLIMIT_NOFILE` is raised to the hard limit.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Current warnings by topic (`forwarding`, `bpffs`, …), each a line with its fix.
#[derive(Debug, Default)]
pub struct Warnings(Mutex<BTreeMap<String, Vec<String>>>);

impl Warnings {
    /// Replaces the warnings of `topic` (none: the topic is fine now).
    pub fn set(&self, topic: &str, lines: Vec<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            map.remove(topic);
        } else {
            map.insert(topic.to_owned(), lines);
        }
    }

    /// Every warning, by topic name.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().flatten().cloned().collect()
    }
}

/// Checks forwarding on the interfaces of `config` (IPv6 too when a VIP or backend is IPv6),
/// logs each problem as an error and keeps them as the `forwarding` warnings.
pub fn check_forwarding(config: &crate::config::Config, warnings: &Warnings) {
    let v6 = config.services.iter().any(|s| {
        s.vips.iter().any(|v| v.is_ipv6())
            || s.pools.iter().flat_map(|p| &p.backends).any(|b| b.addr.is_ipv6())
    });
    let lines = forwarding_warnings(&read_forwarding(&config.interfaces, v6));
    for line in &lines {
        tracing::error!("{line}");
    }
    warnings.set("forwarding", lines);
}

/// Raises the soft limit of open files to the hard limit (bounded by `fs.nr_open`), so that the
/// API's connections, health checks and BPF objects never starve each other at systemd's
/// default of 1024. Returns (before, after).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = hard.min(nr_open);
    if target <= before {
        return Ok((before, before));
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok((before, target))
}

/// An interface's forwarding setting for one IP version, as read from `/proc/sys` (which shows
/// the network namespace of the reading process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// Interface name.
    pub iface: String,
    /// 4 or 6.
    pub version: u8,
    /// `Some(true)` on, `Some(false)` off, `None` unreadable.
    pub on: Option<bool>,
}

/// Reads the forwarding setting of every interface, for IPv4 always and for IPv6 when `v6`.
pub fn read_forwarding(ifaces: &[String], v6: bool) -> Vec<Forwarding> {
    read_forwarding_in(Path::new("/proc/sys/net"), ifaces, v6)
}

fn read_forwarding_in(root: &Path, ifaces: &[String], v6: bool) -> Vec<Forwarding> {
    let mut out = Vec::new();
    for iface in ifaces {
        for version in [4u8, 6] {
            if version == 6 && !v6 {
                continue;
            }
            let path = root.join(format!("ipv{version}/conf/{iface}/forwarding"));
            let on =
                std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u8>().ok()).map(|v| v != 0);
            out.push(Forwarding { iface: iface.clone(), version, on });
        }
    }
    out
}

/// The warning lines for interfaces that do not forward, each with its fix.
pub fn forwarding_warnings(settings: &[Forwarding]) -> Vec<String> {
    settings
        .iter()
        .filter(|f| f.on == Some(false))
        .map(|f| {
            let (key, fix) = if f.version == 4 {
                (format!("net.ipv4.conf.{}.forwarding", f.iface), "sysctl -w net.ipv4.ip_forward=1")
            } else {
                (format!("net.ipv6.conf.{}.forwarding", f.iface), "sysctl -w net.ipv6.conf.all.forwarding=1")
            };
            format!(
                "IPv{} forwarding is off on {} ({key}=0): bpf_fib_lookup refuses to resolve next hops, so \
                 every new IPv{} connection through a VIP is dropped (counter drop_no_next_hop). Fix: `{fix}` \
                 in the daemon's network namespace (persist it in /etc/sysctl.d/), then `lbctl reload`",
                f.version, f.iface, f.version
            )
        })
        .collect()
}

/// Whether a bpffs is the host's: `Some(false)` when the bpffs at `path` is not the one pid 1
/// sees at the same path (another mount: a private mount namespace such as `ip netns exec`
/// makes), `Some(true)` when it is, `None` when pid 1's view cannot be read.
pub fn bpffs_is_hosts(path: &Path) -> Option<bool> {
    let ours = std::fs::metadata(path).ok()?.dev();
    let mut hosts = PathBuf::from("/proc/1/root");
    hosts.push(path.strip_prefix("/").unwrap_or(path));
    let theirs = std::fs::metadata(&hosts).ok().map(|m| m.dev());
    // pid 1's root readable but no such folder there: not the host's either.
    if theirs.is_none() && std::fs::metadata("/proc/1/root/").is_err() {
        return None;
    }
    Some(theirs == Some(ours))
}

/// The warning about a bpffs at `path` that pins do not outlive: `hosts` as
/// [`bpffs_is_hosts`] says, `mounted_here` when the daemon had to mount it itself.
pub fn bpffs_warning(path: &Path, hosts: Option<bool>, mounted_here: bool) -> Option<String> {
    let private = match hosts {
        Some(is_hosts) => !is_hosts,
        None => mounted_here,
    };
    private.then(|| {
        format!(
            "the bpffs at {} is not the host's{}: the pins (maps, XDP links) die with this mount \
             namespace, so forwarding stops when the daemon exits and no restarted daemon can adopt \
             its state. Start the daemon in the host's mount namespace, e.g. `nsenter --net=/run/netns/NAME \
             lb-daemon …` instead of `ip netns exec NAME lb-daemon …` (which mounts a private /sys), \
             or mount the host's bpffs into the container",
            path.display(),
            if mounted_here { " (the daemon mounted it itself)" } else { "" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_off_gives_a_warning_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for (v, iface, value) in [(4, "eth0", "0"), (6, "eth0", "1"), (4, "eth1", "1")] {
            let d = dir.path().join(format!("ipv{v}/conf/{iface}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("forwarding"), format!("{value}\n")).unwrap();
        }
        let ifaces = vec!["eth0".to_owned(), "eth1".to_owned()];
        let v4_only = read_forwarding_in(dir.path(), &ifaces, false);
        assert_eq!(v4_only.len(), 2);
        let w = forwarding_warnings(&v4_only);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("net.ipv4.conf.eth0.forwarding=0")
                && w[0].contains("sysctl -w net.ipv4.ip_forward=1")
        );
        // eth1 has no IPv6 setting: unreadable is not reported as off.
        let both = read_forwarding_in(dir.path(), &ifaces, true);
        assert_eq!(both.iter().filter(|f| f.version == 6).count(), 2);
        assert_eq!(forwarding_warnings(&both).len(), 1);
        let mut v6_off = both.clone();
        v6_off[1].on = Some(false);
        let w = forwarding_warnings(&v6_off);
        assert!(w.iter().any(|l| l.contains("net.ipv6.conf.all.forwarding=1")), "{w:?}");
    }

    #[test]
    fn private_bpffs_is_warned_about() {
        let p = Path::new("/sys/fs/bpf");
        assert!(bpffs_warning(p, Some(true), false).is_none());
        let w = bpffs_warning(p, Some(false), true).expect("private");
        assert!(w.contains("nsenter --net=") && w.contains("mounted it itself"), "{w}");
        assert!(bpffs_warning(p, None, true).is_some(), "unknown host view: a bpffs we mounted is suspect");
        assert!(bpffs_warning(p, None, false).is_none());
        // This test process runs in the host's mount namespace (or its pid 1's).
        if let Some(hosts) = bpffs_is_hosts(Path::new("/proc")) {
            assert!(hosts, "/proc of this process is pid 1's /proc");
        }
    }

    #[test]
    fn warnings_are_kept_by_topic() {
        let w = Warnings::default();
        w.set("a", vec!["one".into()]);
        w.set("b", vec!["two".into(), "three".into()]);
        assert_eq!(w.list(), ["one", "two", "three"]);
        w.set("b", vec![]);
        assert_eq!(w.list(), ["one"]);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let (before, after) = raise_nofile_limit().unwrap();
        assert!(after >= before);
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, after);
    }
}
