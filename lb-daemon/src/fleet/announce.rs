//! Which VIP addresses this host announces, and why not the others: pure decisions from the
//! daemon's status and the host's maintenance state, so every rule is unit-tested without BIRD.
//!
//! Rules, for each VIP address (a route is per address, whatever the ports):
//! - nothing is announced while the data plane is not attached, while the host is drained for
//!   maintenance, or while it is detaching (`lbctl shutdown --detach`);
//! - an address is announced when every service holding it can serve new flows: it forwards in
//!   `dsr` mode, and every pool that receives new flows (the active pool, or each pool of a
//!   split with a share above 0) has at least `min_healthy` healthy backends. A host must not
//!   draw traffic for a port it cannot serve, so one failing service on an address withdraws the
//!   address (the reason names it).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::api::model::StatusView;

/// The host's state, beyond the services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    /// The XDP program is attached to the configured interfaces.
    pub attached: bool,
    /// Maintenance mode (`lbctl host drain`): withdraw everything, keep forwarding.
    pub drained: bool,
    /// `lbctl shutdown --detach` is under way: withdraw everything before forwarding stops.
    pub detaching: bool,
    /// Why this host must not draw traffic yet although it could forward: the flow sync
    /// still waits for its peers' flows (a joining host would reset their moved connections).
    pub not_ready: Option<&'static str>,
}

/// A pool that receives new flows, with its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolHealth {
    /// Pool name.
    pub name: String,
    /// Healthy backends.
    pub healthy: u32,
    /// Fewest healthy backends for the pool to count as serving.
    pub min_healthy: u32,
}

/// What the decision needs of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    /// Service name.
    pub name: String,
    /// Its VIP addresses (ports dropped).
    pub vips: Vec<IpAddr>,
    /// Forwards in direct server return mode.
    pub dsr: bool,
    /// The pools receiving new flows (share above 0).
    pub serving_pools: Vec<PoolHealth>,
}

/// The decision for one VIP address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipDecision {
    /// The address (announced as /32 or /128).
    pub vip: IpAddr,
    /// Services holding it.
    pub services: Vec<String>,
    /// Whether this host should announce it.
    pub announce: bool,
    /// Why not, when it should not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// The services as the decision sees them, from the daemon's status.
pub fn services_of(status: &StatusView) -> Vec<ServiceState> {
    status
        .services
        .iter()
        .map(|s| ServiceState {
            name: s.name.clone(),
            vips: s.vips.iter().filter_map(|v| v.parse::<SocketAddr>().ok()).map(|v| v.ip()).collect(),
            dsr: s.mode == "dsr",
            serving_pools: s
                .pools
                .iter()
                .filter(|p| p.share > 0)
                .map(|p| PoolHealth { name: p.name.clone(), healthy: p.healthy, min_healthy: p.min_healthy })
                .collect(),
        })
        .collect()
}

/// Why a service cannot take new flows on this host, or `None` when it can.
fn service_problem(s: &ServiceState) -> Option<String> {
    if !s.dsr {
        return Some(format!("service {} is not in dsr mode (ECMP cannot bring NAT replies back)", s.name));
    }
    if s.serving_pools.is_empty() {
        return Some(format!("service {} has no pool receiving new flows", s.name));
    }
    let short: Vec<String> = s
        .serving_pools
        .iter()
        .filter(|p| p.healthy < p.min_healthy)
        .map(|p| {
            format!("pool {} has {} healthy backend(s), min_healthy is {}", p.name, p.healthy, p.min_healthy)
        })
        .collect();
    (!short.is_empty()).then(|| format!("service {}: {}", s.name, short.join("; ")))
}

