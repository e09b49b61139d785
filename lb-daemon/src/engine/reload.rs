//! Reload: the diff between the running config and a new one (refusing what needs a restart),
//! and applying a layout to the data plane, which start-up (adoption) uses too.

use super::{
    core::{Core, dp_err},
    keys::{addr_words, endpoint_key, key_bytes},
    layout::{Layout, plan, pool_table, split_table},
    state::ServiceState,
    switch::{flags_of, validate_active},
};
use crate::{
    api::model::{Active, ApiError, HistoryEntry, HistoryKind, ReloadOutcome, SwitchMode},
    config::Config,
    dataplane::Maps,
};
use lb_common::maps::{Backend, MAX_VIPS_PER_BACKEND, NatBackend, NatVip, Service, VipValue};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

/// The keys of `new` that differ from `old` and only take effect on a restart.
pub(super) fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if new.instance != old.instance {
        keys.push("instance");
    }
    if new.bpffs != old.bpffs {
        keys.push("bpffs");
    }
    if new.state_dir != old.state_dir {
        keys.push("state_dir");
    }
    if new.interfaces != old.interfaces {
        keys.push("interfaces");
    }
    if new.xdp_mode != old.xdp_mode {
        keys.push("xdp_mode");
    }
    if new.ring_size != old.ring_size {
        keys.push("ring_size");
    }
    if new.flow_table_size != old.flow_table_size {
        keys.push("flow_table_size");
    }
    if new.api != old.api {
        keys.push("api");
    }
    // The announcer and the host API exist from the start or not at all.
    if new.bgp.is_some() != old.bgp.is_some() {
        keys.push(if new.bgp.is_some() { "bgp (adding the table)" } else { "bgp (removing the table)" });
    }
    keys
}

/// Services added, changed and removed from `old` to `new`, in words.
pub(super) fn service_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for s in &new.services {
        match old.service(&s.name) {
            None => changes.push(format!("service {} added", s.name)),
            Some(o) if o != s => changes.push(format!(
                "service {} changed: {}",
                s.name,
                super::reload_summary::describe(o, s).join(", ")
            )),
            _ => {}
        }
    }
    for s in &old.services {
        if new.service(&s.name).is_none() {
            changes.push(format!("service {} removed", s.name));
        }
    }
    changes
}

impl<M: Maps> Core<M> {
    /// Makes the running daemon serve `new` (already parsed and validated): refused, with
    /// nothing changed, when a changed key needs a restart or the data plane has too few table
    /// slots; otherwise tables are written off to the side and each service flipped once.
    pub fn reload(&mut self, new: Config, requester: &str) -> Result<ReloadOutcome, ApiError> {
        let restart = needs_restart(&self.config, &new);
        if !restart.is_empty() {
            return Err(ApiError::refused(format!(
                "config not reloaded, nothing changed: changing {} needs a daemon restart",
                restart.join(", ")
            )));
        }
        let mut changes = service_changes(&self.config, &new);
        let services_changed = !changes.is_empty();
        // Keys the engine only reads (the drain idle timeout) need no data-plane change.
        let (was, now) = (self.config.drain_idle_timeout, new.drain_idle_timeout);
        if was != now {
            changes.push(format!(
                "drain_idle_timeout {} -> {}",
                humantime::format_duration(was),
                humantime::format_duration(now)
            ));
        }
        let flows_changed = new.flows != self.config.flows;
        if flows_changed {
            changes.extend(super::reload_summary::flows(&self.config.flows, &new.flows));
        }
        if !services_changed {
            if flows_changed {
                self.maps.set_settings(&new.flows.settings()).map_err(dp_err)?;
            }
            self.config = new;
            return Ok(ReloadOutcome { changed: !changes.is_empty(), changes });
        }
        let mut state = self.state.clone();
        let layout = plan(&new, &mut state)
            .map_err(|e| ApiError::refused(format!("config not reloaded, nothing changed: {e}")))?;
        // Enough table slots for every new pool table beside the live ones?
        let needed: usize =
            layout.services.iter().map(|s| s.pools.len() + 1).sum::<usize>() + self.live_slots().len();
        let slots = self.maps.options().table_slots;
        if needed > slots as usize {
            return Err(ApiError::refused(format!(
                "config not reloaded, nothing changed: it needs {needed} Maglev table slots, the running data plane has {slots}"
            )));
        }
        let snapshot = self.state.clone();
        self.state = state;
        let mut notes = Vec::new();
        if let Err(e) = self.apply_layout(layout, &BTreeMap::new(), requester, &mut notes) {
            self.state = snapshot;
            return Err(e);
        }
        changes.extend(notes);
        if flows_changed {
            self.maps.set_settings(&new.flows.settings()).map_err(dp_err)?;
        }
        self.config = new;
        self.persist()?;
        Ok(ReloadOutcome { changed: true, changes })
    }

