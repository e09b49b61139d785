//! The management API's [`Control`] on the engine: each call takes the lock and hands over to
//! [`super::Core`]; a flow count runs without the lock, and a reload reads the file first and
//! updates health checks and neighbour entries after.

use super::{Engine, ShutdownKind, drain::FlowCounts, metrics};
use crate::{
    api::{
        Control,
        model::{
            Active, ApiError, BackendOutcome, BackendRequest, DrainView, FleetView, HistoryEntry,
            HistoryKind, ReloadOutcome, RollbackRequest, ServiceView, ShutdownRequest, SplitRequest,
            StatusView, SwitchOutcome, SwitchRequest, WatchView,
        },
    },
    config::Config,
    fleet::etcd::ChangeRequest,
};
use std::time::Duration;

impl Control for Engine {
    fn status(&self) -> Result<StatusView, ApiError> {
        let interfaces = self.interfaces.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut view = self.lock().status(self.started.elapsed().as_secs(), self.adopted, interfaces)?;
        view.warnings = self.warnings.list();
        Ok(view)
    }

    fn service(&self, name: Option<&str>) -> Result<ServiceView, ApiError> {
        let core = self.lock();
        let svc = core.service_layout(name)?;
        Ok(core.service_view(svc))
    }

    fn switch(
        &self,
        service: Option<&str>,
        req: &SwitchRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        if let Some(node) = self.fleet.get() {
            let change = ChangeRequest {
                kind: Some(HistoryKind::Switch),
                target: Some(Active::Pool(req.pool.clone())),
                hard: req.hard,
                force: req.force,
                dry_run: req.dry_run,
                expect_active: req.expect_active.clone(),
                watch_s: req.watch_s,
            };
            return node.change(service, &change, requester);
        }
        self.lock().switch(service, req, requester)
    }

    fn rollback(
        &self,
        service: Option<&str>,
        req: &RollbackRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        if let Some(node) = self.fleet.get() {
            let change = ChangeRequest {
                kind: Some(HistoryKind::Rollback),
                hard: req.hard,
                dry_run: req.dry_run,
                expect_active: req.expect_active.clone(),
                ..ChangeRequest::default()
            };
            return node.change(service, &change, requester);
        }
        self.lock().rollback(service, req, requester)
    }

    fn split(
        &self,
        service: Option<&str>,
        req: &SplitRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        if let Some(node) = self.fleet.get() {
            let change = ChangeRequest {
                kind: Some(HistoryKind::Split),
                target: Some(Active::Split(req.weights.clone())),
                force: req.force,
                dry_run: req.dry_run,
                expect_active: req.expect_active.clone(),
                ..ChangeRequest::default()
            };
            return node.change(service, &change, requester);
        }
        self.lock().split(service, req, requester)
    }

    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>, ApiError> {
        self.lock().history(service, limit)
    }

    fn reload(&self, requester: &str) -> Result<ReloadOutcome, ApiError> {
        crate::preflight::check_forwarding(&self.lock().config, &self.warnings);
        let new = Config::load(&self.config_path)
            .map_err(|e| ApiError::invalid(format!("config not reloaded, nothing changed: {e}")))
            .inspect_err(|e| tracing::error!(requester, error = %e, "reload refused"))?;
        // [bgp] first: BIRD confirms the new settings or the reload is refused, nothing changed.
        let bgp = self
            .reload_bgp(&new)
            .inspect_err(|e| tracing::error!(requester, error = %e, "reload refused"))?;
        let mut core = self.lock();
        let outcome = core.reload(new, requester);
        // Also after a failure: a reload applied but not persisted serves the new config. The
        // monitor keeps the state of unchanged targets.
        if let Some(m) = self.health.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            m.set_targets(core.health_targets());
        }
        crate::preflight::check_forwarding(&core.config, &self.warnings);
        drop(core);
        // Logged here, whoever asked (lbctl reload, SIGHUP), refused or not.
        let outcome = with_bgp(outcome, bgp)
            .inspect_err(|e| tracing::error!(requester, error = %e, "reload refused"))?;
        if outcome.changed {
            tracing::info!(requester, changes = %outcome.changes.join("; "), "config reloaded");
        } else {
            tracing::info!(requester, "config reloaded: nothing changed");
        }
        if outcome.changed {
            self.keep_neighbours(Duration::ZERO);
        }
        Ok(outcome)
    }

    fn shutdown(&self, req: &ShutdownRequest, requester: &str) -> Result<(), ApiError> {
        tracing::warn!(requester, detach = req.detach, "shutdown requested");
        let _ = self.shutdown.send(if req.detach { ShutdownKind::Detach } else { ShutdownKind::Exit });
        Ok(())
    }

    fn drain(&self, service: Option<&str>) -> Result<DrainView, ApiError> {
        let (source, timeouts) = {
            let core = self.lock();
            core.service_layout(service)?;
            core.flow_scan()
        };
        let counts = FlowCounts::scan(source.as_ref(), timeouts)?;
        self.lock().drain_view(service, &counts)
    }

    fn watch(&self, service: Option<&str>) -> Result<Option<WatchView>, ApiError> {
        let core = self.lock();
        let name = core.service_layout(service)?.name.clone();
        if let Some(node) = self.fleet.get() {
            drop(core);
            return Ok(node.watch_view(&name));
        }
        Ok(core.watch_view(&name))
    }

    fn fleet(&self) -> Result<Option<FleetView>, ApiError> {
        Ok(self.fleet.get().map(|node| node.view()))
    }

    fn fleet_history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<crate::api::model::HistoryItem>>, ApiError> {
        let Some(node) = self.fleet.get() else { return Ok(None) };
        let name = match service {
            Some(_) => Some(self.lock().service_layout(service)?.name.clone()),
            None => None,
        };
        node.history(name.as_deref(), limit).map(Some)
    }

    fn backend(
        &self,
        service: Option<&str>,
        req: &BackendRequest,
        requester: &str,
    ) -> Result<BackendOutcome, ApiError> {
        self.lock().backend(service, req, requester)
    }

    fn metrics(&self) -> Result<String, ApiError> {
        let (flows, age) = self.flow_cache.get(std::time::Instant::now(), || {
            let (source, timeouts) = self.lock().flow_scan();
            FlowCounts::scan(source.as_ref(), timeouts)
        })?;
        let core = self.lock();
        let mut text = metrics::render(&core.layout, &core.state, &core.maps, &core.down, &flows);
        metrics::render_flow_table(&mut text, &flows, core.maps.options().flow_entries, age);
        metrics::render_last_switch(&mut text, &core.layout, &core.state);
        metrics::render_pool_health(&mut text, &core.layout, &core.down);
        core.maps.render_link_metrics(&mut text);
        drop(core);
        if let Some(m) = self.health.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            m.render_metrics(&mut text);
        }
        crate::process_metrics::render(&mut text);
        if let Some(node) = self.fleet.get() {
            node.render_metrics(&mut text);
        }
        Ok(text)
    }
}

/// The reload's outcome with its `[bgp]` changes; a refused reload undoes them.
fn with_bgp(
    outcome: Result<ReloadOutcome, ApiError>,
    bgp: Option<crate::fleet::reload::BgpReload>,
) -> Result<ReloadOutcome, ApiError> {
    match (outcome, bgp) {
        (Err(e), Some(bgp)) => {
            bgp.undo();
            Err(e)
        }
        (Ok(mut outcome), Some(bgp)) => {
            outcome.changed |= !bgp.changes.is_empty();
            outcome.changes.extend(bgp.changes);
            Ok(outcome)
        }
        (outcome, None) => outcome,
    }
}
