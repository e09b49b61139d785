//! Every map of the data plane. Each has one writer: the daemon for configuration, the XDP
//! program for flow state and counters. Sizes marked "resized at load" are set by the loader.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    filter::FILTER_WORDS,
    maps::{
        Backend, DEFAULT_FLOW_ENTRIES, DEFAULT_RING_SIZE, DEFAULT_TABLE_SLOTS, EndpointKey, FloodState,
        FlowKey, FlowValue, HALF_OPEN_SLOTS, HalfOpen, MAX_BACKENDS, MAX_SERVICES, MAX_VIPS, NatBackend,
        NextHop, Service, Settings, StatsSlot, VipValue,
    },
    stats::STATS_ENTRIES,
};

/// VIP (address, port, protocol) → service and VIP counter index. Written by the daemon.
#[map]
pub static VIPS: HashMap<EndpointKey, VipValue> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Service id → active table, epoch, mode. Written by the daemon; a switch is one update of an
/// entry here.
#[map]
pub static SERVICES: Array<Service> = Array::with_max_entries(MAX_SERVICES, 0);

/// All Maglev tables back to back: table `t` is slots `t * RING_SIZE .. (t + 1) * RING_SIZE`,
/// each a backend index (or `NO_BACKEND`). Written by the daemon, never while a service points
/// at the table being written. Resized at load to `slots * RING_SIZE`.
#[map]
pub static TABLES: Array<u32> = Array::with_max_entries(DEFAULT_TABLE_SLOTS * DEFAULT_RING_SIZE, 0);

/// Backend index → address, port, up flag. Written by the daemon.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client-side 5-tuple → backend, service epoch, last seen. Written by the XDP program; shared by
/// all CPUs so a flow keeps its backend whichever CPU sees its next packet (drain relies on it).
/// Resized at load.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Flood mode: handshakes whose SYN was not recorded in `FLOWS`, in a direct-mapped table
/// (slot `flow_hash & (HALF_OPEN_SLOTS - 1)`; a new handshake overwrites the slot), so a NAT
/// backend's SYN-ACK can be rewritten back to the client and the first ACK finds the backend
/// its SYN went to. An array slot costs no LRU lock or list move, and a flood churns this
/// table, never `FLOWS`. Written by the XDP program.
///
/// Slots are written without a lock, so two CPUs can write one slot at the same time: a SYN
/// replacing it on each (two handshakes whose hashes collide, within the same ~20 ns), or a
/// SYN replacing it on one while a NAT SYN-ACK for the previous handshake marks it on the
/// other. What that can cause, and nothing more (each handshake is checked against `key`):
/// - a torn entry whose `key` comes from one handshake and `flow` from the other: the first's
///   first ACK (and NAT SYN-ACK) follow the other's backend. That backend was picked by the
///   hash of the other 5-tuple, so it differs from the one the SYN went to: the ACK is
///   answered with a RST and that connection fails (the client opens another). A `key` torn
///   from both matches neither handshake: they go by the hash, as without a slot;
/// - the SYN-ACK mark (`flags`, `synack_seq`) of the old handshake landing on the new one: the
///   new first ACK does not acknowledge that sequence number, so in flood mode its flow is not
///   recorded on that ACK (it is still forwarded to its backend, and recorded by its first
///   packet after the flood); the old handshake's ACK finds the slot taken and goes by the
///   hash, the backend its SYN went to unless the table changed in between.
/// Forwarding of recorded flows (`FLOWS`) is never affected; a collision of two handshakes
/// already loses one of them to the direct mapping, the race only narrows which one.
#[map]
pub static HALF_OPEN: Array<HalfOpen> = Array::with_max_entries(HALF_OPEN_SLOTS, 0);

/// Tunables (index 0): flood-mode limit, timeouts of closed and never-established entries.
/// Written by the daemon from its config.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// The new-flow rate guard's window, per CPU (index 0). Written by the XDP program; the daemon
/// reads it for `lb_flood_mode`.
#[map]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);

/// NAT backend (address, port) → the VIPs it serves, to rewrite its replies. Written by the
/// daemon.
#[map]
pub static NAT_BACKENDS: HashMap<EndpointKey, NatBackend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Backend index → next hop (MACs, egress interface) learnt by `bpf_fib_lookup`, per CPU, reused
/// for `NEXTHOP_TTL_NS`. Written by the XDP program; the daemon may clear it.
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Interfaces the program may redirect to (ifindex → ifindex). Written by the daemon for each
/// interface it attached to.
#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Bit filter of VIP (address, port): a clear bit proves a packet is not for a VIP. Written by
/// the daemon (`lb_common::filter`).
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);

/// Bit filter of NAT backend (address, port): a clear bit proves a packet is not a backend's
/// reply. Written by the daemon.
#[map]
pub static BACKEND_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);

/// Per-CPU counters, laid out by `lb_common::stats`. Written by the XDP program.
#[map]
pub static STATS: PerCpuArray<StatsSlot> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Interface index → that interface's own MAC (all zero: not recorded), for interfaces the
/// program is attached to. Only frames sent to it are forwarded: a switch flooding unknown
/// unicast (another balancer's MAC, say) must not make two balancers forward one packet.
/// Written by the daemon at attach.
#[map]
pub static IFACE_MACS: Array<[u8; 6]> = Array::with_max_entries(lb_common::maps::IFACE_MAC_SLOTS, 0);

/// Flows whose handshake completed or that closed, reported to the daemon for the fleet's flow
/// sync (`lb_common::maps::FlowEvent` records; see `sync`). Written by the XDP program; read by
/// the daemon, which sends them to the other balancer hosts.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(lb_common::maps::FLOW_EVENTS_BYTES, 0);
