//! Planning, without touching the kernel: which data-plane index each service, VIP and backend
//! gets (stable across restarts and reloads, kept in the state file), and the contents of the
//! Maglev tables for a pool or a split.

use crate::{
    api::model::{Active, PoolWeight},
    config::{Config, ForwardMode},
    engine::state::{PersistedState, ServiceState},
};
use lb_common::{
    maglev::{MaglevBackend, build_table},
    maps::{MAX_BACKENDS, MAX_SERVICES, MAX_VIPS, NO_BACKEND},
};
use std::{collections::BTreeSet, net::SocketAddr};

/// A backend as placed in the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendLayout {
    /// Address.
    pub addr: SocketAddr,
    /// Maglev weight.
    pub weight: u32,
    /// Index in `BACKENDS`.
    pub index: u32,
}

/// A pool as placed in the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    /// Name.
    pub name: String,
    /// Backends in config order.
    pub backends: Vec<BackendLayout>,
    /// Fewest healthy backends a switch to it accepts.
    pub min_healthy: u32,
}

/// A VIP as placed in the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipLayout {
    /// Address.
    pub addr: SocketAddr,
    /// Counter index.
    pub index: u32,
}

/// A service as placed in the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLayout {
    /// Name.
    pub name: String,
    /// Index in `SERVICES`.
    pub id: u32,
    /// DSR (else NAT).
    pub dsr: bool,
    /// VIPs.
    pub vips: Vec<VipLayout>,
    /// Pools in config order.
    pub pools: Vec<PoolLayout>,
    /// The configured initial pool.
    pub configured_active: String,
}

impl ServiceLayout {
    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&PoolLayout> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Every backend of every pool.
    pub fn backends(&self) -> impl Iterator<Item = (&PoolLayout, &BackendLayout)> {
        self.pools.iter().flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    }
}

/// Every service as placed in the data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Services in config order.
    pub services: Vec<ServiceLayout>,
}

impl Layout {
    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceLayout> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Every backend index in use.
    pub fn backend_indices(&self) -> BTreeSet<u32> {
        self.services.iter().flat_map(|s| s.backends().map(|(_, b)| b.index)).collect()
    }
}

/// Key under which a backend's index is remembered.
pub fn backend_key(service: &str, pool: &str, addr: &SocketAddr) -> String {
    format!("{service}/{pool}/{addr}")
}

/// Takes the next never-used index below `limit`, or else the lowest one not in `used`.
fn allocate(next: &mut u32, used: &BTreeSet<u32>, limit: u32, what: &str) -> anyhow::Result<u32> {
    if *next < limit {
        let i = *next;
        *next += 1;
        return Ok(i);
    }
    (0..limit)
        .find(|i| !used.contains(i))
        .ok_or_else(|| anyhow::anyhow!("no free {what} index (limit {limit})"))
}

