//! The fleet's decisions against an in-memory etcd ([`MemStore`]) and fake maps: several hosts'
//! nodes over one store, each stepped by hand, so every interleaving is explicit.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::change::ChangeRequest;
use super::memory::MemStore;
use super::node::FleetNode;
use super::records::{HistoryRecord, Keys, WatchRecord};
use crate::api::model::{Active, ErrorCode, HistoryKind, WatchState};
use crate::dataplane::fake::FakeMaps;
use crate::engine::tests::{CONFIG, MemStore as StateMem, Rig};

/// One host: its node, its core's state store.
pub(super) struct Host {
    pub(super) node: Arc<FleetNode<FakeMaps>>,
    state: StateMem,
    clock: Arc<std::sync::atomic::AtomicU64>,
}

pub(super) fn host(store: &MemStore, id: u32, name: &str) -> Host {
    host_with(store, id, name, CONFIG)
}

/// lb1 and lb2, both in sync, each with the other's status in its cache (lb1 stepped again
/// after lb2 published): a change on lb1 is decided on its watch cache.
fn in_sync_pair(store: &MemStore) -> (Host, Host) {
    let (a, b) = (host(store, 1, "lb1"), host(store, 2, "lb2"));
    a.step();
    b.step();
    a.step();
    (a, b)
}

/// A host whose config is `config`.
pub(super) fn host_with(store: &MemStore, id: u32, name: &str, config: &str) -> Host {
    let rig = Rig::new(config);
    let state = rig.store.clone();
    let clock = rig.clock.clone();
    let host_clock = clock.clone();
    let core = Arc::new(Mutex::new(rig.core));
    let node = FleetNode::new(
        "edge1",
        name,
        core,
        Arc::new(store.client(id)),
        Duration::from_secs(2),
        Duration::ZERO,
        None,
        Box::new(move || clock.load(Ordering::SeqCst)),
    );
    Host { node: Arc::new(node), state, clock: host_clock }
}

impl Host {
    pub(super) fn step(&self) {
        self.node.step(Duration::ZERO);
    }
    pub(super) fn switch(&self, pool: &str) -> ChangeRequest {
        let _ = self;
        ChangeRequest {
            kind: Some(HistoryKind::Switch),
            target: Some(Active::Pool(pool.into())),
            ..ChangeRequest::default()
        }
    }
    /// What `SERVICES[0]` holds: (table slot, epoch).
    fn serving(&self) -> (u32, u32) {
        let core = self.node.core.lock().unwrap();
        let s = core.maps.services[&0];
        (s.table, s.epoch)
    }
    fn active(&self) -> Active {
        self.node.core.lock().unwrap().local_desired("web").unwrap().0
    }
    fn down(&self, index: u32) {
        self.node.core.lock().unwrap().on_health(index, false, Some("connection refused".into()));
    }
}

fn pool(p: &str) -> Active {
    Active::Pool(p.into())
}

fn history(store: &MemStore) -> Vec<HistoryRecord> {
    let prefix = Keys::new("edge1").history();
    store
        .keys(&prefix)
        .into_iter()
        .filter(|k| Keys::name_in(k, &prefix).is_some())
        .map(|k| serde_json::from_str(&store.value(&k).unwrap()).unwrap())
        .collect()
}

