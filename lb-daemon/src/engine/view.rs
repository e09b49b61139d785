//! What `status` and `/v1/services` show: services with their pools, backends, health and
//! traffic, and the data plane's counters.

use super::{core::Core, layout::ServiceLayout};
use crate::{
    api::model::{ApiError, BackendView, InterfaceView, PoolView, ServiceView, StatusView, Traffic},
    dataplane::Maps,
};
use lb_common::stats::{ALL_REASONS, backend_counter, backend_new_flow_counter, reason_counter};

impl<M: Maps> Core<M> {
    /// The whole status (the caller knows uptime, adoption and interfaces).
    pub fn status(
        &self,
        uptime_s: u64,
        adopted: bool,
        interfaces: Vec<InterfaceView>,
    ) -> Result<StatusView, ApiError> {
        let services = self.layout.services.iter().map(|s| self.service_view(s)).collect();
        let reasons = ALL_REASONS
            .iter()
            .map(|r| {
                (r.name().to_string(), self.maps.counter(reason_counter(*r)).map(|c| c.packets).unwrap_or(0))
            })
            .collect();
        Ok(StatusView {
            instance: self.config.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s,
            adopted,
            interfaces,
            services,
            reasons,
            warnings: Vec::new(),
        })
    }

    fn traffic(&self, index: u32) -> Traffic {
        let c = self.maps.counter(backend_counter(index)).unwrap_or_default();
        let n = self.maps.counter(backend_new_flow_counter(index)).unwrap_or_default();
        Traffic { packets: c.packets, bytes: c.bytes, new_flows: n.packets }
    }

    /// A service as `lbctl status` shows it: pools, backends, health, traffic, watch.
    pub fn service_view(&self, svc: &ServiceLayout) -> ServiceView {
        let st = &self.state.services[&svc.name];
        let pools = svc
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<BackendView> = p
                    .backends
                    .iter()
                    .map(|b| (b, self.backend_admin_view(&svc.name, &p.name, &b.addr)))
                    .map(|(b, (admin, configured_weight))| BackendView {
                        addr: b.addr.to_string(),
                        weight: b.weight,
                        index: b.index,
                        up: !self.down.contains(&b.index),
                        last_error: self.health_errors.get(&b.index).cloned(),
                        traffic: self.traffic(b.index),
                        admin,
                        configured_weight,
                    })
                    .collect();
                let traffic = backends.iter().fold(Traffic::default(), |a, b| Traffic {
                    packets: a.packets + b.traffic.packets,
                    bytes: a.bytes + b.traffic.bytes,
                    new_flows: a.new_flows + b.traffic.new_flows,
                });
                let (healthy, min_healthy, _) = self.pool_health(svc, &p.name);
                PoolView {
                    name: p.name.clone(),
                    share: st.active.share(&p.name),
                    min_healthy,
                    healthy,
                    backends,
                    traffic,
                }
            })
            .collect();
        ServiceView {
            name: svc.name.clone(),
            mode: if svc.dsr { "dsr" } else { "nat" }.into(),
            vips: svc.vips.iter().map(|v| v.addr.to_string()).collect(),
            active: st.active.clone(),
            previous: st.previous.clone(),
            epoch: st.epoch,
            pools,
            watch: self.watch_view(&svc.name),
        }
    }
}
