//! The XDP data plane: forwards TCP traffic for VIPs to the active pool's backends.
//!
//! Per packet: parse (`parse`), then
//! 1. a packet to a VIP: reuse its flow's backend (`FLOWS`) unless the service epoch moved on
//!    (hard switch), the backend went down, or the entry is stale (closed, or a handshake that
//!    never completed, idle past its timeout); otherwise pick from the service's active Maglev
//!    table and record the flow. A bare SYN records its flow unless this CPU is in flood mode
//!    (more SYNs per second than `Settings::new_flow_limit`): then it is forwarded by the hash
//!    without a flow lookup, its handshake kept in the direct-mapped `HALF_OPEN`, and the flow is
//!    recorded on its first ACK. An ACK without a flow counts in the guard too; in flood mode it
//!    is recorded only when it completes a handshake of `HALF_OPEN` (NAT: acknowledges the
//!    backend's SYN-ACK), else forwarded by the hash, so a spoofed ACK flood cannot evict
//!    established flows. Segments that can neither start nor continue a connection are
//!    dropped; a RST without a flow is forwarded by the hash only;
//! 2. in NAT mode, a backend's reply (its VIPs found in `NAT_BACKENDS`, its flow in `FLOWS`) is
//!    rewritten back to the VIP and returned the way the client's packets came;
//! 3. an ICMP "too big" about a VIP flow goes to that flow's backend (`icmp`);
//! 4. anything else goes to the kernel untouched, as does every frame not sent to the receiving
//!    interface's own MAC (`l2`).
//!
//! Forwarding rewrites the destination (NAT) or only the MACs (DSR) and leaves by `XDP_TX` or a
//! DEVMAP redirect, with the next hop cached per backend (`NEXTHOPS`).
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod l2;
mod maps;
mod nexthop;
mod parse;
mod sync;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use lb_common::{
    hash::flow_hash,
    maps::{
        BACKEND_UP, EndpointKey, FLOOD_WINDOW_NS, FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FLOW_SYNCED,
        FLOW_TOUCH_TICKS, FlowKey, FlowValue, HALF_OPEN_SLOTS, HALF_OPEN_SYNACK_SEEN, MAX_VIPS_PER_BACKEND,
        NO_BACKEND, NatBackend, PROTO_TCP, SERVICE_DSR, SERVICE_ENABLED, Service, VipValue, flow_ticks,
    },
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::{Reason, backend_counter, reason_counter, vip_counter},
};

use crate::{
    forward::{End, egress_action, rewrite, set_macs},
    maps::{
        BACKEND_FILTER, BACKENDS, FLOOD, FLOWS, HALF_OPEN, NAT_BACKENDS, NEXTHOPS, SERVICES, SETTINGS, STATS,
        TABLES, VIP_FILTER, VIPS,
    },
    parse::{Packet, parse},
};

/// Slots per Maglev table; set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static RING_SIZE: u32 = lb_common::maps::DEFAULT_RING_SIZE;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The load balancer's XDP entry point.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match parse(&ctx) {
        Ok(pkt) => handle(&ctx, &pkt, bytes),
        Err(Reason::PassNotTcp) => icmp::handle(&ctx, bytes).unwrap_or_else(|reason| pass(reason, bytes)),
        Err(reason) => pass(reason, bytes),
    }
}

/// Counts a packet under counter `index`. Not inlined: an inlined per-CPU array lookup and two
/// additions are about 17 translated instructions, and the program counts in some 40 places;
/// the hot paths (a forwarded packet, a non-VIP packet) use `count_inline`.
#[inline(never)]
fn count(index: u32, bytes: u64) {
    count_inline(index, bytes)
}

/// `count` without the call, for the per-packet hot paths.
#[inline(always)]
fn count_inline(index: u32, bytes: u64) {
    count_slot(index, 1, bytes, 0)
}

