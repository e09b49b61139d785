//! The XDP objects, embedded at build time (see `build.rs`).

/// The load balancer's XDP object (program `lb_xdp`).
pub static LB_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_XDP_OBJ"));

/// Benchmark helpers: `bench_restore` (packet-restoring wrapper), `bench_pass`, `bench_tx`.
pub static BENCH_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_BENCH_XDP_OBJ"));
