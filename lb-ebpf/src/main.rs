//! The XDP data plane: forwards TCP traffic for VIPs to the active pool's backends.
//!
//! Per packet: parse (`parse`), then
//! 1. a packet to a VIP: reuse its flow's backend (`FLOWS`) unless the service epoch moved on
//!    (hard switch) or the backend went down; otherwise pick from the service's active Maglev
//!    table and record the flow;
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

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use lb_common::{
    hash::flow_hash,
    maps::{
        BACKEND_UP, EndpointKey, FLOW_FIN, FLOW_RST, FLOW_TOUCH_NS, FlowKey, FlowValue, MAX_VIPS_PER_BACKEND,
        NO_BACKEND, NatBackend, PROTO_TCP, SERVICE_DSR, SERVICE_ENABLED, Service, VipValue,
    },
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::{Reason, backend_counter, backend_new_flow_counter, reason_counter, vip_counter},
};

use crate::{
    forward::{End, egress_action, rewrite, set_macs},
    maps::{
        BACKEND_FILTER, BACKENDS, FLOWS, NAT_BACKENDS, NEXTHOPS, SERVICES, STATS, TABLES, VIP_FILTER, VIPS,
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

#[inline(always)]
fn count(index: u32, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
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
        // A bare SYN almost always starts a new flow: it skips the lookup and records the flow
        // only if none exists (a retransmitted or port-reusing SYN then takes the path below).
        let bare_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let vip_key = EndpointKey { addr: key.dst, port: key.dport, proto: PROTO_TCP, family: key.family };
        if bare_syn {
            if let Some(vip) = unsafe { VIPS.get(&vip_key) } {
                if let Some(action) = new_flow(ctx, pkt, vip, now, bytes, BPF_NOEXIST) {
                    return action;
                }
            }
        }
        if let Some(flow) = FLOWS.get_ptr_mut(key) {
            if let Some(action) = established(ctx, pkt, unsafe { &mut *flow }, now, bytes) {
                return action;
            }
        }
        if let Some(vip) = unsafe { VIPS.get(&vip_key) } {
            if let Some(action) = new_flow(ctx, pkt, vip, now, bytes, BPF_ANY) {
                return action;
            }
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
    pass(Reason::PassNotVip, bytes)
}

/// Picks the backend for a flow from the service's active table.
#[inline(always)]
fn pick(svc: &Service, pkt: &Packet) -> Option<u32> {
    let m = ring_size();
    if m == 0 {
        return None;
    }
    let slot = svc.table.wrapping_mul(m).wrapping_add(flow_hash(&pkt.key) % m);
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

/// A packet of a known flow. `None` when the flow's service is gone (the caller then treats
/// the packet as new).
#[inline(always)]
fn established(ctx: &XdpContext, pkt: &Packet, flow: &mut FlowValue, now: u64, bytes: u64) -> Option<u32> {
    let svc = SERVICES.get(flow.service)?;
    if svc.flags & SERVICE_ENABLED == 0 {
        let _ = FLOWS.remove(&pkt.key);
        return None;
    }
    let backend_up = match BACKENDS.get(flow.backend) {
        Some(b) => b.flags & BACKEND_UP != 0,
        None => false,
    };
    // A bare SYN on a flow that already closed is a new connection reusing the 5-tuple: it
    // follows the current table like any new flow (a retransmitted SYN of a live flow does not).
    let reopened = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && flow.flags & (FLOW_FIN | FLOW_RST) != 0;
    if flow.epoch != svc.epoch || !backend_up || reopened {
        let Some(backend) = pick(svc, pkt) else {
            return Some(drop(Reason::DropNoBackend, bytes));
        };
        if reopened {
            flow.flags = 0;
            count(reason_counter(Reason::NewFlow), bytes);
            count(backend_new_flow_counter(backend), bytes);
        } else {
            let why = if flow.epoch != svc.epoch { Reason::FlowRebalanced } else { Reason::FlowBackendDown };
            count(reason_counter(why), bytes);
        }
        flow.backend = backend;
        flow.epoch = svc.epoch;
    }
    if svc.flags & SERVICE_DSR == 0 {
        note_client(ctx, pkt, flow);
    }
    if now.wrapping_sub(flow.last_seen_ns) > FLOW_TOUCH_NS {
        flow.last_seen_ns = now;
    }
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        if pkt.tcp_flags & TCP_FIN != 0 {
            flow.flags |= FLOW_FIN;
        }
        if pkt.tcp_flags & TCP_RST != 0 {
            flow.flags |= FLOW_RST;
        }
    }
    Some(to_backend(ctx, pkt, svc, flow.backend, flow.vip_index, now, bytes))
}

/// `FLOWS` update flag: create or replace.
const BPF_ANY: u64 = 0;
/// `FLOWS` update flag: create only.
const BPF_NOEXIST: u64 = 1;

/// The first packet of a flow to a VIP: records the flow (with `update_flags`) and forwards.
/// `None` when `BPF_NOEXIST` finds the flow already recorded.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipValue,
    now: u64,
    bytes: u64,
    update_flags: u64,
) -> Option<u32> {
    let Some(svc) = SERVICES.get(vip.service) else {
        return Some(drop(Reason::DropBadState, bytes));
    };
    if svc.flags & SERVICE_ENABLED == 0 {
        return Some(drop(Reason::DropNoBackend, bytes));
    }
    let Some(backend) = pick(svc, pkt) else {
        return Some(drop(Reason::DropNoBackend, bytes));
    };
    let flags = (if pkt.tcp_flags & TCP_FIN != 0 { FLOW_FIN } else { 0 })
        | (if pkt.tcp_flags & TCP_RST != 0 { FLOW_RST } else { 0 });
    let (client_mac, lb_mac) = unsafe { ((*pkt.eth).src, (*pkt.eth).dst) };
    let value = FlowValue {
        backend,
        service: vip.service,
        vip_index: vip.vip_index,
        epoch: svc.epoch,
        flags,
        client_ifindex: ctx.ingress_ifindex() as u32,
        last_seen_ns: now,
        client_mac,
        lb_mac,
        _pad: [0; 4],
    };
    if FLOWS.insert(&pkt.key, &value, update_flags).is_err() && update_flags == BPF_NOEXIST {
        return None;
    }
    count(reason_counter(Reason::NewFlow), bytes);
    count(backend_new_flow_counter(backend), bytes);
    Some(to_backend(ctx, pkt, svc, backend, vip.vip_index, now, bytes))
}

/// Sends a client packet to its backend.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    backend: u32,
    vip_index: u32,
    now: u64,
    bytes: u64,
) -> u32 {
    let (Some(b), Some(nh)) = (BACKENDS.get(backend), NEXTHOPS.get_ptr_mut(backend)) else {
        return drop(Reason::DropBadState, bytes);
    };
    let nat = svc.flags & SERVICE_DSR == 0;
    if b.family != pkt.key.family {
        return drop(Reason::DropBadState, bytes);
    }
    let nh = unsafe { &mut *nh };
    if !nexthop::is_fresh(nh, now) && !nexthop::resolve(ctx, b.family, &pkt.key.src, &b.addr, now, nh) {
        // NAT: the kernel forwards the packet (already addressed to the backend) and resolves
        // the neighbour; later packets take the fast path. DSR: the kernel could only route the
        // VIP back to us (or answer "unreachable"), so drop and let the client retransmit.
        if nat {
            rewrite(pkt, End::Dst, &b.addr, b.port);
            count(vip_counter(vip_index), bytes);
            count(backend_counter(backend), bytes);
            return pass(Reason::PassNoNextHop, bytes);
        }
        return drop(Reason::DropNoNextHop, bytes);
    }
    let action = egress_action(ctx, nh.ifindex);
    if action == xdp_action::XDP_PASS {
        if nat {
            rewrite(pkt, End::Dst, &b.addr, b.port);
        }
        return pass(Reason::PassEgressUnknown, bytes);
    }
    if nat {
        rewrite(pkt, End::Dst, &b.addr, b.port);
    }
    set_macs(pkt, nh.dmac, nh.smac);
    count(vip_counter(vip_index), bytes);
    count(backend_counter(backend), bytes);
    count(
        reason_counter(if action == xdp_action::XDP_TX { Reason::FwdTx } else { Reason::FwdRedirect }),
        bytes,
    );
    action
}

/// A NAT backend's reply: find the flow it answers (client → one of the backend's VIPs, pinned to
/// this backend), rewrite the source back to that VIP and send it the way the client's packets
/// came. `None` when no flow matches (the backend talking to someone directly).
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet, nat: &NatBackend, bytes: u64) -> Option<u32> {
    let key = &pkt.key;
    let vips = nat.count as usize;
    for i in 0..MAX_VIPS_PER_BACKEND {
        if i >= vips {
            break;
        }
        let vip = &nat.vips[i];
        let flow_key = FlowKey {
            src: key.dst,
            dst: vip.addr,
            sport: key.dport,
            dport: vip.port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        let Some(flow) = FLOWS.get_ptr_mut(&flow_key) else { continue };
        let flow = unsafe { &mut *flow };
        match BACKENDS.get(flow.backend) {
            Some(b) if b.addr == key.src && b.port == key.sport => {}
            _ => continue,
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
        count(vip_counter(flow.vip_index), bytes);
        count(reason_counter(Reason::FwdReply), bytes);
        return Some(action);
    }
    None
}
