//! A fleet change is made live on its pending record and the whole state file follows after
//! the host reported it applied (see `engine::fleet_pending`): a crash in between must come back
//! to the new state, never to the older one the state file still holds.

use super::*;
use crate::{
    api::model::HistoryKind,
    engine::fleet_pending,
    fleet::etcd::records::{DesiredService, HistoryRecord},
};

/// A desired state of service `web` (shared with the other fleet tests).
pub(super) fn desired(pool: &str, previous: &str, seq: u64) -> DesiredService {
    DesiredService {
        active: Active::Pool(pool.into()),
        previous: Some(Active::Pool(previous.into())),
        epoch: 0,
        seq,
    }
}

fn record(seq: u64, to: &str) -> HistoryRecord {
    HistoryRecord {
        seq,
        time: "2026-11-30T00:00:00Z".into(),
        service: "web".into(),
        kind: HistoryKind::Switch,
        from: Active::Pool("pool-a".into()),
        to: Active::Pool(to.into()),
        mode: crate::api::model::SwitchMode::Drain,
        requester: "ci".into(),
        via: "lb1".into(),
        forced: false,
        reason: None,
    }
}

/// The state a start after a crash now reads: the state file, then the pending record.
pub(super) fn after_crash(r: &Rig) -> PersistedState {
    let mut state = r.store.last();
    fleet_pending::replay(&mut state, r.store.pending.lock().unwrap().as_ref());
    state
}

#[test]
fn a_crash_between_the_map_update_and_the_state_file_comes_back_to_the_new_pool() {
    let mut r = Rig::new(CONFIG);
    assert!(
        r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), Some(&record(3, "pool-b")), 7).unwrap()
    );
    assert_eq!(service_writes(&r.writes()), vec![(0, svc(r.slot("pool-b"), 0))], "one SERVICES update");
    // The crash: the maps (pinned) serve pool-b; the state file was not rewritten yet.
    assert_eq!(r.store.last().services["web"].active, Active::Pool("pool-a".into()));
    let state = after_crash(&r);
    let maps = std::mem::replace(&mut r.core.maps, FakeMaps::new(options(CONFIG)));
    let back = Rig::start(CONFIG, maps, state, true);
    assert_eq!(back.active(), Active::Pool("pool-b".into()), "not back behind the pinned maps");
    assert_eq!(back.service(), svc(back.slot("pool-b"), 0));
    assert_eq!(back.core.fleet_revision(), 7);
    assert_eq!(back.core.state.history.last().map(|h| h.requester.as_str()), Some("ci"));
    // That start wrote the whole state: a later record replay finds nothing newer.
    assert_eq!(back.store.last().services["web"].active, Active::Pool("pool-b".into()));
}

#[test]
fn the_pending_record_is_written_before_the_map_update_and_refuses_it_when_it_cannot_be() {
    let mut r = Rig::new(CONFIG);
    let before = r.core.state.clone();
    r.store.full.store(true, Ordering::SeqCst);
    let e = r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap_err();
    assert!(e.message.contains("nothing changed"), "{e}");
    assert_eq!(service_writes(&r.writes()), vec![], "no SERVICES write before the record is written");
    assert_eq!(r.core.state, before);
    r.store.full.store(false, Ordering::SeqCst);
    assert!(r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap());
    let pending = r.store.pending.lock().unwrap().clone().expect("a pending record");
    assert_eq!((pending.revision, pending.state.active.clone()), (7, Active::Pool("pool-b".into())));
}

#[test]
fn the_state_file_follows_after_the_apply_and_the_record_goes() {
    let mut r = Rig::new(CONFIG);
    let saves = r.store.count();
    r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), Some(&record(3, "pool-b")), 7).unwrap();
    assert_eq!(r.store.count(), saves, "no fsynced write before the map update");
    assert!(r.core.fleet_persist().unwrap());
    let saved = r.store.last();
    assert_eq!(
        (saved.services["web"].active.clone(), saved.fleet_revision),
        (Active::Pool("pool-b".into()), 7)
    );
    assert_eq!(saved.history.last().unwrap().to, Active::Pool("pool-b".into()));
    assert!(r.store.pending.lock().unwrap().is_none());
    assert!(!r.core.fleet_persist().unwrap(), "nothing left to write");
}

#[test]
fn after_a_failed_state_write_the_next_change_writes_the_whole_state_before_its_map_update() {
    let mut r = Rig::new(CONFIG);
    r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap();
    r.store.full.store(true, Ordering::SeqCst);
    assert!(r.core.fleet_persist().is_err());
    r.store.full.store(false, Ordering::SeqCst);
    r.writes();
    // The record of revision 7 must not be the only trace of it once the record is replaced.
    r.core.apply_fleet("web", &desired("pool-a", "pool-b", 5), None, 9).unwrap();
    let saved = r.store.last();
    assert_eq!(
        (saved.services["web"].active.clone(), saved.fleet_revision),
        (Active::Pool("pool-a".into()), 9)
    );
    assert_eq!(service_writes(&r.writes()), vec![(0, svc(r.slot("pool-a"), 0))]);
    let state = after_crash(&r);
    assert_eq!(state.services["web"].active, Active::Pool("pool-a".into()));
}
