//! Runtime control of one backend (`lbctl backend drain|disable|enable|weight`): the exact map
//! writes (a new pool table beside the live one, one flip, `BACKENDS` flags around it for a
//! hard cut), the `min_healthy` gate, the history, and persistence over reloads and restarts.

use super::*;
use crate::api::model::{BackendAction, BackendAdmin, BackendRequest, ErrorCode, HistoryKind, SwitchMode};
use lb_common::maps::{BACKEND_UP, Backend, NO_BACKEND};

fn req(addr: &str, action: BackendAction) -> BackendRequest {
    BackendRequest { addr: addr.into(), action, ..BackendRequest::default() }
}

fn weight(addr: &str, w: u32) -> BackendRequest {
    BackendRequest { weight: Some(w), ..req(addr, BackendAction::Weight) }
}

/// `BACKENDS` entry of 10.0.1.1:8080 with `flags`.
fn backend0(flags: u8) -> Backend {
    let (addr, family) = crate::engine::addr_words("10.0.1.1".parse().unwrap());
    Backend { addr, port: 8080u16.to_be(), family, flags }
}

#[test]
fn drain_is_a_new_table_and_one_flip_and_keeps_established_flows() {
    let mut r = Rig::new(CONFIG);
    let live = r.slot("pool-a");
    let out = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "alice").unwrap();
    assert!(out.changed);
    assert_eq!((out.service.as_str(), out.pool.as_str()), ("web", "pool-a"));
    assert_eq!((out.before.admin, out.after.admin), (BackendAdmin::Enabled, BackendAdmin::Drain));
    let w = r.writes();
    // No BACKENDS write: established flows keep backend 0; the epoch stays.
    let [MapWrite::Table(t), MapWrite::Service(0, s)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_ne!(*t, live, "never edit the live table");
    assert_eq!(*s, svc(*t, 1));
    assert!(r.core.maps.tables[t].iter().all(|&i| i == 1), "only backend 1 takes new flows");
    // Persisted, with the history entry naming the requester.
    let saved = r.store.last();
    assert_eq!(saved, r.core.state);
    assert_eq!(saved.backend_settings["web/pool-a/10.0.1.1:8080"].admin, BackendAdmin::Drain);
    let h = saved.history.last().unwrap();
    assert_eq!((h.kind, h.mode, h.requester.as_str()), (HistoryKind::Backend, SwitchMode::Drain, "alice"));
    assert_eq!(Some(h.id), out.history_id);
    let b = h.backend.as_ref().unwrap();
    assert_eq!((b.pool.as_str(), b.addr.as_str(), b.forced), ("pool-a", "10.0.1.1:8080", false));
    assert_eq!(h.from, h.to, "the service keeps serving pool-a");
    // Shown in the status; the pool counts one healthy backend in service.
    let view = r.core.service_view(r.core.service_layout(None).unwrap());
    assert_eq!(view.pools[0].backends[0].admin, BackendAdmin::Drain);
    assert!(view.pools[0].backends[0].up, "health is its own column");
    assert_eq!(view.pools[0].healthy, 1);
    // The same request again changes nothing.
    let again = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "alice").unwrap();
    assert!(!again.changed && again.history_id.is_none());
    assert_eq!(r.writes(), vec![]);
}