/// Adds to counter `index`, `new_flows` of the packets having started a flow (a new flow is
/// counted in the slots its packet updates anyway: its backend's and its outcome's).
#[inline(always)]
fn count_slot(index: u32, packets: u64, bytes: u64, new_flows: u64) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe {
            (*c).packets += packets;
            (*c).bytes += bytes;
            (*c).new_flows += new_flows;
        }
    }
}

#[inline(always)]
fn pass(reason: Reason, bytes: u64) -> u32 {
    count(reason_counter(reason), bytes);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(reason: Reason, bytes: u64) -> u32 {
    count(reason_counter(reason), bytes);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn ring_size() -> u32 {
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Is the bit for (`addr`, `port`) set in a filter map?
#[inline(always)]
fn filter_hit(filter: &aya_ebpf::maps::Array<u64>, addr: &[u32; 4], port: u16) -> bool {
    let (word, mask) = lb_common::filter::word_and_mask(lb_common::filter::filter_bit(addr, port));
    match filter.get(word) {
        Some(w) => *w & mask != 0,
        None => false,
    }
}

#[inline(always)]
fn handle(ctx: &XdpContext, pkt: &Packet, bytes: u64) -> u32 {
    let key = &pkt.key;
    if filter_hit(&VIP_FILTER, &key.dst, key.dport) {
        if !l2::addressed_to_us(ctx, pkt.eth) {
            return pass(Reason::PassOtherMac, bytes);
        }
        let now = now_ns();
        let vip_key = EndpointKey { addr: key.dst, port: key.dport, proto: PROTO_TCP, family: key.family };
        let flags = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST);
        let bare_syn = flags == TCP_SYN;
        if bare_syn || (flags & TCP_SYN == 0 && flags & (TCP_ACK | TCP_RST) != 0) {
            // Flood mode: a SYN is forwarded by the hash without a flow lookup (on a large table
            // the lookup of a new 5-tuple is a cache and TLB miss, most of this path's cost).
            let mut flood = bare_syn && flood_mode(now);
            // Otherwise the lookup comes first, also for a SYN (a retransmit, or a reused
            // 5-tuple, follows its entry): a failing `BPF_NOEXIST` insert into a full LRU map
            // would still take, and so evict, an entry.
            if !flood {
                if let Some(flow) = FLOWS.get_ptr_mut(key) {
                    if let Some(action) = established(ctx, pkt, unsafe { &mut *flow }, now, bytes) {
                        return action;
                    }
                }
                // An ACK without an entry would record one: it counts in the rate guard like a
                // SYN, so a spoofed ACK flood engages flood mode and then records nothing.
                if !bare_syn && flags & TCP_RST == 0 {
                    flood = flood_mode(now);
                }
            }
            if let Some(vip) = unsafe { VIPS.get(&vip_key) } {
                return without_entry(ctx, pkt, vip, now, bytes, flood);
            }
        } else if unsafe { VIPS.get(&vip_key) }.is_some() {
            // No SYN, ACK or RST (null, FIN or XMAS scans), or SYN with FIN, RST or ACK: no
            // stack opens a connection to a server that way and none continues one without ACK
            // or RST. Nothing to forward, nothing to record.
            return drop(Reason::DropInvalidFlags, bytes);
        }
    }
    if filter_hit(&BACKEND_FILTER, &key.src, key.sport) {
        if !l2::addressed_to_us(ctx, pkt.eth) {
            return pass(Reason::PassOtherMac, bytes);
        }
        let backend_key =
            EndpointKey { addr: key.src, port: key.sport, proto: PROTO_TCP, family: key.family };
        if let Some(nat) = unsafe { NAT_BACKENDS.get(&backend_key) } {
            if let Some(action) = reply(ctx, pkt, nat, bytes) {
                return action;
            }
        }
    }
    count_inline(reason_counter(Reason::PassNotVip), bytes);
    xdp_action::XDP_PASS
}

/// Counts a SYN in this CPU's new-flow rate guard and says whether the CPU is in flood mode.
#[inline(always)]
fn flood_mode(now: u64) -> bool {
    let limit = match SETTINGS.get(0) {
        Some(s) => s.new_flow_limit,
        None => 0,
    };
    limit != 0 && under_flood(now, limit)
}

/// The per-CPU new-flow rate guard: counts this attempt and says whether this CPU is in flood
/// mode. A window over the limit keeps flood mode engaged for the whole next window too.
#[inline(always)]
fn under_flood(now: u64, limit: u32) -> bool {
    let Some(state) = FLOOD.get_ptr_mut(0) else {
        return false;
    };
    let state = unsafe { &mut *state };
    let age = now.wrapping_sub(state.window_start_ns);
    if age > FLOOD_WINDOW_NS {
        state.engaged = (age <= 2 * FLOOD_WINDOW_NS && state.new_flows > limit) as u32;
        state.window_start_ns = now;
        state.new_flows = 0;
    }
    state.new_flows += 1;
    state.engaged != 0 || state.new_flows > limit
}

/// A bare SYN, ACK or RST to a VIP without a usable flow entry (one place, so the forwarding
/// code is inlined once):
/// - a SYN is recorded in `FLOWS`; in flood mode it is not, its handshake is kept in
///   `HALF_OPEN` (which its SYN-ACK and first ACK need) instead;
/// - an ACK is the first ACK of a handshake whose SYN was not recorded (flood mode), or a
///   connection whose entry was evicted or expired: it goes where its half-open entry says, else
///   by the hash, and is recorded as established; in flood mode only when it completes a
///   handshake of `HALF_OPEN` (NAT: acknowledging the backend's SYN-ACK), so a spoofed ACK flood
///   records nothing;
/// - a RST goes the same way and records nothing.
#[inline(always)]
fn without_entry(ctx: &XdpContext, pkt: &Packet, vip: &VipValue, now: u64, bytes: u64, flood: bool) -> u32 {
    let Some(svc) = SERVICES.get(vip.service) else {
        return drop(Reason::DropBadState, bytes);
    };
    if svc.flags & SERVICE_ENABLED == 0 {
        return drop(Reason::DropNoBackend, bytes);
    }
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let nat = svc.flags & SERVICE_DSR == 0;
    let hash = flow_hash(&pkt.key);
    let slot = hash & (HALF_OPEN_SLOTS - 1);
    // A handshake in `HALF_OPEN`: its backend, and whether this ACK completes it.
    let mut chosen = None;
    let mut completes = false;
    let half = if !syn || flood { HALF_OPEN.get_ptr_mut(slot) } else { None };
    if let Some(half) = half {
        let half = unsafe { &*half };
        let up = match BACKENDS.get(half.flow.backend as u32) {
            Some(b) => b.flags & BACKEND_UP != 0,
            None => false,
        };
        if half.key == pkt.key
            && up
            && half.flow.epoch == svc.epoch
            && half.flow.service as u32 == vip.service
        {
            chosen = Some(half.flow.backend as u32);
            completes = !nat
                || (half.flags & HALF_OPEN_SYNACK_SEEN != 0
                    && u32::from_be(unsafe { (*pkt.tcp).ack })
                        == u32::from_be(half.synack_seq).wrapping_add(1));
        }
    }
    let known_half_open = chosen.is_some();
    let backend = match chosen {
        Some(b) => b,
        None => match pick_hashed(svc.table, hash) {
            Some(b) => b,
            None => return drop(Reason::DropNoBackend, bytes),
        },
    };
    // One entry for either table (a SYN's flags are 0 in both), built once.
    let flags =
        if syn { 0 } else { FLOW_ESTABLISHED | if pkt.tcp_flags & TCP_FIN != 0 { FLOW_FIN } else { 0 } };
    let value = flow_value(ctx, pkt, vip, svc, backend, now, flags);
    let mut new_flow = false;
    if syn && flood {
        // A retransmitted SYN finds its half-open entry and writes nothing.
        if !known_half_open {
            if let Some(half) = HALF_OPEN.get_ptr_mut(slot) {
                // See `HALF_OPEN` for what two CPUs writing this slot at once can do.
                // Field by field: a whole `HalfOpen` built first would take 96 bytes of stack.
                unsafe {
                    (*half).key = pkt.key;
                    (*half).flow = value;
                    (*half).flags = 0;
                    (*half).synack_seq = 0;
                }
            }
        }
        count(reason_counter(Reason::FloodNotRecorded), bytes);
    } else if pkt.tcp_flags & TCP_RST != 0 {
        count(reason_counter(Reason::StatelessRst), bytes);
    } else if flood && !completes {
        // Flood mode, an ACK that completes no handshake seen here: spoofed, or a connection
        // whose entry was evicted. Forwarded where its half-open entry or the hash says, and
        // recorded by its first packet after the flood.
        count(reason_counter(Reason::FloodNotRecorded), bytes);
    } else {
        let _ = FLOWS.insert(&pkt.key, &value, BPF_ANY);
        if flags != 0 {
            sync::report(&pkt.key, &value);
        }
        new_flow = true;
    }
    forward(ctx, pkt, Fwd::new(backend, vip.vip_index, nat, new_flow), now)
}

/// Picks the backend for a flow from the service's active table.
#[inline(always)]
fn pick(table: u32, key: &FlowKey) -> Option<u32> {
    pick_hashed(table, flow_hash(key))
}

/// The `HALF_OPEN` slot of a client → VIP 5-tuple. Not inlined: the NAT reply path's unrolled
/// loop would copy the hash once per VIP.
#[inline(never)]
fn half_open_slot(key: &FlowKey) -> u32 {
    flow_hash(key) & (HALF_OPEN_SLOTS - 1)
}

/// `pick` for a flow whose hash is known.
#[inline(always)]
fn pick_hashed(table: u32, hash: u32) -> Option<u32> {
    let m = ring_size();
    if m == 0 {
        return None;
    }
    let slot = table.wrapping_mul(m).wrapping_add(hash % m);
    match TABLES.get(slot) {
        Some(b) if *b != NO_BACKEND => Some(*b),
        _ => None,
    }
}

/// Remembers where the client's packets come from, for the NAT reply path.
#[inline(always)]
fn note_client(ctx: &XdpContext, pkt: &Packet, flow: &mut FlowValue) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let (src, dst) = unsafe { ((*pkt.eth).src, (*pkt.eth).dst) };
    if flow.client_ifindex != ifindex || flow.client_mac != src || flow.lb_mac != dst {
        flow.client_ifindex = ifindex;
        flow.client_mac = src;
        flow.lb_mac = dst;
    }
}

/// Whether an entry no longer decides its connection's backend: closed (FIN/RST) or never
/// established, and idle for longer than that state's timeout.
#[inline(always)]
fn is_stale(flow: &FlowValue, now: u64) -> bool {
    let closed = flow.flags & (FLOW_FIN | FLOW_RST) != 0;
    if !closed && flow.flags & FLOW_ESTABLISHED != 0 {
        return false;
    }
    let Some(s) = SETTINGS.get(0) else {
        return false;
    };
    let timeout = if closed { s.closed_timeout_ns } else { s.handshake_timeout_ns };
    flow.idle_ns(now) > timeout
}

/// A packet of a known flow. `None` when the flow's service is gone (the caller then treats
/// the packet as new).
#[inline(always)]
fn established(ctx: &XdpContext, pkt: &Packet, flow: &mut FlowValue, now: u64, bytes: u64) -> Option<u32> {
    let svc = SERVICES.get(flow.service as u32)?;
    if svc.flags & SERVICE_ENABLED == 0 {
        let _ = FLOWS.remove(&pkt.key);
        return None;
    }
    let backend_up = match BACKENDS.get(flow.backend as u32) {
        Some(b) => b.flags & BACKEND_UP != 0,
        None => false,
    };
    // A bare SYN on a flow that already closed is a new connection reusing the 5-tuple: it
    // follows the current table like any new flow (a retransmitted SYN of a live flow does not).
    // So does any packet meeting a stale entry.
    let bare_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let expired = is_stale(flow, now);
    let reopened = expired || (bare_syn && flow.flags & (FLOW_FIN | FLOW_RST) != 0);
    if flow.epoch != svc.epoch || !backend_up || reopened {
        let Some(backend) = pick(svc.table, &pkt.key) else {
            return Some(drop(Reason::DropNoBackend, bytes));
        };
        if reopened {
            flow.flags = 0;
            if expired {
                count(reason_counter(Reason::FlowExpired), bytes);
            }
        } else {
            let why = if flow.epoch != svc.epoch { Reason::FlowRebalanced } else { Reason::FlowBackendDown };
            count(reason_counter(why), bytes);
        }
        flow.backend = backend as u16;
        flow.epoch = svc.epoch;
    }
    let nat = svc.flags & SERVICE_DSR == 0;
    if nat {
        note_client(ctx, pkt, flow);
    }
    // A copy received from a peer (flow sync) that now gets packets here is this host's own
    // connection (ECMP moved it): drain counting sees it as established here, and a later
    // record from the peer no longer overwrites it. Written once, on its first packet here.
    if flow.flags & FLOW_SYNCED != 0 {
        flow.flags &= !FLOW_SYNCED;
    }
    let t = flow_ticks(now);
    if t.wrapping_sub(flow.last_seen) > FLOW_TOUCH_TICKS || reopened {
        flow.last_seen = t;
    }
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        let was_closed = flow.flags & (FLOW_FIN | FLOW_RST) != 0;
        if pkt.tcp_flags & TCP_FIN != 0 {
            flow.flags |= FLOW_FIN;
        }
        if pkt.tcp_flags & TCP_RST != 0 {
            flow.flags |= FLOW_RST;
        }
        if !was_closed {
            sync::report(&pkt.key, flow);
        }
    }
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK && flow.flags & FLOW_ESTABLISHED == 0 {
        flow.flags |= FLOW_ESTABLISHED;
        sync::report(&pkt.key, flow);
    }
    let fwd = Fwd::new(flow.backend as u32, flow.vip_index as u32, nat, reopened);
    Some(forward(ctx, pkt, fwd, now))
}

