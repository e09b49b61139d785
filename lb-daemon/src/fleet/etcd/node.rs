//! One host's membership in the fleet: keeps the engine serving etcd's desired state.
//!
//! [`FleetNode::step`] is one turn of the loop the daemon runs on its own thread
//! ([`FleetNode::run`]): (re)sync when the watch is not running — read the services' desired
//! states at one revision, apply each through [`Core::apply_fleet`], then watch the cluster's
//! keys from that revision on — then wait a little for events and apply them, then publish this
//! host's status and check the fleet's `--watch` records ([`super::rollback`]). While etcd
//! cannot be reached the host keeps forwarding what it last applied, says it is out of sync, and
//! every change is refused ([`super::change`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::records::{DesiredService, HistoryRecord, HostStatus, Keys, WatchRecord};
use super::store::{DesiredStore, Event, Feed, Kv, StoreError, Txn};
use crate::dataplane::Maps;
use crate::engine::Core;

/// How long the loop waits for events before it does its periodic work (status, watches).
pub const TICK: Duration = Duration::from_millis(100);
/// How long a host waits before it resyncs after a failure (etcd unreachable, apply failed).
pub const RETRY: Duration = Duration::from_millis(500);

/// Provides the VIP addresses this host announces (from the BGP announcer, when configured).
pub type AnnouncedFn = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the node knows of the fleet (behind one mutex; never held while the core is locked).
#[derive(Default)]
pub(super) struct SyncState {
    /// The watch runs and the last call to etcd worked.
    pub connected: bool,
    /// Connected, resynced, and every desired state applied.
    pub in_sync: bool,
    /// Why not in sync.
    pub problem: Option<String>,
    /// Latest revision seen.
    pub revision: i64,
    /// Revision whose desired state this host serves.
    pub applied_revision: i64,
    /// Services' desired states with their `mod_revision`.
    pub desired: BTreeMap<String, (DesiredService, i64)>,
    /// Watch records with their `mod_revision`.
    pub watches: BTreeMap<String, (WatchRecord, i64)>,
    /// Live hosts' status.
    pub hosts: BTreeMap<String, HostStatus>,
    /// Services whose desired state this host could not apply, and why.
    pub failed: BTreeMap<String, String>,
    /// The status last written (its `time_ms` zeroed), and when the lease was last renewed.
    pub published: Option<HostStatus>,
    pub last_keepalive: Option<Instant>,
    /// No resync before this.
    pub retry_after: Option<Instant>,
}

/// This host in the fleet; see the module documentation.
pub struct FleetNode<M: Maps> {
    pub(super) cluster: String,
    pub(super) host: String,
    pub(super) keys: Keys,
    pub(super) core: Arc<Mutex<Core<M>>>,
    pub(super) store: Arc<dyn DesiredStore>,
    pub(super) state: Mutex<SyncState>,
    /// Signalled when `applied_revision` moves.
    pub(super) applied: Condvar,
    feed: Mutex<Option<Box<dyn Feed>>>,
    pub(super) clock: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Lease renewal period (a third of the TTL).
    pub(super) keepalive_every: Duration,
    /// How long a change waits for this host to apply it before answering.
    pub(super) apply_wait: Duration,
    pub(super) announced: Mutex<Option<AnnouncedFn>>,
    pub(super) api: Option<String>,
    /// This host's flow-sync address, published in its status (`[sync]` with `[fleet]`).
    pub(super) sync_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// History entries applied and not yet marked so in etcd, `(seq, revision)`: written with the
    /// host's status after the turn reported them applied (see [`FleetNode::publish`]).
    pub(super) marks: Mutex<Vec<(u64, i64)>>,
}