    /// Makes the data plane serve `layout`: backends, tables, services, VIPs, NAT backends and
    /// filters. Used at start (adopting whatever was pinned) and on reload.
    pub(super) fn apply_layout(
        &mut self,
        layout: Layout,
        adopted_epochs: &BTreeMap<u32, u32>,
        why: &str,
        history: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        // 1. Backends: new and kept ones up (unless disabled by an operator); retired ones down
        // (their flows re-balance).
        let new_indices = layout.backend_indices();
        for svc in &layout.services {
            for (_, b) in svc.backends() {
                let (addr, family) = addr_words(b.addr.ip());
                self.maps
                    .set_backend(
                        b.index,
                        &Backend {
                            addr,
                            port: b.addr.port().to_be(),
                            family,
                            flags: self.backend_flags(b.index),
                        },
                    )
                    .map_err(dp_err)?;
            }
        }
        for retired in self.layout.backend_indices().difference(&new_indices) {
            self.maps.set_backend(*retired, &Backend::default()).map_err(dp_err)?;
        }
        // 2. Tables of every pool, in slots nothing points at.
        let live: BTreeSet<u32> = self.live_slots();
        self.pool_slots.clear();
        for svc in &layout.services {
            for pool in &svc.pools {
                let table = pool_table(pool, self.ring(), &self.is_up())
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let slot = self.write_table(&table, &live)?;
                self.pool_slots.insert((svc.name.clone(), pool.name.clone()), slot);
            }
        }
        self.split_slots.retain(|name, _| layout.service(name).is_some());
        let old_split_slots = std::mem::take(&mut self.split_slots);
        // 3. Services: one flip each, to the desired active pool.
        for svc in &layout.services {
            let previous_state = self.state.services.get(&svc.name).cloned();
            let configured = Active::Pool(svc.configured_active.clone());
            let mut active =
                previous_state.as_ref().map(|s| s.active.clone()).unwrap_or_else(|| configured.clone());
            if validate_active(svc, &active).is_err() {
                history.push(format!("{}: {} no longer exists, serving {}", svc.name, active, configured));
                self.state.record(HistoryEntry {
                    id: 0,
                    time: self.now_rfc3339(),
                    service: svc.name.clone(),
                    kind: HistoryKind::Reload,
                    from: active.clone(),
                    to: configured.clone(),
                    mode: SwitchMode::Drain,
                    requester: why.to_string(),
                    reason: Some("the active pool was removed from the config".into()),
                    backend: None,
                });
                active = configured;
            }
            let epoch = adopted_epochs
                .get(&svc.id)
                .copied()
                .or(previous_state.as_ref().map(|s| s.epoch))
                .unwrap_or(1);
            let previous =
                previous_state.and_then(|s| s.previous).filter(|p| validate_active(svc, p).is_ok());
            self.state.services.insert(
                svc.name.clone(),
                ServiceState { id: svc.id, active: active.clone(), previous, epoch },
            );
            let slot = match &active {
                Active::Pool(p) => self.pool_slots[&(svc.name.clone(), p.clone())],
                Active::Split(ws) => {
                    let table = split_table(svc, ws, self.ring(), &self.is_up())
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    let mut taken = live.clone();
                    taken.extend(old_split_slots.values());
                    let slot = self.write_table(&table, &taken)?;
                    self.split_slots.insert(svc.name.clone(), slot);
                    slot
                }
            };
            self.maps
                .set_service(svc.id, &Service { table: slot, epoch, flags: flags_of(svc), _pad: 0 })
                .map_err(dp_err)?;
        }
        // Services that are gone: disabled (their flows stop matching) and their VIPs removed.
        let kept_ids: BTreeSet<u32> = layout.services.iter().map(|s| s.id).collect();
        for old in &self.layout.services {
            if !kept_ids.contains(&old.id) {
                self.maps.set_service(old.id, &Service::default()).map_err(dp_err)?;
            }
        }
        for id in adopted_epochs.keys().filter(|id| !kept_ids.contains(id)) {
            self.maps.set_service(*id, &Service::default()).map_err(dp_err)?;
        }
        // 4. VIPs.
        let mut vip_keys = BTreeSet::new();
        for svc in &layout.services {
            for vip in &svc.vips {
                let key = endpoint_key(&vip.addr);
                self.maps
                    .set_vip(&key, &VipValue { service: svc.id, vip_index: vip.index })
                    .map_err(dp_err)?;
                vip_keys.insert(key_bytes(&key));
            }
        }
        for key in self.maps.vip_keys() {
            if !vip_keys.contains(&key_bytes(&key)) {
                self.maps.remove_vip(&key).map_err(dp_err)?;
            }
        }
        // 5. NAT backends and the filters.
        let mut nat: BTreeMap<SocketAddr, Vec<SocketAddr>> = BTreeMap::new();
        for svc in layout.services.iter().filter(|s| !s.dsr) {
            for (_, b) in svc.backends() {
                let vips = nat.entry(b.addr).or_default();
                for v in &svc.vips {
                    if !vips.contains(&v.addr) {
                        vips.push(v.addr);
                    }
                }
            }
        }
        let mut nat_keys = BTreeSet::new();
        for (backend, vips) in &nat {
            if vips.len() > MAX_VIPS_PER_BACKEND {
                return Err(ApiError::invalid(format!(
                    "backend {backend} serves {} NAT VIPs, at most {MAX_VIPS_PER_BACKEND}",
                    vips.len()
                )));
            }
            let mut value = NatBackend::default();
            for (slot, vip) in value.vips.iter_mut().zip(vips) {
                *slot = NatVip { addr: addr_words(vip.ip()).0, port: vip.port().to_be(), _pad: 0 };
            }
            value.count = vips.len() as u32;
            let key = endpoint_key(backend);
            self.maps.set_nat_backend(&key, &value).map_err(dp_err)?;
            nat_keys.insert(key_bytes(&key));
        }
        for key in self.maps.nat_backend_keys() {
            if !nat_keys.contains(&key_bytes(&key)) {
                self.maps.remove_nat_backend(&key).map_err(dp_err)?;
            }
        }
        let vip_list: Vec<([u32; 4], u16)> = layout
            .services
            .iter()
            .flat_map(|s| s.vips.iter().map(|v| (addr_words(v.addr.ip()).0, v.addr.port().to_be())))
            .collect();
        let nat_list: Vec<([u32; 4], u16)> =
            nat.keys().map(|a| (addr_words(a.ip()).0, a.port().to_be())).collect();
        self.maps.set_filters(&vip_list, &nat_list).map_err(dp_err)?;
        self.layout = layout;
        Ok(())
    }
}

impl super::Engine {
    /// Gives the engine the BGP announcer, so a reload's new `[bgp]` settings reach it (once,
    /// after [`crate::fleet::Fleet::start`]).
    pub fn set_bgp_announcer(&self, fleet: &std::sync::Arc<crate::fleet::Fleet>) {
        let _ = self.bgp.set(std::sync::Arc::downgrade(fleet));
    }

    /// Tries `new`'s `[bgp]` on the announcer (see [`crate::fleet::reload::prepare`]); nothing
    /// when a changed key needs a restart (the core refuses the reload then).
    pub(super) fn reload_bgp(
        &self,
        new: &Config,
    ) -> Result<Option<crate::fleet::reload::BgpReload>, ApiError> {
        let old = {
            let core = self.lock();
            if !needs_restart(&core.config, new).is_empty() {
                return Ok(None);
            }
            core.config.bgp.clone()
        };
        let fleet = self.bgp.get().and_then(std::sync::Weak::upgrade);
        crate::fleet::reload::prepare(fleet.as_ref(), old.as_ref(), new.bgp.as_ref())
    }
}
