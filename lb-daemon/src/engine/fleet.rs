//! The engine's side of a fleet (`[fleet]`, see [`crate::fleet::etcd`]): the desired state comes
//! from etcd, and every host — the one whose API took the request too — applies it here, from
//! its watch, with the usual order: validate, persist, then ONE update of the service's
//! `SERVICES` entry. Nothing here talks to etcd, so these decisions are unit-tested against the
//! fake maps.

use super::{
    core::Core, fleet_pending::FleetPending, persist::PersistJob, state::ServiceState,
    switch::validate_active,
};
use crate::{
    api::model::{Active, ApiError, HistoryEntry},
    dataplane::Maps,
    fleet::etcd::records::{DesiredService, HistoryRecord, PoolHealth, ServiceHealth},
};

impl<M: Maps> Core<M> {
    /// Checks that this host can serve `target` for service `name` (pools exist, a split fits
    /// the ring), without changing anything: a fleet change is refused before it is written
    /// when the host that took it could not apply it.
    pub fn fleet_check(&self, name: &str, target: &Active) -> Result<(), ApiError> {
        let svc = self.service_layout(Some(name))?.clone();
        validate_active(&svc, target)?;
        if let Active::Split(ws) = target {
            let backends = ws.iter().filter_map(|w| svc.pool(&w.pool)).flat_map(|p| &p.backends);
            crate::config::check_split_fits(self.ring(), backends.filter(|b| b.weight > 0).count())
                .map_err(|reason| ApiError::refused(format!("{reason}; nothing changed")))?;
            self.build_split(&svc, ws)?;
        }
        Ok(())
    }

    /// What this host serves for `name` (active, previous, epoch): the fleet's starting point
    /// before any change of the service was written to etcd.
    pub fn local_desired(&self, name: &str) -> Option<(Active, Option<Active>, u32)> {
        self.state.services.get(name).map(|s| (s.active.clone(), s.previous.clone(), s.epoch))
    }

    /// What this host serves for every service, as the desired state a fresh etcd is seeded
    /// with (no history entry: `seq` 0).
    pub fn local_desired_all(&self) -> Vec<(String, DesiredService)> {
        self.state
            .services
            .iter()
            .map(|(n, s)| {
                let d = DesiredService {
                    active: s.active.clone(),
                    previous: s.previous.clone(),
                    epoch: s.epoch,
                    seq: 0,
                };
                (n.clone(), d)
            })
            .collect()
    }

    /// The etcd revision of the last desired state applied from the fleet (0: none).
    pub fn fleet_revision(&self) -> i64 {
        self.state.fleet_revision
    }