#[test]
fn a_switch_is_one_transaction_every_host_applies_from_its_watch() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    a.step();
    b.step();
    assert!(a.node.view().in_sync && b.node.view().in_sync);
    let before = (a.serving(), b.serving());
    let commits = store.commits();
    let out = a.node.change(None, &a.switch("pool-b"), "ci").unwrap();
    assert_eq!(store.commits(), commits + 1, "one transaction");
    assert!(out.changed);
    let revision = out.revision.expect("a fleet change has a revision");
    // Not applied by the host that took it before its watch says so.
    assert_eq!((a.serving(), b.serving()), before);
    assert_eq!(a.active(), pool("pool-a"));
    a.step();
    b.step();
    assert_eq!(a.active(), pool("pool-b"));
    assert_eq!(b.active(), pool("pool-b"));
    assert_eq!(a.serving(), b.serving(), "same table slot and epoch everywhere");
    assert_ne!(a.serving(), before.0);
    for h in [&a, &b] {
        let v = h.node.view();
        assert!(v.applied_revision >= revision && v.in_sync, "{v:?}");
        // The state file holds what was applied, and from which revision.
        let saved = h.state.last();
        assert_eq!(saved.services["web"].active, pool("pool-b"));
        assert!(saved.fleet_revision >= revision);
        assert_eq!(saved.history.last().unwrap().requester, "ci");
    }
    let h = history(&store);
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].kind, &h[0].to, h[0].via.as_str(), h[0].forced),
        (HistoryKind::Switch, &pool("pool-b"), "lb1", false)
    );
    // Both hosts marked it applied.
    let marks = store.keys(&format!("{}{:020}/applied/", Keys::new("edge1").history(), h[0].seq));
    assert_eq!(marks.len(), 2, "{marks:?}");
    // Rollback: same path, back to pool-a, from either host.
    let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
    let out = b.node.change(None, &back, "ci").unwrap();
    assert_eq!(out.after, pool("pool-a"));
    a.step();
    b.step();
    assert_eq!((a.active(), b.active()), (pool("pool-a"), pool("pool-a")));
    assert_eq!(a.serving(), before.0);
}

#[test]
fn a_hard_switch_has_the_same_epoch_on_every_host() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    a.step();
    b.step();
    let epoch = a.serving().1;
    let req = ChangeRequest { hard: true, ..a.switch("pool-b") };
    let out = b.node.change(None, &req, "ci").unwrap();
    assert_eq!(out.epoch, epoch.wrapping_add(1).max(1));
    a.step();
    b.step();
    assert_eq!(a.serving().1, out.epoch);
    assert_eq!(b.serving().1, out.epoch);
}

#[test]
fn two_expect_active_writers_at_once_exactly_one_wins() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    let (from, to) = (["pool-a", "pool-b"], ["pool-b", "pool-a"]);
    for round in 0..20 {
        a.step();
        b.step();
        let req = ChangeRequest { expect_active: Some(from[round % 2].into()), ..a.switch(to[round % 2]) };
        let (na, nb) = (a.node.clone(), b.node.clone());
        let (ra, rb) = (req.clone(), req);
        let ta = std::thread::spawn(move || na.change(None, &ra, "a"));
        let tb = std::thread::spawn(move || nb.change(None, &rb, "b"));
        let results = [ta.join().unwrap(), tb.join().unwrap()];
        let won = results.iter().filter(|r| r.as_ref().is_ok_and(|o| o.changed)).count();
        let conflicts =
            results.iter().filter(|r| r.as_ref().is_err_and(|e| e.code == ErrorCode::Conflict)).count();
        assert_eq!((won, conflicts), (1, 1), "round {round}: {results:?}");
    }
    assert_eq!(history(&store).len(), 20);
}

#[test]
fn etcd_unreachable_refuses_every_change_and_forwarding_stays() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    a.step();
    b.step();
    let serving = (a.serving(), b.serving());
    store.set_down(true);
    let e = a.node.change(None, &a.switch("pool-b"), "ci").unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("nothing changed"), "{e}");
    a.step();
    b.step();
    assert_eq!((a.serving(), b.serving()), serving, "forwarding unchanged");
    let v = a.node.view();
    assert!(!v.connected && !v.in_sync && v.problem.is_some(), "{v:?}");
    let mut metrics = String::new();
    a.node.render_metrics(&mut metrics);
    assert!(metrics.contains("lb_fleet_in_sync 0") && metrics.contains("lb_fleet_connected 0"), "{metrics}");
    // Back: b changes while a has not resynced yet; a resyncs before it says it is in sync.
    store.set_down(false);
    std::thread::sleep(super::node::RETRY);
    b.step();
    let out = b.node.change(None, &b.switch("pool-b"), "ci").unwrap();
    assert!(!a.node.view().in_sync);
    std::thread::sleep(super::node::RETRY);
    a.step();
    let v = a.node.view();
    assert!(v.in_sync && v.connected && v.applied_revision >= out.revision.unwrap(), "{v:?}");
    assert_eq!(a.active(), pool("pool-b"));
    let mut metrics = String::new();
    a.node.render_metrics(&mut metrics);
    assert!(metrics.contains("lb_fleet_in_sync 1"), "{metrics}");
}

