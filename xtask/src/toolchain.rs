//! The eBPF toolchain: the nightly pinned in `lb-ebpf/rust-toolchain.toml` with `rust-src`, and
//! bpf-linker built against that nightly's own LLVM, cached under `~/.cache/lb-xtask`.

use anyhow::{Context, Result, bail};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::system::{run, workspace_root};

/// bpf-linker release the build uses.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Its cargo feature for the nightly's LLVM major version.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// What an eBPF build needs.
pub struct Toolchain {
    /// The pinned nightly, e.g. `nightly-2026-06-15`.
    pub nightly: String,
    /// That nightly's `lib` folder (its libLLVM lives there).
    pub nightly_lib: PathBuf,
    /// Folder holding the `bpf-linker` binary.
    pub linker_bin: PathBuf,
}

/// Reads the nightly's name from `lb-ebpf/rust-toolchain.toml`.
fn pinned_nightly() -> Result<String> {
    let path = workspace_root().join("lb-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .with_context(|| format!("no `channel = \"...\"` in {}", path.display()))
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    // Do not let a toolchain file in the current folder change what rustup acts on.
    c.current_dir("/");
    c
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn ensure_nightly(nightly: &str) -> Result<PathBuf> {
    let installed = output(rustup().args(["toolchain", "list"]))?;
    // rust-src for build-std, clippy for the lint step of `cargo xtask test`.
    let complete = installed.lines().any(|l| l.starts_with(nightly)) && {
        let components = output(rustup().args(["component", "list", "--installed", "--toolchain", nightly]))?;
        ["rust-src", "clippy"].iter().all(|c| components.lines().any(|l| l.starts_with(c)))
    };
    if !complete {
        eprintln!("xtask: installing Rust {nightly} with rust-src and clippy for the eBPF build (once)");
        run(rustup().args([
            "toolchain",
            "install",
            nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
    }
    let sysroot = output(
        Command::new("rustc").arg(format!("+{nightly}")).args(["--print", "sysroot"]).current_dir("/"),
    )?;
    Ok(PathBuf::from(sysroot.trim()).join("lib"))
}

/// The nightly's libLLVM (`libLLVM.so.<major>.<minor>-rust-*`).
fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))
}

/// `~/.cache/lb-xtask`, or `target/xtask-cache` in the workspace when HOME is not set.
fn cache_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache/lb-xtask"),
        _ => workspace_root().join("target/xtask-cache"),
    })
}

fn ensure_bpf_linker(nightly: &str, nightly_lib: &Path) -> Result<PathBuf> {
    let root = cache_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{nightly}"));
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {nightly}'s LLVM into {} \
         (once, a minute or two)",
        root.display()
    );
    let prefix = root.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(find_libllvm(nightly_lib)?, &link)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", BPF_LINKER_LLVM_FEATURE])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix)
        .env("LD_LIBRARY_PATH", nightly_lib)
        .current_dir(workspace_root()))?;
    Ok(bin)
}

/// Makes sure the nightly, rust-src and bpf-linker are there, installing what is missing.
pub fn ensure() -> Result<Toolchain> {
    let nightly = pinned_nightly()?;
    let nightly_lib = ensure_nightly(&nightly)?;
    let linker_bin = ensure_bpf_linker(&nightly, &nightly_lib)?;
    Ok(Toolchain { nightly, nightly_lib, linker_bin })
}
