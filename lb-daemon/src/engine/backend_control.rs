//! Runtime control of one backend: `lbctl backend drain|disable|enable ADDR` and
//! `lbctl backend weight ADDR N` (HAProxy's `set server ... state drain|maint` and `weight`,
//! `ipvsadm -e -w`). Same order as a switch: validate (a bad request changes nothing, the
//! `min_healthy` gate refuses unless forced), persist the new setting and its history entry,
//! then make it live with the pool's new table written beside the live one and ONE `SERVICES`
//! flip per service serving the pool.
//!
//! - `drain`: the backend leaves the pool's table; established flows keep it (their `FLOWS`
//!   entries are untouched, the epoch stays).
//! - `disable`: a hard cut for one backend. After the flip its `BACKENDS` entry loses
//!   `BACKEND_UP`, so its established flows move to the pool's other backends on their next
//!   packet (and are reset there), as a hard switch does to a whole service. HAProxy's `maint`
//!   keeps established sessions unless `shutdown sessions` is added: here that is `drain`, and
//!   `disable` is the "get it out now" that a misbehaving backend needs.
//! - `enable`: back in the table (and `BACKEND_UP` again first, when it was disabled).
//! - `weight N`: the Maglev weight in force instead of the config's (0 takes no new flows).
//!
//! Settings are kept in the state file by `service/pool/addr` (the key of the backend's
//! index), so they survive restarts and reloads, and are forgotten when the config removes
//! the backend. A weight equal to the config's is no override at all.

use super::{
    core::{Core, dp_err},
    keys::addr_words,
    layout::{BackendLayout, ServiceLayout, backend_key, pool_table, split_table},
    state::BackendOverride,
};
use crate::{
    api::model::{
        Active, ApiError, BackendAction, BackendAdmin, BackendChange, BackendOutcome, BackendRequest,
        BackendSetting, HistoryEntry, HistoryKind, SwitchMode,
    },
    config::MAX_WEIGHT,
    dataplane::Maps,
};
use lb_common::maps::{BACKEND_UP, Backend};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Instant,
};

/// The backend a request names.
#[derive(Clone, Debug)]
struct Target {
    svc: ServiceLayout,
    pool: String,
    backend: BackendLayout,
}

impl Target {
    /// `web/pool-a 10.0.1.1:8080`, as messages name it.
    fn name(&self) -> String {
        format!("{}/{} {}", self.svc.name, self.pool, self.backend.addr)
    }
}

/// The address of a request: `ip:port`.
fn parse_addr(text: &str) -> Result<SocketAddr, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::invalid(format!(
            "backend address {text:?} is not ip:port (e.g. 10.0.1.1:8080 or [2001:db8::1]:443)"
        ))
    })
}

/// The setting a request asks for, from the current one.
fn requested(req: &BackendRequest, before: BackendSetting) -> Result<BackendSetting, ApiError> {
    let admin = |admin| Ok(BackendSetting { admin, ..before });
    match (req.action, req.weight) {
        (BackendAction::Weight, Some(w)) if w <= MAX_WEIGHT => Ok(BackendSetting { weight: w, ..before }),
        (BackendAction::Weight, Some(w)) => {
            Err(ApiError::invalid(format!("weight {w} is out of range (0..={MAX_WEIGHT})")))
        }
        (BackendAction::Weight, None) => Err(ApiError::invalid("the weight action needs a weight")),
        (action, Some(_)) => {
            Err(ApiError::invalid(format!("only the weight action takes a weight, not {}", action.as_str())))
        }
        (BackendAction::Drain, None) => admin(BackendAdmin::Drain),
        (BackendAction::Disable, None) => admin(BackendAdmin::Disabled),
        (BackendAction::Enable, None) => admin(BackendAdmin::Enabled),
    }
}

/// Whether a backend with `setting` takes new flows (health aside).
fn in_service(setting: BackendSetting) -> bool {
    setting.admin == BackendAdmin::Enabled && setting.weight > 0
}

impl<M: Maps> Core<M> {
    /// Backend indexes an operator took out of service (drained or disabled), with their state.
    pub(crate) fn admin_out(&self) -> BTreeMap<u32, BackendAdmin> {
        self.state
            .backend_settings
            .iter()
            .filter(|(_, o)| o.admin != BackendAdmin::Enabled)
            .filter_map(|(key, o)| self.state.backend_indices.get(key).map(|i| (*i, o.admin)))
            .collect()
    }