#[test]
fn disable_is_a_hard_cut_after_the_flip_and_enable_undoes_it_in_the_other_order() {
    let mut r = Rig::new(CONFIG);
    r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Disable), "bob").unwrap();
    let w = r.writes();
    // Table without it, the flip, then BACKEND_UP cleared: its flows move to the new table.
    let [MapWrite::Table(t), MapWrite::Service(0, s), MapWrite::Backend(0, b)] = w.as_slice() else {
        panic!("writes: {w:?}")
    };
    assert_eq!(*s, svc(*t, 1));
    assert!(r.core.maps.tables[t].iter().all(|&i| i == 1));
    assert_eq!(*b, backend0(0), "address kept, BACKEND_UP cleared");
    assert_eq!(r.store.last().history.last().unwrap().mode, SwitchMode::Hard);
    // Enable: BACKEND_UP first, then the table with it and the flip.
    r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Enable), "bob").unwrap();
    let w = r.writes();
    let [MapWrite::Backend(0, b), MapWrite::Table(t), MapWrite::Service(0, s)] = w.as_slice() else {
        panic!("writes: {w:?}")
    };
    assert_eq!(*b, backend0(BACKEND_UP));
    assert_eq!(*s, svc(*t, 1));
    assert!(r.core.maps.tables[t].contains(&0) && r.core.maps.tables[t].contains(&1));
    // Enabled with the config's weight: no setting left to keep.
    assert!(r.store.last().backend_settings.is_empty());
}

#[test]
fn a_backend_of_an_idle_pool_only_gets_its_pool_table_rebuilt() {
    let mut r = Rig::new(CONFIG);
    // pool-b needs 2 healthy (min_healthy), but it takes no new flows: no gate.
    r.core.backend(None, &req("10.0.2.1:8080", BackendAction::Drain), "t").unwrap();
    let w = r.writes();
    let [MapWrite::Table(t)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_eq!(r.slot("pool-b"), *t);
    assert!(r.core.maps.tables[t].iter().all(|&i| i == 3));
    // A switch to pool-b now meets the gate: one of its two backends is drained.
    let e = r.core.switch(None, &to("pool-b"), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("10.0.2.1:8080 (drain by an operator)"), "{e}");
}

#[test]
fn leaving_the_active_pool_below_min_healthy_is_refused_unless_forced() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &to("pool-b"), "t").unwrap();
    r.writes();
    let saves = r.store.count();
    let state = r.core.state.clone();
    for action in [BackendAction::Drain, BackendAction::Disable] {
        let e = r.core.backend(None, &req("10.0.2.1:8080", action), "t").unwrap_err();
        assert_eq!(e.code, ErrorCode::Refused, "lbctl exits 5");
        assert!(
            e.message.contains("web/pool-b 10.0.2.1:8080: refused, nothing changed")
                && e.message.contains("left with 1 healthy backend(s) in service, min_healthy is 2")
                && e.message.contains("--force"),
            "{e}"
        );
    }
    let e = r.core.backend(None, &weight("10.0.2.1:8080", 0), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert_eq!(r.writes(), vec![]);
    assert_eq!((r.store.count(), &r.core.state), (saves, &state));
    // A weight that keeps it in service is not gated.
    r.core.backend(None, &weight("10.0.2.1:8080", 3), "t").unwrap();
    r.writes();
    // Forced: done, and recorded as forced.
    let forced = BackendRequest { force: true, ..req("10.0.2.1:8080", BackendAction::Drain) };
    let out = r.core.backend(None, &forced, "carol").unwrap();
    assert!(out.changed && out.warnings[0].starts_with("forced: pool-b"), "{:?}", out.warnings);
    let h = r.store.last().history.last().cloned().unwrap();
    assert!(h.backend.unwrap().forced);
    assert!(h.reason.unwrap().contains("min_healthy is 2"));
    assert_eq!(h.requester, "carol");
    assert!(r.core.maps.live_table(0).iter().all(|&i| i == 3));
}

