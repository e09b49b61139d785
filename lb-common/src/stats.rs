//! Layout of the `STATS` per-CPU counter array: pass/drop/forward reasons first, then one
//! counter per VIP, then two per backend (packets and new flows).

use crate::maps::{MAX_BACKENDS, MAX_VIPS};

/// Why the data plane did what it did with a packet. Each has its own counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    PassNotIp = 0,
    /// IP but not TCP: passed.
    PassNotTcp = 1,
    /// TCP to no VIP and from no NAT backend flow, or an ICMP "too big" quoting no VIP flow:
    /// passed.
    PassNotVip = 2,
    /// An IPv4 fragment or an IPv6 fragment header: passed.
    PassFragment = 3,
    /// Truncated or malformed header: passed untouched.
    PassMalformed = 4,
    /// IPv6 with an extension header before TCP: passed.
    PassIpv6ExtHeader = 5,
    /// Forwarded packet whose next hop is not resolved yet: handed to the kernel.
    PassNoNextHop = 6,
    /// Next hop is on an interface the balancer cannot redirect to: handed to the kernel.
    PassEgressUnknown = 7,
    /// VIP whose service is disabled or whose table has no backend: dropped.
    DropNoBackend = 8,
    /// Table or backend index out of range (inconsistent maps): dropped.
    DropBadState = 9,
    /// Client to VIP packet sent out of the ingress interface (`XDP_TX`).
    FwdTx = 10,
    /// Client to VIP packet redirected to another interface.
    FwdRedirect = 11,
    /// Backend reply rewritten back to the VIP (NAT mode) and forwarded.
    FwdReply = 12,
    /// Packets that started a new flow entry. Read as the sum of `StatsSlot::new_flows` over the
    /// reason slots: the data plane counts a new flow in its packet's outcome slot, which it
    /// updates anyway, so this index's own slot stays zero.
    NewFlow = 13,
    /// Established flows moved because their service epoch changed (hard switch).
    FlowRebalanced = 14,
    /// Established flows moved because their backend went down.
    FlowBackendDown = 15,
    /// DSR packet whose backend's next hop is not resolved: dropped (the client retransmits).
    DropNoNextHop = 16,
    /// A TCP segment to a VIP that can neither start nor continue a connection (no SYN, ACK or
    /// RST; SYN with FIN, RST or ACK): dropped, no flow (scans and floods; no stack sends them).
    DropInvalidFlags = 17,
    /// Flood mode: a SYN forwarded by the hash without being recorded in `FLOWS`.
    FloodNotRecorded = 18,
    /// A RST without a flow: forwarded by the hash, not recorded (it cannot start a connection,
    /// and the backend that has the connection, if the hash finds it, should see it).
    StatelessRst = 19,
    /// A closed or never-established entry older than its timeout was ignored and the packet
    /// balanced anew.
    FlowExpired = 20,
    /// VIP or NAT backend traffic in a frame not addressed to the receiving interface's own MAC
    /// (flooded unknown unicast, broadcast, multicast): passed untouched, never forwarded.
    PassOtherMac = 21,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" about a VIP flow, sent on to the
    /// flow's backend (translated in NAT mode) so that path MTU discovery works.
    FwdIcmpTooBig = 22,
    /// A flow report (flow sync) not written because the `FLOW_EVENTS` ring was full (the
    /// daemon not reading fast enough): that flow is not synced to the peers.
    SyncEventDropped = 23,
}

/// Number of reason counters (`Reason` values are `0..REASONS`).
pub const REASONS: u32 = 24;