    /// The `BACKENDS` flags of backend `index`: up, unless an operator disabled it.
    pub(super) fn backend_flags(&self, index: u32) -> u8 {
        if self.admin_out().get(&index) == Some(&BackendAdmin::Disabled) { 0 } else { BACKEND_UP }
    }

    /// What the status shows of a backend's runtime setting: its state, and the config's
    /// weight when another one is in force.
    pub(crate) fn backend_admin_view(
        &self,
        service: &str,
        pool: &str,
        addr: &SocketAddr,
    ) -> (BackendAdmin, Option<u32>) {
        let Some(o) = self.state.backend_settings.get(&backend_key(service, pool, addr)) else {
            return (BackendAdmin::Enabled, None);
        };
        (o.admin, o.weight.and_then(|_| self.configured_weight(service, pool, addr)))
    }

    /// The weight the config gives a backend.
    fn configured_weight(&self, service: &str, pool: &str, addr: &SocketAddr) -> Option<u32> {
        let p = self.config.service(service)?.pools.iter().find(|p| p.name == pool)?;
        p.backends.iter().find(|b| b.addr == *addr).map(|b| b.weight)
    }

    /// The backend at `addr`, in `service` (else in any service) and `pool` (else in any pool).
    fn find_backend(
        &self,
        service: Option<&str>,
        pool: Option<&str>,
        addr: SocketAddr,
    ) -> Result<Target, ApiError> {
        let services: Vec<&ServiceLayout> = match service {
            Some(name) => vec![self.service_layout(Some(name))?],
            None => self.layout.services.iter().collect(),
        };
        if let Some(p) = pool
            && !services.iter().any(|s| s.pool(p).is_some())
        {
            let pools: Vec<String> = services
                .iter()
                .flat_map(|s| s.pools.iter().map(|p| format!("{}/{}", s.name, p.name)))
                .collect();
            return Err(ApiError::not_found(format!("no pool {p:?} (pools: {})", pools.join(", "))));
        }
        let found: Vec<Target> = services
            .iter()
            .flat_map(|s| {
                s.backends()
                    .filter(|(p, b)| b.addr == addr && pool.is_none_or(|name| p.name == name))
                    .map(|(p, b)| Target { svc: (*s).clone(), pool: p.name.clone(), backend: b.clone() })
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                let scope = match (service, pool) {
                    (_, Some(p)) => format!("pool {p}"),
                    (Some(s), None) => format!("service {s}"),
                    (None, None) => "any pool".to_string(),
                };
                Err(ApiError::not_found(format!("no backend {addr} in {scope}")))
            }
            many => {
                let places: Vec<String> = many.iter().map(|t| format!("{}/{}", t.svc.name, t.pool)).collect();
                let services: BTreeSet<&str> = many.iter().map(|t| t.svc.name.as_str()).collect();
                let how = if services.len() > 1 && service.is_none() {
                    "name one with --service NAME (and --pool POOL)"
                } else {
                    "name one with --pool POOL"
                };
                Err(ApiError::invalid(format!("{addr} is in several pools ({}); {how}", places.join(", "))))
            }
        }
    }

    /// Refuses a change that leaves a pool new flows go to with fewer healthy in-service
    /// backends than its `min_healthy` (unless forced); returns warnings.
    fn backend_gate(
        &self,
        t: &Target,
        before: BackendSetting,
        after: BackendSetting,
        req: &BackendRequest,
    ) -> Result<Vec<String>, ApiError> {
        if self.state.services[&t.svc.name].active.share(&t.pool) == 0 {
            return Ok(Vec::new());
        }
        let (healthy, min, _) = self.pool_health(&t.svc, &t.pool);
        let up = !self.down.contains(&t.backend.index);
        let left = healthy - u32::from(up && in_service(before)) + u32::from(up && in_service(after));
        if left >= min || left >= healthy {
            return Ok(Vec::new());
        }
        let problem = format!(
            "{} takes new flows and would be left with {left} healthy backend(s) in service, min_healthy is {min}",
            t.pool
        );
        if req.force {
            return Ok(vec![format!("forced: {problem}")]);
        }
        Err(ApiError::refused(format!(
            "{}: refused, nothing changed: {problem} (use --force to {} it anyway)",
            t.name(),
            req.action.as_str()
        )))
    }

