//! Issue 9 item 8: the desired state is persisted before a change is made live. A switch whose
//! state cannot be written is refused with nothing changed; a retry always makes the disk and
//! the maps agree.

use super::*;
use crate::api::model::{ErrorCode, HistoryKind, RollbackRequest, SplitRequest};

#[test]
fn a_switch_that_cannot_be_persisted_is_refused_and_changes_nothing() {
    let mut r = Rig::new(CONFIG);
    let before_state = r.core.state.clone();
    let before_services = r.core.maps.services.clone();
    let saves = r.store.count();
    r.store.full.store(true, Ordering::SeqCst);
    let e = r.core.switch(None, &to("pool-b"), "test").unwrap_err();
    // Internal: lbctl exits 1.
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("nothing changed") && e.message.contains("No space left on device"), "{e}");
    assert_eq!(r.writes(), vec![], "no SERVICES write when the state cannot be written");
    assert_eq!(r.core.maps.services, before_services);
    assert_eq!(r.core.state, before_state, "memory unchanged");
    assert_eq!(r.store.count(), saves);
    // Rollback and split are refused the same way.
    let split = SplitRequest { weights: weights(&[("pool-a", 50), ("pool-b", 50)]), ..Default::default() };
    assert_eq!(r.core.split(None, &split, "t").unwrap_err().code, ErrorCode::Internal);
    assert_eq!(service_writes(&r.writes()), vec![]);
    assert_eq!(r.core.state, before_state);

    // Space again: the plain retry switches, with the switch in the persisted history.
    r.store.full.store(false, Ordering::SeqCst);
    let out = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(out.changed);
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-b"), 1))]);
    let saved = r.store.last();
    assert_eq!(saved.services["web"].active, Active::Pool("pool-b".into()));
    assert_eq!(saved.history.iter().filter(|h| h.kind == HistoryKind::Switch).count(), 1);
}

#[test]
fn a_rollback_that_cannot_be_persisted_changes_nothing() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &to("pool-b"), "test").unwrap();
    r.writes();
    let before = r.core.state.clone();
    r.store.full.store(true, Ordering::SeqCst);
    let e = r.core.rollback(None, &RollbackRequest::default(), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.state, before);
    assert_eq!(r.service(), svc(r.slot("pool-b"), 1));
}

#[test]
fn when_the_map_update_fails_after_persisting_a_retry_applies_it() {
    let mut r = Rig::new(CONFIG);
    r.core.maps.fail_service_writes = 1;
    let e = r.core.switch(None, &to("pool-b"), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("run the same command again"), "{e}");
    // Disk and memory hold the new desired state; the maps do not yet.
    assert_eq!(r.store.last().services["web"].active, Active::Pool("pool-b".into()));
    assert_eq!(r.service(), svc(r.slot("pool-a"), 1));
    // The retry finds pool-b "already active" but still writes what the maps miss.
    let out = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(!out.changed);
    assert!(out.warnings.iter().any(|w| w.contains("did not serve pool-b")), "{:?}", out.warnings);
    assert_eq!(r.writes(), vec![MapWrite::Service(0, svc(r.slot("pool-b"), 1))]);
    // Converged: the next retry writes nothing.
    let out = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(!out.changed && out.warnings.is_empty());
    assert_eq!(r.writes(), vec![]);
}

#[test]
fn a_state_file_that_fell_behind_is_written_by_the_next_request() {
    let mut r = Rig::new(CONFIG);
    r.core.switch(None, &SwitchRequest { watch_s: Some(60), ..to("pool-b") }, "test").unwrap();
    // The watch passes while the disk is full: remembered as unsaved.
    r.store.full.store(true, Ordering::SeqCst);
    r.advance_ms(61_000);
    r.core.check_watches();
    assert!(r.core.unsaved);
    assert_eq!(r.store.last().watches["web"].state, crate::api::model::WatchState::Watching);
    // A plain retry of the switch converges the disk.
    r.store.full.store(false, Ordering::SeqCst);
    r.writes();
    let out = r.core.switch(None, &to("pool-b"), "test").unwrap();
    assert!(!out.changed);
    assert!(out.warnings.iter().any(|w| w.contains("state file was behind")), "{:?}", out.warnings);
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.store.last(), r.core.state);
    assert!(!r.core.unsaved);
}