/// Places `config`, keeping every index already recorded in `state` and recording new ones.
/// Entries of things no longer configured are dropped from `state`.
pub fn plan(config: &Config, state: &mut PersistedState) -> anyhow::Result<Layout> {
    // Forget what the config no longer has, so its indices can eventually be reused.
    let names: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    state.services.retain(|name, _| names.contains(name.as_str()));
    let wanted_backends: BTreeSet<String> = config
        .services
        .iter()
        .flat_map(|s| {
            s.pools
                .iter()
                .flat_map(move |p| p.backends.iter().map(move |b| backend_key(&s.name, &p.name, &b.addr)))
        })
        .collect();
    state.backend_indices.retain(|k, _| wanted_backends.contains(k));
    state.backend_settings.retain(|k, _| wanted_backends.contains(k));
    let wanted_vips: BTreeSet<String> =
        config.services.iter().flat_map(|s| s.vips.iter().map(|v| v.to_string())).collect();
    state.vip_indices.retain(|k, _| wanted_vips.contains(k));

    let mut used_services: BTreeSet<u32> = state.services.values().map(|s| s.id).collect();
    let mut used_backends: BTreeSet<u32> = state.backend_indices.values().copied().collect();
    let mut used_vips: BTreeSet<u32> = state.vip_indices.values().copied().collect();
    let mut layout = Layout::default();
    for svc in &config.services {
        let id = match state.services.get(&svc.name) {
            Some(s) => s.id,
            None => {
                let id = allocate(&mut state.next_service_id, &used_services, MAX_SERVICES, "service")?;
                used_services.insert(id);
                // A new service starts on its configured pool.
                state.services.insert(
                    svc.name.clone(),
                    ServiceState { id, active: Active::Pool(svc.active.clone()), previous: None, epoch: 1 },
                );
                id
            }
        };
        let mut vips = Vec::new();
        for addr in &svc.vips {
            let key = addr.to_string();
            let index = match state.vip_indices.get(&key) {
                Some(i) => *i,
                None => {
                    let i = allocate(&mut state.next_vip_index, &used_vips, MAX_VIPS, "VIP")?;
                    used_vips.insert(i);
                    state.vip_indices.insert(key, i);
                    i
                }
            };
            vips.push(VipLayout { addr: *addr, index });
        }
        let mut pools = Vec::new();
        for pool in &svc.pools {
            let mut backends = Vec::new();
            for b in &pool.backends {
                let key = backend_key(&svc.name, &pool.name, &b.addr);
                // A weight set at runtime (`lbctl backend weight`) stays in force over reloads.
                let weight = state.backend_settings.get(&key).and_then(|o| o.weight).unwrap_or(b.weight);
                let index = match state.backend_indices.get(&key) {
                    Some(i) => *i,
                    None => {
                        let i =
                            allocate(&mut state.next_backend_index, &used_backends, MAX_BACKENDS, "backend")?;
                        used_backends.insert(i);
                        state.backend_indices.insert(key, i);
                        i
                    }
                };
                backends.push(BackendLayout { addr: b.addr, weight, index });
            }
            pools.push(PoolLayout { name: pool.name.clone(), backends, min_healthy: pool.min_healthy });
        }
        layout.services.push(ServiceLayout {
            name: svc.name.clone(),
            id,
            dsr: svc.mode == ForwardMode::Dsr,
            vips,
            pools,
            configured_active: svc.active.clone(),
        });
    }
    Ok(layout)
}

/// A table every slot of which says "no backend": new flows are dropped.
pub fn empty_table(ring: u32) -> Vec<u32> {
    vec![NO_BACKEND; ring as usize]
}

/// The Maglev table of one pool, over its backends that are up and have a weight. A pool with
/// none gives an empty table.
pub fn pool_table(pool: &PoolLayout, ring: u32, is_up: &dyn Fn(u32) -> bool) -> anyhow::Result<Vec<u32>> {
    let keys: Vec<String> = pool.backends.iter().map(|b| b.addr.to_string()).collect();
    let members: Vec<MaglevBackend> = pool
        .backends
        .iter()
        .zip(&keys)
        .filter(|(b, _)| b.weight > 0 && is_up(b.index))
        .map(|(b, k)| MaglevBackend { key: k.as_bytes(), index: b.index, weight: b.weight })
        .collect();
    if members.is_empty() {
        return Ok(empty_table(ring));
    }
    Ok(build_table(&members, ring)?)
}