    /// Drains, disables, enables or re-weights one backend.
    pub fn backend(
        &mut self,
        service: Option<&str>,
        req: &BackendRequest,
        requester: &str,
    ) -> Result<BackendOutcome, ApiError> {
        let started = Instant::now();
        // 1. Validate everything.
        let addr = parse_addr(&req.addr)?;
        let t = self.find_backend(service, req.pool.as_deref(), addr)?;
        let key = backend_key(&t.svc.name, &t.pool, &addr);
        let current = self.state.backend_settings.get(&key).copied().unwrap_or_default();
        let before = BackendSetting { admin: current.admin, weight: t.backend.weight };
        let after = requested(req, before)?;
        let outcome = |changed, apply_us, history_id, warnings| BackendOutcome {
            service: t.svc.name.clone(),
            pool: t.pool.clone(),
            addr: addr.to_string(),
            changed,
            before,
            after,
            apply_us,
            history_id,
            warnings,
        };
        if after == before {
            // Already so: write whatever the disk or the maps still miss after a failure.
            let mut repaired = Vec::new();
            if self.unsaved {
                self.persist()?;
                repaired.push("the state file was behind; it is written now".to_string());
            }
            if self.backend_unapplied.contains(&t.backend.index) {
                self.apply_backend(&t, after, true)?;
                self.backend_unapplied.remove(&t.backend.index);
                repaired.push("the data plane did not serve this setting yet; it does now".to_string());
            }
            return Ok(outcome(false, 0, None, repaired));
        }
        let warnings = self.backend_gate(&t, before, after, req)?;
        self.check_tables_fit(&t, after)?;
        // 2. The new setting and its history entry, persisted before they are acted on.
        let configured = self.configured_weight(&t.svc.name, &t.pool, &addr).unwrap_or(before.weight);
        let setting = BackendOverride {
            admin: after.admin,
            weight: (after.weight != configured).then_some(after.weight),
        };
        let mut next = self.state.clone();
        if setting == BackendOverride::default() {
            next.backend_settings.remove(&key);
        } else {
            next.backend_settings.insert(key, setting);
        }
        let active = self.state.services[&t.svc.name].active.clone();
        let hard_cut = after.admin == BackendAdmin::Disabled && before.admin != BackendAdmin::Disabled;
        let forced = !warnings.is_empty();
        let id = next.record(HistoryEntry {
            id: 0,
            time: self.now_rfc3339(),
            service: t.svc.name.clone(),
            kind: HistoryKind::Backend,
            from: active.clone(),
            to: active,
            mode: if hard_cut { SwitchMode::Hard } else { SwitchMode::Drain },
            requester: requester.to_string(),
            reason: forced.then(|| warnings.join("; ")),
            backend: Some(BackendChange {
                pool: t.pool.clone(),
                addr: addr.to_string(),
                action: req.action,
                before,
                after,
                forced,
            }),
        });
        if let Err(e) = self.store.save(&next) {
            tracing::error!(service = %t.svc.name, pool = %t.pool, backend = %addr, action = req.action.as_str(), error = %format!("{e:#}"), "backend change refused: the state file cannot be written");
            return Err(ApiError::internal(format!(
                "{}: not changed, nothing changed: writing the state file failed: {e:#}",
                t.name()
            )));
        }
        self.state = next;
        self.unsaved = false;
        // 3. Live: the pool's new table and one flip per service serving it.
        self.backend_unapplied.insert(t.backend.index);
        if let Err(e) = self.apply_backend(&t, after, before.admin == BackendAdmin::Disabled) {
            tracing::error!(service = %t.svc.name, pool = %t.pool, backend = %addr, action = req.action.as_str(), error = %e, "backend change recorded but not applied to the data plane");
            return Err(ApiError::internal(format!(
                "{}: {} is recorded but the data plane was not updated ({}); run the same command again to \
                 apply it",
                t.name(),
                req.action.as_str(),
                e.message
            )));
        }
        self.backend_unapplied.remove(&t.backend.index);
        let apply_us = started.elapsed().as_micros() as u64;
        tracing::info!(
            service = %t.svc.name,
            pool = %t.pool,
            backend = %addr,
            action = req.action.as_str(),
            from = before.admin.as_str(),
            to = after.admin.as_str(),
            weight_before = before.weight,
            weight = after.weight,
            forced,
            requester,
            apply_us,
            "backend changed"
        );
        Ok(outcome(true, apply_us, Some(id), warnings))
    }

