//! Switch, rollback and split: validation, the `min_healthy` gate, `--expect-active`
//! (compare-and-swap), and the one order that keeps a change safe and durable:
//!
//! 1. validate everything (a bad request changes nothing);
//! 2. persist the new desired state (if that fails, refuse: nothing changed anywhere);
//! 3. make it live with ONE update of the service's `SERVICES` entry (a split writes its new
//!    table into a free slot first).
//!
//! A request for what is already active converges instead: whatever of the desired state the
//! disk or the maps miss is written, so a retry after any failure ends with both agreeing.

use super::{
    core::{Core, dp_err},
    layout::{ServiceLayout, split_table},
    state::{ServiceState, WatchRecord},
};
use crate::{
    api::model::{
        Active, ApiError, ErrorCode, HistoryEntry, HistoryKind, PoolWeight, RollbackRequest, SplitRequest,
        SwitchMode, SwitchOutcome, SwitchRequest, WatchState,
    },
    dataplane::Maps,
};
use lb_common::maps::{SERVICE_DSR, SERVICE_ENABLED, Service};
use std::{collections::BTreeSet, time::Instant};

/// Options of a user-requested change.
#[derive(Default)]
pub(super) struct ChangeOptions {
    pub force: bool,
    pub dry_run: bool,
    pub expect_active: Option<String>,
    pub watch_s: Option<u64>,
}

/// Why a change was not made.
#[derive(Debug)]
pub(super) enum ChangeError {
    /// Refused, or failed while being applied.
    Api(ApiError),
    /// The new desired state could not be persisted, so nothing changed; the same change may
    /// succeed later (the automatic rollback tries again).
    NotPersisted(ApiError),
}

impl From<ApiError> for ChangeError {
    fn from(e: ApiError) -> Self {
        ChangeError::Api(e)
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Api(e) | ChangeError::NotPersisted(e) => e,
        }
    }
}

/// The `SERVICES` flags of a service.
pub(super) fn flags_of(svc: &ServiceLayout) -> u32 {
    SERVICE_ENABLED | if svc.dsr { SERVICE_DSR } else { 0 }
}

/// Checks that `active` only names pools of `svc` (and that a split's weights make sense).
pub(super) fn validate_active(svc: &ServiceLayout, active: &Active) -> Result<(), ApiError> {
    let check = |p: &str| {
        svc.pool(p).map(|_| ()).ok_or_else(|| {
            let pools: Vec<&str> = svc.pools.iter().map(|p| p.name.as_str()).collect();
            ApiError::not_found(format!(
                "service {} has no pool {p:?} (pools: {})",
                svc.name,
                pools.join(", ")
            ))
        })
    };
    match active {
        Active::Pool(p) => check(p),
        Active::Split(ws) => {
            if ws.len() < 2 {
                return Err(ApiError::invalid("a split needs at least two pools"));
            }
            let mut seen = BTreeSet::new();
            for w in ws {
                check(&w.pool)?;
                if !seen.insert(&w.pool) {
                    return Err(ApiError::invalid(format!("pool {} appears twice in the split", w.pool)));
                }
                if w.weight == 0 || w.weight > 100 {
                    return Err(ApiError::invalid(format!(
                        "weight of {} must be 1..=100, got {}",
                        w.pool, w.weight
                    )));
                }
            }
            let sum: u32 = ws.iter().map(|w| w.weight).sum();
            if sum != 100 {
                return Err(ApiError::invalid(format!("split weights must sum to 100, they sum to {sum}")));
            }
            Ok(())
        }
    }
}

impl<M: Maps> Core<M> {
    /// Makes `req.pool` the active pool of a service.
    pub fn switch(
        &mut self,
        service: Option<&str>,
        req: &SwitchRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        if req.watch_s.is_some_and(|s| s == 0 || s > 86_400) {
            return Err(ApiError::invalid("watch must be 1 s to 24 h"));
        }
        let opts = ChangeOptions {
            force: req.force,
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            watch_s: req.watch_s,
        };
        let target = Active::Pool(req.pool.clone());
        self.change_with(service, target, req.hard, HistoryKind::Switch, requester, started, None, &opts)
            .map_err(ApiError::from)
    }

    /// Goes back to what was active before the last change (not gated: it is the way back).
    pub fn rollback(
        &mut self,
        service: Option<&str>,
        req: &RollbackRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let name = self.service_layout(service)?.name.clone();
        let target = self.state.services[&name].previous.clone().ok_or_else(|| {
            ApiError::refused(format!("{name} has nothing to roll back to: no earlier switch is recorded"))
        })?;
        let opts = ChangeOptions {
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            ..ChangeOptions::default()
        };
        self.change_with(
            Some(&name),
            target,
            req.hard,
            HistoryKind::Rollback,
            requester,
            started,
            None,
            &opts,
        )
        .map_err(ApiError::from)
    }

    /// Spreads new flows over several pools by weight.
    pub fn split(
        &mut self,
        service: Option<&str>,
        req: &SplitRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let opts = ChangeOptions {
            force: req.force,
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            watch_s: None,
        };
        let target = Active::Split(req.weights.clone());
        self.change_with(service, target, false, HistoryKind::Split, requester, started, None, &opts)
            .map_err(ApiError::from)
    }