#[test]
fn an_address_in_several_pools_needs_a_pool() {
    let text =
        CONFIG.replace(r#"["10.0.2.1:8080", "10.0.2.2:8080"]"#, r#"["10.0.1.1:8080", "10.0.2.2:8080"]"#);
    let mut r = Rig::new(&text);
    let e = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert_eq!(
        e.message,
        "10.0.1.1:8080 is in several pools (web/pool-a, web/pool-b); name one with --pool POOL"
    );
    let e = r.core.backend(None, &req("10.9.9.9:80", BackendAction::Drain), "t").unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, "no backend 10.9.9.9:80 in any pool"));
    let bad = BackendRequest { pool: Some("pool-z".into()), ..req("10.0.1.1:8080", BackendAction::Drain) };
    assert_eq!(r.core.backend(None, &bad, "t").unwrap_err().code, ErrorCode::NotFound);
    let e = r.core.backend(None, &req("10.0.1.1", BackendAction::Drain), "t").unwrap_err();
    assert!(e.code == ErrorCode::InvalidRequest && e.message.contains("is not ip:port"), "{e}");
    assert_eq!(r.writes(), vec![]);
    // With the pool: the pool-b member (index 2) only.
    let b = BackendRequest { pool: Some("pool-b".into()), ..req("10.0.1.1:8080", BackendAction::Drain) };
    let out = r.core.backend(Some("web"), &b, "t").unwrap();
    assert_eq!(out.pool, "pool-b");
    assert!(r.core.maps.tables[&r.slot("pool-b")].iter().all(|&i| i == 3));
    assert!(r.core.maps.live_table(0).contains(&0), "pool-a keeps its member");
}

#[test]
fn weight_changes_the_share_and_a_weight_equal_to_the_config_s_is_no_override() {
    let mut r = Rig::new(CONFIG);
    let out = r.core.backend(None, &weight("10.0.1.1:8080", 3), "t").unwrap();
    assert_eq!((out.before.weight, out.after.weight), (1, 3));
    let w = r.writes();
    let [MapWrite::Table(t), MapWrite::Service(0, _)] = w.as_slice() else { panic!("writes: {w:?}") };
    let share = r.core.maps.tables[t].iter().filter(|&&i| i == 0).count() as f64 / 401.0;
    assert!((share - 0.75).abs() < 0.02, "weight 3 of 4: {share}");
    assert_eq!(r.store.last().backend_settings["web/pool-a/10.0.1.1:8080"].weight, Some(3));
    let view = r.core.service_view(r.core.service_layout(None).unwrap());
    assert_eq!((view.pools[0].backends[0].weight, view.pools[0].backends[0].configured_weight), (3, Some(1)));
    // Bad weights change nothing.
    for bad in [weight("10.0.1.1:8080", 10_001), req("10.0.1.1:8080", BackendAction::Weight)] {
        assert_eq!(r.core.backend(None, &bad, "t").unwrap_err().code, ErrorCode::InvalidRequest);
    }
    let drain_with_weight = BackendRequest { weight: Some(2), ..req("10.0.1.1:8080", BackendAction::Drain) };
    assert_eq!(r.core.backend(None, &drain_with_weight, "t").unwrap_err().code, ErrorCode::InvalidRequest);
    assert_eq!(r.writes(), vec![]);
    // Back to the config's weight: nothing left to keep.
    r.core.backend(None, &weight("10.0.1.1:8080", 1), "t").unwrap();
    assert!(r.store.last().backend_settings.is_empty());
}

#[test]
fn settings_survive_reloads_and_restarts_until_the_config_removes_the_backend() {
    let mut r = Rig::new(CONFIG);
    r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Disable), "t").unwrap();
    r.core.backend(None, &weight("10.0.2.2:8080", 5), "t").unwrap();
    // A reload that changes the service elsewhere keeps both.
    let text = CONFIG.replace("min_healthy = 2", "min_healthy = 1");
    r.core.reload(config(&text), "t").unwrap();
    assert_eq!(r.core.maps.backends[&0].flags, 0, "still disabled");
    assert!(!r.core.maps.live_table(0).contains(&0));
    assert_eq!(r.core.layout.service("web").unwrap().pools[1].backends[1].weight, 5);
    // A restart on the saved state (pins adopted) keeps them too.
    let saved = r.store.last();
    let maps = std::mem::replace(&mut r.core.maps, FakeMaps::new(options(&text)));
    let mut again = Rig::start(&text, maps, saved, true);
    assert_eq!(again.core.maps.backends[&0].flags, 0);
    assert!(again.core.maps.live_table(0).iter().all(|&i| i == 1));
    let view = again.core.service_view(again.core.service_layout(None).unwrap());
    assert_eq!(view.pools[0].backends[0].admin, BackendAdmin::Disabled);
    assert_eq!(view.pools[1].backends[1].weight, 5);
    // The config drops 10.0.1.1: its setting goes with it.
    let text = text.replace(r#"["10.0.1.1:8080", "10.0.1.2:8080"]"#, r#"["10.0.1.2:8080"]"#);
    again.core.reload(config(&text), "t").unwrap();
    let kept: Vec<String> = again.store.last().backend_settings.keys().cloned().collect();
    assert_eq!(kept, vec!["web/pool-b/10.0.2.2:8080"]);
}

