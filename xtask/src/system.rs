//! Running commands, root checks and Debian packages.

use anyhow::{Context, Result, bail};
use std::{path::PathBuf, process::Command};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command to completion, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command in the foreground and returns its exit code (128 + the signal's number when
/// a signal ended it), for passing it through. While it runs, this process ignores SIGINT: a
/// Ctrl-C reaches the child too (same process group), which then cleans up and exits by itself.
pub fn run_passing_status(cmd: &mut Command) -> Result<i32> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    use std::os::unix::process::ExitStatusExt;
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    // SAFETY: SIG_IGN installs no handler code, and the disposition it replaces is put back
    // below; no other thread changes SIGINT's disposition. The child was spawned before, so it
    // keeps the default disposition.
    let previous = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) }.context("ignoring SIGINT")?;
    let status = child.wait();
    // SAFETY: puts back the disposition read above.
    unsafe { signal(Signal::SIGINT, previous) }.context("restoring SIGINT")?;
    let status = status.with_context(|| format!("waiting for {cmd:?}"))?;
    Ok(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1))
}

/// Runs the userspace cargo (the toolchain of the workspace's rust-toolchain.toml) for a real
/// build: `LB_REQUIRE_XDP_OBJ` makes lb-daemon's build script fail rather than embed a stub
/// when the XDP object is missing.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(cargo_command(args).env("LB_REQUIRE_XDP_OBJ", "1"))
}

/// The userspace cargo with `args`, in the workspace root.
pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Fails unless running as root.
pub fn require_root(why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| PathBuf::from(d).join(tool).is_file())
}

/// Installs the Debian packages whose tool is missing (`(tool, package)` pairs).
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted.iter().filter(|(tool, _)| !on_path(tool)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?} (apt-get)");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