/// `FLOWS` update flag: create or replace.
const BPF_ANY: u64 = 0;

/// A flow entry for a packet of a new flow pinned to `backend`.
#[inline(always)]
fn flow_value(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipValue,
    svc: &Service,
    backend: u32,
    now: u64,
    flags: u8,
) -> FlowValue {
    let (client_mac, lb_mac) = unsafe { ((*pkt.eth).src, (*pkt.eth).dst) };
    FlowValue {
        backend: backend as u16,
        service: vip.service as u8,
        vip_index: vip.vip_index as u8,
        epoch: svc.epoch,
        client_ifindex: ctx.ingress_ifindex() as u32,
        last_seen: flow_ticks(now),
        client_mac,
        lb_mac,
        flags,
        _pad: [0; 3],
    }
}

/// A client packet's way to its backend, packed in one register for `to_backend` (a BPF
/// function takes five arguments in registers; a struct on the caller's stack would add to
/// the combined stack of the call chain, limited to 512 bytes).
#[derive(Clone, Copy)]
struct Fwd(u64);

impl Fwd {
    /// `backend` (< 2^16), the VIP's counter index (< 2^8), NAT rather than DSR, and whether
    /// the packet started its flow (counted with its backend and outcome).
    #[inline(always)]
    fn new(backend: u32, vip_index: u32, nat: bool, new_flow: bool) -> Self {
        Fwd((backend & 0xffff) as u64
            | ((vip_index & 0xff) as u64) << 16
            | (nat as u64) << 24
            | (new_flow as u64) << 25)
    }
    #[inline(always)]
    fn backend(self) -> u32 {
        (self.0 & 0xffff) as u32
    }
    #[inline(always)]
    fn vip_index(self) -> u32 {
        ((self.0 >> 16) & 0xff) as u32
    }
    #[inline(always)]
    fn nat(self) -> bool {
        (self.0 >> 24) & 1 != 0
    }
    #[inline(always)]
    fn new_flow(self) -> u64 {
        (self.0 >> 25) & 1
    }
    /// The next hop could not be resolved (`forward` tried): NAT hands the packet to the
    /// kernel, DSR drops it.
    #[inline(always)]
    fn unresolved(self) -> Self {
        Fwd(self.0 | 1 << 26)
    }
    #[inline(always)]
    fn is_unresolved(self) -> bool {
        (self.0 >> 26) & 1 != 0
    }
}