    /// Refuses a change to pools below their `min_healthy` unless forced; returns warnings.
    fn gate(&self, svc: &ServiceLayout, target: &Active, force: bool) -> Result<Vec<String>, ApiError> {
        let pools: Vec<&str> = match target {
            Active::Pool(p) => vec![p.as_str()],
            Active::Split(ws) => ws.iter().map(|w| w.pool.as_str()).collect(),
        };
        let mut problems = Vec::new();
        for pool in pools {
            let (healthy, min, bad) = self.pool_health(svc, pool);
            if healthy < min {
                let list =
                    if bad.is_empty() { String::new() } else { format!("; unhealthy: {}", bad.join(", ")) };
                problems.push(format!("{pool} has {healthy} healthy backend(s), min_healthy is {min}{list}"));
            }
        }
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        if force {
            return Ok(problems.into_iter().map(|p| format!("forced: {p}")).collect());
        }
        Err(ApiError::refused(format!(
            "{}: refused, {} (use --force to switch anyway)",
            svc.name,
            problems.join("; ")
        )))
    }

    /// The split table of `weights`, built before anything is persisted or written so that a
    /// split the data plane cannot hold is refused with nothing changed.
    pub(super) fn build_split(
        &self,
        svc: &ServiceLayout,
        weights: &[PoolWeight],
    ) -> Result<Vec<u32>, ApiError> {
        split_table(svc, weights, self.ring(), &self.is_up()).map_err(|e| {
            ApiError::refused(format!(
                "{}: refused, nothing changed: {e} (ring_size in the config; changing it needs a restart)",
                svc.name
            ))
        })
    }