    /// Serves `desired` for service `name`, as the fleet decided at etcd `revision`: recorded
    /// first (its pending record, with the history entry `record` when known; see
    /// [`super::fleet_pending`]), then made live with one `SERVICES` update; the caller writes
    /// the whole state file after it reported the change applied
    /// ([`Self::fleet_persist_job`]). Returns whether anything changed; an identical desired
    /// state only repairs what the disk or the maps miss. Refused (nothing changed) when this host cannot
    /// serve it, e.g. its config lacks the pool: the host then reports itself out of sync.
    pub fn apply_fleet(
        &mut self,
        name: &str,
        desired: &DesiredService,
        record: Option<&HistoryRecord>,
        revision: i64,
    ) -> Result<bool, ApiError> {
        let svc = self.service_layout(Some(name))?.clone();
        validate_active(&svc, &desired.active).map_err(|e| {
            ApiError::new(
                e.code,
                format!("{name}: cannot serve the fleet's {}: {}", desired.active, e.message),
            )
        })?;
        let st = self
            .state
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::internal("service without state"))?;
        let next_service = ServiceState {
            id: svc.id,
            active: desired.active.clone(),
            previous: desired.previous.clone(),
            epoch: desired.epoch,
        };
        if st == next_service {
            // Nothing new: make sure the disk and the maps agree with it.
            let repaired = self.fleet_converge(name)?;
            if self.state.fleet_revision < revision {
                self.state.fleet_revision = revision;
            }
            return Ok(repaired);
        }
        let split = match &desired.active {
            Active::Split(ws) => Some(self.build_split(&svc, ws)?),
            Active::Pool(_) => None,
        };
        let pending = FleetPending {
            revision,
            service: name.to_string(),
            state: next_service,
            entry: record.map(|r| HistoryEntry { service: name.to_string(), ..r.entry(0) }),
        };
        let mut next = self.state.clone();
        pending.apply_to(&mut next);
        let t0 = std::time::Instant::now();
        // etcd holds this desired state durably already; what must reach the disk before the
        // map update is what a restart needs not to go back behind the pinned maps: the
        // pending record (page cache, survives a crash of the daemon). The whole state file
        // follows (`fleet_persist_job`), after the host reported the change applied. When the
        // disk is behind already (a write failed), the whole state is written first, as before.
        let staged = if self.unsaved {
            self.store.save(&next).map(|()| false)
        } else {
            self.store.stage_pending(&pending).map(|()| true)
        };
        let staged = staged.map_err(|e| {
            ApiError::internal(format!(
                "{name}: the fleet's {} not applied, nothing changed: writing the state file failed: {e:#}",
                desired.active
            ))
        })?;
        let stage_us = t0.elapsed().as_micros() as u64;
        self.state = next;
        self.unsaved = staged;
        let t1 = std::time::Instant::now();
        self.point_with(&svc, &desired.active, desired.epoch, split).map_err(|e| {
            ApiError::internal(format!(
                "{name}: the fleet's {} is recorded but the data plane was not updated: {}",
                desired.active, e.message
            ))
        })?;
        let map_us = t1.elapsed().as_micros() as u64;
        tracing::info!(service = %name, from = %st.active, to = %desired.active, epoch = desired.epoch, revision, stage_us, map_us, "applied the fleet's desired state");
        Ok(true)
    }

    /// Writes the whole state file when it is behind what is served (after [`Self::apply_fleet`]
    /// made a change live on its pending record), then drops the pending record. Whether it
    /// wrote anything. On failure the record stays, and the next change writes the whole state
    /// before its map update. The node runs the same three steps with the engine lock released
    /// in between (`FleetNode::settle`); the tests run them in one call.
    #[cfg(test)]
    pub fn fleet_persist(&mut self) -> Result<bool, ApiError> {
        let Some(job) = self.fleet_persist_job() else { return Ok(false) };
        let written = job.write();
        self.fleet_persist_done(&job, written)
    }

    /// [`Self::fleet_persist`] in three steps, so the state file's fsyncs run without the engine
    /// lock (see [`super::persist`]): this one, under the lock, snapshots the state when the
    /// disk is behind it; the caller releases the lock, runs [`PersistJob::write`], and hands
    /// its result to [`Self::fleet_persist_done`] under the lock again.
    pub fn fleet_persist_job(&mut self) -> Option<PersistJob> {
        self.unsaved.then(|| self.store.job(&self.state))
    }

    /// Records what [`PersistJob::write`] did: when the state is still the one written, the disk
    /// is up to date and the pending record goes; when a change came meanwhile, its own pending
    /// record stays (the disk is behind it) and the next [`Self::fleet_persist_job`] writes it.
    /// Whether the snapshot was written.
    pub fn fleet_persist_done(
        &mut self,
        job: &PersistJob,
        written: anyhow::Result<bool>,
    ) -> Result<bool, ApiError> {
        match written {
            Ok(wrote) => {
                if self.state == job.state {
                    self.unsaved = false;
                    if let Err(e) = self.store.clear_pending() {
                        tracing::warn!(error = %format!("{e:#}"), "fleet pending record not removed (harmless: the state file is as new)");
                    }
                }
                Ok(wrote)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "state file not written: a restart would come back to an older state");
                Err(ApiError::internal(format!("writing the state file failed: {e:#}")))
            }
        }
    }

    /// Writes what the disk or the `SERVICES` entry of `name` misses; whether it did anything.
    fn fleet_converge(&mut self, name: &str) -> Result<bool, ApiError> {
        let svc = self.service_layout(Some(name))?.clone();
        let st = self.state.services[name].clone();
        let mut repaired = false;
        if self.unsaved {
            self.persist()?;
            repaired = true;
        }
        let slot = match &st.active {
            Active::Pool(p) => self.pool_slots.get(&(name.to_string(), p.clone())).copied(),
            Active::Split(_) => self.split_slots.get(name).copied(),
        };
        let have = self.maps.service(svc.id).map_err(super::core::dp_err)?;
        if slot.is_none_or(|t| have.table != t || have.epoch != st.epoch) {
            self.point(&svc, &st.active, st.epoch)?;
            repaired = true;
        }
        Ok(repaired)
    }

    /// Every service's pools and their health on this host: what the host publishes for the
    /// fleet's gates.
    pub fn fleet_health(&self) -> Vec<ServiceHealth> {
        self.layout
            .services
            .iter()
            .map(|svc| {
                let st = &self.state.services[&svc.name];
                ServiceHealth {
                    service: svc.name.clone(),
                    active: st.active.clone(),
                    epoch: st.epoch,
                    pools: svc
                        .pools
                        .iter()
                        .map(|p| {
                            let (healthy, min_healthy, down) = self.pool_health(svc, &p.name);
                            PoolHealth { pool: p.name.clone(), healthy, min_healthy, down }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Why `pool` of `service` is below its `min_healthy` here, or `None` when it is not.
    pub fn pool_below_min(&self, service: &str, pool: &str) -> Option<String> {
        let svc = self.layout.service(service)?;
        let (healthy, min, bad) = self.pool_health(svc, pool);
        (healthy < min).then(|| {
            format!(
                "{pool}: {healthy} of {} backends healthy, min_healthy {min}: {}",
                svc.pool(pool).map(|p| p.backends.len()).unwrap_or(0),
                bad.join(", ")
            )
        })
    }
}