/// `to_backend`'s answer when the backend's cached next hop is stale: resolve it, call again.
const RESOLVE_FIRST: u32 = u32::MAX;

/// Sends a client packet to its backend (`to_backend`), resolving the next hop on a cache miss
/// from here: a `nexthop::resolve` called inside `to_backend` would stack its 64-byte lookup
/// on both frames, over the 512 bytes the verifier allows a call chain.
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Packet, fwd: Fwd, now: u64) -> u32 {
    let action = to_backend(ctx, pkt, fwd, now);
    if action != RESOLVE_FIRST {
        return action;
    }
    let fwd = if resolve_backend(ctx, pkt, fwd.backend()) { fwd } else { fwd.unresolved() };
    to_backend(ctx, pkt, fwd, now)
}

/// Resolves and caches the next hop of `backend` for a client packet. False when the kernel
/// does not know it (or the backend index is out of range).
#[inline(never)]
fn resolve_backend(ctx: &XdpContext, pkt: &Packet, backend: u32) -> bool {
    let (Some(b), Some(nh)) = (BACKENDS.get(backend), NEXTHOPS.get_ptr_mut(backend)) else {
        return false;
    };
    nexthop::resolve(ctx, b.family, &pkt.key.src, &b.addr, unsafe { &mut *nh })
}