/// Every reason, in counter order (for userspace reporting).
pub const ALL_REASONS: [Reason; REASONS as usize] = [
    Reason::PassNotIp,
    Reason::PassNotTcp,
    Reason::PassNotVip,
    Reason::PassFragment,
    Reason::PassMalformed,
    Reason::PassIpv6ExtHeader,
    Reason::PassNoNextHop,
    Reason::PassEgressUnknown,
    Reason::DropNoBackend,
    Reason::DropBadState,
    Reason::FwdTx,
    Reason::FwdRedirect,
    Reason::FwdReply,
    Reason::NewFlow,
    Reason::FlowRebalanced,
    Reason::FlowBackendDown,
    Reason::DropNoNextHop,
    Reason::DropInvalidFlags,
    Reason::FloodNotRecorded,
    Reason::StatelessRst,
    Reason::FlowExpired,
    Reason::PassOtherMac,
    Reason::FwdIcmpTooBig,
    Reason::SyncEventDropped,
];

impl Reason {
    /// Stable snake_case name, used in metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotTcp => "pass_not_tcp",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassFragment => "pass_fragment",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            Reason::PassNoNextHop => "pass_no_next_hop",
            Reason::PassEgressUnknown => "pass_egress_unknown",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBadState => "drop_bad_state",
            Reason::FwdTx => "fwd_tx",
            Reason::FwdRedirect => "fwd_redirect",
            Reason::FwdReply => "fwd_reply",
            Reason::NewFlow => "new_flow",
            Reason::FlowRebalanced => "flow_rebalanced",
            Reason::FlowBackendDown => "flow_backend_down",
            Reason::DropNoNextHop => "drop_no_next_hop",
            Reason::DropInvalidFlags => "drop_invalid_flags",
            Reason::FloodNotRecorded => "flood_not_recorded",
            Reason::StatelessRst => "fwd_stateless_rst",
            Reason::FlowExpired => "flow_expired",
            Reason::PassOtherMac => "pass_other_mac",
            Reason::FwdIcmpTooBig => "fwd_icmp_too_big",
            Reason::SyncEventDropped => "sync_event_dropped",
        }
    }
}

/// First per-VIP counter.
pub const VIP_BASE: u32 = REASONS;
/// First per-backend packet counter.
pub const BACKEND_BASE: u32 = VIP_BASE + MAX_VIPS;
/// First per-backend new-flow counter.
pub const BACKEND_NEW_FLOW_BASE: u32 = BACKEND_BASE + MAX_BACKENDS;
/// Size of the `STATS` array.
pub const STATS_ENTRIES: u32 = BACKEND_NEW_FLOW_BASE + MAX_BACKENDS;

/// Counter index of a reason.
#[inline(always)]
pub const fn reason_counter(reason: Reason) -> u32 {
    reason as u32
}

/// Counter index of a VIP's traffic (both directions).
#[inline(always)]
pub const fn vip_counter(vip_index: u32) -> u32 {
    VIP_BASE + (vip_index & (MAX_VIPS - 1))
}

/// Counter index of the packets sent to a backend.
#[inline(always)]
pub const fn backend_counter(backend: u32) -> u32 {
    BACKEND_BASE + (backend & (MAX_BACKENDS - 1))
}

/// Counter index of the flows started on a backend. Read as `StatsSlot::new_flows` of the
/// backend's packet slot (`backend_counter`), which the data plane updates anyway; this index's
/// own slot stays zero.
#[inline(always)]
pub const fn backend_new_flow_counter(backend: u32) -> u32 {
    BACKEND_NEW_FLOW_BASE + (backend & (MAX_BACKENDS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_numbered_in_order() {
        for (i, r) in ALL_REASONS.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
    }

    #[test]
    fn counter_ranges_do_not_overlap() {
        assert!(reason_counter(Reason::SyncEventDropped) < vip_counter(0));
        assert!(vip_counter(MAX_VIPS - 1) < backend_counter(0));
        assert!(backend_counter(MAX_BACKENDS - 1) < backend_new_flow_counter(0));
        assert_eq!(backend_new_flow_counter(MAX_BACKENDS - 1), STATS_ENTRIES - 1);
        assert!(MAX_VIPS.is_power_of_two() && MAX_BACKENDS.is_power_of_two());
    }
}