    /// Refuses, before anything is written, a setting whose tables the data plane cannot hold
    /// (a split over the ring size, no free table slot).
    fn check_tables_fit(&self, t: &Target, after: BackendSetting) -> Result<(), ApiError> {
        let mut svc = t.svc.clone();
        set_weight(&mut svc, &t.pool, t.backend.index, after.weight);
        let is_up = self.is_up();
        let index = t.backend.index;
        let up = |i: u32| {
            if i == index {
                !self.down.contains(&i) && after.admin == BackendAdmin::Enabled
            } else {
                is_up(i)
            }
        };
        let refused =
            |e: anyhow::Error| ApiError::refused(format!("{}: refused, nothing changed: {e}", t.name()));
        let pool = svc.pool(&t.pool).expect("pool from layout");
        pool_table(pool, self.ring(), &up).map_err(refused)?;
        if let Active::Split(ws) = &self.state.services[&svc.name].active
            && ws.iter().any(|w| w.pool == t.pool)
        {
            let members = ws.iter().filter_map(|w| svc.pool(&w.pool)).flat_map(|p| &p.backends);
            crate::config::check_split_fits(self.ring(), members.filter(|b| b.weight > 0).count()).map_err(
                |reason| ApiError::refused(format!("{}: refused, nothing changed: {reason}", t.name())),
            )?;
            split_table(&svc, ws, self.ring(), &up).map_err(refused)?;
        }
        self.free_slot(&BTreeSet::new())?;
        Ok(())
    }

    /// Makes the persisted `after` live: the layout takes the weight, the pool's table is
    /// rebuilt beside the live one, and each service serving the pool flips to it once. A
    /// backend coming back from `disabled` (or any backend when `rewrite_flags`) gets its
    /// `BACKENDS` flags first; a disabled one loses `BACKEND_UP` after the flip, so that the
    /// flows it moves find a table without it.
    fn apply_backend(
        &mut self,
        t: &Target,
        after: BackendSetting,
        rewrite_flags: bool,
    ) -> Result<(), ApiError> {
        let index = t.backend.index;
        if let Some(svc) = self.layout.services.iter_mut().find(|s| s.name == t.svc.name) {
            set_weight(svc, &t.pool, index, after.weight);
        }
        let (words, family) = addr_words(t.backend.addr.ip());
        let entry = |flags| Backend { addr: words, port: t.backend.addr.port().to_be(), family, flags };
        if rewrite_flags && after.admin != BackendAdmin::Disabled {
            self.maps.set_backend(index, &entry(BACKEND_UP)).map_err(dp_err)?;
        }
        let svc = self.service_layout(Some(&t.svc.name))?.clone();
        let pool = svc.pool(&t.pool).ok_or_else(|| ApiError::internal("pool left the layout"))?;
        let table =
            pool_table(pool, self.ring(), &self.is_up()).map_err(|e| ApiError::internal(e.to_string()))?;
        let slot = self.write_table(&table, &BTreeSet::new())?;
        self.pool_slots.insert((svc.name.clone(), t.pool.clone()), slot);
        let st = self.state.services[&svc.name].clone();
        if st.active.share(&t.pool) > 0 {
            self.point(&svc, &st.active, st.epoch)?;
        }
        if after.admin == BackendAdmin::Disabled {
            self.maps.set_backend(index, &entry(0)).map_err(dp_err)?;
        }
        Ok(())
    }
}

/// Sets the weight of backend `index` of `pool` in a service's layout.
fn set_weight(svc: &mut ServiceLayout, pool: &str, index: u32, weight: u32) {
    let backends = svc.pools.iter_mut().filter(|p| p.name == pool).flat_map(|p| p.backends.iter_mut());
    for b in backends.filter(|b| b.index == index) {
        b.weight = weight;
    }
}
