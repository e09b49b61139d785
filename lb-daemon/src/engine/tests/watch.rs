//! `--watch`: the window passes, or the watched pool falls below `min_healthy` and the daemon
//! rolls back by itself (one `SERVICES` write), once.

use super::*;
use crate::api::model::{HistoryKind, WatchState};

#[test]
fn a_watch_passes_when_its_window_ends_without_writes() {
    let mut r = Rig::new(CONFIG);
    let out = r.core.switch(None, &SwitchRequest { watch_s: Some(60), ..to("pool-b") }, "test").unwrap();
    let w = out.watch.expect("watch view");
    assert_eq!((w.state, w.remaining_s, w.switch_history_id), (WatchState::Watching, 60, out.history_id));
    r.writes();
    r.advance_ms(30_000);
    r.core.check_watches();
    assert_eq!(r.core.watch_view("web").unwrap().state, WatchState::Watching);
    r.advance_ms(30_001);
    r.core.check_watches();
    assert_eq!(r.core.watch_view("web").unwrap().state, WatchState::Passed);
    assert_eq!(r.store.last().watches["web"].state, WatchState::Passed);
    assert_eq!(r.writes(), vec![]);
    // A backend failing after the window does not roll back.
    r.core.on_health(2, false, None);
    assert_eq!(r.active(), Active::Pool("pool-b".into()));
}

#[test]
fn a_watched_pool_below_min_healthy_rolls_back_by_itself() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &SwitchRequest { watch_s: Some(60), ..to("pool-b") }, "ci").unwrap();
    r.writes();
    r.advance_ms(5_000);
    r.core.on_health(3, false, Some("timed out".into()));
    let w = r.writes();
    // pool-b's table without backend 3, flipped to (it is active), then the rollback's flip.
    let [MapWrite::Table(t), MapWrite::Service(0, s1), MapWrite::Service(0, s2)] = w.as_slice() else {
        panic!("writes: {w:?}")
    };
    assert_eq!(*s1, svc(*t, 1));
    assert_eq!(*s2, svc(r.slot("pool-a"), 1));
    assert_eq!(r.active(), Active::Pool("pool-a".into()));
    let view = r.core.watch_view("web").unwrap();
    assert_eq!(view.state, WatchState::RolledBack);
    assert!(view.reason.as_deref().unwrap().contains("10.0.2.2:8080 (timed out)"), "{view:?}");
    let last = r.core.state.history.last().unwrap();
    assert_eq!(last.kind, HistoryKind::AutoRollback);
    assert_eq!(view.rollback_history_id, Some(last.id));
    assert_eq!(r.store.last(), r.core.state);
    // Once: further failures change nothing.
    r.core.on_health(2, false, None);
    assert_eq!(service_writes(&r.writes()), vec![]);
}

#[test]
fn a_later_change_cancels_the_watch() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &SwitchRequest { watch_s: Some(60), ..to("pool-b") }, "ci").unwrap();
    let out = r.core.switch(None, &to("pool-a"), "ops").unwrap();
    let view = r.core.watch_view("web").unwrap();
    assert_eq!(view.state, WatchState::Cancelled);
    assert_eq!(view.reason, Some(format!("superseded by change #{}", out.history_id.unwrap())));
    r.writes();
    r.core.on_health(2, false, None);
    assert_eq!(service_writes(&r.writes()), vec![], "pool-b is not active: no flip, no rollback");
}

#[test]
fn an_automatic_rollback_that_cannot_be_persisted_waits_and_retries() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &SwitchRequest { watch_s: Some(60), ..to("pool-b") }, "ci").unwrap();
    r.store.full.store(true, Ordering::SeqCst);
    r.writes();
    r.core.on_health(3, false, Some("timed out".into()));
    // Only pool-b's rebuilt table and its flip: no rollback flip without a persisted state.
    let w = r.writes();
    assert_eq!(service_writes(&w).len(), 1, "{w:?}");
    assert_eq!(r.active(), Active::Pool("pool-b".into()));
    let view = r.core.watch_view("web").unwrap();
    assert_eq!(view.state, WatchState::Watching);
    assert!(view.reason.as_deref().unwrap().contains("automatic rollback pending"), "{view:?}");
    // Room again: the next check rolls back, with one SERVICES write.
    r.store.full.store(false, Ordering::SeqCst);
    r.core.check_watches();
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-a"), 1))]);
    assert_eq!(r.core.watch_view("web").unwrap().state, WatchState::RolledBack);
    assert_eq!(r.store.last().services["web"].active, Active::Pool("pool-a".into()));
}
