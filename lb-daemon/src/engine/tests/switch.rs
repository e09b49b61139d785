//! Switch, hard switch, rollback, split, the `min_healthy` gate, `--force`, `--expect-active`
//! and `--dry-run`: one `SERVICES` write per change, none for a refused one.

use super::*;
use crate::api::model::{ErrorCode, HistoryKind, RollbackRequest, SplitRequest, SwitchMode};

#[test]
fn a_switch_is_exactly_one_services_write_to_the_prebuilt_table() {
    let mut r = Rig::new(CONFIG);
    assert_eq!(r.service(), svc(r.slot("pool-a"), 1));
    let b = r.slot("pool-b");
    let out = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(out.changed);
    assert_eq!((out.mode, out.epoch, out.history_id), (SwitchMode::Drain, 1, Some(1)));
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(b, 1))]);
    assert_eq!(r.active(), Active::Pool("pool-b".into()));
    // Persisted with the history entry.
    let saved = r.store.last();
    assert_eq!(saved.services["web"].active, Active::Pool("pool-b".into()));
    assert_eq!(saved.services["web"].previous, Some(Active::Pool("pool-a".into())));
    assert_eq!(saved.history.last().unwrap().kind, HistoryKind::Switch);
    // The same switch again changes nothing and writes nothing.
    let saves = r.store.count();
    let again = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(!again.changed && again.warnings.is_empty());
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.store.count(), saves);
}

#[test]
fn a_hard_switch_bumps_the_epoch_in_the_same_single_write() {
    let mut r = Rig::new(CONFIG);
    let b = r.slot("pool-b");
    let out = r.core.switch(None, &SwitchRequest { hard: true, ..to("pool-b") }, "test").unwrap();
    assert_eq!((out.mode, out.epoch), (SwitchMode::Hard, 2));
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(b, 2))]);
    assert_eq!(r.store.last().services["web"].epoch, 2);
    // A hard "switch" to the active pool is a re-balance: the epoch moves again.
    let out = r.core.switch(None, &SwitchRequest { hard: true, ..to("pool-b") }, "test").unwrap();
    assert!(out.changed);
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(b, 3))]);
}

#[test]
fn rollback_returns_with_one_write_and_twice_comes_back() {
    let mut r = Rig::new(CONFIG);
    let (a, b) = (r.slot("pool-a"), r.slot("pool-b"));
    let e = r.core.rollback(None, &RollbackRequest::default(), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert_eq!(r.writes(), vec![]);
    r.core.switch(None, &to("pool-b"), "test").unwrap();
    r.writes();
    let out = r.core.rollback(None, &RollbackRequest::default(), "test").unwrap();
    assert_eq!((out.before.to_string(), out.after.to_string()), ("pool-b".into(), "pool-a".into()));
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(a, 1))]);
    assert_eq!(r.core.state.history.last().unwrap().kind, HistoryKind::Rollback);
    r.core.rollback(None, &RollbackRequest { hard: true, ..Default::default() }, "test").unwrap();
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(b, 2))]);
}

#[test]
fn rollback_is_not_gated_by_min_healthy() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &to("pool-b"), "test").unwrap();
    // pool-a has min_healthy 1: take both its backends down.
    r.core.on_health(0, false, Some("refused".into()));
    r.core.on_health(1, false, Some("refused".into()));
    r.writes();
    let a = r.slot("pool-a");
    r.core.rollback(None, &RollbackRequest::default(), "test").unwrap();
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(a, 1))]);
}

