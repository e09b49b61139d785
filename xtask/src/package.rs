//! `cargo xtask package`: a Debian package (`lb_<version>_<arch>.deb`) of the files of
//! [`crate::files::entries`], built with `dpkg-deb` directly. (cargo-deb would need installing
//! a tool of its own and describes the files in Cargo.toml, a second list beside the one
//! `cargo xtask install` reads; dpkg-deb is on every Debian host and takes the staged tree.)
//!
//! Maintainer scripts (deploy/debian/): postinst starts nothing on a first install and
//! restarts a running daemon on an upgrade (hitless: the new one adopts the pins); prerm stops
//! and disables the service on removal; /etc/lb/lb.toml is a conffile.

use anyhow::{Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::files::{Kind, Layout, Source, entries, tempdir, under};
use crate::system::{run, workspace_root};

/// The package's name (also its doc folder, /usr/share/doc/lb, and /usr/share/lb).
const NAME: &str = "lb";

/// Builds the package from the binaries in `bin_dir` into `out_dir`; returns its path.
pub fn package(bin_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let layout = Layout::package();
    let stage = tempdir()?;
    let root = stage.join("root");
    let mut conffiles = String::new();
    for entry in entries(&layout) {
        let path = under(&root, &entry.path);
        fs::create_dir_all(path.parent().context("no parent")?)?;
        fs::write(&path, entry.contents(bin_dir, &layout)?)
            .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(entry.kind.mode()))?;
        if entry.kind == Kind::Config {
            conffiles.push_str(&entry.path);
            conffiles.push('\n');
        }
    }
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let arch = command_line("dpkg", &["--print-architecture"])?;
    let programs: Vec<PathBuf> = entries(&layout)
        .iter()
        .filter(|e| matches!(e.source, Source::Stripped(_)))
        .map(|e| under(&root, &e.path))
        .collect();
    let control = control_file(&arch, &depends(&programs)?, installed_size_kib(&root)?);
    fs::write(debian.join("control"), control)?;
    fs::write(debian.join("conffiles"), conffiles)?;
    fs::write(debian.join("md5sums"), md5sums(&root)?)?;
    for script in ["postinst", "prerm", "postrm"] {
        let to = debian.join(script);
        fs::copy(workspace_root().join("deploy/debian").join(script), &to)
            .with_context(|| format!("copying deploy/debian/{script}"))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    }
    fs::create_dir_all(out_dir)?;
    let deb = out_dir.join(format!("{NAME}_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
    // Directories of the tree get 0755 whatever the umask made them.
    run(Command::new("find").arg(&root).args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]))?;
    // gzip, not dpkg-deb's default xz: 10x faster to build (the suite builds it twice) for a
    // package of 4 MB instead of 2.4 MB.
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&deb))?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

/// The control file.
fn control_file(arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lb maintainers <root@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP L4 load balancer with a deployment back button\n \
         lb-daemon forwards TCP for virtual IPs to named pools of backends with an XDP\n \
         program; lbctl switches a service to another pool (and back) with one BPF map\n \
         update, keeping established connections on their backend.\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// `Depends:` of the (stripped) binaries: the glibc version they need (the highest
/// `GLIBC_2.N` symbol version they reference) and libgcc-s1 when one links libgcc_s.
fn depends(programs: &[PathBuf]) -> Result<String> {
    let needle = b"GLIBC_2.";
    let mut minor_max = 0u32;
    let mut gcc_s = false;
    for program in programs {
        let bytes = fs::read(program).with_context(|| format!("reading {}", program.display()))?;
        for (i, _) in bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle) {
            let digits: String = bytes[i + needle.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            if let Ok(minor) = digits.parse::<u32>() {
                minor_max = minor_max.max(minor);
            }
        }
        gcc_s |= bytes.windows(13).any(|w| w == b"libgcc_s.so.1");
    }
    anyhow::ensure!(minor_max > 0, "no GLIBC_2.N symbol version in {programs:?}");
    Ok(format!("libc6 (>= 2.{minor_max}){}", if gcc_s { ", libgcc-s1" } else { "" }))
}

/// Size of the files under `root` in KiB, rounded up per file (what dpkg shows).
fn installed_size_kib(root: &Path) -> Result<u64> {
    let mut total = 0;
    for file in walk(root)? {
        total += fs::metadata(&file)?.len().div_ceil(1024);
    }
    Ok(total)
}

/// `md5sum` lines of every file under `root`, paths relative to it.
fn md5sums(root: &Path) -> Result<String> {
    let mut out = String::new();
    for file in walk(root)? {
        let rel = file.strip_prefix(root)?.to_string_lossy().into_owned();
        if rel.starts_with("DEBIAN") {
            continue;
        }
        let sum = command_line("md5sum", &[&file.to_string_lossy()])?;
        let hash = sum.split_whitespace().next().context("md5sum printed nothing")?;
        out.push_str(&format!("{hash}  {rel}\n"));
    }
    Ok(out)
}

/// Every regular file under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The first line a command prints.
fn command_line(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_owned())
}