/// Sends a client packet to its backend (through `forward`: `RESOLVE_FIRST` when the cached
/// next hop is stale). Not inlined: both a known flow (`established`) and a new one
/// (`without_entry`) end here, and inlined this was the program's largest duplicate (rewrite,
/// next-hop lookup, egress and counters). One rewrite serves every way out.
#[inline(never)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, f: Fwd, now: u64) -> u32 {
    let (backend, new_flow) = (f.backend(), f.new_flow());
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (Some(b), Some(nh)) = (BACKENDS.get(backend), NEXTHOPS.get_ptr_mut(backend)) else {
        count_slot(reason_counter(Reason::DropBadState), 1, bytes, new_flow);
        return xdp_action::XDP_DROP;
    };
    if b.family != pkt.key.family {
        count_slot(reason_counter(Reason::DropBadState), 1, bytes, new_flow);
        return xdp_action::XDP_DROP;
    }
    let nh = unsafe { &mut *nh };
    let resolved = !f.is_unresolved();
    if resolved && !nexthop::is_fresh(nh, now) {
        return RESOLVE_FIRST;
    }
    // Unresolved, NAT: the kernel forwards the packet (already addressed to the backend) and
    // resolves the neighbour; later packets take the fast path. DSR: the kernel could only route
    // the VIP back to us (or answer "unreachable"), so drop and let the client retransmit.
    let (action, reason, sent) = if !resolved {
        if f.nat() {
            (xdp_action::XDP_PASS, Reason::PassNoNextHop, true)
        } else {
            (xdp_action::XDP_DROP, Reason::DropNoNextHop, false)
        }
    } else {
        match egress_action(ctx, nh.ifindex) {
            xdp_action::XDP_PASS => (xdp_action::XDP_PASS, Reason::PassEgressUnknown, false),
            xdp_action::XDP_TX => (xdp_action::XDP_TX, Reason::FwdTx, true),
            a => (a, Reason::FwdRedirect, true),
        }
    };
    if f.nat() && action != xdp_action::XDP_DROP {
        rewrite(pkt, End::Dst, &b.addr, b.port);
    }
    if resolved && sent {
        set_macs(pkt, nh.dmac, nh.smac);
    }
    if sent {
        count_inline(vip_counter(f.vip_index()), bytes);
    }
    let sent = sent as u64;
    count_slot(backend_counter(backend), sent, sent * bytes, new_flow);
    count_slot(reason_counter(reason), 1, bytes, new_flow);
    action
}

