//! The one list of files an installation of lb consists of. `cargo xtask package` puts them in
//! the .deb, `cargo xtask install` writes them, `cargo xtask uninstall` removes them: all three
//! read [`entries`], so the package and a source install cannot drift apart.

use anyhow::{Context, Result};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::system::workspace_root;

/// Where an installation puts things: the package follows Debian (`/usr`, the unit in
/// `/lib/systemd/system`), a source install the local admin's places (`/usr/local`, the unit
/// in `/etc/systemd/system`).
pub struct Layout {
    /// `/usr` or `/usr/local` (no trailing slash).
    pub prefix: String,
    /// Folder of the systemd unit.
    pub unit_dir: &'static str,
}

impl Layout {
    /// The .deb's layout.
    pub fn package() -> Self {
        Layout { prefix: "/usr".into(), unit_dir: "/lib/systemd/system" }
    }

    /// `cargo xtask install --prefix PREFIX`'s layout.
    pub fn install(prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Layout {
            prefix: if prefix.is_empty() { "/".into() } else { prefix.into() },
            unit_dir: "/etc/systemd/system",
        }
    }

    fn at(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix.trim_end_matches('/'))
    }
}

/// What a file is, which decides its mode and how an upgrade or uninstall treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Executable (0755).
    Program,
    /// Read-only data (0644).
    Data,
    /// Configuration the operator edits (0640; a dpkg conffile; an existing one is never
    /// overwritten by `install` nor removed by `uninstall`).
    Config,
}

impl Kind {
    /// The file's mode.
    pub fn mode(self) -> u32 {
        match self {
            Kind::Program => 0o755,
            Kind::Data => 0o644,
            Kind::Config => 0o640,
        }
    }
}

/// How a file's contents are made.
pub enum Source {
    /// A built binary, stripped of symbols and debug info.
    Stripped(&'static str),
    /// What a built binary prints with these arguments.
    Output(&'static str, &'static [&'static str]),
    /// [`Source::Output`], gzip-compressed (man pages).
    GzipOutput(&'static str, &'static [&'static str]),
    /// A file of the repository, as it is.
    Repo(&'static str),
    /// The systemd unit of the repository, with `/usr/local/bin/` replaced by the layout's
    /// binary folder.
    Unit(&'static str),
    /// Fixed text.
    Text(String),
}

/// One installed file.
pub struct Entry {
    /// Absolute path on the target system.
    pub path: String,
    /// Mode and treatment.
    pub kind: Kind,
    /// Where its contents come from.
    pub source: Source,
}

/// Every file of an installation in `layout`.
pub fn entries(layout: &Layout) -> Vec<Entry> {
    let e = |path: String, kind, source| Entry { path, kind, source };
    let zsh_dir =
        if layout.prefix == "/usr" { "share/zsh/vendor-completions" } else { "share/zsh/site-functions" };
    vec![
        e(layout.at("bin/lb-daemon"), Kind::Program, Source::Stripped("lb-daemon")),
        e(layout.at("bin/lbctl"), Kind::Program, Source::Stripped("lbctl")),
        e("/etc/lb/lb.toml".into(), Kind::Config, Source::Output("lb-daemon", &["--print-example-config"])),
        e(
            format!("{}/lb-daemon.service", layout.unit_dir),
            Kind::Data,
            Source::Unit("deploy/lb-daemon.service"),
        ),
        e(
            layout.at("share/man/man8/lb-daemon.8.gz"),
            Kind::Data,
            Source::GzipOutput("lb-daemon", &["--print-man-page"]),
        ),
        e(layout.at("share/man/man1/lbctl.1.gz"), Kind::Data, Source::GzipOutput("lbctl", &["man"])),
        e(
            layout.at("share/bash-completion/completions/lbctl"),
            Kind::Data,
            Source::Output("lbctl", &["completions", "bash"]),
        ),
        e(
            layout.at(&format!("{zsh_dir}/_lbctl")),
            Kind::Data,
            Source::Output("lbctl", &["completions", "zsh"]),
        ),
        e(
            layout.at("share/fish/vendor_completions.d/lbctl.fish"),
            Kind::Data,
            Source::Output("lbctl", &["completions", "fish"]),
        ),
        e(layout.at("share/lb/ci-switch.sh"), Kind::Program, Source::Repo("deploy/ci-switch.sh")),
        e(layout.at("share/doc/lb/README.md"), Kind::Data, Source::Repo("README.md")),
        e(layout.at("share/doc/lb/operations.md"), Kind::Data, Source::Repo("docs/operations.md")),
        e(layout.at("share/doc/lb/api.md"), Kind::Data, Source::Repo("docs/api.md")),
        e(layout.at("share/doc/lb/copyright"), Kind::Data, Source::Text(copyright())),
    ]
}

/// The Debian copyright file (machine-readable format) for the workspace's licence.
fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: lb\n\n\
         Files: *\n\
         Copyright: the lb authors\n\
         License: {}\n",
        env!("CARGO_PKG_LICENSE")
    )
}

impl Entry {
    /// The file's contents, made from the binaries in `bin_dir`, for `layout`.
    pub fn contents(&self, bin_dir: &Path, layout: &Layout) -> Result<Vec<u8>> {
        match &self.source {
            Source::Stripped(name) => stripped(&bin_dir.join(name)),
            Source::Output(bin, args) => output_of(&bin_dir.join(bin), args),
            Source::GzipOutput(bin, args) => gzip(&output_of(&bin_dir.join(bin), args)?),
            Source::Repo(path) => {
                std::fs::read(workspace_root().join(path)).with_context(|| format!("reading {path}"))
            }
            Source::Unit(path) => {
                let text = std::fs::read_to_string(workspace_root().join(path))
                    .with_context(|| format!("reading {path}"))?;
                Ok(text.replace("/usr/local/bin/", &layout.at("bin/")).into_bytes())
            }
            Source::Text(text) => Ok(text.clone().into_bytes()),
        }
    }
}

/// Output of a built binary run with `args`.
pub fn output_of(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// `bin` without symbols and debug info (`strip --strip-unneeded`, binutils): the release
/// profile keeps line tables for backtraces in development, 10x the size of the code.
fn stripped(bin: &Path) -> Result<Vec<u8>> {
    let dir = tempdir()?;
    let out = dir.join("stripped");
    let status = Command::new("strip")
        .arg("--strip-unneeded")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .context("running strip (Debian package binutils)")?;
    anyhow::ensure!(status.success(), "strip {} failed: {status}", bin.display());
    let bytes = std::fs::read(&out)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(bytes)
}

/// `gzip -9n` of `data` (`-n`: no name or time stamp, so the same page gives the same bytes).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    // Written from another thread: gzip's output pipe would fill up while we still write.
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    anyhow::ensure!(out.status.success(), "gzip failed: {}", out.status);
    Ok(out.stdout)
}

/// A fresh folder under `target/` (removed by the caller).
pub fn tempdir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = workspace_root().join("target/xtask-tmp").join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `dest` joined with an absolute `path` (`DESTDIR` semantics).
pub fn under(dest: &Path, path: &str) -> PathBuf {
    dest.join(path.trim_start_matches('/'))
}
