//! This host's status in etcd (under its lease, rewritten when it changes, the lease renewed a
//! few times per TTL), and the fleet as the API and `/metrics` show it.

use std::fmt::Write as _;
use std::time::Instant;

use super::node::FleetNode;
use super::records::HostStatus;
use crate::api::model::{FleetHostView, FleetView};
use crate::dataplane::Maps;

impl<M: Maps> FleetNode<M> {
    /// This host's status now.
    pub fn host_status(&self) -> HostStatus {
        let services = self.core().fleet_health();
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|f| f())
            .unwrap_or_default();
        let st = self.sync();
        HostStatus {
            host: self.host.clone(),
            applied_revision: st.applied_revision,
            in_sync: st.in_sync,
            problem: st.problem.clone(),
            announced,
            services,
            api: self.api.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            time_ms: (self.clock)(),
            sync_addr: self.sync_addr.get().copied(),
            config_digest: Some(self.config_digest()),
        }
    }

    /// The digest of this host's service config (see [`super::digest`]).
    pub fn config_digest(&self) -> String {
        let core = self.core();
        super::digest::config_digest(core.config.ring_size, &core.layout)
    }

    /// Writes the status when it changed (or the lease expired) and renews the lease when due.
    /// The applied marks of the history entries this host applied since ride along in the same
    /// transaction: after an apply the status changes anyway (its applied revision), so a switch
    /// costs each host one write to etcd, not two. Skipped while disconnected (the marks wait):
    /// the next resync reconnects first.
    pub(super) fn publish(&self) {
        if !self.sync().connected {
            return;
        }
        let status = self.host_status();
        let content = HostStatus { time_ms: 0, ..status.clone() };
        let (changed, due) = {
            let st = self.sync();
            (
                st.published.as_ref() != Some(&content),
                st.last_keepalive.is_none_or(|t| t.elapsed() >= self.keepalive_every),
            )
        };
        let mut expired = false;
        if due {
            match self.store.keep_alive() {
                Ok(alive) => {
                    expired = !alive;
                    self.sync().last_keepalive = Some(Instant::now());
                }
                Err(e) => return self.lost(&e),
            }
        }
        let marks = std::mem::take(&mut *self.marks.lock().unwrap_or_else(|e| e.into_inner()));
        if !changed && !expired && marks.is_empty() {
            return;
        }
        let body = match serde_json::to_string(&status) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "fleet: host status not encoded"),
        };
        let also: Vec<(String, String)> = marks.iter().map(|m| self.applied_mark(m)).collect();
        let t0 = Instant::now();
        match self.store.put_leased(&self.keys.host(&self.host), &body, &also) {
            Ok(_) => {
                // Not a renewal: a put attaches the key to the lease but leaves the lease's TTL
                // running. (Counting it as one, as before, let a host whose status changed more
                // often than every third of the TTL (a switch every 100 ms) lose its lease and
                // vanish from the fleet's view until its next renewal, 700 ms later.)
                self.sync().published = Some(content);
                if let Some(&(_, revision)) = marks.last() {
                    let publish_us = t0.elapsed().as_micros() as u64;
                    tracing::info!(
                        revision,
                        marks = marks.len(),
                        publish_us,
                        "fleet: status and applied marks written"
                    );
                }
            }
            Err(e) => {
                // Kept for the next write (best effort: `--wait-fleet` relies on the status).
                self.marks.lock().unwrap_or_else(|e| e.into_inner()).splice(0..0, marks);
                self.lost(&e);
            }
        }
    }

    /// The key and value of the mark saying this host applied history entry `seq` (at `revision`).
    fn applied_mark(&self, &(seq, revision): &(u64, i64)) -> (String, String) {
        let mark = super::records::AppliedMark {
            revision,
            time: crate::engine::core::rfc3339_of_ms((self.clock)()),
        };
        (self.keys.applied(seq, &self.host), serde_json::to_string(&mark).unwrap_or_default())
    }

    /// `GET /v1/fleet`.
    pub fn view(&self) -> FleetView {
        let now = (self.clock)();
        let own_digest = self.config_digest();
        let st = self.sync();
        let hosts = st
            .hosts
            .values()
            .map(|h| {
                let pools = h.services.iter().flat_map(|s| s.pools.iter().map(move |p| (s, p)));
                let (mut up, mut total, mut below) = (0, 0, Vec::new());
                for (s, p) in pools {
                    up += p.healthy;
                    total += p.healthy + p.down.len() as u32;
                    if p.healthy < p.min_healthy {
                        below.push(format!("{}/{}", s.service, p.pool));
                    }
                }
                FleetHostView {
                    host: h.host.clone(),
                    applied_revision: h.applied_revision,
                    in_sync: h.in_sync,
                    problem: h.problem.clone(),
                    announced: h.announced.clone(),
                    backends_up: up,
                    backends_total: total,
                    pools_below_min: below,
                    api: h.api.clone(),
                    age_ms: now.saturating_sub(h.time_ms),
                    config_digest: h.config_digest.clone(),
                    config_mismatch: h.config_digest.as_ref().is_some_and(|d| *d != own_digest),
                }
            })
            .collect();
        FleetView {
            cluster: self.cluster.clone(),
            host: self.host.clone(),
            connected: st.connected,
            revision: st.revision,
            applied_revision: st.applied_revision,
            in_sync: st.in_sync,
            problem: st.problem.clone(),
            hosts,
            config_mismatch: super::digest::mismatched(
                &own_digest,
                st.hosts.values().map(|h| (h.host.as_str(), h.config_digest.as_deref())),
            ),
            config_digest: Some(own_digest),
        }
    }

    /// The fleet's lines of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let st = self.sync();
        let mut metric = |name: &str, help: &str, value: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        metric(
            "lb_fleet_connected",
            "1 while this host reaches etcd and its watch runs.",
            i64::from(st.connected),
        );
        metric(
            "lb_fleet_in_sync",
            "1 while this host serves the fleet's latest desired state; 0 while it lags.",
            i64::from(st.in_sync),
        );
        metric(
            "lb_fleet_applied_revision",
            "etcd revision whose desired state this host serves.",
            st.applied_revision,
        );
        metric("lb_fleet_revision", "Latest etcd revision this host has seen.", st.revision);
        metric("lb_fleet_live_hosts", "Hosts whose status lease is alive.", st.hosts.len() as i64);
        drop(st);
        self.render_config_mismatch(out);
    }

    /// `lb_fleet_config_mismatch`: live hosts whose service config differs from this host's.
    fn render_config_mismatch(&self, out: &mut String) {
        let own = self.config_digest();
        let st = self.sync();
        let n = super::digest::mismatched(
            &own,
            st.hosts.values().map(|h| (h.host.as_str(), h.config_digest.as_deref())),
        )
        .len();
        let name = "lb_fleet_config_mismatch";
        let _ = writeln!(
            out,
            "# HELP {name} Live hosts whose service config (pools, backends, weights, ring size) differs \
             from this host's: their Maglev tables differ, so a flow ECMP moves between them may change \
             backend.\n# TYPE {name} gauge\n{name} {n}"
        );
    }
}

impl<M: Maps> FleetNode<M> {
    /// Publishes `addr` as this host's flow-sync address in its status (once: `[sync] listen`
    /// does not change while the daemon runs), so the other hosts sync flows with it.
    pub fn set_sync_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.sync_addr.set(addr);
    }

    /// The flow-sync addresses of the live hosts (status lease alive) other than this one, in
    /// host-name order: the peers of this host's flow sync. `None` while this host does not
    /// reach etcd (its list of hosts may be stale or not read yet).
    pub fn sync_peers(&self) -> Option<Vec<std::net::SocketAddr>> {
        let own = self.sync_addr.get().copied();
        let st = self.sync();
        if !st.connected {
            return None;
        }
        Some(
            st.hosts
                .values()
                .filter(|h| h.host != self.host)
                .filter_map(|h| h.sync_addr)
                .filter(|a| Some(*a) != own)
                .collect(),
        )
    }
}
