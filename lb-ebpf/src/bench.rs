//! Benchmark helpers run through BPF_PROG_TEST_RUN: `bench_restore` puts the original packet
//! back before every repeat (test_run does not) and tail-calls the program under test; the
//! trivial programs give the floor to compare against.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::maps::{BENCH_PACKET_MAX, BenchPacket};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The packet to restore (index 0).
#[map]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

/// A counter per CPU, written into the packet at `BenchPacket::vary_offset` so that every repeat
/// is a different flow.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The program under test (index 0).
#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Restores the packet, optionally varies it, then tail-calls the program under test.
#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    let Some(p) = BENCH_PACKET.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let len = unsafe { (*p).len } as usize;
    if len == 0 || len > BENCH_PACKET_MAX || len != ctx.data_end() - ctx.data() {
        return xdp_action::XDP_ABORTED;
    }
    let ret = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, (*p).data.as_mut_ptr().cast(), len as u32) };
    if ret != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let vary = unsafe { (*p).vary_offset } as usize;
    if vary != 0 {
        if let Some(seq) = BENCH_SEQ.get_ptr_mut(0) {
            let start = ctx.data();
            if start + vary + 4 <= ctx.data_end() && vary < BENCH_PACKET_MAX {
                unsafe {
                    *seq = (*seq).wrapping_add(1);
                    core::ptr::write_unaligned((start + vary) as *mut u32, *seq);
                }
            }
        }
    }
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Trivial baseline: `XDP_PASS`.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Trivial baseline: swap the MAC addresses and `XDP_TX`.
#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    unsafe {
        let eth = start as *mut [u8; 6];
        let dst = *eth;
        *eth = *eth.add(1);
        *eth.add(1) = dst;
    }
    xdp_action::XDP_TX
}
