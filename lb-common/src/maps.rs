//! Keys and values of the BPF maps. Layouts are `#[repr(C)]` with explicit padding so the kernel
//! program and the daemon agree byte for byte; `tests` below pin sizes and alignments.
//!
//! Addresses are stored as four `u32` words exactly as they sit in the packet (network byte
//! order in memory). An IPv4 address uses word 0 and leaves words 1..3 zero. Ports are stored in
//! network byte order too, so the data plane never swaps bytes.

/// `family` value for IPv4.
pub const FAMILY_V4: u8 = 4;
/// `family` value for IPv6.
pub const FAMILY_V6: u8 = 6;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// Default number of slots of one Maglev table (prime). The data plane reads the value in force
/// from the `RING_SIZE` global, set when the program is loaded.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Default number of Maglev tables the `TABLES` map holds (its size is `slots * ring size`).
pub const DEFAULT_TABLE_SLOTS: u32 = 16;
/// Maximum number of VIPs (bounds the `VIPS` map and the per-VIP counters).
pub const MAX_VIPS: u32 = 256;
/// Maximum number of services (size of the `SERVICES` array).
pub const MAX_SERVICES: u32 = 256;
/// Maximum number of backends over all pools (size of the `BACKENDS` array).
pub const MAX_BACKENDS: u32 = 4096;
/// Slots of `IFACE_MACS`, an array indexed by interface index (an array lookup costs a few
/// nanoseconds, a hash lookup on every forwarded packet several times that): interfaces with a
/// higher index are not checked against their MAC.
pub const IFACE_MAC_SLOTS: u32 = 65_536;
/// Default size of the flow table (`FLOWS`).
pub const DEFAULT_FLOW_ENTRIES: u32 = 1 << 20;
/// How long a next hop learnt by `bpf_fib_lookup` is reused before it is looked up again.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;
/// A flow's `last_seen_ns` is rewritten only when it is older than this, to keep the hot path
/// from dirtying a shared cache line on every packet.
pub const FLOW_TOUCH_NS: u64 = 1_000_000_000;
/// `FLOW_TOUCH_NS` in flow clock ticks (`flow_ticks`).
pub const FLOW_TOUCH_TICKS: u32 = (FLOW_TOUCH_NS >> FLOW_TICK_SHIFT) as u32;

/// Value of a `TABLES` slot that no backend owns (the pool is empty): new flows are dropped.
pub const NO_BACKEND: u32 = u32::MAX;

/// An address, port and protocol: the key of `VIPS` (a VIP clients connect to) and of
/// `NAT_BACKENDS` (a backend whose replies are rewritten).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Address words, network order (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol (`PROTO_TCP`).
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

/// Value of `VIPS`: which service a VIP belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Index into `SERVICES`.
    pub service: u32,
    /// Index of this VIP's counters (`stats::vip_counter`).
    pub vip_index: u32,
}

/// `Service::flags`: the service forwards (cleared when a service is removed).
pub const SERVICE_ENABLED: u32 = 1 << 0;
/// `Service::flags`: forwarding mode is DSR (only the destination MAC changes); NAT otherwise.
pub const SERVICE_DSR: u32 = 1 << 1;

/// Value of `SERVICES` (an array indexed by service id). **A switch is one update of this
/// entry**: the daemon writes the new pool's table first, then points `table` at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Which Maglev table (slot of `TABLES`) new flows use.
    pub table: u32,
    /// Flows recorded under another epoch are re-balanced (a hard switch bumps it).
    pub epoch: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// `Backend::flags`: the backend may receive traffic. A flow whose backend lost this bit is
/// re-balanced on its next packet.
pub const BACKEND_UP: u8 = 1 << 0;

/// Value of `BACKENDS` (an array indexed by backend index, one index per pool member).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address words, network order.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `BACKEND_*` bits.
    pub flags: u8,
}

