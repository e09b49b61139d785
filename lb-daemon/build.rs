//! Points `LB_XDP_OBJ` / `LB_BENCH_XDP_OBJ` at the XDP objects `cargo xtask build` produced, so
//! the daemon embeds them.
//!
//! On a fresh clone those objects do not exist yet. So that `cargo check`, `cargo clippy` and
//! rust-analyzer still work, a missing object is replaced by an empty stub (with a warning); a
//! binary built so refuses to start (`dataplane::objects_are_stubs`). `cargo xtask` sets
//! `LB_REQUIRE_XDP_OBJ=1` for its builds, which turns a missing object into a build error: a
//! real build never embeds a stub.

use std::path::PathBuf;

fn main() {
    let dir = std::env::var_os("LB_BPF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target/bpf"));
    let require = std::env::var_os("LB_REQUIRE_XDP_OBJ").is_some_and(|v| !v.is_empty() && v != "0");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=LB_BPF_DIR");
    println!("cargo:rerun-if-env-changed=LB_REQUIRE_XDP_OBJ");
    for (var, name) in [("LB_XDP_OBJ", "lb-xdp"), ("LB_BENCH_XDP_OBJ", "lb-bench-xdp")] {
        let path = dir.join(name);
        // Also when it is missing: cargo then runs this again on every build until it exists.
        println!("cargo:rerun-if-changed={}", path.display());
        let embedded = if path.is_file() {
            path.canonicalize().unwrap()
        } else if require {
            panic!(
                "{} is missing and LB_REQUIRE_XDP_OBJ is set: build through `cargo xtask build` (or \
                 `cargo xtask test`), which compiles the XDP program first",
                path.display()
            );
        } else {
            println!(
                "cargo:warning={} is missing: embedding an empty stub (this lb-daemon cannot load \
                 the data plane); `cargo xtask build` builds the real one",
                path.display()
            );
            let stub = out_dir.join(format!("{name}.stub"));
            std::fs::write(&stub, []).expect("writing the stub object");
            stub
        };
        println!("cargo:rustc-env={var}={}", embedded.display());
    }
}
