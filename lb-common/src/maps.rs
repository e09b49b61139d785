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

/// `FlowValue::flags`: a FIN was seen from the client.
pub const FLOW_FIN: u32 = 1 << 0;
/// `FlowValue::flags`: a RST was seen from the client.
pub const FLOW_RST: u32 = 1 << 1;

/// Value of `FLOWS`: where an established flow goes, and (NAT mode) how its replies get back to
/// the client without a route lookup: to the MAC the client's packets came from, from the MAC
/// they were sent to, out of the interface they came in on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend index the flow is pinned to.
    pub backend: u32,
    /// Service the flow belongs to.
    pub service: u32,
    /// Counter index of the VIP the flow was addressed to.
    pub vip_index: u32,
    /// Service epoch when the backend was chosen.
    pub epoch: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
    /// Interface the client's packets arrive on.
    pub client_ifindex: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet, at `FLOW_TOUCH_NS` granularity.
    pub last_seen_ns: u64,
    /// Source MAC of the client's packets (the client or its router).
    pub client_mac: [u8; 6],
    /// Destination MAC of the client's packets (the balancer's own, on that interface).
    pub lb_mac: [u8; 6],
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
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

/// Value of `STATS` (per-CPU array): one counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (whole frames).
    pub bytes: u64,
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
    unsafe impl aya::Pod for BenchPacket {}
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
        assert_eq!((size_of::<FlowValue>(), align_of::<FlowValue>()), (48, 8));
        assert_eq!((size_of::<NextHop>(), align_of::<NextHop>()), (24, 8));
        assert_eq!((size_of::<NatBackend>(), align_of::<NatBackend>()), (84, 4));
        assert_eq!((size_of::<Counter>(), align_of::<Counter>()), (16, 8));
        assert_eq!(size_of::<BenchPacket>(), BENCH_PACKET_MAX + 8);
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
        assert_eq!(&f.last_seen_ns as *const _ as usize - base, 24);
        assert_eq!(&f.lb_mac as *const _ as usize - base, 38);
    }
}