/// Key of `FLOWS`: the 5-tuple of the client to VIP direction, as seen in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address words, network order.
    pub src: [u32; 4],
    /// Destination address words, network order.
    pub dst: [u32; 4],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// `FlowValue::flags`: a FIN was seen (from the client, or from a NAT backend).
pub const FLOW_FIN: u8 = 1 << 0;
/// `FlowValue::flags`: a RST was seen (from the client, or from a NAT backend).
pub const FLOW_RST: u8 = 1 << 1;
/// `FlowValue::flags`: the client sent a segment with ACK and without SYN, so the handshake
/// completed. An entry without it is a handshake in progress (or one that never completed) and
/// expires after `Settings::handshake_timeout_ns`.
pub const FLOW_ESTABLISHED: u8 = 1 << 2;
/// `FlowValue::flags`: the entry was not recorded by this host's data plane but received from a
/// peer of the fleet (flow sync), so that a connection ECMP moves here keeps its backend. The
/// data plane forwards by it like by its own entries (same epoch and staleness rules); status
/// and drain-status count such entries apart. A packet reopening the 5-tuple clears it.
pub const FLOW_SYNCED: u8 = 1 << 3;

/// `FlowValue::last_seen` counts in ticks of 2^`FLOW_TICK_SHIFT` ns (about 1.05 ms), so the
/// time fits 32 bits (it wraps after about 52 days; ages are computed with wrapping arithmetic).
pub const FLOW_TICK_SHIFT: u32 = 20;

/// A `bpf_ktime_get_coarse_ns` / `CLOCK_MONOTONIC_COARSE` time as a flow clock tick.
#[inline(always)]
pub const fn flow_ticks(ns: u64) -> u32 {
    (ns >> FLOW_TICK_SHIFT) as u32
}

/// Value of `FLOWS`: where an established flow goes, and (NAT mode) how its replies get back to
/// the client without a route lookup: to the MAC the client's packets came from, from the MAC
/// they were sent to, out of the interface they came in on. 32 bytes (was 48): indexes are as
/// narrow as their maps (`MAX_BACKENDS`, `MAX_SERVICES`, `MAX_VIPS`) and the clock is 32-bit, so
/// a 1M-entry table is 16 MB smaller and an insert copies less.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend index the flow is pinned to (`< MAX_BACKENDS`).
    pub backend: u16,
    /// Service the flow belongs to (`< MAX_SERVICES`).
    pub service: u8,
    /// Counter index of the VIP the flow was addressed to (`< MAX_VIPS`).
    pub vip_index: u8,
    /// Service epoch when the backend was chosen.
    pub epoch: u32,
    /// Interface the client's packets arrive on.
    pub client_ifindex: u32,
    /// `flow_ticks(bpf_ktime_get_coarse_ns())` of the last packet, refreshed at `FLOW_TOUCH_NS`
    /// granularity.
    pub last_seen: u32,
    /// Source MAC of the client's packets (the client or its router).
    pub client_mac: [u8; 6],
    /// Destination MAC of the client's packets (the balancer's own, on that interface).
    pub lb_mac: [u8; 6],
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

impl FlowValue {
    /// Nanoseconds since the flow's last packet, at `now_ns` (same clock as the data plane's).
    pub const fn idle_ns(&self, now_ns: u64) -> u64 {
        (flow_ticks(now_ns).wrapping_sub(self.last_seen) as u64) << FLOW_TICK_SHIFT
    }

    /// The flow saw a FIN or a RST.
    pub const fn is_closed(&self) -> bool {
        self.flags & (FLOW_FIN | FLOW_RST) != 0
    }
}

/// Slots of `HALF_OPEN` (a power of two: the slot is `flow_hash & (HALF_OPEN_SLOTS - 1)`).
/// 131,072 slots of 80 bytes: 10 MB, as many as the LRU side table it replaced had for a
/// 1M-entry flow table. A flood of `r` SYNs/s overwrites a real handshake's slot within its
/// round trip `t` with probability about `r * t / HALF_OPEN_SLOTS` (1M/s, 1 ms: 0.8%).
pub const HALF_OPEN_SLOTS: u32 = 1 << 17;