#[test]
fn the_gate_uses_every_live_host_and_force_is_recorded() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    b.down(2); // pool-b needs both of its backends
    a.step();
    b.step();
    a.step();
    assert_eq!(a.node.view().hosts.len(), 2);
    let e = a.node.change(None, &a.switch("pool-b"), "ci").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("on lb2") && !e.message.contains("on lb1"), "{e}");
    assert_eq!(history(&store).len(), 0);
    let forced = ChangeRequest { force: true, ..a.switch("pool-b") };
    let out = a.node.change(None, &forced, "ci").unwrap();
    assert!(out.warnings.iter().any(|w| w.starts_with("forced: on lb2")), "{out:?}");
    let h = history(&store);
    assert!(h[0].forced && h[0].reason.as_deref().unwrap().contains("lb2"), "{h:?}");
    // A host whose lease expired is no longer part of the gate.
    let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
    a.node.change(None, &back, "ci").unwrap();
    store.expire_lease(2);
    a.step();
    assert_eq!(a.node.view().hosts.len(), 1);
    a.node.change(None, &a.switch("pool-b"), "ci").unwrap();
}

#[test]
fn a_watch_rolls_the_fleet_back_once_even_without_the_host_that_took_it() {
    let store = MemStore::default();
    let (a, b, c) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"), host(&store, 3, "lb3"));
    for h in [&a, &b, &c] {
        h.step();
    }
    let req = ChangeRequest { watch_s: Some(60), ..a.switch("pool-b") };
    let out = a.node.change(None, &req, "ci").unwrap();
    assert_eq!(out.watch.as_ref().map(|w| w.state), Some(WatchState::Watching));
    for h in [&a, &b, &c] {
        h.step();
    }
    // lb1 dies (never steps again); pool-b fails on lb2 and lb3.
    store.expire_lease(1);
    b.down(3);
    c.down(3);
    b.step();
    c.step();
    b.step();
    c.step();
    let h = history(&store);
    let rollbacks: Vec<&HistoryRecord> = h.iter().filter(|r| r.kind == HistoryKind::AutoRollback).collect();
    assert_eq!(rollbacks.len(), 1, "{h:?}");
    assert_eq!(rollbacks[0].to, pool("pool-a"));
    assert_eq!((b.active(), c.active()), (pool("pool-a"), pool("pool-a")));
    let w: WatchRecord =
        serde_json::from_str(&store.value(&Keys::new("edge1").watch("web")).unwrap()).unwrap();
    assert_eq!(w.state, WatchState::RolledBack);
    assert!(matches!(w.rolled_back_by.as_deref(), Some("lb2" | "lb3")), "{w:?}");
    // Later turns change nothing more.
    b.step();
    c.step();
    assert_eq!(history(&store).len(), 2);
}

