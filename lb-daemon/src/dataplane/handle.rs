//! `Dataplane`: one loaded instance of the XDP program and typed handles to its maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{
    filter::{FILTER_WORDS, filter_bit, word_and_mask},
    maps::{
        Backend, Counter, DEFAULT_FLOW_ENTRIES, DEFAULT_RING_SIZE, DEFAULT_TABLE_SLOTS, EndpointKey,
        FloodState, FlowKey, FlowValue, MAX_BACKENDS, NatBackend, NextHop, Service, Settings, VipValue,
    },
    stats::STATS_ENTRIES,
};
use lb_common::{
    maps::{FLOW_EVENTS_BYTES, StatsSlot},
    stats::{BACKEND_NEW_FLOW_BASE, REASONS, Reason, backend_counter, reason_counter},
};
use serde::{Deserialize, Serialize};
use std::{
    fs,
    mem::size_of,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::objects::LB_XDP_OBJECT;

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "lb_xdp";

/// Every map of the program, by name (all are pinned together).
pub const MAP_NAMES: [&str; 16] = [
    "VIPS",
    "SERVICES",
    "TABLES",
    "BACKENDS",
    "FLOWS",
    "NAT_BACKENDS",
    "NEXTHOPS",
    "EGRESS",
    "VIP_FILTER",
    "BACKEND_FILTER",
    "STATS",
    "HALF_OPEN",
    "SETTINGS",
    "FLOOD",
    "IFACE_MACS",
    "FLOW_EVENTS",
];

/// Maps that hold only counters, caches and in-flight events, which the program and the daemon
/// rebuild on their own: when a pinned one no longer fits this version's program (an upgrade
/// changed its entry size or count), it is replaced, and its contents restart from zero, rather
/// than the daemon refusing to start behind a still-forwarding old program. Every other map
/// holds state an operator relies on (flows, tables, services), and a mismatch there stays an
/// error.
pub const REPLACEABLE_MAPS: [&str; 5] = ["STATS", "FLOOD", "NEXTHOPS", "HALF_OPEN", "FLOW_EVENTS"];

/// Sizes fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneOptions {
    /// Slots of every Maglev table (prime).
    pub ring_size: u32,
    /// How many tables `TABLES` holds.
    pub table_slots: u32,
    /// Entries of `FLOWS`.
    pub flow_entries: u32,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            ring_size: DEFAULT_RING_SIZE,
            table_slots: DEFAULT_TABLE_SLOTS,
            flow_entries: DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// What can go wrong driving the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Loading the object or the program failed (verifier log included).
    #[error("loading the XDP object: {0}")]
    Load(String),
    /// A map the program should have is missing or has the wrong type.
    #[error("map {0}: {1}")]
    Map(&'static str, String),
    /// A map update or read failed.
    #[error("{op} on map {map}: {source}")]
    MapOp {
        /// The map.
        map: &'static str,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: aya::maps::MapError,
    },
    /// An argument out of the ranges fixed at load time.
    #[error("{0}")]
    OutOfRange(String),
    /// Pinning or adopting pins failed.
    #[error("pins: {0}")]
    Pin(String),
    /// Attaching to an interface failed.
    #[error("attaching XDP: {0}")]
    Attach(String),
}

/// XDP attach mode as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic with a warning.
    Auto,
    /// Native only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// Where an instance keeps its pins: `<dir>/maps/<MAP>` and `<dir>/links/<interface>` (bpffs
/// holds only BPF objects; the sizes the maps were created with are kept beside the state file).
#[derive(Clone, Debug)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    fn maps(&self) -> PathBuf {
        self.0.join("maps")
    }
    /// Pin of map `name`.
    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    /// Pin of the link attaching the program to `iface`.
    pub(super) fn link(&self, iface: &str) -> PathBuf {
        self.0.join("links").join(iface)
    }
}