/// The Maglev table of a split: every backend of every pool in `weights`, weighted so that each
/// pool gets its percentage of the slots and, inside a pool, each backend its share of the pool.
pub fn split_table(
    svc: &ServiceLayout,
    weights: &[PoolWeight],
    ring: u32,
    is_up: &dyn Fn(u32) -> bool,
) -> anyhow::Result<Vec<u32>> {
    struct Member {
        key: String,
        index: u32,
        weight: u64,
    }
    // Live weight of each pool.
    let pools: Vec<(&PoolLayout, u64, u64)> = weights
        .iter()
        .map(|w| {
            let p = svc.pool(&w.pool).ok_or_else(|| anyhow::anyhow!("unknown pool {}", w.pool))?;
            let total: u64 = p.backends.iter().filter(|b| is_up(b.index)).map(|b| u64::from(b.weight)).sum();
            Ok((p, u64::from(w.weight), total))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut members = Vec::new();
    for (i, (pool, pct, _)) in pools.iter().enumerate() {
        // pct × w_b × Π(other pools' totals) makes every pool's sum proportional to pct.
        let others: u64 =
            pools.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.2.max(1)).product();
        for b in pool.backends.iter().filter(|b| b.weight > 0 && is_up(b.index)) {
            members.push(Member {
                key: format!("{}/{}", pool.name, b.addr),
                index: b.index,
                weight: pct * u64::from(b.weight) * others,
            });
        }
    }
    if members.is_empty() {
        return Ok(empty_table(ring));
    }
    // Keep weights in u32 range without changing their ratios much.
    let max = members.iter().map(|m| m.weight).max().unwrap_or(1);
    let scale = max.div_ceil(u64::from(u32::MAX) / 2).max(1);
    let list: Vec<MaglevBackend> = members
        .iter()
        .map(|m| MaglevBackend {
            key: m.key.as_bytes(),
            index: m.index,
            weight: (m.weight / scale).max(1) as u32,
        })
        .collect();
    Ok(build_table(&list, ring)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
interfaces = ["eth0"]
ring_size = 1009
[[services]]
name = "web"
vips = ["10.0.0.200:80"]
active = "pool-a"
[services.pools.pool-a]
backends = ["10.0.1.1:8080", "10.0.1.2:8080"]
[services.pools.pool-b]
backends = ["10.0.2.1:8080", { addr = "10.0.2.2:8080", weight = 3 }]
"#;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).expect("valid config")
    }

    #[test]
    fn indices_are_stable_across_plans_and_new_backends_get_fresh_ones() {
        let mut state = PersistedState::default();
        let first = plan(&config(CONFIG), &mut state).unwrap();
        assert_eq!(first.backend_indices(), (0..4).collect());
        let again = plan(&config(CONFIG), &mut state).unwrap();
        assert_eq!(first, again);
        // Remove 10.0.1.1 and add 10.0.1.3: the others keep their index, the new one is fresh.
        let changed =
            CONFIG.replace(r#"["10.0.1.1:8080", "10.0.1.2:8080"]"#, r#"["10.0.1.2:8080", "10.0.1.3:8080"]"#);
        let third = plan(&config(&changed), &mut state).unwrap();
        let a = &third.services[0].pools[0].backends;
        assert_eq!((a[0].index, a[1].index), (1, 4), "kept 1, fresh 4 (0 is not reused)");
    }

    #[test]
    fn pool_table_uses_only_live_weighted_backends() {
        let mut state = PersistedState::default();
        let l = plan(&config(CONFIG), &mut state).unwrap();
        let b = l.services[0].pool("pool-b").unwrap();
        let t = pool_table(b, 1009, &|_| true).unwrap();
        let n3 = t.iter().filter(|&&i| i == 3).count();
        assert!((750..765).contains(&n3), "weight 3 of 4 gets ~3/4 of 1009 slots: {n3}");
        let down = pool_table(b, 1009, &|i| i != 3).unwrap();
        assert!(down.iter().all(|&i| i == 2));
        assert!(pool_table(b, 1009, &|_| false).unwrap().iter().all(|&i| i == NO_BACKEND));
    }

    #[test]
    fn split_table_honours_pool_percentages() {
        let mut state = PersistedState::default();
        let l = plan(&config(CONFIG), &mut state).unwrap();
        let w = vec![
            PoolWeight { pool: "pool-a".into(), weight: 90 },
            PoolWeight { pool: "pool-b".into(), weight: 10 },
        ];
        let t = split_table(&l.services[0], &w, 1009, &|_| true).unwrap();
        let on_a = t.iter().filter(|&&i| i < 2).count() as f64 / 1009.0;
        assert!((on_a - 0.9).abs() < 0.01, "pool-a share {on_a}");
        let on_b3 = t.iter().filter(|&&i| i == 3).count() as f64 / 1009.0;
        assert!((on_b3 - 0.075).abs() < 0.01, "weight 3 backend gets 3/4 of pool-b's 10%: {on_b3}");
    }
}
