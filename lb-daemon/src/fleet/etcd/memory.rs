//! An in-memory [`DesiredStore`] with etcd's revision rules (one global revision, bumped once per
//! write or transaction; `mod_revision` per key; compares on it; leased keys deleted when the
//! lease expires; watches replay from a revision). Unit tests drive several hosts' fleet logic
//! against one of these, and make it unreachable as a partition would.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::store::{Compare, DesiredStore, Event, Feed, Kv, Snapshot, StoreError, Txn};

#[derive(Default)]
struct Inner {
    revision: i64,
    keys: BTreeMap<String, Kv>,
    log: Vec<Event>,
    /// Leased keys of each client (by client id).
    leased: BTreeMap<u32, Vec<String>>,
    /// Clients whose lease is alive.
    alive: BTreeMap<u32, bool>,
    down: bool,
    commits: u64,
    /// Calls made by every client (each one round trip to a real etcd).
    calls: u64,
    /// Lease renewals asked by every client.
    keepalives: u64,
}

/// The shared store; [`MemStore::client`] gives each simulated host its own handle (lease).
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

/// One host's connection to a [`MemStore`] (its own lease).
#[derive(Clone)]
pub struct MemClient {
    store: MemStore,
    id: u32,
}

impl MemStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client with its own lease.
    pub fn client(&self, id: u32) -> MemClient {
        MemClient { store: self.clone(), id }
    }

    /// Makes every call fail as an unreachable etcd does (`true`), or work again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        self.inner.1.notify_all();
    }

    /// Expires client `id`'s lease: its leased keys are deleted (a host that stopped).
    pub fn expire_lease(&self, id: u32) {
        let mut g = self.lock();
        g.alive.insert(id, false);
        let keys = g.leased.remove(&id).unwrap_or_default();
        for key in keys {
            if g.keys.remove(&key).is_some() {
                g.revision += 1;
                let revision = g.revision;
                g.log.push(Event::Delete { key, revision });
            }
        }
        drop(g);
        self.inner.1.notify_all();
    }

    /// The value of `key`, if any.
    pub fn value(&self, key: &str) -> Option<String> {
        self.lock().keys.get(key).map(|kv| kv.value.clone())
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.lock().keys.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    /// Calls made to the store by every client, failed ones included: each is one round trip
    /// to a real etcd.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Transactions that wrote something.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// Lease renewals asked so far.
    pub fn keepalives(&self) -> u64 {
        self.lock().keepalives
    }

    /// Writes `kv` at a new revision (callers hold the lock).
    fn put_locked(g: &mut Inner, key: &str, value: &str, revision: i64) {
        let kv = Kv { key: key.into(), value: value.into(), mod_revision: revision };
        g.keys.insert(key.into(), kv.clone());
        g.log.push(Event::Put(kv));
    }
}

impl MemClient {
    fn up(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        let mut g = self.store.lock();
        g.calls += 1;
        if g.down {
            Err(StoreError::Unavailable("connection refused (test store down)".into()))
        } else {
            Ok(g)
        }
    }
}

impl DesiredStore for MemClient {
    fn get(&self, key: &str) -> Result<(Option<Kv>, i64), StoreError> {
        let g = self.up()?;
        Ok((g.keys.get(key).cloned(), g.revision))
    }

    fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let g = self.up()?;
        let kvs = g.keys.values().filter(|kv| kv.key.starts_with(prefix)).cloned().collect();
        Ok(Snapshot { kvs, revision: g.revision })
    }

    fn commit(&self, txn: &Txn) -> Result<Option<i64>, StoreError> {
        let mut g = self.up()?;
        let holds = txn.compares.iter().all(|c| match c {
            Compare::ModRevision(key, rev) => g.keys.get(key).map_or(0, |kv| kv.mod_revision) == *rev,
        });
        if !holds {
            return Ok(None);
        }
        g.revision += 1;
        g.commits += 1;
        let revision = g.revision;
        for (k, v) in &txn.puts {
            MemStore::put_locked(&mut g, k, v, revision);
        }
        drop(g);
        self.store.inner.1.notify_all();
        Ok(Some(revision))
    }

    fn put_leased(&self, key: &str, value: &str, also: &[(String, String)]) -> Result<i64, StoreError> {
        let mut g = self.up()?;
        g.alive.insert(self.id, true);
        g.revision += 1;
        let revision = g.revision;
        MemStore::put_locked(&mut g, key, value, revision);
        for (k, v) in also {
            MemStore::put_locked(&mut g, k, v, revision);
        }
        let leased = g.leased.entry(self.id).or_default();
        if !leased.iter().any(|k| k == key) {
            leased.push(key.into());
        }
        drop(g);
        self.store.inner.1.notify_all();
        Ok(revision)
    }

    fn keep_alive(&self) -> Result<bool, StoreError> {
        let mut g = self.up()?;
        g.keepalives += 1;
        Ok(g.alive.get(&self.id).copied().unwrap_or(false))
    }

    fn watch(&self, prefix: &str, from: i64) -> Result<Box<dyn Feed>, StoreError> {
        drop(self.up()?);
        Ok(Box::new(MemFeed { store: self.store.clone(), prefix: prefix.into(), from }))
    }
}

struct MemFeed {
    store: MemStore,
    prefix: String,
    from: i64,
}

impl Feed for MemFeed {
    fn next(&mut self, wait: Duration) -> Result<Option<Vec<Event>>, StoreError> {
        let pending = |g: &Inner, from: i64, prefix: &str| -> Vec<Event> {
            g.log.iter().filter(|e| e.revision() >= from && e.key().starts_with(prefix)).cloned().collect()
        };
        let mut g = self.store.lock();
        if g.down {
            return Err(StoreError::Unavailable("watch broken (test store down)".into()));
        }
        let mut events = pending(&g, self.from, &self.prefix);
        if events.is_empty() && !wait.is_zero() {
            g = self.store.inner.1.wait_timeout(g, wait).unwrap_or_else(|e| e.into_inner()).0;
            if g.down {
                return Err(StoreError::Unavailable("watch broken (test store down)".into()));
            }
            events = pending(&g, self.from, &self.prefix);
        }
        if events.is_empty() {
            return Ok(None);
        }
        self.from = g.revision + 1;
        Ok(Some(events))
    }
}
