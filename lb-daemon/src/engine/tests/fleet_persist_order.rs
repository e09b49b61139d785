//! The whole state file is written off the engine lock after a fleet change (see
//! `engine::persist`): an older snapshot is never written after a newer state, whatever comes
//! between the snapshot, its write and its end, and a failed write is retried.

use super::fleet_crash::{after_crash, desired};
use super::*;

fn pool(p: &str) -> Active {
    Active::Pool(p.into())
}

#[test]
fn an_older_snapshot_is_never_written_after_a_newer_state() {
    let mut r = Rig::new(CONFIG);
    r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap();
    let older = r.core.fleet_persist_job().expect("the disk is behind");
    // The engine is free while `older` waits for the persist mutex: a newer change comes; the
    // disk being behind, it writes its whole state before its map update.
    r.core.apply_fleet("web", &desired("pool-a", "pool-b", 5), None, 9).unwrap();
    assert_eq!(r.store.last().fleet_revision, 9);
    let saves = r.store.count();
    let written = older.write();
    assert!(!written.as_ref().unwrap(), "the older snapshot is skipped");
    assert_eq!(r.store.count(), saves, "nothing written over the newer state");
    assert!(!r.core.fleet_persist_done(&older, written).unwrap());
    let saved = r.store.last();
    assert_eq!((saved.services["web"].active.clone(), saved.fleet_revision), (pool("pool-a"), 9));
    assert_eq!(after_crash(&r).fleet_revision, 9);
    assert!(!r.core.fleet_persist().unwrap(), "nothing left to write");
}

#[test]
fn a_change_made_before_the_write_is_done_keeps_the_disk_at_the_newest_state() {
    let mut r = Rig::new(CONFIG);
    r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap();
    let job = r.core.fleet_persist_job().expect("the disk is behind");
    let written = job.write();
    assert!(written.as_ref().unwrap());
    assert_eq!(r.store.last().fleet_revision, 7);
    // Between the write and its end under the engine lock, a newer change.
    r.core.apply_fleet("web", &desired("pool-a", "pool-b", 5), None, 9).unwrap();
    assert!(r.core.fleet_persist_done(&job, written).unwrap());
    let state = after_crash(&r);
    assert_eq!((state.services["web"].active.clone(), state.fleet_revision), (pool("pool-a"), 9));
    assert_eq!(r.store.last().fleet_revision, 9);
    assert!(!r.core.fleet_persist().unwrap(), "nothing left to write");
}

#[test]
fn a_failed_off_lock_write_leaves_the_record_and_the_next_settle_retries() {
    let mut r = Rig::new(CONFIG);
    r.core.apply_fleet("web", &desired("pool-b", "pool-a", 3), None, 7).unwrap();
    let job = r.core.fleet_persist_job().expect("the disk is behind");
    r.store.full.store(true, Ordering::SeqCst);
    let written = job.write();
    assert!(r.core.fleet_persist_done(&job, written).is_err());
    r.store.full.store(false, Ordering::SeqCst);
    assert!(r.store.pending.lock().unwrap().is_some());
    assert_eq!(after_crash(&r).fleet_revision, 7);
    assert!(r.core.fleet_persist().unwrap());
    assert_eq!(r.store.last().fleet_revision, 7);
    assert!(r.store.pending.lock().unwrap().is_none());
}
