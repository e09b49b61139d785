//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`: one syscall per [`BATCH`] entries
//! instead of two per entry (next key, then lookup). The flow table has up to millions of
//! entries and `drain-status`, `--wait-drained` and `/metrics` count it; aya 0.16 has no batch
//! API, so this is the raw syscall, with `bpf_attr` and the command number from aya's generated
//! kernel bindings (`aya_obj::generated`).

use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use lb_common::maps::{FlowKey, FlowValue};
use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

/// A handle on `FLOWS` that reads it without borrowing the [`super::Dataplane`], so a long
/// count never holds up the control plane (a switch does not wait for a `drain-status`).
#[derive(Clone)]
pub struct FlowReader(pub(super) Arc<OwnedFd>);

impl FlowReader {
    /// Calls `f` with every recorded flow; returns how many there were.
    pub fn for_each(&self, f: impl FnMut(&FlowKey, &FlowValue)) -> io::Result<usize> {
        for_each(self.0.as_fd(), f)
    }
}

/// Entries per syscall.
pub const BATCH: u32 = 4096;

/// Calls `f` with every (key, value) of the (non-per-CPU) hash or LRU hash map `map`; returns
/// how many entries there were. Entries added or removed meanwhile may or may not be seen, as
/// with any walk of a live map; none is seen twice.
pub fn for_each<K: Pod, V: Pod>(map: BorrowedFd<'_>, mut f: impl FnMut(&K, &V)) -> io::Result<usize> {
    let n = BATCH as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(n);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(n);
    keys.resize_with(n, MaybeUninit::uninit);
    values.resize_with(n, MaybeUninit::uninit);
    // The position token of hash maps is a bucket index (u32); 8 bytes leave room to spare.
    let mut position_in = [0u8; 8];
    let mut position_out = [0u8; 8];
    let mut first = true;
    let mut total = 0;
    loop {
        // SAFETY: `bpf_attr` is a union of plain integer structs: all zeroes is a valid value
        // (and the kernel requires every byte past the member in use to be zero).
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.in_batch = if first { 0 } else { position_in.as_ptr() as u64 };
        attr.batch.out_batch = position_out.as_mut_ptr() as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = BATCH;
        attr.batch.map_fd = map.as_raw_fd() as u32;
        // SAFETY: no safe wrapper exists for bpf(2). `attr` is a valid `bpf_attr` of the size
        // passed; the pointers in it address `BATCH` keys and values and two 8-byte position
        // tokens that outlive the call, which is all the kernel writes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                size_of::<bpf_attr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        // The kernel reports how many entries it copied, also with ENOENT (the last batch).
        // SAFETY: `batch` is the member written above and by the kernel.
        let got = (unsafe { attr.batch.count } as usize).min(n);
        if err.as_ref().is_none_or(|e| e.raw_os_error() == Some(libc::ENOENT)) {
            for i in 0..got {
                // SAFETY: the kernel wrote `got` whole keys and values (Pod: any bytes are valid).
                unsafe { f(keys[i].assume_init_ref(), values[i].assume_init_ref()) };
            }
            total += got;
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Some(e) => return Err(e),
        }
        position_in = position_out;
        first = false;
    }
}