/// One loaded XDP program with its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: Option<PinDir>,
    options: DataplaneOptions,
    vips: HashMap<MapData, EndpointKey, VipValue>,
    services: Array<MapData, Service>,
    tables: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    /// A second descriptor of `FLOWS`, for batch reads (aya's map hides its own).
    flows_fd: Arc<OwnedFd>,
    nat_backends: HashMap<MapData, EndpointKey, NatBackend>,
    nexthops: PerCpuArray<MapData, NextHop>,
    egress: DevMapHash<MapData>,
    vip_filter: Array<MapData, u64>,
    backend_filter: Array<MapData, u64>,
    stats: PerCpuArray<MapData, StatsSlot>,
    settings: Array<MapData, Settings>,
    iface_macs: Array<MapData, [u8; 6]>,
    flood: PerCpuArray<MapData, FloodState>,
    /// The program's XDP attachments (see [`super::links`]).
    links: super::links::Links,
}

/// Whether programs loaded from now on report flows to `FLOW_EVENTS` (flow sync).
static FLOW_REPORTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the programs loaded from now on in this process report flows (or not) to the
/// `FLOW_EVENTS` ring buffer: on with `[sync]`. Off, the verifier removes the reporting code, so
/// a single host pays nothing for the fleet's flow sync.
pub fn set_flow_reports(on: bool) {
    FLOW_REPORTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn flow_reports() -> bool {
    FLOW_REPORTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes of the `FLOW_EVENTS` ring of the programs loaded from now on in this process.
static FLOW_EVENTS_SIZE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(FLOW_EVENTS_BYTES);

/// Sizes the `FLOW_EVENTS` ring of the programs loaded from now on in this process (a power of
/// two, a multiple of the page size; the kernel refuses others at load). For tests that fill
/// the ring with a few packets and for benchmarks that must not fill it; the daemon keeps
/// `FLOW_EVENTS_BYTES`.
pub fn set_flow_events_bytes(bytes: u32) {
    FLOW_EVENTS_SIZE.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| DataplaneError::Map(name, "not in the object".into()))?;
    T::try_from(map).map_err(|e| DataplaneError::Map(name, e.to_string()))
}

fn op<T>(
    map: &'static str,
    op: &'static str,
    r: Result<T, aya::maps::MapError>,
) -> Result<T, DataplaneError> {
    r.map_err(|source| DataplaneError::MapOp { map, op, source })
}

impl Dataplane {
    /// Loads the embedded object with fresh, unpinned maps and loads (does not attach) the
    /// program.
    pub fn load(options: DataplaneOptions) -> Result<Self, DataplaneError> {
        Self::load_with(options, None)
    }

    /// Loads the program with its maps pinned under `pins`: maps already pinned there (by an
    /// earlier daemon, also one killed with -9) are adopted with their contents, flows included;
    /// missing ones are created and pinned. Returns whether state was adopted. When adopting,
    /// the sizes the maps were created with (recorded in `options_file`) win over `options`
    /// (they cannot change without starting from scratch); a difference is logged.
    pub fn open_pinned(
        options: DataplaneOptions,
        pins: PinDir,
        options_file: &Path,
    ) -> Result<(Self, bool), DataplaneError> {
        let io = |what: &str, e: std::io::Error| DataplaneError::Pin(format!("{what}: {e}"));
        fs::create_dir_all(pins.maps()).map_err(|e| io("creating the pin folder", e))?;
        fs::create_dir_all(pins.0.join("links")).map_err(|e| io("creating the pin folder", e))?;
        let adopted = pins.maps().join("SERVICES").exists();
        let mut effective = options;
        if adopted {
            match super::options_file::read(options_file)? {
                Some(pinned) => {
                    if pinned != options {
                        tracing::warn!(?pinned, configured = ?options, "pinned maps were created with other sizes; keeping the pinned ones until a restart with `lbctl shutdown --detach`");
                    }
                    effective = pinned;
                }
                None => {
                    tracing::warn!(file = %options_file.display(), "adopting pinned maps whose sizes are not recorded; assuming the configured ones")
                }
            }
        }
        let dp = Self::load_with(effective, Some(pins.clone()))?;
        super::options_file::write(options_file, &effective)?;
        Ok((dp, adopted))
    }

    fn load_with(options: DataplaneOptions, pins: Option<PinDir>) -> Result<Self, DataplaneError> {
        if !lb_common::maglev::is_prime(options.ring_size) {
            return Err(DataplaneError::OutOfRange(format!("ring size {} is not prime", options.ring_size)));
        }
        let table_entries = options
            .ring_size
            .checked_mul(options.table_slots)
            .ok_or_else(|| DataplaneError::OutOfRange("ring size × table slots overflows".into()))?;
        let flow_reports = flow_reports() as u32;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("RING_SIZE", &options.ring_size, true)
            .override_global("FLOW_REPORTS", &flow_reports, true)
            .map_max_entries("TABLES", table_entries)
            .map_max_entries("FLOWS", options.flow_entries)
            .map_max_entries("FLOW_EVENTS", FLOW_EVENTS_SIZE.load(std::sync::atomic::Ordering::Relaxed));
        let map_paths: Vec<(&str, PathBuf)> = match &pins {
            Some(p) => MAP_NAMES.iter().map(|n| (*n, p.maps().join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut replaced = Vec::new();
        let mut ebpf = loop {
            match loader.load(LB_XDP_OBJECT) {
                Ok(ebpf) => break ebpf,
                Err(aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
                    name,
                    property,
                    expected,
                    actual,
                })) if pins.is_some()
                    && REPLACEABLE_MAPS.contains(&name.as_str())
                    && !replaced.contains(&name) =>
                {
                    let path = pins.as_ref().map(|p| p.maps().join(&name)).unwrap_or_default();
                    tracing::warn!(map = %name, property, expected, actual, "a pinned map left by another version does not fit this program; replacing it (its counters restart from zero)");
                    fs::remove_file(&path).map_err(|e| {
                        DataplaneError::Pin(format!("removing the old pin {}: {e}", path.display()))
                    })?;
                    replaced.push(name);
                }
                Err(e) => return Err(DataplaneError::Load(format!("{e:#}"))),
            }
        };
        {
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM_NAME)
                .ok_or_else(|| DataplaneError::Load(format!("no program {PROGRAM_NAME}")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| DataplaneError::Load(e.to_string()))?;
            prog.load().map_err(|e| DataplaneError::Load(verifier_error(e)))?;
        }
        let flows_fd = match ebpf.map("FLOWS") {
            Some(aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| DataplaneError::Map("FLOWS", format!("duplicating its descriptor: {e}")))?,
            _ => return Err(DataplaneError::Map("FLOWS", "missing or not a hash map".into())),
        };
        let value_size = match ebpf.map("FLOWS") {
            Some(aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) => {
                data.info().map(|i| i.value_size()).unwrap_or(0)
            }
            _ => 0,
        };
        if value_size as usize != size_of::<FlowValue>() {
            return Err(DataplaneError::Map(
                "FLOWS",
                format!(
                    "entries of {value_size} bytes, this version uses {}: pins of an older version; \
                     remove them with `lbctl shutdown --detach` (forwarding stops) and start again",
                    size_of::<FlowValue>()
                ),
            ));
        }
        let mut dp = Self {
            flows_fd: Arc::new(flows_fd),
            vips: take(&mut ebpf, "VIPS")?,
            services: take(&mut ebpf, "SERVICES")?,
            tables: take(&mut ebpf, "TABLES")?,
            backends: take(&mut ebpf, "BACKENDS")?,
            flows: take(&mut ebpf, "FLOWS")?,
            nat_backends: take(&mut ebpf, "NAT_BACKENDS")?,
            nexthops: take(&mut ebpf, "NEXTHOPS")?,
            egress: take(&mut ebpf, "EGRESS")?,
            vip_filter: take(&mut ebpf, "VIP_FILTER")?,
            backend_filter: take(&mut ebpf, "BACKEND_FILTER")?,
            stats: take(&mut ebpf, "STATS")?,
            settings: take(&mut ebpf, "SETTINGS")?,
            flood: take(&mut ebpf, "FLOOD")?,
            iface_macs: take(&mut ebpf, "IFACE_MACS")?,
            options,
            ebpf,
            pins,
            links: Default::default(),
        };
        // A fresh SETTINGS entry is all zero: give it the defaults until the daemon writes its
        // config (adopted settings are kept).
        if op("SETTINGS", "lookup", dp.settings.get(&0, 0))?.handshake_timeout_ns == 0 {
            dp.set_settings(&Settings::default())?;
        }
        Ok(dp)
    }

    /// Attaches the program to `iface` in the mode `mode` asks for (`auto` is generic on a veth,
    /// see [`super::links::plan_mode`]). When an earlier daemon left a pinned link for it, the
    /// link is updated to this program in one atomic step (traffic never sees no program) unless
    /// `xdp_mode` changed; otherwise a new link is created and pinned, so the program stays
    /// attached when this process exits. The daemon holds the link open too: removing the pin
    /// does not detach it. Returns the mode's warning, if any (native XDP on a veth).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Option<String>, DataplaneError> {
        let prog: &mut Xdp =
            self.ebpf.program_mut(PROGRAM_NAME).and_then(|p| p.try_into().ok()).expect("loaded in load()");
        self.links.attach(prog, self.pins.as_ref(), iface, mode)
    }

    /// Checks every attachment against the kernel (see [`super::links::Links::check`]):
    /// attaches the program again where it is gone and re-creates removed pins. Interfaces
    /// attached again are allowed as redirect targets again (their index may be new).
    pub fn check_links(&mut self) {
        let prog: &mut Xdp =
            self.ebpf.program_mut(PROGRAM_NAME).and_then(|p| p.try_into().ok()).expect("loaded in load()");
        for ifindex in self.links.check(prog, self.pins.as_ref()) {
            if let Err(e) = self.allow_egress(ifindex) {
                tracing::error!(ifindex, "allowing redirects to the re-attached interface: {e}");
            }
        }
    }

    /// Every attachment as the kernel last reported it.
    pub fn interfaces(&self) -> Vec<crate::api::model::InterfaceView> {
        self.links.views()
    }

    /// Warnings about how the program is attached.
    pub fn link_warnings(&self) -> Vec<String> {
        self.links.warnings()
    }

    /// Prometheus text about the attachments (attached, mode, re-attachments, restored pins).
    pub fn render_link_metrics(&self, out: &mut String) {
        self.links.render_metrics(out)
    }

    /// Detaches the program from every interface and removes every pin of `pins`: forwarding
    /// stops and the next daemon starts from scratch. Every pin is tried; the first failure is
    /// returned (a pin that was already gone is no failure).
    pub fn remove_pins(pins: &PinDir) -> Result<(), DataplaneError> {
        let mut first_error = None;
        let mut fail = |what: String| {
            tracing::error!("{what}");
            first_error.get_or_insert(DataplaneError::Pin(what));
        };
        let links = pins.0.join("links");
        if let Ok(entries) = fs::read_dir(&links) {
            for e in entries.flatten() {
                // Dropping the last reference (the pin) detaches the link.
                if let Err(err) = fs::remove_file(e.path())
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    fail(format!("removing {}: {err}", e.path().display()));
                }
            }
        }
        match fs::remove_dir_all(&pins.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                fail(format!("removing {}: {e}", pins.0.display()))
            }
            _ => {}
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sizes this instance was loaded with.
    pub fn options(&self) -> DataplaneOptions {
        self.options
    }

    /// The loaded XDP program (for attaching or `test_run`).
    pub fn program(&self) -> &Xdp {
        self.ebpf.program(PROGRAM_NAME).and_then(|p| p.try_into().ok()).expect("loaded in load()")
    }

    /// The loaded XDP program, mutably (for attaching).
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(PROGRAM_NAME).and_then(|p| p.try_into().ok()).expect("loaded in load()")
    }

    /// Adds or replaces a VIP.
    pub fn set_vip(&mut self, key: &EndpointKey, value: &VipValue) -> Result<(), DataplaneError> {
        op("VIPS", "insert", self.vips.insert(key, value, 0))
    }

    /// Removes a VIP (absent is fine).
    pub fn remove_vip(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        match self.vips.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => op("VIPS", "remove", r),
        }
    }

    /// Writes a service entry: this is the one update a switch makes.
    pub fn set_service(&mut self, id: u32, service: &Service) -> Result<(), DataplaneError> {
        op("SERVICES", "update", self.services.set(id, service, 0))
    }

    /// Reads a service entry.
    pub fn service(&self, id: u32) -> Result<Service, DataplaneError> {
        op("SERVICES", "lookup", self.services.get(&id, 0))
    }

    /// Writes a whole Maglev table into slot `table` (`ring_size` backend indexes).
    pub fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<(), DataplaneError> {
        let m = self.options.ring_size;
        if table >= self.options.table_slots || entries.len() != m as usize {
            return Err(DataplaneError::OutOfRange(format!(
                "table {table} with {} entries (have {} slots of {m})",
                entries.len(),
                self.options.table_slots
            )));
        }
        let base = table * m;
        for (i, backend) in entries.iter().enumerate() {
            op("TABLES", "update", self.tables.set(base + i as u32, backend, 0))?;
        }
        Ok(())
    }

    /// Reads one slot of a table.
    pub fn table_entry(&self, table: u32, slot: u32) -> Result<u32, DataplaneError> {
        op("TABLES", "lookup", self.tables.get(&(table * self.options.ring_size + slot), 0))
    }

    /// Writes a backend entry.
    pub fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError> {
        if index >= MAX_BACKENDS {
            return Err(DataplaneError::OutOfRange(format!("backend index {index} ≥ {MAX_BACKENDS}")));
        }
        op("BACKENDS", "update", self.backends.set(index, backend, 0))
    }

    /// Lets the program redirect to interface `ifindex` (resolved in the calling thread's network
    /// namespace).
    pub fn allow_egress(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::Map("EGRESS", e.to_string()))
    }

    /// Records the MAC address of interface `ifindex` (an attached one): the program forwards only
    /// frames sent to it, never flooded unknown unicast, broadcast or multicast. False when the
    /// index has no slot (`IFACE_MAC_SLOTS`): that interface's frames are not checked.
    pub fn set_iface_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<bool, DataplaneError> {
        if ifindex >= lb_common::maps::IFACE_MAC_SLOTS {
            return Ok(false);
        }
        op("IFACE_MACS", "update", self.iface_macs.set(ifindex, &mac, 0)).map(|()| true)
    }

    /// Rewrites both bit filters from the full lists of VIP and NAT backend (address, port) pairs.
    pub fn set_filters(
        &mut self,
        vips: &[([u32; 4], u16)],
        nat_backends: &[([u32; 4], u16)],
    ) -> Result<(), DataplaneError> {
        write_filter(&mut self.vip_filter, "VIP_FILTER", vips)?;
        write_filter(&mut self.backend_filter, "BACKEND_FILTER", nat_backends)
    }

    /// A counter summed over all CPUs (index as in `lb_common::stats`). The new-flow counters
    /// are read where the program counts them (`StatsSlot::new_flows`): a backend's in its packet
    /// slot, `Reason::NewFlow` summed over the reason slots; they count packets, no bytes.
    pub fn counter(&self, index: u32) -> Result<Counter, DataplaneError> {
        if index == reason_counter(Reason::NewFlow) {
            let mut packets = 0;
            for r in 0..REASONS {
                packets += self.slot_sum(r)?.new_flows;
            }
            return Ok(Counter { packets, bytes: 0 });
        }
        if (BACKEND_NEW_FLOW_BASE..STATS_ENTRIES).contains(&index) {
            let packets = self.slot_sum(backend_counter(index - BACKEND_NEW_FLOW_BASE))?.new_flows;
            return Ok(Counter { packets, bytes: 0 });
        }
        let s = self.slot_sum(index)?;
        Ok(Counter { packets: s.packets, bytes: s.bytes })
    }

    /// `STATS[index]` summed over all CPUs.
    fn slot_sum(&self, index: u32) -> Result<StatsSlot, DataplaneError> {
        let per_cpu = op("STATS", "lookup", self.stats.get(&index, 0))?;
        Ok(per_cpu.iter().fold(StatsSlot::default(), |a, c| StatsSlot {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        }))
    }

    /// All counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<Counter>, DataplaneError> {
        (0..STATS_ENTRIES).map(|i| self.counter(i)).collect()
    }

    /// A flow's entry, if recorded.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::MapOp { map: "FLOWS", op: "lookup", source }),
        }
    }

    /// Calls `f` with every recorded flow (read in batches, see [`super::batch`]); returns how
    /// many there were.
    pub fn for_each_flow(&self, f: impl FnMut(&FlowKey, &FlowValue)) -> Result<usize, DataplaneError> {
        self.flow_reader().for_each(f).map_err(|e| DataplaneError::Map("FLOWS", format!("batch lookup: {e}")))
    }

    /// A reader of `FLOWS` that can be used without this handle.
    pub fn flow_reader(&self) -> super::FlowReader {
        super::FlowReader(self.flows_fd.clone())
    }

    /// Every recorded flow, one lookup per entry (the reference for [`Self::for_each_flow`]).
    pub fn flows_one_by_one(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// Writes a flow entry (the daemon never does; tests age entries with it).
    pub fn set_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DataplaneError> {
        op("FLOWS", "update", self.flows.insert(key, value, 0))
    }

    /// Writes the data plane's tunables (flood-mode limit, stale-entry timeouts).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError> {
        op("SETTINGS", "update", self.settings.set(0, settings, 0))
    }

    /// The tunables in force.
    pub fn settings(&self) -> Result<Settings, DataplaneError> {
        op("SETTINGS", "lookup", self.settings.get(&0, 0))
    }

    /// How many CPUs are in flood mode at `now_ns` (`CLOCK_MONOTONIC_COARSE`), by their
    /// new-flow rate guards.
    pub fn cpus_in_flood(&self, now_ns: u64) -> Result<u32, DataplaneError> {
        let limit = self.settings()?.new_flow_limit;
        let states = op("FLOOD", "lookup", self.flood.get(&0, 0))?;
        Ok(states.iter().filter(|s| s.in_flood(now_ns, limit)).count() as u32)
    }

    /// Sets the VIPs whose replies a NAT backend (address, port) carries.
    pub fn set_nat_backend(&mut self, key: &EndpointKey, value: &NatBackend) -> Result<(), DataplaneError> {
        op("NAT_BACKENDS", "insert", self.nat_backends.insert(key, value, 0))
    }

    /// Every VIP key in `VIPS`.
    pub fn vip_keys(&self) -> Vec<EndpointKey> {
        self.vips.keys().filter_map(Result::ok).collect()
    }

    /// Every key in `NAT_BACKENDS`.
    pub fn nat_backend_keys(&self) -> Vec<EndpointKey> {
        self.nat_backends.keys().filter_map(Result::ok).collect()
    }

    /// Forgets a NAT backend (absent is fine).
    pub fn remove_nat_backend(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        match self.nat_backends.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => op("NAT_BACKENDS", "remove", r),
        }
    }

    /// The `FLOW_EVENTS` ring buffer (flow sync), once: its only reader is the daemon's flow
    /// sync; `None` when it was taken already.
    pub fn take_flow_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map("FLOW_EVENTS")?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    /// A writer of `FLOWS` for the flow sync's inserts, usable without this handle.
    pub fn flow_writer(&self) -> Result<super::FlowWriter, DataplaneError> {
        super::FlowWriter::new(&self.flows_fd)
    }

    /// Forgets every cached next hop (after a neighbour or route change).
    pub fn clear_nexthops(&mut self) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::OutOfRange(e.to_string()))?;
        for i in 0..MAX_BACKENDS {
            let values = aya::maps::PerCpuValues::try_from(vec![NextHop::default(); cpus.get() as usize])
                .map_err(|e| DataplaneError::OutOfRange(e.to_string()))?;
            op("NEXTHOPS", "update", self.nexthops.set(i, values, 0))?;
        }
        Ok(())
    }
}

fn write_filter(
    map: &mut Array<MapData, u64>,
    name: &'static str,
    entries: &[([u32; 4], u16)],
) -> Result<(), DataplaneError> {
    let mut words = vec![0u64; FILTER_WORDS as usize];
    for (addr, port) in entries {
        let (w, m) = word_and_mask(filter_bit(addr, *port));
        words[w as usize] |= m;
    }
    for (i, w) in words.iter().enumerate() {
        if op(name, "lookup", map.get(&(i as u32), 0))? != *w {
            op(name, "update", map.set(i as u32, w, 0))?;
        }
    }
    Ok(())
}

/// Keeps the verifier's log, which is what one needs when loading fails.
fn verifier_error(e: aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            format!("{io_error}\n{verifier_log}")
        }
        other => format!("{other:#}"),
    }
}
