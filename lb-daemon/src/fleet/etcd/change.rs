//! A switch, rollback or split in a fleet: ONE etcd transaction that writes the service's new
//! desired state and its history entry (and the `--watch` record), only if the service's key is
//! still at the revision the decision was made on. The host whose API took the request does not
//! apply it itself: like every other host it applies it from its watch; the answer waits
//! (bounded) until it did, so `apply_us` is real.
//!
//! - `--expect-active X`: X is compared with the desired state (a mismatch is answered only on
//!   a fresh read of etcd), and the transaction compares the key's `mod_revision` with the one
//!   read: a change in between makes it a `Conflict` (without `--expect-active`, the request is
//!   decided again on the new state, a few times at most).
//! - Gates use the fleet's view: the target pools must meet `min_healthy` on every live host
//!   (this host's live health included), unless `--force`, which the history records.
//! - etcd unreachable: `Unavailable`, nothing written anywhere.
//!
//! ONE etcd round trip per change when this host is connected and in sync: the decision is
//! made on the node's watch cache (each service's desired state with its `mod_revision`, the
//! live hosts' status, the latest revision) and only the transaction goes to etcd. The cache
//! may be a few ms behind etcd; the transaction's compares (the key's `mod_revision`, the
//! history entry's absence) make a decision on a stale desired state fail, and the request is
//! then decided again on a fresh read of etcd, as when the host is not in sync. An answer other
//! than a committed change (no change needed, dry run, refused, `--expect-active` mismatch) is
//! never given from the cache: it is confirmed on a fresh read first, so a `Conflict` means the
//! key really moved. What the transaction does not compare is the hosts' status: a gate decided
//! on the cache uses statuses as old as the watch's delay (a few ms; a status is republished
//! only when it changes, its lease expiry removes a dead host), and a history number taken from
//! a cached revision may be a few revisions lower than a fresh read's would be.

use std::time::{Duration, Instant};

use super::node::FleetNode;
use super::records::{DesiredService, HistoryRecord, HostStatus, WatchRecord};
use super::store::{Compare, StoreError, Txn};
use crate::api::model::{Active, ApiError, ErrorCode, HistoryKind, SwitchMode, SwitchOutcome, WatchState};
use crate::dataplane::Maps;

/// Attempts when the state moved between the read and the transaction (no `--expect-active`).
const ATTEMPTS: usize = 5;

/// What was asked (one of switch, rollback, split).
#[derive(Clone, Debug, Default)]
pub struct ChangeRequest {
    /// `Switch`, `Rollback` or `Split`.
    pub kind: Option<HistoryKind>,
    /// The new active pool or split; `None` for a rollback (the desired state's `previous`).
    pub target: Option<Active>,
    /// Hard switch: bump the epoch.
    pub hard: bool,
    /// Override the gates (recorded).
    pub force: bool,
    /// Decide, write nothing.
    pub dry_run: bool,
    /// Compare-and-swap on the active pool or split.
    pub expect_active: Option<String>,
    /// A `--watch` window in seconds (switch to a pool only).
    pub watch_s: Option<u64>,
}

pub(super) fn unavailable(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(why) => ApiError::unavailable(format!(
            "the fleet's etcd cannot be reached ({why}): nothing changed on any host; forwarding \
             continues on the last applied state"
        )),
        other => ApiError::internal(format!("the fleet's etcd failed: {other}; nothing changed")),
    }
}

