//! Builds the XDP objects and puts them where `lb-daemon` embeds them from (`target/bpf/`).

use anyhow::Result;
use std::{fs, process::Command};

use crate::{
    system::{run, workspace_root},
    toolchain::Toolchain,
};

/// The eBPF binaries of `lb-ebpf`, copied to `target/bpf/<name>`.
pub const OBJECTS: [&str; 2] = ["lb-xdp", "lb-bench-xdp"];

/// The pinned nightly's cargo running `subcommand` on `lb-ebpf` for `bpfel-unknown-none`
/// (release, locked, `core` built from source).
fn nightly_cargo(tc: &Toolchain, subcommand: &str) -> Command {
    let crate_dir = workspace_root().join("lb-ebpf");
    let path = format!("{}:{}", tc.linker_bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", tc.nightly))
        .args([subcommand, "--release", "--locked", "-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .current_dir(&crate_dir)
        .env("PATH", path)
        .env("LD_LIBRARY_PATH", &tc.nightly_lib)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        // The userspace cargo's variables must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Checks the formatting (the userspace toolchain's rustfmt, with `lb-ebpf/rustfmt.toml`) and
/// lints `lb-ebpf` with the pinned nightly's clippy, warnings denied.
pub fn lint(tc: &Toolchain) -> Result<()> {
    let crate_dir = workspace_root().join("lb-ebpf");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `cargo fmt` only reads files: the userspace toolchain's rustfmt does, no nightly needed.
    run(Command::new(cargo).args(["fmt", "--all", "--check"]).current_dir(&crate_dir))?;
    run(nightly_cargo(tc, "clippy").args(["--", "-D", "warnings"]))
}

/// Builds `lb-ebpf` for `bpfel-unknown-none` with the pinned nightly.
pub fn build(tc: &Toolchain) -> Result<()> {
    let root = workspace_root();
    let crate_dir = root.join("lb-ebpf");
    run(&mut nightly_cargo(tc, "build"))?;
    let out_dir = root.join("target/bpf");
    fs::create_dir_all(&out_dir)?;
    for name in OBJECTS {
        let built = crate_dir.join("target/bpfel-unknown-none/release").join(name);
        let dest = out_dir.join(name);
        // Copy only on change so cargo does not rebuild the crates that embed it.
        if fs::read(&dest).ok() != Some(fs::read(&built)?) {
            fs::copy(&built, &dest)?;
        }
    }
    Ok(())
}