    /// Points `svc`'s `SERVICES` entry at the table for `active` (writing a split table first
    /// if needed): the one update that makes a change live.
    pub(super) fn point(&mut self, svc: &ServiceLayout, active: &Active, epoch: u32) -> Result<(), ApiError> {
        let split = match active {
            Active::Split(ws) => Some(
                split_table(svc, ws, self.ring(), &self.is_up())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            Active::Pool(_) => None,
        };
        self.point_with(svc, active, epoch, split)
    }

    /// [`Self::point`] with the split table (when `active` is a split) already built. A split
    /// table goes into a free slot beside the live one.
    pub(super) fn point_with(
        &mut self,
        svc: &ServiceLayout,
        active: &Active,
        epoch: u32,
        split: Option<Vec<u32>>,
    ) -> Result<(), ApiError> {
        let slot = match (active, split) {
            (Active::Split(_), Some(table)) => self.write_table(&table, &BTreeSet::new())?,
            (Active::Pool(p), _) => self
                .pool_slots
                .get(&(svc.name.clone(), p.clone()))
                .copied()
                .ok_or_else(|| ApiError::internal(format!("no table for {}/{p}", svc.name)))?,
            (Active::Split(_), None) => return Err(ApiError::internal("split without its table")),
        };
        self.maps
            .set_service(svc.id, &Service { table: slot, epoch, flags: flags_of(svc), _pad: 0 })
            .map_err(dp_err)?;
        // The previous split table (if any) is no longer referenced.
        match active {
            Active::Split(_) => {
                self.split_slots.insert(svc.name.clone(), slot);
            }
            Active::Pool(_) => {
                self.split_slots.remove(&svc.name);
            }
        }
        Ok(())
    }

    /// Writes whatever of `svc`'s desired state the disk or the `SERVICES` entry misses (after a
    /// failed write). Returns what it repaired, empty when both agreed already.
    fn converge(&mut self, svc: &ServiceLayout) -> Result<Vec<String>, ApiError> {
        let mut repaired = Vec::new();
        if self.unsaved {
            self.persist()?;
            repaired.push("the state file was behind; it is written now".to_string());
        }
        let st = self.state.services[&svc.name].clone();
        let slot = match &st.active {
            Active::Pool(p) => self.pool_slots.get(&(svc.name.clone(), p.clone())).copied(),
            Active::Split(_) => self.split_slots.get(&svc.name).copied(),
        };
        let want = slot.map(|table| Service { table, epoch: st.epoch, flags: flags_of(svc), _pad: 0 });
        let have = self.maps.service(svc.id).map_err(dp_err)?;
        if want != Some(have) {
            self.point(svc, &st.active, st.epoch)?;
            tracing::warn!(service = %svc.name, active = %st.active, "the data plane did not serve the recorded state; it does now");
            repaired.push(format!("the data plane did not serve {} yet; it does now", st.active));
        }
        Ok(repaired)
    }

    /// The common path of switch, rollback, split and automatic rollback.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn change_with(
        &mut self,
        service: Option<&str>,
        target: Active,
        hard: bool,
        kind: HistoryKind,
        requester: &str,
        started: Instant,
        reason: Option<String>,
        opts: &ChangeOptions,
    ) -> Result<SwitchOutcome, ChangeError> {
        let svc = self.service_layout(service)?.clone();
        validate_active(&svc, &target)?;
        if let Active::Split(ws) = &target {
            let backends = ws.iter().filter_map(|w| svc.pool(&w.pool)).flat_map(|p| &p.backends);
            crate::config::check_split_fits(self.ring(), backends.filter(|b| b.weight > 0).count())
                .map_err(|reason| ApiError::refused(format!("{reason}; nothing changed")))?;
        }
        let st = self
            .state
            .services
            .get(&svc.name)
            .cloned()
            .ok_or_else(|| ApiError::internal("service without state"))?;
        if let Some(expected) = &opts.expect_active
            && st.active.to_string() != *expected
        {
            let last = self.state.history.iter().rev().find(|h| h.service == svc.name);
            let by = last.map(|h| format!(" (changed at {} by {})", h.time, h.requester)).unwrap_or_default();
            return Err(ChangeError::Api(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{}: expected {expected} to be active, but {} is{by}; nothing changed",
                    svc.name, st.active
                ),
            )));
        }
        let mode = if hard { SwitchMode::Hard } else { SwitchMode::Drain };
        let unchanged = st.active == target && !hard;
        let mut warnings = if kind == HistoryKind::Rollback || kind == HistoryKind::AutoRollback || unchanged
        {
            Vec::new()
        } else {
            self.gate(&svc, &target, opts.force)?
        };
        let epoch = if hard { st.epoch.wrapping_add(1).max(1) } else { st.epoch };
        let outcome =
            |changed: bool, apply_us: u64, history_id: Option<u64>, warnings: Vec<String>, watch| {
                SwitchOutcome {
                    service: svc.name.clone(),
                    changed,
                    before: st.active.clone(),
                    after: target.clone(),
                    mode,
                    epoch,
                    apply_us,
                    history_id,
                    dry_run: opts.dry_run,
                    warnings,
                    watch,
                    revision: None,
                }
            };
        if unchanged {
            if !opts.dry_run {
                warnings.extend(self.converge(&svc)?);
            }
            return Ok(outcome(false, 0, None, warnings, self.watch_view(&svc.name)));
        }
        if opts.dry_run {
            return Ok(outcome(true, 0, None, warnings, None));
        }
        // Everything that can fail for want of room is checked before anything is written.
        let split = match &target {
            Active::Split(ws) => {
                let table = self.build_split(&svc, ws)?;
                self.free_slot(&BTreeSet::new())?;
                Some(table)
            }
            Active::Pool(_) => None,
        };
        // 2. The new desired state, persisted before it is acted on. Rollback returns to what was
        // active before this change, so pressing it twice comes back to where one started.
        let mut next = self.state.clone();
        next.services.insert(
            svc.name.clone(),
            ServiceState { id: svc.id, active: target.clone(), previous: Some(st.active.clone()), epoch },
        );
        let id = next.record(HistoryEntry {
            id: 0,
            time: self.now_rfc3339(),
            service: svc.name.clone(),
            kind,
            from: st.active.clone(),
            to: target.clone(),
            mode,
            requester: requester.to_string(),
            reason: reason.clone().or_else(|| (!warnings.is_empty()).then(|| warnings.join("; "))),
        });
        // A change by someone ends the running watch; the automatic rollback ends it itself.
        if kind != HistoryKind::AutoRollback
            && let Some(w) = next.watches.get_mut(&svc.name)
            && w.state == WatchState::Watching
        {
            w.state = WatchState::Cancelled;
            w.reason = Some(format!("superseded by change #{id}"));
        }
        if let (Some(secs), Active::Pool(pool)) = (opts.watch_s, &target) {
            next.watches.insert(
                svc.name.clone(),
                WatchRecord {
                    pool: pool.clone(),
                    until_ms: (self.clock)() + secs * 1000,
                    state: WatchState::Watching,
                    reason: None,
                    switch_history_id: Some(id),
                    rollback_history_id: None,
                },
            );
        }
        if let Err(e) = self.store.save(&next) {
            tracing::error!(service = %svc.name, to = %target, error = %format!("{e:#}"), "change refused: the state file cannot be written");
            return Err(ChangeError::NotPersisted(ApiError::internal(format!(
                "{}: not changed to {target}, nothing changed: writing the state file failed: {e:#}",
                svc.name
            ))));
        }
        self.state = next;
        self.unsaved = false;
        // 3. One SERVICES update makes it live.
        if let Err(e) = self.point_with(&svc, &target, epoch, split) {
            tracing::error!(service = %svc.name, to = %target, error = %e, "change recorded but not applied to the data plane");
            return Err(ChangeError::Api(ApiError::internal(format!(
                "{}: {target} is recorded as active but the data plane was not updated ({}); run the same \
                 command again to apply it",
                svc.name, e.message
            ))));
        }
        let apply_us = started.elapsed().as_micros() as u64;
        tracing::info!(service = %svc.name, from = %st.active, to = %target, mode = ?mode, kind = ?kind, requester, apply_us, "switched");
        let watch = self.watch_view(&svc.name).filter(|_| opts.watch_s.is_some());
        Ok(outcome(true, apply_us, Some(id), warnings, watch))
    }
}