/// A NAT backend's reply: find the flow it answers (client → one of the backend's VIPs, pinned to
/// this backend), rewrite the source back to that VIP and send it the way the client's packets
/// came. `None` when no flow matches (the backend talking to someone directly).
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet, nat: &NatBackend, bytes: u64) -> Option<u32> {
    let key = &pkt.key;
    let vips = nat.count as usize;
    // Find the flow first, rewrite once after the loop (the loop is unrolled: a rewrite inside it
    // was copied once per VIP).
    let mut found = None;
    for i in 0..MAX_VIPS_PER_BACKEND {
        if i >= vips {
            break;
        }
        let vip = nat.vips[i];
        let flow_key = FlowKey {
            src: key.dst,
            dst: vip.addr,
            sport: key.dport,
            dport: vip.port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        // A SYN-ACK may answer a SYN that flood mode kept out of `FLOWS`: it is noted in the
        // half-open entry, whose first ACK must acknowledge it to be recorded.
        let mut half_open = None;
        let flow = match FLOWS.get_ptr_mut(&flow_key) {
            Some(f) => f,
            None if pkt.tcp_flags & TCP_SYN != 0 => {
                let Some(h) = HALF_OPEN.get_ptr_mut(half_open_slot(&flow_key)) else {
                    continue;
                };
                if unsafe { (*h).key } != flow_key {
                    continue;
                }
                half_open = Some(h);
                unsafe { &raw mut (*h).flow }
            }
            None => continue,
        };
        match BACKENDS.get(unsafe { (*flow).backend } as u32) {
            Some(b) if b.addr == key.src && b.port == key.sport => {}
            _ => continue,
        }
        found = Some((vip, flow_key, flow, half_open));
        break;
    }
    let (vip, flow_key, flow, half_open) = found?;
    let flow = unsafe { &mut *flow };
    if let Some(h) = half_open {
        unsafe {
            (*h).synack_seq = (*pkt.tcp).seq;
            (*h).flags |= HALF_OPEN_SYNACK_SEEN;
        }
    }
    // A SYN-ACK answering a closed VIP flow belongs to a new connection the client opened
    // to the backend directly, reusing the port: forget the old flow, leave this alone.
    if pkt.tcp_flags & TCP_SYN != 0 && flow.flags & (FLOW_FIN | FLOW_RST) != 0 {
        let _ = FLOWS.remove(&flow_key);
        return None;
    }
    // The backend ending the connection closes the flow too, so that a later SYN reusing
    // the client's port is balanced as a new flow.
    if pkt.tcp_flags & TCP_RST != 0 && flow.flags & FLOW_RST == 0 {
        flow.flags |= FLOW_RST;
    }
    if pkt.tcp_flags & TCP_FIN != 0 && flow.flags & FLOW_FIN == 0 {
        flow.flags |= FLOW_FIN;
    }
    let action = egress_action(ctx, flow.client_ifindex);
    rewrite(pkt, End::Src, &vip.addr, vip.port);
    if action == xdp_action::XDP_PASS {
        return Some(pass(Reason::PassEgressUnknown, bytes));
    }
    set_macs(pkt, flow.client_mac, flow.lb_mac);
    count_inline(vip_counter(flow.vip_index as u32), bytes);
    count_inline(reason_counter(Reason::FwdReply), bytes);
    Some(action)
}
