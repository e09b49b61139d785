//! `cargo xtask install` and `cargo xtask man`: put the daemon, lbctl, an example config, the
//! systemd unit, the man page and shell completions where an edge host expects them.

use anyhow::{Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::system::workspace_root;

/// Where the built binaries are.
fn release_bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}

/// Output of a built binary run with `args`.
fn output_of(bin: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(release_bin(bin)).args(args).output().with_context(|| format!("running {bin}"))?;
    anyhow::ensure!(out.status.success(), "{bin} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

/// Writes `target/man/lbctl.1` and returns its path.
pub fn man() -> Result<PathBuf> {
    let dir = workspace_root().join("target/man");
    fs::create_dir_all(&dir)?;
    let path = dir.join("lbctl.1");
    fs::write(&path, output_of("lbctl", &["man"])?)?;
    Ok(path)
}

/// `dest` joined with an absolute `path` (`DESTDIR` semantics).
fn under(dest: &Path, path: &str) -> PathBuf {
    dest.join(path.trim_start_matches('/'))
}

fn copy_exe(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    // Write beside and rename, so a running binary is replaced, not overwritten in place.
    let tmp = to.with_extension("new");
    fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, to)?;
    println!("installed {}", to.display());
    Ok(())
}

/// Installs under `destdir` (normally `/`) with binaries in `<prefix>/bin`.
pub fn install(destdir: &Path, prefix: &str) -> Result<()> {
    let bin_dir = format!("{}/bin", prefix.trim_end_matches('/'));
    for name in ["lb-daemon", "lbctl"] {
        copy_exe(&release_bin(name), &under(destdir, &format!("{bin_dir}/{name}")))?;
    }
    let config = under(destdir, "/etc/lb/lb.toml");
    if config.exists() {
        println!("kept existing {}", config.display());
    } else {
        fs::create_dir_all(config.parent().unwrap())?;
        fs::write(&config, output_of("lb-daemon", &["--print-example-config"])?)?;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o640))?;
        println!("installed example config {} (edit it before starting the service)", config.display());
    }
    let unit = fs::read_to_string(workspace_root().join("deploy/lb-daemon.service"))?
        .replace("/usr/local/bin/", &format!("{bin_dir}/"));
    let unit_path = under(destdir, "/etc/systemd/system/lb-daemon.service");
    fs::create_dir_all(unit_path.parent().unwrap())?;
    fs::write(&unit_path, unit)?;
    println!("installed {}", unit_path.display());
    let man_path = under(destdir, &format!("{}/share/man/man1/lbctl.1", prefix.trim_end_matches('/')));
    fs::create_dir_all(man_path.parent().unwrap())?;
    fs::copy(man()?, &man_path)?;
    println!("installed {}", man_path.display());
    let completion = under(destdir, "/usr/share/bash-completion/completions/lbctl");
    fs::create_dir_all(completion.parent().unwrap())?;
    fs::write(&completion, output_of("lbctl", &["completions", "bash"])?)?;
    println!("installed {}", completion.display());
    if destdir == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
        println!("next: edit /etc/lb/lb.toml, then `systemctl enable --now lb-daemon`");
    }
    Ok(())
}
