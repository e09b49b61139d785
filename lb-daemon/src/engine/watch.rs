//! Post-switch watches (`--watch`): the daemon watches the new pool for a while and rolls back by
//! itself when it falls below `min_healthy`. Watches are persisted, so they hold across a
//! restart.

use super::{
    core::{Core, rfc3339_of_ms},
    state::WatchRecord,
    switch::{ChangeError, ChangeOptions},
};
use crate::{
    api::model::{ApiError, HistoryKind, WatchState, WatchView},
    dataplane::Maps,
};
use std::time::Instant;

impl<M: Maps> Core<M> {
    /// The watch of a service's last watched switch.
    pub fn watch_view(&self, service: &str) -> Option<WatchView> {
        let w = self.state.watches.get(service)?;
        let now = (self.clock)();
        let remaining_s =
            if w.state == WatchState::Watching { w.until_ms.saturating_sub(now).div_ceil(1000) } else { 0 };
        Some(WatchView {
            service: service.to_string(),
            pool: w.pool.clone(),
            until: rfc3339_of_ms(w.until_ms),
            remaining_s,
            state: w.state,
            reason: w.reason.clone(),
            switch_history_id: w.switch_history_id,
            rollback_history_id: w.rollback_history_id,
        })
    }

    /// Ends watches whose window passed and rolls back services whose watched pool fell below
    /// `min_healthy`. Called on every health change and on a timer.
    pub fn check_watches(&mut self) {
        let now = (self.clock)();
        let watching: Vec<(String, WatchRecord)> = self
            .state
            .watches
            .iter()
            .filter(|(_, w)| w.state == WatchState::Watching)
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        let mut dirty = false;
        for (name, w) in watching {
            let Some(svc) = self.layout.service(&name).cloned() else {
                self.state.watches.remove(&name);
                dirty = true;
                continue;
            };
            let (healthy, min, bad) = self.pool_health(&svc, &w.pool);
            if healthy < min {
                let reason = format!(
                    "{}: {healthy} of {} backends healthy, min_healthy {min}: {}",
                    w.pool,
                    svc.pool(&w.pool).map(|p| p.backends.len()).unwrap_or(0),
                    bad.join(", ")
                );
                let target = self.state.services.get(&name).and_then(|s| s.previous.clone());
                let requester = format!("lb-daemon watch of switch #{}", w.switch_history_id.unwrap_or(0));
                let result = match target {
                    Some(t) => self.change_with(
                        Some(&name),
                        t,
                        false,
                        HistoryKind::AutoRollback,
                        &requester,
                        Instant::now(),
                        Some(reason.clone()),
                        &ChangeOptions::default(),
                    ),
                    None => Err(ChangeError::Api(ApiError::refused("nothing to roll back to"))),
                };
                let rec = self.state.watches.get_mut(&name).expect("watch present");
                match result {
                    Ok(out) => {
                        tracing::warn!(service = %name, %reason, "automatic rollback");
                        rec.state = WatchState::RolledBack;
                        rec.reason = Some(reason);
                        rec.rollback_history_id = out.history_id;
                    }
                    Err(ChangeError::NotPersisted(e)) => {
                        // Nothing changed; the watch stays on and tries again at the next check.
                        let pending = format!("{reason}; automatic rollback pending: {}", e.message);
                        if rec.reason.as_deref() != Some(pending.as_str()) {
                            tracing::error!(service = %name, error = %e, "automatic rollback not made yet: the state file cannot be written; retrying");
                            rec.reason = Some(pending);
                        }
                        continue;
                    }
                    Err(ChangeError::Api(e)) => {
                        tracing::error!(service = %name, error = %e, "automatic rollback failed");
                        rec.state = WatchState::Cancelled;
                        rec.reason = Some(format!("{reason}; automatic rollback failed: {e}"));
                    }
                }
                dirty = true;
            } else if now >= w.until_ms {
                tracing::info!(service = %name, pool = %w.pool, "watch passed");
                if let Some(rec) = self.state.watches.get_mut(&name) {
                    rec.state = WatchState::Passed;
                }
                dirty = true;
            }
        }
        if dirty {
            // Logged and remembered by `persist`; the next change writes it again.
            let _ = self.persist();
        }
    }
}
