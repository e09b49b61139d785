//! The XDP objects, embedded at build time (see `build.rs`).

/// The load balancer's XDP object (program `lb_xdp`).
pub static LB_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_XDP_OBJ"));

/// Benchmark helpers: `bench_restore` (packet-restoring wrapper), `bench_pass`, `bench_tx`.
pub static BENCH_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_BENCH_XDP_OBJ"));

/// True when this binary was built without the XDP program (a plain `cargo build` before
/// `cargo xtask build`): `build.rs` then embeds empty stubs so the workspace still compiles and
/// lints, and such a binary must refuse to load the data plane with a clear message rather
/// than fail in the ELF parser.
pub fn objects_are_stubs() -> bool {
    LB_XDP_OBJECT.is_empty() || BENCH_XDP_OBJECT.is_empty()
}

/// Fails with the fix when [`objects_are_stubs`].
pub fn require_real_objects() -> anyhow::Result<()> {
    anyhow::ensure!(
        !objects_are_stubs(),
        "this binary was built without the XDP program (empty stub objects embedded by a plain \
         `cargo build`): build it with `cargo xtask build`"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A build through `cargo xtask` embeds the real programs (a plain `cargo test` on a fresh
    /// clone fails here, saying so, rather than later in a loader).
    #[test]
    fn the_real_objects_are_embedded() {
        super::require_real_objects().unwrap();
        assert_eq!(&super::LB_XDP_OBJECT[..4], b"\x7fELF");
    }
}