#[test]
fn a_split_writes_its_table_beside_the_live_one_then_one_services_write() {
    let mut r = Rig::new(CONFIG);
    let req = SplitRequest { weights: weights(&[("pool-a", 90), ("pool-b", 10)]), ..Default::default() };
    let out = r.core.split(None, &req, "test").unwrap();
    assert!(out.changed);
    let w = r.writes();
    let [MapWrite::Table(slot), MapWrite::Service(0, s)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_eq!(*s, svc(*slot, 1));
    assert!(![r.slot("pool-a"), r.slot("pool-b")].contains(slot), "a slot of its own");
    let table = &r.core.maps.tables[slot];
    let on_a = table.iter().filter(|&&i| i < 2).count();
    assert!((350..=372).contains(&on_a), "about 90% of 401 slots on pool-a: {on_a}");
    // A new split goes beside the live split table, then the old one is free again.
    let req = SplitRequest { weights: weights(&[("pool-a", 50), ("pool-b", 50)]), ..Default::default() };
    r.core.split(None, &req, "test").unwrap();
    let w = r.writes();
    let [MapWrite::Table(slot2), MapWrite::Service(0, s2)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_ne!(slot2, slot);
    assert_eq!(*s2, svc(*slot2, 1));
    // Ending the split: one write back to a pool table.
    r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-b"), 1))]);
    assert!(!r.core.split_slots.contains_key("web"));
}

#[test]
fn bad_splits_are_refused_before_any_write() {
    let mut r = Rig::new(CONFIG);
    for (ws, code) in [
        (weights(&[("pool-a", 100)]), ErrorCode::InvalidRequest),
        (weights(&[("pool-a", 60), ("pool-b", 30)]), ErrorCode::InvalidRequest),
        (weights(&[("pool-a", 50), ("pool-a", 50)]), ErrorCode::InvalidRequest),
        (weights(&[("pool-a", 50), ("pool-x", 50)]), ErrorCode::NotFound),
    ] {
        let e = r.core.split(None, &SplitRequest { weights: ws, ..Default::default() }, "t").unwrap_err();
        assert_eq!(e.code, code, "{e}");
    }
    let e = r.core.switch(None, &to("pool-x"), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = r.core.switch(Some("api"), &to("pool-b"), "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = r.core.switch(None, &SwitchRequest { watch_s: Some(0), ..to("pool-b") }, "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.store.count(), 1, "only the start-up write");
}

#[test]
fn a_split_the_table_size_cannot_hold_is_refused_with_nothing_changed() {
    // 211 slots hold either pool (2 backends) but not both at once (4 backends need 400). The
    // config (401) passes validation; the maps are the smaller ones a daemon keeps when it adopts
    // pins created before ring_size was raised (a new size needs `shutdown --detach`).
    let maps = FakeMaps::new(DataplaneOptions { ring_size: 211, ..options(CONFIG) });
    let mut r = Rig::start(CONFIG, maps, empty_state(), false);
    let before = r.core.state.clone();
    let saves = r.store.count();
    let req = SplitRequest { weights: weights(&[("pool-a", 50), ("pool-b", 50)]), ..Default::default() };
    let e = r.core.split(None, &req, "t").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("too small") && e.message.contains("nothing changed"), "{e}");
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.state, before);
    assert_eq!(r.store.count(), saves);
}

#[test]
fn the_min_healthy_gate_refuses_and_force_overrides_it() {
    let mut r = Rig::new(CONFIG);
    r.core.on_health(2, false, Some("connection refused".into()));
    // pool-b is not active: its table is rebuilt, no service moves.
    let w = r.writes();
    assert!(matches!(w.as_slice(), [MapWrite::Table(_)]), "{w:?}");
    let before = r.core.state.clone();
    let e = r.core.switch(None, &to("pool-b"), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("pool-b has 1 healthy backend(s), min_healthy is 2"), "{e}");
    assert!(e.message.contains("10.0.2.1:8080 (connection refused)"), "{e}");
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.state, before);
    // A split that includes pool-b is gated too.
    let req = SplitRequest { weights: weights(&[("pool-a", 90), ("pool-b", 10)]), ..Default::default() };
    assert_eq!(r.core.split(None, &req, "t").unwrap_err().code, ErrorCode::Refused);
    assert_eq!(r.writes(), vec![]);
    // --force: one write, and the warning is kept in the history.
    let out = r.core.switch(None, &SwitchRequest { force: true, ..to("pool-b") }, "test").unwrap();
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].starts_with("forced: pool-b has 1 healthy"), "{:?}", out.warnings);
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-b"), 1))]);
    assert_eq!(r.core.state.history.last().unwrap().reason.as_deref(), Some(out.warnings[0].as_str()));
    // The live table only holds the healthy backend.
    assert!(r.core.maps.live_table(0).iter().all(|&i| i == 3));
}

#[test]
fn expect_active_is_a_compare_and_swap() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &to("pool-b"), "alice").unwrap();
    r.writes();
    let before = r.core.state.clone();
    let req = SwitchRequest { expect_active: Some("pool-a".into()), ..to("pool-a") };
    let e = r.core.switch(None, &req, "bob").unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(
        e.message.contains("expected pool-a to be active, but pool-b is") && e.message.contains("alice"),
        "{e}"
    );
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.state, before);
    let rb = RollbackRequest { expect_active: Some("pool-a".into()), ..Default::default() };
    assert_eq!(r.core.rollback(None, &rb, "bob").unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(r.writes(), vec![]);
    let req = SwitchRequest { expect_active: Some("pool-b".into()), ..to("pool-a") };
    r.core.switch(None, &req, "bob").unwrap();
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-a"), 1))]);
    // A split's text form is what a CAS compares against.
    let split = SplitRequest { weights: weights(&[("pool-a", 90), ("pool-b", 10)]), ..Default::default() };
    r.core.split(None, &split, "t").unwrap();
    let text = r.active().to_string();
    r.writes();
    let req = SwitchRequest { expect_active: Some(text), ..to("pool-b") };
    r.core.switch(None, &req, "t").unwrap();
    assert_eq!(service_writes(&r.writes()).len(), 1);
}

#[test]
fn a_dry_run_describes_and_changes_nothing() {
    let mut r = Rig::new(CONFIG);
    let saves = r.store.count();
    let out = r.core.switch(None, &SwitchRequest { dry_run: true, hard: true, ..to("pool-b") }, "t").unwrap();
    assert!(out.changed && out.dry_run);
    assert_eq!(out.epoch, 2);
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.store.count(), saves);
    assert_eq!(r.active(), Active::Pool("pool-a".into()));
}
