//! Health changes: a backend going down or coming back rebuilds the table of every pool that
//! holds it, written beside the live one, and flips the services serving that pool (one
//! `SERVICES` update each); then the watches are checked.

use super::{
    core::Core,
    layout::{ServiceLayout, pool_table},
};
use crate::{api::model::ApiError, dataplane::Maps};
use std::collections::BTreeSet;

impl<M: Maps> Core<M> {
    /// A health transition from the monitor: backend `index` is now `up` (or down, with the
    /// check's error as `reason`).
    pub fn on_health(&mut self, index: u32, up: bool, reason: Option<String>) {
        match reason {
            Some(r) if !up => {
                self.health_errors.insert(index, r);
            }
            _ => {
                self.health_errors.remove(&index);
            }
        }
        let changed = if up { self.down.remove(&index) } else { self.down.insert(index) };
        if changed && let Err(e) = self.rebuild_tables_with(index) {
            tracing::error!(index, error = %e, "rebuilding tables after a health change failed");
        }
        self.check_watches();
    }

    /// Rebuilds the tables of every pool holding `index`, flipping the services that serve them.
    fn rebuild_tables_with(&mut self, index: u32) -> Result<(), ApiError> {
        let affected: Vec<(ServiceLayout, String)> = self
            .layout
            .services
            .iter()
            .flat_map(|s| {
                s.pools
                    .iter()
                    .filter(|p| p.backends.iter().any(|b| b.index == index))
                    .map(move |p| (s.clone(), p.name.clone()))
            })
            .collect();
        for (svc, pool) in affected {
            let p = svc.pool(&pool).expect("pool from layout").clone();
            let table =
                pool_table(&p, self.ring(), &self.is_up()).map_err(|e| ApiError::internal(e.to_string()))?;
            // Written beside the current table, which stays live until the flip below.
            let slot = self.write_table(&table, &BTreeSet::new())?;
            self.pool_slots.insert((svc.name.clone(), pool.clone()), slot);
            let st = self.state.services[&svc.name].clone();
            if st.active.share(&pool) > 0 {
                self.point(&svc, &st.active, st.epoch)?;
            }
        }
        Ok(())
    }
}