/// `HalfOpen::flags`: `synack_seq` holds the sequence number of the backend's SYN-ACK (NAT; a
/// DSR backend's SYN-ACK does not pass the balancer).
pub const HALF_OPEN_SYNACK_SEEN: u32 = 1 << 0;

/// Value of `HALF_OPEN`, a direct-mapped table (an array indexed by the flow hash, a new entry
/// overwrites whatever the slot held): a handshake whose SYN came in flood mode and was not
/// recorded in `FLOWS`. Its SYN-ACK (NAT) is returned with `flow`'s client MACs and interface,
/// and its first ACK is recorded with `flow`'s backend. An array slot is written without the
/// LRU map's locks and list moves, which were most of the flood-mode SYN's cost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpen {
    /// The client → VIP 5-tuple the slot holds (the slot is shared by every tuple with the same
    /// hash bits: compared before use).
    pub key: FlowKey,
    /// The entry the first ACK records (`flags` 0: not established).
    pub flow: FlowValue,
    /// `HALF_OPEN_*` bits.
    pub flags: u32,
    /// Sequence number of the backend's SYN-ACK (network order), when `HALF_OPEN_SYNACK_SEEN`:
    /// in flood mode a NAT flow's first ACK is recorded only when it acknowledges it, which a
    /// spoofed ACK (its sender never saw the SYN-ACK) cannot do.
    pub synack_seq: u32,
}

/// Default `Settings::new_flow_limit`: new flows per second and CPU above which flood mode
/// engages (Katran's guard uses 125,000 per CPU).
pub const DEFAULT_NEW_FLOW_LIMIT: u32 = 125_000;
/// Default `Settings::handshake_timeout_ns`: a handshake that did not complete within this is
/// not trusted any more (SYN retransmits come after 1, 3, 7 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT_NS: u64 = 5_000_000_000;
/// Default `Settings::closed_timeout_ns`: a flow this long idle after a FIN or RST is not trusted
/// any more (the closing handshake and its retransmissions are done by then).
pub const DEFAULT_CLOSED_TIMEOUT_NS: u64 = 5_000_000_000;

/// Value of `SETTINGS` (one entry): tunables of the data plane, written by the daemon from its
/// config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Bare SYNs per second and CPU (retransmits included) above which that CPU is in flood
    /// mode: SYNs are forwarded by the hash without a flow lookup and not recorded in `FLOWS`
    /// (their handshakes are kept in `HALF_OPEN` instead). ACKs without a flow count too.
    /// 0: never.
    pub new_flow_limit: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// An entry whose handshake never completed is ignored after this long without a packet.
    pub handshake_timeout_ns: u64,
    /// An entry closed by FIN or RST is ignored after this long without a packet.
    pub closed_timeout_ns: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            new_flow_limit: DEFAULT_NEW_FLOW_LIMIT,
            _pad: 0,
            handshake_timeout_ns: DEFAULT_HANDSHAKE_TIMEOUT_NS,
            closed_timeout_ns: DEFAULT_CLOSED_TIMEOUT_NS,
        }
    }
}

/// How long one flood-mode window lasts: the guard counts new flows per CPU over it.
pub const FLOOD_WINDOW_NS: u64 = 1_000_000_000;

/// Value of `FLOOD` (per CPU, one entry): the new-flow rate guard's window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// `bpf_ktime_get_coarse_ns` when the current window started.
    pub window_start_ns: u64,
    /// Bare SYNs seen in the current window (recorded or not).
    pub new_flows: u32,
    /// 1 when the previous window went over the limit: flood mode then stays engaged for the
    /// whole current window, so a sustained flood records nothing at the start of each second.
    pub engaged: u32,
}

