//! An upgrade restarts the daemon on pins left by the previous version. Maps that only hold
//! counters and caches (`REPLACEABLE_MAPS`) may have changed shape between versions: such a pin
//! is replaced, so the new daemon starts (and takes over forwarding) instead of refusing behind
//! the old program; a map that holds state (the flow table) is never replaced silently.

use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};
use lb_daemon::dataplane::{Dataplane, DataplaneOptions, PinDir, REPLACEABLE_MAPS};
use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// A pin folder of this test only, removed even when the test fails.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised `bpf_attr` of the size passed, whose members
    // in use point at memory that outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Pins at `path` a map of `map_type` with the given sizes: what an older version left there.
fn pin_map(path: &Path, map_type: bpf_map_type, key: u32, value: u32, entries: u32) -> io::Result<()> {
    // SAFETY: all zeroes is a valid `bpf_attr` (a union of integer structs).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_1.map_type = map_type as u32;
    attr.__bindgen_anon_1.key_size = key;
    attr.__bindgen_anon_1.value_size = value;
    attr.__bindgen_anon_1.max_entries = entries;
    // SAFETY: BPF_MAP_CREATE returns a new file descriptor this function then owns.
    let fd = unsafe { OwnedFd::from_raw_fd(bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)? as i32) };
    let name = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = name.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

fn value_size(path: &Path) -> u32 {
    MapData::from_pin(path).unwrap().info().unwrap().value_size()
}

#[test]
fn counter_maps_of_another_shape_are_replaced_and_the_flow_table_is_not() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/lbtest-upgrade-{}", std::process::id())));
    let maps = pins.0.join("maps");
    let state = tempfile::tempdir().unwrap();
    let options_file = state.path().join("dataplane.json");
    let options = DataplaneOptions { ring_size: 251, table_slots: 4, flow_entries: 1024 };
    let open = || Dataplane::open_pinned(options, PinDir(pins.0.clone()), &options_file);
    let (dp, adopted) = open().expect("first start creates the pins");
    assert!(!adopted);
    drop(dp);
    let stats_size = value_size(&maps.join("STATS"));
    assert!(REPLACEABLE_MAPS.contains(&"STATS"));

    // The previous version's STATS had 16-byte entries and fewer of them.
    std::fs::remove_file(maps.join("STATS")).unwrap();
    pin_map(&maps.join("STATS"), bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, 40).unwrap();
    let (_dp, adopted) = open().expect("an old-shaped counter map does not stop the start");
    assert!(adopted, "the other maps (services, flows) are adopted");
    assert_eq!(value_size(&maps.join("STATS")), stats_size, "STATS was replaced by one of this version");
    drop(_dp);

    // A flow table of another shape holds connections: it stays an error that names it.
    let flows = maps.join("FLOWS");
    let info = MapData::from_pin(&flows).unwrap().info().unwrap();
    let flow_value = info.value_size();
    std::fs::remove_file(&flows).unwrap();
    pin_map(
        &flows,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        info.key_size(),
        flow_value + 16,
        info.max_entries(),
    )
    .unwrap();
    let err = open().err().expect("an old-shaped flow table is refused").to_string();
    assert!(err.contains("FLOWS"), "the error names the map: {err}");
    assert_eq!(value_size(&flows), flow_value + 16, "and the pinned flow table is left as it was");
}