#[test]
fn a_watch_that_ends_healthy_passes_and_a_later_change_cancels_the_next() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    a.step();
    b.step();
    let req = ChangeRequest { watch_s: Some(1), ..a.switch("pool-b") };
    a.node.change(None, &req, "ci").unwrap();
    a.step();
    b.step();
    assert_eq!(b.node.watch_view("web").unwrap().state, WatchState::Watching);
    // The window ends with pool-b healthy (by lb2's clock): passed, for every host.
    b.clock.fetch_add(1_001, Ordering::SeqCst);
    b.step();
    a.step();
    assert_eq!(a.node.watch_view("web").unwrap().state, WatchState::Passed);
    // A new watch, then a rollback by someone: the watch is cancelled, nothing rolls back.
    let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
    b.node.change(None, &back, "ci").unwrap();
    a.step();
    let req = ChangeRequest { watch_s: Some(60), ..a.switch("pool-b") };
    a.node.change(None, &req, "ci").unwrap();
    a.step();
    // lb2 has not seen that watch yet (its cache holds the passed one): its change is decided
    // again on a fresh read and cancels the running watch. Before the fix it wrote its stale
    // record over it (cancelling the passed watch of switch #3, the running one lost).
    let watched = a.node.watch_view("web").unwrap().switch_history_id;
    assert_ne!(b.node.watch_view("web").unwrap().switch_history_id, watched);
    b.node.change(None, &back, "ci").unwrap();
    a.step();
    b.step();
    let w = a.node.watch_view("web").unwrap();
    assert_eq!((w.state, w.switch_history_id), (WatchState::Cancelled, watched), "{w:?}");
    a.down(3);
    a.step();
    b.step();
    assert_eq!(history(&store).iter().filter(|r| r.kind == HistoryKind::AutoRollback).count(), 0);
    assert_eq!(a.active(), pool("pool-a"));
}

#[test]
fn a_desired_state_a_host_cannot_serve_makes_it_say_it_lags() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    a.step();
    b.step();
    // A desired state naming a pool lb2 does not have (another config), written as a host would.
    let keys = Keys::new("edge1");
    let bad = r#"{"active":{"pool":"pool-z"},"previous":{"pool":"pool-a"},"epoch":1,"seq":99}"#;
    let c = store.client(9);
    use super::store::DesiredStore;
    let txn = super::store::Txn { compares: vec![], puts: vec![(keys.service("web"), bad.into())] };
    c.commit(&txn).unwrap();
    let serving = b.serving();
    b.step();
    let v = b.node.view();
    assert!(!v.in_sync && v.problem.as_deref().unwrap().contains("pool-z"), "{v:?}");
    assert_eq!(b.serving(), serving, "nothing applied");
    let mut metrics = String::new();
    b.node.render_metrics(&mut metrics);
    assert!(metrics.contains("lb_fleet_in_sync 0"), "{metrics}");
}

/// A fresh, empty etcd: the first host seeds every service's desired state from its own (one
/// create-if-absent transaction), the second finds it there; both report themselves in sync at
/// the SAME applied revision, that of the seeded desired state (before the fix each reported
/// the revision of its own read, which the other host's status write had moved, and nothing
/// was written to etcd).
#[test]
fn a_fresh_empty_etcd_is_seeded_once_and_every_host_is_in_sync_at_one_revision() {
    let store = MemStore::default();
    let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
    let key = Keys::new("edge1").service("web");
    assert!(store.value(&key).is_none());
    a.step();
    let seeded = store.value(&key).expect("the first host seeded the service's desired state");
    let d: super::records::DesiredService = serde_json::from_str(&seeded).unwrap();
    assert_eq!((d.active, d.seq), (pool("pool-a"), 0));
    let commits = store.commits();
    b.step();
    a.step();
    assert_eq!(store.commits(), commits, "the second host seeded nothing");
    let (va, vb) = (a.node.view(), b.node.view());
    assert!(va.in_sync && vb.in_sync, "{va:?} {vb:?}");
    assert!(va.applied_revision > 0, "{va:?}");
    assert_eq!(va.applied_revision, vb.applied_revision, "{va:?} {vb:?}");
}

/// A host's etcd client that notes, at each applied mark it writes (with its status), the
/// applied revision the host reports at that moment.
struct MarkSpy {
    inner: super::memory::MemClient,
    node: Arc<std::sync::OnceLock<std::sync::Weak<FleetNode<FakeMaps>>>>,
    seen: Arc<Mutex<Vec<i64>>>,
}

