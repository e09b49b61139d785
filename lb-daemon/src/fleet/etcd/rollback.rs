//! `--watch` in a fleet: the watch is a record in etcd, checked by every host on every turn of
//! its loop. The first host that sees the watched pool below `min_healthy` (by its own health
//! checks) rolls the fleet back by one transaction that compares the record's and the service's
//! `mod_revision`: it succeeds once, whichever host gets there first, even when the host whose
//! API took the switch is dead. When the window ends with the pool healthy, a host marks it
//! passed the same way.

use super::node::FleetNode;
use super::records::{DesiredService, HistoryRecord, WatchRecord};
use super::store::{Compare, Txn};
use crate::api::model::{HistoryKind, SwitchMode, WatchState, WatchView};
use crate::dataplane::Maps;
use crate::engine::core::rfc3339_of_ms;

impl<M: Maps> FleetNode<M> {
    /// Checks every running watch record (see the module documentation).
    pub(super) fn check_watches(&self) {
        let running: Vec<(WatchRecord, i64, DesiredService, i64)> = {
            let st = self.sync();
            if !st.connected {
                return;
            }
            st.watches
                .values()
                .filter(|(w, _)| w.state == WatchState::Watching)
                .filter_map(|(w, wrev)| {
                    let (d, drev) = st.desired.get(&w.service)?;
                    // Superseded by a later change (which marks the record cancelled itself).
                    (d.seq == w.switch_seq).then(|| (w.clone(), *wrev, d.clone(), *drev))
                })
                .collect()
        };
        for (w, wrev, desired, drev) in running {
            let failing = self.core().pool_below_min(&w.service, &w.pool);
            let now = (self.clock)();
            if let Some(reason) = failing {
                self.roll_back(&w, wrev, &desired, drev, reason);
            } else if now >= w.until_ms {
                let passed = WatchRecord { state: WatchState::Passed, ..w.clone() };
                let txn = Txn {
                    compares: vec![Compare::ModRevision(self.keys.watch(&w.service), wrev)],
                    puts: vec![(
                        self.keys.watch(&w.service),
                        serde_json::to_string(&passed).unwrap_or_default(),
                    )],
                };
                if let Ok(Some(_)) = self.store.commit(&txn) {
                    tracing::info!(service = %w.service, pool = %w.pool, "fleet: watch passed");
                }
            }
        }
    }

    /// The one transaction of an automatic rollback; losing it means another host did it.
    fn roll_back(&self, w: &WatchRecord, wrev: i64, desired: &DesiredService, drev: i64, reason: String) {
        let watch_key = self.keys.watch(&w.service);
        let service_key = self.keys.service(&w.service);
        let read = match self.store.get(&watch_key) {
            Ok((Some(kv), revision)) if kv.mod_revision == wrev => revision,
            Ok(_) => return, // changed meanwhile: the watch events will tell
            Err(e) => return self.lost(&e),
        };
        let seq = read as u64 + 1;
        let time = rfc3339_of_ms((self.clock)());
        let record = HistoryRecord {
            seq,
            time,
            service: w.service.clone(),
            kind: HistoryKind::AutoRollback,
            from: desired.active.clone(),
            to: w.rollback_to.clone(),
            mode: SwitchMode::Drain,
            requester: format!("lb-daemon on {} (watch of switch #{})", self.host, w.switch_seq),
            via: self.host.clone(),
            forced: false,
            reason: Some(reason.clone()),
        };
        let next = DesiredService {
            active: w.rollback_to.clone(),
            previous: Some(desired.active.clone()),
            epoch: desired.epoch,
            seq,
        };
        let done = WatchRecord {
            state: WatchState::RolledBack,
            reason: Some(reason.clone()),
            rollback_seq: Some(seq),
            rolled_back_by: Some(self.host.clone()),
            ..w.clone()
        };
        let txn = Txn {
            compares: vec![
                Compare::ModRevision(watch_key.clone(), wrev),
                Compare::ModRevision(service_key.clone(), drev),
                Compare::ModRevision(self.keys.history_entry(seq), 0),
            ],
            puts: vec![
                (service_key, json(&next)),
                (self.keys.history_entry(seq), json(&record)),
                (watch_key, json(&done)),
            ],
        };
        match self.store.commit(&txn) {
            Ok(Some(revision)) => {
                tracing::warn!(service = %w.service, pool = %w.pool, %reason, revision, "fleet: automatic rollback")
            }
            Ok(None) => {
                tracing::debug!(service = %w.service, "fleet: automatic rollback made by another host")
            }
            Err(e) => self.lost(&e),
        }
    }

    /// A watch record as the API shows watches.
    pub fn watch_view_of(&self, w: &WatchRecord) -> WatchView {
        let now = (self.clock)();
        let remaining_s =
            if w.state == WatchState::Watching { w.until_ms.saturating_sub(now).div_ceil(1000) } else { 0 };
        WatchView {
            service: w.service.clone(),
            pool: w.pool.clone(),
            until: rfc3339_of_ms(w.until_ms),
            remaining_s,
            state: w.state,
            reason: w.reason.clone(),
            switch_history_id: Some(w.switch_seq),
            rollback_history_id: w.rollback_seq,
        }
    }

    /// The fleet's watch record of `service`, if there is one.
    pub fn watch_view(&self, service: &str) -> Option<WatchView> {
        let w = self.sync().watches.get(service).map(|(w, _)| w.clone())?;
        Some(self.watch_view_of(&w))
    }
}

/// JSON of a record (plain strings and numbers: encoding cannot fail).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