#[test]
fn a_drained_backend_stays_out_when_its_health_comes_back() {
    let mut r = Rig::new(CONFIG);
    r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap();
    r.core.on_health(0, false, Some("refused".into()));
    r.core.on_health(0, true, None);
    assert!(r.core.maps.live_table(0).iter().all(|&i| i == 1));
    // Draining the last one (min_healthy 1) is refused; forced, the pool drops new flows.
    let e = r.core.backend(None, &req("10.0.1.2:8080", BackendAction::Drain), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    let forced = BackendRequest { force: true, ..req("10.0.1.2:8080", BackendAction::Drain) };
    r.core.backend(None, &forced, "t").unwrap();
    assert!(r.core.maps.live_table(0).iter().all(|&i| i == NO_BACKEND));
}

#[test]
fn a_change_that_cannot_be_persisted_changes_nothing_and_a_failed_flip_is_repaired_by_a_retry() {
    let mut r = Rig::new(CONFIG);
    let state = r.core.state.clone();
    r.store.full.store(true, Ordering::SeqCst);
    let e = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("nothing changed"), "{e}");
    assert_eq!((r.writes(), &r.core.state), (vec![], &state));
    r.store.full.store(false, Ordering::SeqCst);
    // Persisted, but the flip fails: recorded, and the retry applies it.
    r.core.maps.fail_service_writes = 1;
    let e = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap_err();
    assert!(e.message.contains("run the same command again"), "{e}");
    assert!(r.core.maps.live_table(0).contains(&0), "not live yet");
    r.writes();
    let out = r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap();
    assert!(!out.changed && out.warnings[0].contains("did not serve"), "{:?}", out.warnings);
    let w = r.writes();
    assert!(
        matches!(w.as_slice(), [MapWrite::Backend(0, _), MapWrite::Table(_), MapWrite::Service(0, _)]),
        "{w:?}"
    );
    assert!(!r.core.maps.live_table(0).contains(&0));
    // Repaired: once more is a no-op.
    r.core.backend(None, &req("10.0.1.1:8080", BackendAction::Drain), "t").unwrap();
    assert_eq!(r.writes(), vec![]);
}

#[test]
fn a_split_serving_the_pool_gets_a_new_split_table_and_one_flip() {
    let mut r = Rig::new(CONFIG);
    let split = crate::api::model::SplitRequest {
        weights: weights(&[("pool-a", 50), ("pool-b", 50)]),
        ..Default::default()
    };
    r.core.split(None, &split, "t").unwrap();
    r.writes();
    r.core.backend(None, &req("10.0.1.2:8080", BackendAction::Drain), "t").unwrap();
    let w = r.writes();
    let [MapWrite::Table(_), MapWrite::Table(t), MapWrite::Service(0, s)] = w.as_slice() else {
        panic!("writes: {w:?}")
    };
    assert_eq!(*s, svc(*t, 1));
    assert!(!r.core.maps.tables[t].contains(&1) && r.core.maps.tables[t].contains(&0));
}
