//! What the flow sync needs to know of this host's services (`fleet::sync::LocalView`): read
//! under the engine's lock from the layout and the epochs in force in the data plane.

use std::collections::HashMap;

use super::{Core, Engine};
use crate::dataplane::Maps;
use crate::fleet::sync::local::{LocalSource, LocalView, VipEntry};

impl<M: Maps> Core<M> {
    /// The flow sync's view of the services placed in the data plane.
    pub fn sync_view(&self) -> anyhow::Result<LocalView> {
        let mut view = LocalView::default();
        for svc in &self.layout.services {
            let epoch = self.maps.service(svc.id).map_err(|e| anyhow::anyhow!("{e}"))?.epoch;
            let mut backends = HashMap::new();
            for (_, b) in svc.backends() {
                view.backend_addrs.insert(b.index, b.addr);
                let e = backends.entry(b.addr).or_insert(b.index);
                *e = (*e).min(b.index);
            }
            for vip in &svc.vips {
                view.vips.insert(
                    vip.addr,
                    VipEntry {
                        service: svc.id,
                        vip_index: vip.index,
                        epoch,
                        dsr: svc.dsr,
                        backends: backends.clone(),
                    },
                );
            }
        }
        Ok(view)
    }
}

impl LocalSource for Engine {
    fn local_view(&self) -> anyhow::Result<LocalView> {
        self.lock().sync_view()
    }

    /// From the scan `/metrics` caches (one walk of the table serves both).
    fn flow_origins(&self) -> Option<(super::BackendFlows, std::time::Duration)> {
        let (flows, age) = self
            .flow_cache
            .get(std::time::Instant::now(), || {
                let (source, timeouts) = self.lock().flow_scan();
                super::FlowCounts::scan(source.as_ref(), timeouts)
            })
            .inspect_err(|e| tracing::warn!(error = %e.message, "flow sync: counting the flow table failed"))
            .ok()?;
        Some((flows.total(), age))
    }
}
