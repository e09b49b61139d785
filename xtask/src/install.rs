//! `cargo xtask install`, `uninstall` and `man`: put the files of [`crate::files::entries`]
//! (daemon, lbctl, example config, systemd unit, man pages, completions, CI step script) where
//! an edge host expects them, and take them away again.

use anyhow::{Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::files::{Kind, Layout, entries, output_of, under};
use crate::system::workspace_root;

/// Writes `target/man/lb-daemon.8` and `target/man/lbctl.1` from the binaries in `bin_dir` and
/// returns their paths.
pub fn man(bin_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = workspace_root().join("target/man");
    fs::create_dir_all(&dir)?;
    let mut written = Vec::new();
    for (file, bin, args) in
        [("lb-daemon.8", "lb-daemon", &["--print-man-page"][..]), ("lbctl.1", "lbctl", &["man"])]
    {
        let path = dir.join(file);
        fs::write(&path, output_of(&bin_dir.join(bin), args)?)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `contents` to `to` with `mode` through a temporary file and a rename, so a running
/// binary is replaced, not overwritten in place.
fn write_file(to: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    let tmp = to.with_extension("lb-new");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming onto {}", to.display()))?;
    Ok(())
}

/// Whether systemd runs this host and the install is on it (not staged under a destdir).
fn systemd_here(destdir: &Path) -> bool {
    destdir == Path::new("/") && Path::new("/run/systemd/system").exists()
}

/// Installs every file of the layout under `destdir` (normally `/`), the binaries taken from
/// `bin_dir`. An existing /etc/lb/lb.toml is kept.
pub fn install(destdir: &Path, prefix: &str, bin_dir: &Path) -> Result<()> {
    let layout = Layout::install(prefix);
    for entry in entries(&layout) {
        let path = under(destdir, &entry.path);
        if entry.kind == Kind::Config && path.exists() {
            println!("kept existing {}", path.display());
            continue;
        }
        write_file(&path, &entry.contents(bin_dir, &layout)?, entry.kind.mode())?;
        println!("installed {}", path.display());
    }
    if systemd_here(destdir) {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
        println!("next: edit /etc/lb/lb.toml (lb-daemon --check), then `systemctl enable --now lb-daemon`");
    }
    Ok(())
}

/// Removes what [`install`] installed under `destdir` with `prefix`, except the config
/// (/etc/lb) and the state (/var/lib/lb, never installed). The service is stopped and disabled
/// first; its XDP program stays attached (forwarding continues) until the pins are removed.
pub fn uninstall(destdir: &Path, prefix: &str) -> Result<()> {
    let layout = Layout::install(prefix);
    let list = entries(&layout);
    let unit = list.iter().find(|e| e.path.ends_with(".service")).map(|e| under(destdir, &e.path));
    if systemd_here(destdir) && unit.as_ref().is_some_and(|u| u.exists()) {
        let _ = Command::new("systemctl").args(["disable", "--now", "lb-daemon.service"]).status();
        println!(
            "stopped and disabled lb-daemon; an attached XDP program keeps forwarding \
             (`lbctl shutdown --detach` before uninstalling takes it out of the path)"
        );
    }
    for entry in &list {
        let path = under(destdir, &entry.path);
        if entry.kind == Kind::Config {
            if path.exists() {
                println!("kept {}", path.display());
            }
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        // Folders that were ours alone (share/lb, share/doc/lb), now empty.
        if let Some(parent) = path.parent()
            && parent.file_name().is_some_and(|n| n == "lb")
        {
            let _ = fs::remove_dir(parent);
        }
    }
    if systemd_here(destdir) {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(())
}