impl super::store::DesiredStore for MarkSpy {
    fn get(&self, key: &str) -> Result<(Option<super::store::Kv>, i64), super::store::StoreError> {
        self.inner.get(key)
    }
    fn get_prefix(&self, prefix: &str) -> Result<super::store::Snapshot, super::store::StoreError> {
        self.inner.get_prefix(prefix)
    }
    fn commit(&self, txn: &super::store::Txn) -> Result<Option<i64>, super::store::StoreError> {
        self.inner.commit(txn)
    }
    fn put_leased(
        &self,
        key: &str,
        value: &str,
        also: &[(String, String)],
    ) -> Result<i64, super::store::StoreError> {
        if also.iter().any(|(k, _)| k.contains("/applied/"))
            && let Some(node) = self.node.get().and_then(std::sync::Weak::upgrade)
        {
            self.seen.lock().unwrap().push(node.view().applied_revision);
        }
        self.inner.put_leased(key, value, also)
    }
    fn keep_alive(&self) -> Result<bool, super::store::StoreError> {
        self.inner.keep_alive()
    }
    fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<Box<dyn super::store::Feed>, super::store::StoreError> {
        self.inner.watch(prefix, from)
    }
}

#[test]
fn a_host_reports_a_change_applied_before_it_writes_its_applied_mark_and_state_file() {
    let store = MemStore::default();
    let a = host(&store, 1, "lb1");
    let rig = Rig::new(CONFIG);
    let state = rig.store.clone();
    let spy_node = Arc::new(std::sync::OnceLock::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let spy = MarkSpy { inner: store.client(2), node: spy_node.clone(), seen: seen.clone() };
    let node = Arc::new(FleetNode::new(
        "edge1",
        "lb2",
        Arc::new(Mutex::new(rig.core)),
        Arc::new(spy),
        Duration::from_secs(2),
        Duration::ZERO,
        None,
        Box::new(|| crate::engine::tests::T0_MS),
    ));
    let _ = spy_node.set(Arc::downgrade(&node));
    a.step();
    node.step(Duration::ZERO);
    let out = a.node.change(None, &a.switch("pool-b"), "ci").unwrap();
    let revision = out.revision.unwrap();
    let saves = state.count();
    node.step(Duration::ZERO);
    assert_eq!(*seen.lock().unwrap(), vec![revision], "applied reported before the mark is written");
    // By the end of the turn the whole state file holds it, and no pending record is left.
    assert!(state.count() > saves);
    assert_eq!(state.last().services["web"].active, pool("pool-b"));
    assert_eq!(state.last().fleet_revision, revision);
    assert!(state.pending.lock().unwrap().is_none());
}

#[test]
fn a_change_on_an_in_sync_host_is_one_round_trip_to_etcd() {
    let store = MemStore::default();
    let (a, _b) = in_sync_pair(&store);
    assert!(a.node.view().in_sync && a.node.view().hosts.len() == 2);
    let calls = store.calls();
    let out = a.node.change(None, &a.switch("pool-b"), "ci").unwrap();
    assert!(out.changed);
    assert_eq!(store.calls() - calls, 1, "only the transaction: decided and gated on the watch cache");
    // A host out of sync reads etcd (and an unreachable etcd refuses the change).
    store.set_down(true);
    a.step();
    store.set_down(false);
    assert!(!a.node.view().in_sync);
    let calls = store.calls();
    let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
    assert_eq!(a.node.change(None, &back, "ci").unwrap().after, pool("pool-a"));
    assert_eq!(
        store.calls() - calls,
        3,
        "reads of the service and its watch record, the transaction (no gate on a rollback)"
    );
}

#[test]
fn a_change_decided_on_a_stale_cache_does_not_overwrite_a_newer_desired_state() {
    let store = MemStore::default();
    let (a, b) = in_sync_pair(&store);
    // b switches; a has not seen it yet (its cache says pool-a, still in sync).
    b.node.change(None, &b.switch("pool-b"), "b").unwrap();
    let commits = store.commits();
    let out = a.node.change(None, &a.switch("pool-b"), "a").unwrap();
    assert!(!out.changed, "decided again on etcd: pool-b is active already: {out:?}");
    assert_eq!(store.commits(), commits, "nothing written over b's change");
    // A rollback on the stale cache (which has nothing to roll back to) is decided on etcd.
    let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
    let out = a.node.change(None, &back, "a").unwrap();
    assert_eq!((out.before.clone(), out.after.clone()), (pool("pool-b"), pool("pool-a")));
    // Still stale (pool-a at its first revision): the transaction fails, the switch is decided
    // again on what etcd holds.
    let out = a.node.change(None, &a.switch("pool-b"), "a").unwrap();
    assert!(out.changed);
    let h = history(&store);
    assert_eq!(h.len(), 3, "{h:?}");
    for pair in h.windows(2) {
        assert_eq!(pair[1].from, pair[0].to, "each change starts from the one before: {h:?}");
    }
    a.step();
    b.step();
    assert_eq!((a.active(), b.active()), (pool("pool-b"), pool("pool-b")));
}

#[test]
fn expect_active_on_a_stale_cache_answers_on_what_etcd_holds() {
    let store = MemStore::default();
    let (a, b) = in_sync_pair(&store);
    b.node.change(None, &b.switch("pool-b"), "b").unwrap();
    // a's cache still says pool-a: the expectation matches it, not etcd.
    let commits = store.commits();
    let req = ChangeRequest { expect_active: Some("pool-a".into()), ..a.switch("pool-b") };
    let e = a.node.change(None, &req, "a").unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains("pool-b"), "answered on etcd's state: {e}");
    assert_eq!(store.commits(), commits);
    // The expectation matches etcd, not the cache: no conflict.
    let req = ChangeRequest { expect_active: Some("pool-b".into()), ..a.switch("pool-a") };
    let out = a.node.change(None, &req, "a").unwrap();
    assert!(out.changed && out.after == pool("pool-a"), "{out:?}");
    assert_eq!(store.commits(), commits + 1);
}

