//! Writing flows received from the fleet's other hosts into `FLOWS` (flow sync): a lookup per
//! flow (this host's own entries are never replaced) and `BPF_MAP_UPDATE_BATCH` for the rest,
//! one syscall per batch instead of one per flow. aya 0.16 has no batch API, so this is the raw
//! syscall, as in [`super::batch`].

use super::DataplaneError;
use aya::maps::{HashMap, Map, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use lb_common::maps::{FlowKey, FlowValue};
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::Arc,
};

/// A handle on `FLOWS` for the flow sync, independent of the [`super::Dataplane`] (the engine
/// owns that one).
pub struct FlowWriter {
    fd: Arc<OwnedFd>,
    map: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowWriter {
    /// A writer over the `FLOWS` descriptor `fd`.
    pub(super) fn new(fd: &Arc<OwnedFd>) -> Result<Self, DataplaneError> {
        let err = |e: String| DataplaneError::Map("FLOWS", e);
        let dup =
            fd.as_fd().try_clone_to_owned().map_err(|e| err(format!("duplicating its descriptor: {e}")))?;
        let data = MapData::from_fd(dup).map_err(|e| err(e.to_string()))?;
        let map = HashMap::try_from(Map::LruHashMap(data)).map_err(|e| err(e.to_string()))?;
        Ok(Self { fd: fd.clone(), map })
    }

    /// The entry of `key`, if any.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::MapOp { map: "FLOWS", op: "lookup", source }),
        }
    }

    /// Creates or replaces every `(keys[i], values[i])` with `BPF_MAP_UPDATE_BATCH`; returns how
    /// many were written (all of them unless an error is returned with the count before it).
    pub fn update_batch(&self, keys: &[FlowKey], values: &[FlowValue]) -> Result<usize, (usize, io::Error)> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let mut done = 0;
        // The kernel caps a batch at what fits its internal buffers; chunks keep each call short.
        for (k, v) in keys.chunks(super::BATCH as usize).zip(values.chunks(super::BATCH as usize)) {
            // SAFETY: `bpf_attr` is a union of plain integer structs: all zeroes is valid (and
            // required past the member in use).
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            attr.batch.keys = k.as_ptr() as u64;
            attr.batch.values = v.as_ptr() as u64;
            attr.batch.count = k.len() as u32;
            attr.batch.map_fd = self.fd.as_raw_fd() as u32;
            // SAFETY: no safe wrapper exists for bpf(2). `attr` is a valid `bpf_attr` of the size
            // passed; it points at `count` keys and values that outlive the call and that the
            // kernel only reads.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
                    &mut attr as *mut bpf_attr,
                    size_of::<bpf_attr>(),
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                // SAFETY: `batch` is the member in use; the kernel reports what it wrote.
                let written = (unsafe { attr.batch.count } as usize).min(k.len());
                return Err((done + written, e));
            }
            done += k.len();
        }
        Ok(done)
    }
}
