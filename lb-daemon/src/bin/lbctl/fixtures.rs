//! Views and a scripted daemon for the unit tests of the commands, the renderers and
//! [`crate::follow`].

use std::cell::RefCell;

use lb_daemon::api::client::ClientError;
use lb_daemon::api::model::*;
use serde::Serialize;

use crate::follow::Daemon;

/// `s` without its escape sequences.
pub fn strip(s: &str) -> String {
    crate::render::table::visible_chars(s).collect()
}

/// The daemon's socket refused the connection.
pub fn unreachable() -> ClientError {
    ClientError::Unreachable {
        endpoint: "/run/lb/lb.sock".into(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    }
}

/// A switch of `web` from pool-a to pool-b, history #7.
pub fn switched() -> SwitchOutcome {
    SwitchOutcome {
        service: "web".into(),
        changed: true,
        before: Active::Pool("pool-a".into()),
        after: Active::Pool("pool-b".into()),
        mode: SwitchMode::Drain,
        epoch: 3,
        apply_us: 84,
        history_id: Some(7),
        dry_run: false,
        warnings: vec![],
        watch: None,
        revision: None,
    }
}

/// A backend with 10 packets and `new_flows` new flows.
pub fn backend(addr: &str, up: bool, new_flows: u64, error: Option<&str>) -> BackendView {
    BackendView {
        addr: addr.into(),
        weight: 1,
        index: 0,
        up,
        last_error: error.map(String::from),
        traffic: Traffic { packets: 10, bytes: 1000, new_flows },
        admin: Default::default(),
        configured_weight: None,
    }
}

/// `web` with pool-a (share `share_a`) and pool-b, whose backends saw `b_flows` new flows.
pub fn service(share_a: u32, b_flows: u64, watch: Option<WatchView>) -> ServiceView {
    let pool = |name: &str, share: u32, min_healthy: u32, backends: Vec<BackendView>| PoolView {
        name: name.into(),
        share,
        min_healthy,
        healthy: backends.iter().filter(|b| b.up).count() as u32,
        traffic: Traffic::default(),
        backends,
    };
    ServiceView {
        name: "web".into(),
        mode: "nat".into(),
        vips: vec!["192.0.2.1:80".into()],
        active: Active::Pool(if share_a == 100 { "pool-a" } else { "pool-b" }.into()),
        previous: Some(Active::Pool("pool-a".into())),
        epoch: 3,
        pools: vec![
            pool(
                "pool-a",
                share_a,
                2,
                vec![
                    backend("10.0.0.1:8080", true, 5, None),
                    backend("10.0.0.2:8080", false, 0, Some("connect: connection refused")),
                ],
            ),
            pool(
                "pool-b",
                100 - share_a,
                1,
                vec![
                    backend("10.0.1.1:8080", true, b_flows / 2, None),
                    backend("10.0.1.2:8080", true, b_flows - b_flows / 2, None),
                ],
            ),
        ],
        watch,
    }
}

/// The watch of pool-b started by switch `switch_id`, in `state`.
pub fn watch_view(state: WatchState, switch_id: u64) -> WatchView {
    WatchView {
        service: "web".into(),
        pool: "pool-b".into(),
        until: "2030-01-01T00:01:00Z".into(),
        remaining_s: if state == WatchState::Watching { 42 } else { 0 },
        state,
        reason: match state {
            WatchState::RolledBack => Some("pool-b: 0 of 2 backends healthy, min_healthy 1".into()),
            WatchState::Cancelled => Some("superseded by change #9".into()),
            _ => None,
        },
        switch_history_id: Some(switch_id),
        rollback_history_id: (state == WatchState::RolledBack).then_some(8),
    }
}

/// `web`'s drain view: pool-a with `share_a` and `established_a` flows, pool-b with 30.
pub fn drain_view(share_a: u32, established_a: u64) -> DrainView {
    DrainView {
        service: "web".into(),
        idle_timeout_s: 120,
        pools: vec![
            PoolDrain {
                pool: "pool-a".into(),
                share: share_a,
                established: established_a,
                closing: 1,
                synced: 0,
            },
            PoolDrain { pool: "pool-b".into(), share: 100 - share_a, established: 30, closing: 0, synced: 0 },
        ],
        flows_scanned: 99,
    }
}

/// A status of instance `lb` with `services` and counters `reasons`.
pub fn status_view(services: Vec<ServiceView>, reasons: &[(&str, u64)]) -> StatusView {
    StatusView {
        instance: "lb".into(),
        version: "0.1.0".into(),
        uptime_s: 5,
        adopted: true,
        interfaces: vec![InterfaceView { name: "eth0".into(), mode: "native".into(), ..Default::default() }],
        services,
        reasons: reasons.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        warnings: vec![],
    }
}

/// `web` (see [`service`]) whose every counter was multiplied by `k` and whose pools'
/// traffic is the sum of their backends'.
pub fn counted(k: u64) -> ServiceView {
    let mut svc = service(0, 4, None);
    for p in &mut svc.pools {
        for b in &mut p.backends {
            b.traffic.packets *= k;
            b.traffic.new_flows *= k;
        }
        p.traffic = Traffic {
            packets: p.backends.iter().map(|b| b.traffic.packets).sum(),
            bytes: 0,
            new_flows: p.backends.iter().map(|b| b.traffic.new_flows).sum(),
        };
    }
    svc
}

/// Answers polls from a function of the path and how often it was asked.
pub struct Scripted<F: Fn(&str, usize) -> Result<String, ClientError>> {
    answer: F,
    /// Every path asked for, in order.
    pub calls: RefCell<Vec<String>>,
}

impl<F: Fn(&str, usize) -> Result<String, ClientError>> Daemon for Scripted<F> {
    fn fetch(&self, path: &str) -> Result<String, ClientError> {
        let n = self.calls.borrow().iter().filter(|p| *p == path).count();
        self.calls.borrow_mut().push(path.to_owned());
        (self.answer)(path, n)
    }
}

/// A [`Scripted`] daemon.
pub fn scripted<F: Fn(&str, usize) -> Result<String, ClientError>>(answer: F) -> Scripted<F> {
    Scripted { answer, calls: RefCell::new(Vec::new()) }
}

/// `v` as the daemon would send it.
pub fn json<T: Serialize>(v: &T) -> Result<String, ClientError> {
    Ok(serde_json::to_string(v).unwrap())
}
