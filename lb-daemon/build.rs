//! Points `LB_XDP_OBJ` / `LB_BENCH_XDP_OBJ` at the XDP objects `cargo xtask build` produced, so
//! the daemon embeds them.

use std::path::PathBuf;

fn main() {
    let dir = std::env::var_os("LB_BPF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target/bpf"));
    println!("cargo:rerun-if-env-changed=LB_BPF_DIR");
    for (var, name) in [("LB_XDP_OBJ", "lb-xdp"), ("LB_BENCH_XDP_OBJ", "lb-bench-xdp")] {
        let path = dir.join(name);
        if !path.is_file() {
            panic!(
                "{} is missing: build through `cargo xtask build` (or `cargo xtask test`), which \
                 compiles the XDP program first",
                path.display()
            );
        }
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-env={var}={}", path.canonicalize().unwrap().display());
    }
}