impl FloodState {
    /// Whether this CPU is in flood mode at `now_ns` with `limit` (as the data plane decides it).
    pub fn in_flood(&self, now_ns: u64, limit: u32) -> bool {
        if limit == 0 || now_ns.saturating_sub(self.window_start_ns) > 2 * FLOOD_WINDOW_NS {
            return false;
        }
        if now_ns.saturating_sub(self.window_start_ns) > FLOOD_WINDOW_NS {
            return self.new_flows > limit;
        }
        self.engaged != 0 || self.new_flows > limit
    }
}

/// A resolved next hop: value of `NEXTHOPS` (per CPU, indexed by backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Destination MAC to write.
    pub dmac: [u8; 6],
    /// Source MAC to write (the egress interface's own).
    pub smac: [u8; 6],
    /// Egress interface.
    pub ifindex: u32,
    /// Valid until this `bpf_ktime_get_coarse_ns`; zero means never resolved.
    pub expires_ns: u64,
}

/// Most VIPs whose replies one NAT backend may carry (the reply path tries each).
pub const MAX_VIPS_PER_BACKEND: usize = 4;

/// One VIP a NAT backend's replies may belong to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatVip {
    /// VIP address words, network order.
    pub addr: [u32; 4],
    /// VIP port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
}

/// Value of `NAT_BACKENDS`: the VIPs a NAT backend serves. A reply from the backend is rewritten
/// to the VIP whose flow (client → VIP) is in `FLOWS` and pinned to this backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatBackend {
    /// The VIPs; only the first `count` are used.
    pub vips: [NatVip; MAX_VIPS_PER_BACKEND],
    /// How many of `vips` are set.
    pub count: u32,
}

/// One counter as the daemon reports it (`STATS` summed over CPUs, see [`StatsSlot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (whole frames).
    pub bytes: u64,
}

/// Value of `STATS` (per-CPU array): one counter, plus the new flows among its packets. The
/// third field lets a forwarded packet that starts a flow be counted with the lookups it needs
/// anyway (its backend's and its outcome's counters) instead of two more: the per-backend
/// new-flow counter is the backend slot's `new_flows`, and `Reason::NewFlow` is the sum of
/// `new_flows` over the reason slots (`lb_common::stats` keeps their indices for readers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSlot {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (whole frames).
    pub bytes: u64,
    /// Of those packets, how many started a flow (recorded it, or re-balanced a stale entry).
    pub new_flows: u64,
}

/// Bytes of `FLOW_EVENTS`, the ring buffer through which the data plane reports flows to the
/// daemon's flow sync (a power of two, a multiple of the page size). 4 MiB hold about 52,000
/// records of [`FlowEvent`] (72 bytes + an 8-byte header): over 5 s of 10,000 new flows/s, far
/// more than the daemon's reader ever lets pile up (it drains the ring every few ms).
pub const FLOW_EVENTS_BYTES: u32 = 4 << 20;

/// A record of `FLOW_EVENTS`: a flow whose handshake completed (its first ACK, whether or not
/// its SYN was recorded) or that closed (its first FIN or RST), with its entry as it stands
/// after the packet. Only completed handshakes are reported, so a spoofed SYN flood produces
/// no sync traffic at all; the close lets peers expire their copy quickly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// The flow's 5-tuple, as in `FLOWS`.
    pub key: FlowKey,
    /// Its entry, as in `FLOWS` (`flags` says established or closed).
    pub value: FlowValue,
}

/// Value of the bench wrapper's `BENCH_PACKET` map: the packet to restore before each repeat.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPacket {
    /// Bytes of the packet to restore (only `len` of them are used).
    pub data: [u8; BENCH_PACKET_MAX],
    /// Length of the packet in `data`.
    pub len: u32,
    /// When not zero: offset of a 32-bit word the wrapper overwrites with a per-repeat counter
    /// (e.g. the IPv4 source address), so every repeat is a new flow.
    pub vary_offset: u32,
}

