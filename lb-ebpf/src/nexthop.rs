//! Next-hop resolution with `bpf_fib_lookup`, done once per backend (or per NAT reply flow) and
//! cached, never on every packet: in this VM one lookup costs ~250 ns.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use core::mem::{size_of, zeroed};
use lb_common::maps::{FAMILY_V4, NEXTHOP_TTL_NS, NextHop};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Whether a cached next hop may still be used at `now`.
#[inline(always)]
pub fn is_fresh(nh: &NextHop, now: u64) -> bool {
    nh.expires_ns > now
}

/// Looks up the route from `src` to `dst` as the kernel would for a packet that came in on the
/// context's interface, and stores the result in `out`, valid for `NEXTHOP_TTL_NS` from now.
/// False when the kernel does not know the next hop (no route, neighbour not resolved,
/// forwarding off...). Reads the clock itself (only on a cache miss; five arguments at most).
#[inline(always)]
pub fn resolve(ctx: &XdpContext, family: u8, src: &[u32; 4], dst: &[u32; 4], out: &mut NextHop) -> bool {
    let mut p: FibParams = unsafe { zeroed() };
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.l4_protocol = lb_common::maps::PROTO_TCP;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let ret = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return false;
    }
    let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
    out.dmac = macs.dmac;
    out.smac = macs.smac;
    out.ifindex = p.ifindex;
    out.expires_ns = crate::now_ns() + NEXTHOP_TTL_NS;
    true
}

/// `resolve`, not inlined (the ICMP path's copy).
#[inline(never)]
pub fn resolve_call(ctx: &XdpContext, family: u8, src: &[u32; 4], dst: &[u32; 4], out: &mut NextHop) -> bool {
    resolve(ctx, family, src, dst, out)
}