/// A host whose status changes at every turn (a switch every few milliseconds here) still
/// renews its lease every third of the TTL: a status write attaches the key to the lease but
/// does not renew it. Before the fix each write counted as a renewal, so while switches kept
/// coming the lease was never renewed and expired, and the host vanished from every host's view
/// of the fleet (and from `--wait-fleet`'s) until its next renewal, 700 ms later on a 2 s TTL.
#[test]
fn frequent_status_writes_do_not_stand_in_for_lease_renewals() {
    let store = MemStore::default();
    let rig = Rig::new(CONFIG);
    let node = FleetNode::new(
        "edge1",
        "lb1",
        Arc::new(Mutex::new(rig.core)),
        Arc::new(store.client(1)),
        Duration::from_millis(30),
        Duration::ZERO,
        None,
        Box::new(|| crate::engine::tests::T0_MS),
    );
    node.step(Duration::ZERO);
    let (renewals, start) = (store.keepalives(), std::time::Instant::now());
    let mut switches = 0u32;
    while start.elapsed() < Duration::from_millis(100) {
        let pool = if switches.is_multiple_of(2) { "pool-b" } else { "pool-a" };
        let req = ChangeRequest {
            kind: Some(HistoryKind::Switch),
            target: Some(Active::Pool(pool.into())),
            ..ChangeRequest::default()
        };
        assert!(node.change(None, &req, "ci").unwrap().changed);
        node.step(Duration::ZERO);
        switches += 1;
    }
    // Due every 10 ms: about 10 renewals in 100 ms, at least 3 however slow the machine.
    let renewed = store.keepalives() - renewals;
    assert!(renewed >= 3, "{renewed} renewals over 100 ms of {switches} switches (each one a status write)");
}
