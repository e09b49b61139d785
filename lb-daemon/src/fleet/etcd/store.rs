//! The small key-value interface the fleet needs from etcd, as a trait: reads with revisions,
//! one compare-and-put transaction, host keys under a lease, and a watch from a revision. The
//! daemon uses [`super::client::EtcdStore`]; the unit tests use [`super::memory::MemStore`],
//! which keeps the same revision rules, so every fleet decision is tested without etcd.
//!
//! Every call is blocking and bounded (the etcd client's request timeout): the callers run on
//! the API's blocking pool or on the fleet's own thread.

use std::time::Duration;

/// One key as stored, with etcd's revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    /// Full key.
    pub key: String,
    /// Value (JSON text).
    pub value: String,
    /// Revision of the key's last change.
    pub mod_revision: i64,
}

/// Keys read at one revision of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The keys, sorted.
    pub kvs: Vec<Kv>,
    /// The store's revision when they were read.
    pub revision: i64,
}

/// A condition of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this (0: the key does not exist).
    ModRevision(String, i64),
}

/// One transaction: when every compare holds, every put happens, at one new revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold.
    pub compares: Vec<Compare>,
    /// `(key, value)` written together.
    pub puts: Vec<(String, String)>,
}

/// What happened to one key (a watch event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Created or changed.
    Put(Kv),
    /// Deleted (or its lease expired), at `revision`.
    Delete {
        /// The key.
        key: String,
        /// Revision of the deletion.
        revision: i64,
    },
}

impl Event {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a store call failed. A caller decides: `Unavailable` refuses changes and marks the host
/// out of sync; `Compacted` makes the watcher resync from a fresh read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or did not answer in time.
    #[error("etcd unreachable: {0}")]
    Unavailable(String),
    /// The watch's start revision was compacted away.
    #[error("etcd compacted revision {0}: resync needed")]
    Compacted(i64),
    /// etcd answered with an error (permission, bad request...).
    #[error("etcd: {0}")]
    Failed(String),
}

/// A running watch of a key prefix.
pub trait Feed: Send {
    /// The next batch of events, waiting at most `wait`: `Ok(None)` when nothing came, an error
    /// when the watch broke (the caller resyncs).
    fn next(&mut self, wait: Duration) -> Result<Option<Vec<Event>>, StoreError>;
}

/// The fleet's view of etcd.
pub trait DesiredStore: Send + Sync {
    /// One key, and the store's revision.
    fn get(&self, key: &str) -> Result<(Option<Kv>, i64), StoreError>;
    /// Every key under `prefix`, at one revision.
    fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError>;
    /// Runs `txn`: `Ok(Some(revision))` when it was applied, `Ok(None)` when a compare failed
    /// (nothing was written).
    fn commit(&self, txn: &Txn) -> Result<Option<i64>, StoreError>;
    /// Puts `key` under this store's lease (granted when there is none, or it expired): the key
    /// disappears when the process stops renewing it. `also` (keys that outlive the lease) are
    /// put in the same transaction: one write to etcd instead of several.
    fn put_leased(&self, key: &str, value: &str, also: &[(String, String)]) -> Result<i64, StoreError>;
    /// Renews the lease; `Ok(false)` when it had expired (leased keys are gone: put them again).
    fn keep_alive(&self) -> Result<bool, StoreError>;
    /// Watches every key under `prefix` from revision `from` (inclusive).
    fn watch(&self, prefix: &str, from: i64) -> Result<Box<dyn Feed>, StoreError>;

    /// One page of the keys under `prefix`, in key order last first: at most `limit` keys, only
    /// those sorting before `before` when it is given (the last key of the previous page). The
    /// fleet's history is read newest first this way, a page at a time, instead of reading the
    /// whole history prefix, which only grows. This default reads the prefix (the test store);
    /// [`super::client::EtcdStore`] asks etcd for just the page.
    fn get_prefix_desc(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError> {
        let mut kvs = self.get_prefix(prefix)?.kvs;
        kvs.retain(|kv| before.is_none_or(|b| kv.key.as_str() < b));
        kvs.sort_by(|a, b| b.key.cmp(&a.key));
        kvs.truncate(limit);
        Ok(kvs)
    }
}
