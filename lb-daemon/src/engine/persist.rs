//! Whole-state writes in order, and off the engine lock where the caller can let go of it.
//!
//! In a fleet a change is made live on its small pending record, and the whole state file (two
//! fsyncs, several ms) is written after the host reported the change applied (see
//! [`super::fleet_pending`]). That write must not hold the engine lock: the next change's
//! decision and apply wait on it. So the state is snapshotted under the engine lock
//! ([`Persist::job`], a clone), the lock is released, the file is written from the snapshot
//! ([`PersistJob::write`]) holding only this module's persist mutex, and the engine lock is
//! taken again to drop the pending record when nothing changed meanwhile
//! ([`super::Core::fleet_persist_done`]).
//!
//! Order: every whole-state write, those still made under the engine lock (a local switch, a
//! write that repairs a failed one) and the off-lock ones, holds the persist mutex and carries a
//! ticket taken under the engine lock when its state was taken, so tickets follow the order of
//! the states. A write whose ticket is older than the last one written is skipped: an older
//! snapshot is never written after a newer one. The lock order is engine, then persist, never
//! the reverse: a snapshot taken while holding the persist mutex would need the engine lock
//! under it, while a write made under the engine lock waits for the persist mutex; the tickets
//! give the same guarantee without that cycle. The pending record is written and removed under
//! the engine lock only, on a separate handle, so a new change's record never waits for the
//! previous change's fsyncs.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

use super::{fleet_pending::FleetPending, state::PersistedState, state::StateStore};

/// The last whole-state write, behind the persist mutex.
struct Slot {
    /// The handle whole states are written with.
    writer: Box<dyn StateStore>,
    /// Ticket of the state last written (0: none yet).
    written: u64,
}

/// The engine's state store: the pending record on one handle, whole states in ticket order on
/// another (see the module documentation).
pub struct Persist {
    /// Pending records (used under the engine lock only).
    store: Box<dyn StateStore>,
    slot: Arc<Mutex<Slot>>,
    /// Last ticket handed out; only ever moved under the engine lock (`&mut self`).
    ticket: u64,
}

/// A state to write off the engine lock, taken by [`Persist::job`].
pub struct PersistJob {
    slot: Arc<Mutex<Slot>>,
    ticket: u64,
    /// The state written.
    pub state: PersistedState,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Persist {
    /// Wraps `store`, with a second handle on the same files for the whole-state writes.
    pub fn new(store: Box<dyn StateStore>) -> Self {
        let writer = store.handle();
        Self { store, slot: Arc::new(Mutex::new(Slot { writer, written: 0 })), ticket: 0 }
    }

    /// Writes `state` now (the caller holds the engine lock: it is the newest state).
    pub fn save(&mut self, state: &PersistedState) -> Result<()> {
        self.ticket += 1;
        let mut slot = lock(&self.slot);
        slot.writer.save(state)?;
        slot.written = slot.written.max(self.ticket);
        Ok(())
    }

    /// Writes the fleet's pending record (see [`StateStore::stage_pending`]).
    pub fn stage_pending(&mut self, pending: &FleetPending) -> Result<()> {
        self.store.stage_pending(pending)
    }

    /// Drops the pending record (see [`StateStore::clear_pending`]).
    pub fn clear_pending(&mut self) -> Result<()> {
        self.store.clear_pending()
    }

    /// A snapshot of `state` to write with [`PersistJob::write`] once the engine lock is released.
    pub fn job(&mut self, state: &PersistedState) -> PersistJob {
        self.ticket += 1;
        PersistJob { slot: self.slot.clone(), ticket: self.ticket, state: state.clone() }
    }
}

impl PersistJob {
    /// Writes the snapshot unless a newer state was written meanwhile; whether it wrote it.
    /// Holds the persist mutex, never the engine lock.
    pub fn write(&self) -> Result<bool> {
        let mut slot = lock(&self.slot);
        if slot.written > self.ticket {
            return Ok(false);
        }
        slot.writer.save(&self.state)?;
        slot.written = self.ticket;
        Ok(true)
    }
}