impl<M: Maps> FleetNode<M> {
    /// Carries out `req` on service `service` (the only one when `None`) for `requester`.
    pub fn change(
        &self,
        service: Option<&str>,
        req: &ChangeRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let kind = req.kind.unwrap_or(HistoryKind::Switch);
        if req.watch_s.is_some_and(|s| s == 0 || s > 86_400) {
            return Err(ApiError::invalid("watch must be 1 s to 24 h"));
        }
        let name = self.core().service_layout(service)?.name.clone();
        let key = self.keys.service(&name);
        // The first decision on the watch cache when it can be trusted to be current (one round
        // trip: the transaction); every later one, and every answer that is not a committed
        // change, on a fresh read.
        let mut cached = self.cached_view(&name);
        let mut attempt = 0;
        while attempt < ATTEMPTS {
            let view = match cached.take() {
                Some(v) => v,
                None => {
                    attempt += 1;
                    self.fresh_view(&name, &key)?
                }
            };
            let from_cache = view.cached;
            let decided = self.decide(&name, &key, kind, req, requester, started, view);
            match decided {
                Ok(Decided::Done(out)) if !from_cache || out.history_id.is_some() => return Ok(*out),
                Err(e) if !from_cache || e.code == ErrorCode::Unavailable => return Err(e),
                Ok(Decided::Lost { moved }) if !from_cache => {
                    if moved && req.expect_active.is_some() {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!("{name}: changed by someone else at the same moment; nothing changed"),
                        ));
                    }
                    tracing::debug!(service = %name, attempt, "fleet: state moved during the change; deciding again");
                }
                _ => {
                    tracing::debug!(service = %name, "fleet: decision on the watch cache not confirmed; deciding again on a fresh read");
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{name}: the fleet's state kept changing during the request ({ATTEMPTS} attempts); nothing changed"
            ),
        ))
    }

    /// What the watch cache says of service `name`, when this host is connected and in sync
    /// (`None` otherwise, or when the cache has no desired state for it: read etcd then).
    fn cached_view(&self, name: &str) -> Option<View> {
        let st = self.sync();
        if !(st.connected && st.in_sync) {
            return None;
        }
        let (current, read_mod) = st.desired.get(name)?.clone();
        Some(View {
            current,
            read_mod,
            revision: st.revision,
            hosts: Some(st.hosts.values().cloned().collect()),
            watch: st.watches.get(name).cloned(),
            cached: true,
        })
    }

    /// Service `name`'s desired state read from etcd (this host's own when etcd has none yet).
    fn fresh_view(&self, name: &str, key: &str) -> Result<View, ApiError> {
        let (kv, revision) = self.store.get(key).map_err(unavailable)?;
        let read_mod = kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let current = match &kv {
            Some(kv) => serde_json::from_str::<DesiredService>(&kv.value).map_err(|e| {
                ApiError::internal(format!("{name}: unreadable desired state in etcd ({e}); nothing changed"))
            })?,
            None => {
                let (active, previous, epoch) = self
                    .core()
                    .local_desired(name)
                    .ok_or_else(|| ApiError::internal("service without state"))?;
                DesiredService { active, previous, epoch, seq: 0 }
            }
        };
        let (watch_kv, _) = self.store.get(&self.keys.watch(name)).map_err(unavailable)?;
        let watch = match watch_kv {
            Some(kv) => Some((
                serde_json::from_str::<WatchRecord>(&kv.value).map_err(|e| {
                    ApiError::internal(format!(
                        "{name}: unreadable watch record in etcd ({e}); nothing changed"
                    ))
                })?,
                kv.mod_revision,
            )),
            None => None,
        };
        Ok(View { current, read_mod, revision, hosts: None, watch, cached: false })
    }

    /// One decision on `view`, and its transaction unless the answer needs none.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        name: &str,
        key: &str,
        kind: HistoryKind,
        req: &ChangeRequest,
        requester: &str,
        started: Instant,
        view: View,
    ) -> Result<Decided, ApiError> {
        let View { current, read_mod, revision: read_revision, hosts, watch: known_watch, cached } = view;
        let name = name.to_string();
        let key = key.to_string();
        if let Some(expected) = &req.expect_active
            && current.active.to_string() != *expected
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{name}: expected {expected} to be active, but the fleet's desired state is {} \
                         (history #{}); nothing changed",
                    current.active, current.seq
                ),
            ));
        }
        let target = match &req.target {
            Some(t) => t.clone(),
            None => current.previous.clone().ok_or_else(|| {
                ApiError::refused(format!(
                    "{name} has nothing to roll back to: no earlier switch is recorded"
                ))
            })?,
        };
        self.core().fleet_check(&name, &target)?;
        let mode = if req.hard { SwitchMode::Hard } else { SwitchMode::Drain };
        let epoch = if req.hard { current.epoch.wrapping_add(1).max(1) } else { current.epoch };
        let outcome = |changed: bool, warnings: Vec<String>, history_id, revision| SwitchOutcome {
            service: name.clone(),
            changed,
            before: current.active.clone(),
            after: target.clone(),
            mode,
            epoch,
            apply_us: 0,
            history_id,
            dry_run: req.dry_run,
            warnings,
            watch: None,
            revision,
        };
        if current.active == target && !req.hard {
            return Ok(Decided::Done(Box::new(outcome(false, Vec::new(), None, Some(read_mod)))));
        }
        let gated = kind != HistoryKind::Rollback;
        let t_gate = Instant::now();
        let problems = if gated { self.gate(&name, &target, hosts)? } else { Vec::new() };
        let gate_us = t_gate.elapsed().as_micros() as u64;
        if !problems.is_empty() && !req.force {
            return Err(ApiError::refused(format!(
                "{name}: refused, {} (use --force to switch anyway)",
                problems.join("; ")
            )));
        }
        let warnings: Vec<String> = problems.iter().map(|p| format!("forced: {p}")).collect();
        if req.dry_run {
            return Ok(Decided::Done(Box::new(outcome(true, warnings, None, None))));
        }
        let seq = read_revision as u64 + 1;
        let now = (self.clock)();
        let record = HistoryRecord {
            seq,
            time: crate::engine::core::rfc3339_of_ms(now),
            service: name.clone(),
            kind,
            from: current.active.clone(),
            to: target.clone(),
            mode,
            requester: requester.to_string(),
            via: self.host.clone(),
            forced: !problems.is_empty(),
            reason: (!warnings.is_empty()).then(|| warnings.join("; ")),
        };
        let desired =
            DesiredService { active: target.clone(), previous: Some(current.active.clone()), epoch, seq };
        let mut puts =
            vec![(key.clone(), to_json(&desired)?), (self.keys.history_entry(seq), to_json(&record)?)];
        let watch = match (req.watch_s, &target) {
            (Some(secs), Active::Pool(pool)) => Some(WatchRecord {
                service: name.clone(),
                pool: pool.clone(),
                until_ms: now + secs * 1000,
                state: WatchState::Watching,
                switch_seq: seq,
                rollback_to: current.active.clone(),
                reason: None,
                rollback_seq: None,
                rolled_back_by: None,
            }),
            _ => known_watch.as_ref().filter(|(w, _)| w.state == WatchState::Watching).map(|(w, _)| {
                WatchRecord {
                    state: WatchState::Cancelled,
                    reason: Some(format!("superseded by change #{seq}")),
                    ..w.clone()
                }
            }),
        };
        if let Some(w) = &watch {
            puts.push((self.keys.watch(&name), to_json(w)?));
        }
        let txn = Txn {
            compares: vec![
                Compare::ModRevision(key.clone(), read_mod),
                Compare::ModRevision(self.keys.history_entry(seq), 0),
                Compare::ModRevision(self.keys.watch(&name), known_watch.as_ref().map_or(0, |(_, m)| *m)),
            ],
            puts,
        };
        let t_commit = Instant::now();
        let committed = self.store.commit(&txn).map_err(unavailable)?;
        let commit_us = t_commit.elapsed().as_micros() as u64;
        let Some(revision) = committed else {
            // Lost a race (or decided on a stale cache): someone changed the service, or took
            // the same history number. Whether the key moved is asked of etcd only when it
            // decides the answer (`--expect-active` on a fresh read).
            let moved = if cached || req.expect_active.is_none() {
                true
            } else {
                let (now_kv, _) = self.store.get(&key).map_err(unavailable)?;
                now_kv.as_ref().map_or(0, |kv| kv.mod_revision) != read_mod
            };
            return Ok(Decided::Lost { moved });
        };
        let decided_us = (t_gate - started).as_micros() as u64;
        tracing::info!(service = %name, from = %current.active, to = %target, ?mode, ?kind, requester, seq, revision, cached, decided_us, gate_us, commit_us, "fleet: change committed");
        let mut out = outcome(true, warnings, Some(seq), Some(revision));
        if self.wait_applied(revision, self.apply_wait) {
            out.apply_us = started.elapsed().as_micros() as u64;
        } else {
            out.warnings
                .push(format!("committed at etcd revision {revision}, but this host has not applied it yet"));
        }
        out.watch = watch.filter(|_| req.watch_s.is_some()).map(|w| self.watch_view_of(&w));
        Ok(Decided::Done(Box::new(out)))
    }

    /// The problems of the target pools on every live host (this one with its live health).
    /// `hosts`: the live hosts' status from the watch cache; `None`: read from etcd.
    fn gate(
        &self,
        name: &str,
        target: &Active,
        hosts: Option<Vec<HostStatus>>,
    ) -> Result<Vec<String>, ApiError> {
        let pools: Vec<&str> = match target {
            Active::Pool(p) => vec![p.as_str()],
            Active::Split(ws) => ws.iter().map(|w| w.pool.as_str()).collect(),
        };
        let mut hosts: Vec<HostStatus> = match hosts {
            Some(hosts) => hosts,
            None => {
                let snapshot = self.store.get_prefix(&self.keys.hosts()).map_err(unavailable)?;
                snapshot
                    .kvs
                    .iter()
                    .filter_map(|kv| serde_json::from_str::<HostStatus>(&kv.value).ok())
                    .collect()
            }
        };
        hosts.retain(|h| h.host != self.host);
        hosts.push(self.host_status());
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let mut problems = Vec::new();
        for h in &hosts {
            for pool in &pools {
                match h.pool(name, pool) {
                    Some(p) if p.healthy < p.min_healthy => {
                        let down = if p.down.is_empty() {
                            String::new()
                        } else {
                            format!("; unhealthy: {}", p.down.join(", "))
                        };
                        problems.push(format!(
                            "on {}: {pool} has {} healthy backend(s), min_healthy is {}{down}",
                            h.host, p.healthy, p.min_healthy
                        ));
                    }
                    Some(_) => {}
                    None => problems.push(format!(
                        "on {}: no pool {pool} in service {name} (its config differs)",
                        h.host
                    )),
                }
            }
        }
        Ok(problems)
    }

    /// Waits up to `wait` for this host to apply `revision`; whether it did.
    pub fn wait_applied(&self, revision: i64, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut st = self.sync();
        while st.applied_revision < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.applied.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// What one decision is made on.
struct View {
    /// The service's desired state.
    current: DesiredService,
    /// Its key's `mod_revision` (0: no key yet), compared by the transaction.
    read_mod: i64,
    /// The store's revision when it was read (the history entry's number is the next one).
    revision: i64,
    /// The live hosts' status, when it came from the watch cache.
    hosts: Option<Vec<HostStatus>>,
    /// The service's `--watch` record and its key's `mod_revision`, if it has one: a change
    /// cancels a running watch, and the transaction compares the key, so a change decided on
    /// a stale record (a newer watch unseen) is decided again instead of overwriting it.
    watch: Option<(WatchRecord, i64)>,
    /// Read from the watch cache (a decision to confirm), not from etcd.
    cached: bool,
}

/// What one decision came to.
enum Decided {
    /// An answer: committed, or nothing to write (no change, dry run).
    Done(Box<SwitchOutcome>),
    /// The transaction's compares failed: nothing written. `moved`: the key changed since the
    /// read (always assumed for a cached read).
    Lost { moved: bool },
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::internal(format!("encoding for etcd: {e}")))
}