impl<M: Maps> FleetNode<M> {
    /// A node of `host` in `cluster` driving `core` from `store`. Starts out of sync, at the
    /// revision the state file says was applied last.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: &str,
        host: &str,
        core: Arc<Mutex<Core<M>>>,
        store: Arc<dyn DesiredStore>,
        lease_ttl: Duration,
        apply_wait: Duration,
        api: Option<String>,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let applied_revision = core.lock().unwrap_or_else(|e| e.into_inner()).fleet_revision();
        Self {
            cluster: cluster.into(),
            host: host.into(),
            keys: Keys::new(cluster),
            core,
            store,
            state: Mutex::new(SyncState {
                applied_revision,
                problem: Some("not synced with etcd yet".into()),
                ..SyncState::default()
            }),
            applied: Condvar::new(),
            feed: Mutex::new(None),
            clock,
            keepalive_every: lease_ttl / 3,
            apply_wait,
            announced: Mutex::new(None),
            api,
            sync_addr: std::sync::OnceLock::new(),
            marks: Mutex::new(Vec::new()),
        }
    }

    /// Where the announced VIPs come from (the BGP announcer).
    pub fn set_announced(&self, f: AnnouncedFn) {
        *self.announced.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub(super) fn sync(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core<M>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs [`step`](Self::step) until `stop` is set.
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.step(TICK);
        }
    }

    /// One turn: (re)sync if needed, wait up to `wait` for events and apply them (reported
    /// applied as soon as the maps serve them), then publish the host's status with the applied
    /// marks and check the `--watch` records, then apply the events that came meanwhile, then
    /// [`settle`](Self::settle) the state file.
    pub fn step(&self, wait: Duration) {
        if self.turn(wait) {
            self.tick();
            // After a switch the other hosts' statuses arrive while this one writes its own:
            // taken in now, not after the state file, `--wait-fleet` here sees them sooner.
            self.drain();
        }
        self.settle();
    }

    /// The work an apply leaves for after this host reported it applied, off the path of
    /// `--wait-fleet` and of the API's answer: the whole state file (the apply wrote only its
    /// pending record, see [`crate::engine::fleet_pending`]).
    pub(super) fn settle(&self) {
        let t0 = Instant::now();
        // The state file's fsyncs run without the engine lock (see `engine::persist`): a change
        // taken meanwhile decides and applies without waiting for them.
        let job = self.core().fleet_persist_job();
        let persisted = match job {
            Some(job) => {
                let written = job.write();
                self.core().fleet_persist_done(&job, written)
            }
            None => Ok(false),
        };
        let persist_us = t0.elapsed().as_micros() as u64;
        // On failure the pending record stays, and the next change writes the whole state
        // before its map update.
        if let Err(e) = &persisted {
            tracing::error!(error = %e, "fleet: state file not written after an apply");
        }
        if matches!(persisted, Ok(true)) {
            let revision = self.sync().applied_revision;
            tracing::info!(revision, persist_us, "fleet: state file written after apply");
        }
    }

    /// Syncs or waits for events and applies them; whether the periodic work is due (not while
    /// etcd is unreachable or a resync waits for its retry time).
    fn turn(&self, wait: Duration) -> bool {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        if feed.is_some() && !self.sync().connected {
            // A call failed meanwhile (status, rollback): read everything again once etcd answers.
            *feed = None;
        }
        if feed.is_none() {
            let due = self.sync().retry_after.is_none_or(|t| Instant::now() >= t);
            if !due {
                drop(feed);
                std::thread::sleep(wait);
                return false;
            }
            match self.resync() {
                Ok(f) => *feed = Some(f),
                Err(e) => {
                    drop(feed);
                    self.lost(&e);
                    return false;
                }
            }
        }
        if !self.next_events(&mut feed, wait) {
            return false;
        }
        if !self.sync().failed.is_empty() {
            // Try the whole read again later: the config may have been fixed by a reload.
            *feed = None;
            self.sync().retry_after = Some(Instant::now() + RETRY);
        }
        true
    }

    /// Applies the events the watch delivered already, without waiting.
    fn drain(&self) {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        if feed.is_some() && self.sync().connected {
            self.next_events(&mut feed, Duration::ZERO);
        }
    }

    /// Waits up to `wait` for the next batch of events and applies it; false when the watch
    /// broke (dropped: the next turn resyncs).
    fn next_events(&self, feed: &mut MutexGuard<'_, Option<Box<dyn Feed>>>, wait: Duration) -> bool {
        let Some(f) = feed.as_mut() else { return true };
        match f.next(wait) {
            Ok(Some(events)) => self.on_events(&events),
            Ok(None) => {}
            Err(e) => {
                **feed = None;
                self.lost(&e);
                return false;
            }
        }
        true
    }

    /// etcd lost: out of sync until the next resync; forwarding continues as it is.
    pub(super) fn lost(&self, e: &StoreError) {
        let mut st = self.sync();
        if st.connected || st.problem.as_deref() != Some(e.to_string().as_str()) {
            tracing::warn!(error = %e, "fleet: out of sync with etcd; forwarding continues on the last applied state, changes are refused");
        }
        st.connected = false;
        st.in_sync = false;
        st.problem = Some(e.to_string());
        st.retry_after = Some(Instant::now() + RETRY);
        st.published = None;
    }

    /// Reads the services' desired states (and the watch records and hosts) at one revision,
    /// applies them, and starts the watch from the next revision.
    pub(super) fn resync(&self) -> Result<Box<dyn Feed>, StoreError> {
        let mut services = self.store.get_prefix(&self.keys.services())?;
        if self.seed(&services)? {
            services = self.store.get_prefix(&self.keys.services())?;
        }
        let watches = self.store.get_prefix(&self.keys.watches())?;
        let hosts = self.store.get_prefix(&self.keys.hosts())?;
        let revision = services.revision;
        {
            let mut st = self.sync();
            st.failed.clear();
            st.watches = watches.kvs.iter().filter_map(|kv| self.parse_watch(kv)).collect();
            st.hosts = hosts.kvs.iter().filter_map(|kv| self.parse_host(kv)).collect();
        }
        for kv in &services.kvs {
            self.apply_kv(kv, &BTreeMap::new(), true);
        }
        let feed = self.store.watch(self.keys.root(), revision + 1)?;
        let mut st = self.sync();
        st.connected = true;
        st.revision = st.revision.max(revision);
        if st.failed.is_empty() {
            if !st.in_sync {
                tracing::info!(revision, "fleet: in sync with etcd");
            }
            // The revision of the newest desired state served (not the read's revision, which
            // other keys move): hosts serving the same desired state report the same revision.
            let newest = services.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
            st.applied_revision = st.applied_revision.max(newest);
            st.in_sync = true;
            st.problem = None;
        } else {
            st.in_sync = false;
            st.problem = Some(failures(&st.failed));
        }
        drop(st);
        self.applied.notify_all();
        Ok(feed)
    }

    /// A fresh, empty etcd (or a service new to the fleet): writes this host's own desired
    /// state of every service that has no key yet, create-if-absent in ONE transaction (each
    /// key compared with revision 0), so every host serves the same desired state at the same
    /// revision from the start. A host that loses the race reads what the winner wrote.
    /// Returns whether anything was written.
    fn seed(&self, services: &super::store::Snapshot) -> Result<bool, StoreError> {
        let present: std::collections::BTreeSet<&str> =
            services.kvs.iter().filter_map(|kv| Keys::name_in(&kv.key, &self.keys.services())).collect();
        let mut txn = Txn { compares: Vec::new(), puts: Vec::new() };
        for (name, desired) in self.core().local_desired_all() {
            if present.contains(name.as_str()) {
                continue;
            }
            let key = self.keys.service(&name);
            let value = serde_json::to_string(&desired).map_err(|e| StoreError::Failed(e.to_string()))?;
            txn.compares.push(super::store::Compare::ModRevision(key.clone(), 0));
            txn.puts.push((key, value));
        }
        if txn.puts.is_empty() {
            return Ok(false);
        }
        let written = self.store.commit(&txn)?;
        if let Some(revision) = written {
            tracing::info!(
                revision,
                services = txn.puts.len(),
                "fleet: seeded etcd with this host's desired state"
            );
        }
        Ok(true)
    }

    /// Applies a batch of watch events (those of one revision arrive together).
    pub(super) fn on_events(&self, events: &[Event]) {
        let history = self.keys.history();
        let records: BTreeMap<u64, HistoryRecord> = events
            .iter()
            .filter_map(|e| match e {
                Event::Put(kv) if Keys::name_in(&kv.key, &history).is_some() => {
                    serde_json::from_str::<HistoryRecord>(&kv.value).ok().map(|r| (r.seq, r))
                }
                _ => None,
            })
            .collect();
        let mut last_service_rev = None;
        for event in events {
            let key = event.key();
            if Keys::name_in(key, &self.keys.services()).is_some() {
                if let Event::Put(kv) = event {
                    self.apply_kv(kv, &records, false);
                    last_service_rev = Some(kv.mod_revision);
                }
            } else if let Some(name) = Keys::name_in(key, &self.keys.watches()) {
                let mut st = self.sync();
                match event {
                    Event::Put(kv) => {
                        if let Some((n, w)) = self.parse_watch(kv) {
                            st.watches.insert(n, w);
                        }
                    }
                    Event::Delete { .. } => {
                        st.watches.remove(name);
                    }
                }
            } else if let Some(name) = Keys::name_in(key, &self.keys.hosts()) {
                let mut st = self.sync();
                match event {
                    Event::Put(kv) => {
                        if let Some((n, h)) = self.parse_host(kv) {
                            if !st.hosts.contains_key(&n) {
                                tracing::info!(host = %n, "fleet: host joined (its status is live in etcd)");
                            }
                            st.hosts.insert(n, h);
                        }
                    }
                    Event::Delete { .. } => {
                        tracing::info!(
                            host = name,
                            "fleet: host left (its status lease ended: stopped, lost or cut off from etcd)"
                        );
                        st.hosts.remove(name);
                    }
                }
            }
        }
        let mut st = self.sync();
        if let Some(last) = events.iter().map(Event::revision).max() {
            st.revision = st.revision.max(last);
        }
        if st.failed.is_empty() {
            if let Some(rev) = last_service_rev {
                st.applied_revision = st.applied_revision.max(rev);
            }
        } else {
            st.in_sync = false;
            st.problem = Some(failures(&st.failed));
        }
        drop(st);
        self.applied.notify_all();
    }

    /// Applies one service's desired state; records a failure instead of failing.
    fn apply_kv(&self, kv: &Kv, records: &BTreeMap<u64, HistoryRecord>, resync: bool) {
        let Some(name) = Keys::name_in(&kv.key, &self.keys.services()) else { return };
        let desired: DesiredService = match serde_json::from_str(&kv.value) {
            Ok(d) => d,
            Err(e) => {
                self.sync().failed.insert(name.into(), format!("unreadable desired state in etcd: {e}"));
                return;
            }
        };
        self.sync().desired.insert(name.into(), (desired.clone(), kv.mod_revision));
        let record = records.get(&desired.seq).cloned().or_else(|| {
            // After a resync, the entry is read only when the change is new to this host.
            let new = resync
                && self.core().local_desired(name).is_none_or(|(a, p, e)| {
                    a != desired.active || p != desired.previous || e != desired.epoch
                });
            new.then(|| self.read_record(desired.seq)).flatten()
        });
        let applied = self.core().apply_fleet(name, &desired, record.as_ref(), kv.mod_revision);
        match applied {
            Ok(changed) => {
                self.sync().failed.remove(name);
                if changed && desired.seq > 0 {
                    self.marks.lock().unwrap_or_else(|e| e.into_inner()).push((desired.seq, kv.mod_revision));
                }
            }
            Err(e) => {
                tracing::error!(service = name, error = %e, "fleet: desired state not applied; this host is out of sync");
                self.sync().failed.insert(name.into(), e.message);
            }
        }
    }

    fn read_record(&self, seq: u64) -> Option<HistoryRecord> {
        let (kv, _) = self.store.get(&self.keys.history_entry(seq)).ok()?;
        serde_json::from_str(&kv?.value).ok()
    }

    fn parse_watch(&self, kv: &Kv) -> Option<(String, (WatchRecord, i64))> {
        let name = Keys::name_in(&kv.key, &self.keys.watches())?;
        match serde_json::from_str(&kv.value) {
            Ok(w) => Some((name.into(), (w, kv.mod_revision))),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "fleet: unreadable watch record ignored");
                None
            }
        }
    }

    fn parse_host(&self, kv: &Kv) -> Option<(String, HostStatus)> {
        let name = Keys::name_in(&kv.key, &self.keys.hosts())?;
        match serde_json::from_str(&kv.value) {
            Ok(h) => Some((name.into(), h)),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "fleet: unreadable host status ignored");
                None
            }
        }
    }

    /// Periodic work after each turn: the host's status and the `--watch` records.
    fn tick(&self) {
        self.publish();
        self.check_watches();
    }
}

fn failures(failed: &BTreeMap<String, String>) -> String {
    let list: Vec<String> = failed.iter().map(|(s, why)| format!("{s}: {why}")).collect();
    format!("cannot apply the fleet's desired state: {}", list.join("; "))
}