/// Largest packet the bench wrapper can restore.
pub const BENCH_PACKET_MAX: usize = 128;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are #[repr(C)], Copy, built only of integers with explicit padding.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for VipValue {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for NatBackend {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for StatsSlot {}
    unsafe impl aya::Pod for BenchPacket {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FloodState {}
    unsafe impl aya::Pod for HalfOpen {}
    unsafe impl aya::Pod for FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_are_fixed() {
        // Sizes with no implicit padding: the kernel compares keys bytewise.
        assert_eq!((size_of::<EndpointKey>(), align_of::<EndpointKey>()), (20, 4));
        assert_eq!((size_of::<VipValue>(), align_of::<VipValue>()), (8, 4));
        assert_eq!((size_of::<Service>(), align_of::<Service>()), (16, 4));
        assert_eq!((size_of::<Backend>(), align_of::<Backend>()), (20, 4));
        assert_eq!((size_of::<FlowKey>(), align_of::<FlowKey>()), (40, 4));
        assert_eq!((size_of::<FlowValue>(), align_of::<FlowValue>()), (32, 4));
        assert_eq!((size_of::<Settings>(), align_of::<Settings>()), (24, 8));
        assert_eq!((size_of::<FloodState>(), align_of::<FloodState>()), (16, 8));
        assert_eq!((size_of::<HalfOpen>(), align_of::<HalfOpen>()), (80, 4));
        assert_eq!((size_of::<NextHop>(), align_of::<NextHop>()), (24, 8));
        assert_eq!((size_of::<NatBackend>(), align_of::<NatBackend>()), (84, 4));
        assert_eq!((size_of::<Counter>(), align_of::<Counter>()), (16, 8));
        assert_eq!((size_of::<FlowEvent>(), align_of::<FlowEvent>()), (72, 4));
        assert_eq!(size_of::<BenchPacket>(), BENCH_PACKET_MAX + 8);
    }

    #[test]
    fn flow_idle_time_survives_the_clock_wrapping() {
        let f = FlowValue { last_seen: u32::MAX, ..FlowValue::default() };
        // Two ticks later the 32-bit clock has wrapped.
        let now = (u32::MAX as u64 + 2) << FLOW_TICK_SHIFT;
        assert_eq!(f.idle_ns(now), 2 << FLOW_TICK_SHIFT);
        let f = FlowValue { last_seen: flow_ticks(10_000_000_000), ..FlowValue::default() };
        assert!(f.idle_ns(13_000_000_000).abs_diff(3_000_000_000) < 2 << FLOW_TICK_SHIFT);
    }

    #[test]
    fn flood_state_reads_like_the_data_plane_decides() {
        let s = FloodState { window_start_ns: 10_000_000_000, new_flows: 5, engaged: 0 };
        assert!(!s.in_flood(10_500_000_000, 10));
        assert!(s.in_flood(10_500_000_000, 4));
        assert!(!s.in_flood(10_500_000_000, 0), "limit 0: never");
        let engaged = FloodState { engaged: 1, ..s };
        assert!(engaged.in_flood(10_500_000_000, 10), "engaged for the whole window");
        // The next window starts engaged only when this one went over the limit.
        assert!(s.in_flood(11_500_000_000, 4) && !engaged.in_flood(11_500_000_000, 10));
        assert!(!s.in_flood(12_500_000_000, 4), "no new flow for two windows: over");
    }

    #[test]
    fn field_offsets_match_the_documented_layout() {
        let k = FlowKey::default();
        let base = &k as *const _ as usize;
        assert_eq!(&k.dst as *const _ as usize - base, 16);
        assert_eq!(&k.sport as *const _ as usize - base, 32);
        assert_eq!(&k.proto as *const _ as usize - base, 36);
        let f = FlowValue::default();
        let base = &f as *const _ as usize;
        assert_eq!(&f.last_seen as *const _ as usize - base, 12);
        assert_eq!(&f.lb_mac as *const _ as usize - base, 22);
        assert_eq!(&f.flags as *const _ as usize - base, 28);
    }
}