/// One decision per VIP address, in address order.
pub fn decide(host: HostState, services: &[ServiceState]) -> Vec<VipDecision> {
    let mut by_vip: BTreeMap<IpAddr, Vec<&ServiceState>> = BTreeMap::new();
    for s in services {
        for vip in &s.vips {
            let list = by_vip.entry(*vip).or_default();
            if !list.iter().any(|t| t.name == s.name) {
                list.push(s);
            }
        }
    }
    let host_reason = if host.detaching {
        Some("the daemon is detaching (shutdown --detach)".to_owned())
    } else if host.drained {
        Some("the host is drained for maintenance (lbctl host undrain to announce again)".to_owned())
    } else if !host.attached {
        Some("the data plane is not attached".to_owned())
    } else {
        host.not_ready.map(str::to_owned)
    };
    by_vip
        .into_iter()
        .map(|(vip, holders)| {
            let why_not = host_reason.clone().or_else(|| {
                let problems: Vec<String> = holders.iter().filter_map(|s| service_problem(s)).collect();
                (!problems.is_empty()).then(|| problems.join("; "))
            });
            VipDecision {
                vip,
                services: holders.iter().map(|s| s.name.clone()).collect(),
                announce: why_not.is_none(),
                why_not,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: HostState = HostState { attached: true, drained: false, detaching: false, not_ready: None };

    fn pool(name: &str, healthy: u32, min_healthy: u32) -> PoolHealth {
        PoolHealth { name: name.into(), healthy, min_healthy }
    }

    fn svc(name: &str, vips: &[&str], pools: Vec<PoolHealth>) -> ServiceState {
        ServiceState {
            name: name.into(),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            dsr: true,
            serving_pools: pools,
        }
    }

    fn announced(d: &[VipDecision]) -> Vec<String> {
        d.iter().filter(|d| d.announce).map(|d| d.vip.to_string()).collect()
    }

    #[test]
    fn a_healthy_active_pool_is_announced_and_a_short_one_withdrawn() {
        let services = vec![
            svc("web", &["192.0.2.10"], vec![pool("pool-a", 2, 2)]),
            svc("api", &["192.0.2.11", "2001:db8::11"], vec![pool("pool-b", 1, 2)]),
        ];
        let d = decide(UP, &services);
        assert_eq!(announced(&d), vec!["192.0.2.10"]);
        let api = d.iter().find(|d| d.vip.to_string() == "192.0.2.11").unwrap();
        assert_eq!(
            api.why_not.as_deref(),
            Some("service api: pool pool-b has 1 healthy backend(s), min_healthy is 2")
        );
        assert_eq!(d.len(), 3, "one decision per address: {d:?}");
    }

    #[test]
    fn host_states_withdraw_everything_whatever_the_health() {
        let services = vec![svc("web", &["192.0.2.10"], vec![pool("pool-a", 2, 1)])];
        for (host, word) in [
            (HostState { drained: true, ..UP }, "drained"),
            (HostState { detaching: true, ..UP }, "detaching"),
            (HostState { detaching: true, drained: true, ..UP }, "detaching"),
            (HostState { attached: false, ..UP }, "not attached"),
            (HostState { not_ready: Some("waiting for the peers' flows"), ..UP }, "peers' flows"),
        ] {
            let d = decide(host, &services);
            assert_eq!(announced(&d), Vec::<String>::new(), "{host:?}");
            assert!(d[0].why_not.as_deref().unwrap().contains(word), "{host:?}: {d:?}");
        }
    }

    #[test]
    fn every_pool_of_a_split_must_meet_min_healthy() {
        let ok = svc("web", &["192.0.2.10"], vec![pool("pool-a", 2, 1), pool("pool-b", 1, 1)]);
        assert_eq!(announced(&decide(UP, &[ok])), vec!["192.0.2.10"]);
        let canary_dead = svc("web", &["192.0.2.10"], vec![pool("pool-a", 2, 1), pool("pool-b", 0, 1)]);
        let d = decide(UP, &[canary_dead]);
        assert!(!d[0].announce);
        assert!(d[0].why_not.as_deref().unwrap().contains("pool pool-b has 0"), "{d:?}");
    }

    #[test]
    fn an_address_shared_by_two_services_needs_both() {
        let web = svc("web", &["192.0.2.10"], vec![pool("pool-a", 1, 1)]);
        let tls = svc("tls", &["192.0.2.10"], vec![pool("pool-t", 0, 1)]);
        let d = decide(UP, &[web.clone(), tls]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].services, vec!["web", "tls"]);
        assert!(!d[0].announce);
        assert!(d[0].why_not.as_deref().unwrap().starts_with("service tls:"), "{d:?}");
        assert_eq!(announced(&decide(UP, &[web])), vec!["192.0.2.10"]);
    }

    #[test]
    fn nat_and_poolless_services_are_never_announced() {
        let mut nat = svc("web", &["192.0.2.10"], vec![pool("pool-a", 2, 1)]);
        nat.dsr = false;
        let d = decide(UP, &[nat]);
        assert!(!d[0].announce && d[0].why_not.as_deref().unwrap().contains("dsr"), "{d:?}");
        let none = svc("web", &["192.0.2.10"], Vec::new());
        assert!(!decide(UP, &[none])[0].announce);
    }

    #[test]
    fn status_views_become_decision_inputs() {
        use crate::api::model::{Active, PoolView, ServiceView, Traffic};
        let pool_view = |name: &str, share, healthy| PoolView {
            name: name.into(),
            share,
            min_healthy: 1,
            healthy,
            backends: Vec::new(),
            traffic: Traffic::default(),
        };
        let status = StatusView {
            instance: "lb".into(),
            version: "0".into(),
            uptime_s: 0,
            adopted: false,
            interfaces: Vec::new(),
            services: vec![ServiceView {
                name: "web".into(),
                mode: "dsr".into(),
                vips: vec!["192.0.2.10:80".into(), "[2001:db8::10]:80".into()],
                active: Active::Pool("pool-b".into()),
                previous: None,
                epoch: 0,
                pools: vec![pool_view("pool-a", 0, 0), pool_view("pool-b", 100, 2)],
                watch: None,
            }],
            reasons: Vec::new(),
            warnings: Vec::new(),
        };
        let s = services_of(&status);
        assert_eq!(s[0].vips, vec!["192.0.2.10".parse::<IpAddr>().unwrap(), "2001:db8::10".parse().unwrap()]);
        assert!(s[0].dsr);
        assert_eq!(s[0].serving_pools, vec![pool("pool-b", 2, 1)], "only the pool with a share counts");
    }
}
