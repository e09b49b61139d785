//! `cargo xtask package`, `install` and `uninstall`, run on the release binaries the suite has
//! just built (`--no-build`): the .deb holds every file (binaries stripped, unit, example config
//! as a conffile, man pages, completions, CI step script), installs, removes and purges cleanly
//! with dpkg in a throwaway root (its own admin dir; maintainer scripts run chrootless with
//! DPKG_ROOT, so they must not touch the host), and `install`/`uninstall` handle the same set.

use lb_tests::topology::find_binary;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Every file of the package (paths as `dpkg-deb -c` lists them, without the leading `.`).
const PACKAGE_FILES: &[&str] = &[
    "/etc/lb/lb.toml",
    "/lib/systemd/system/lb-daemon.service",
    "/usr/bin/lb-daemon",
    "/usr/bin/lbctl",
    "/usr/share/bash-completion/completions/lbctl",
    "/usr/share/doc/lb/README.md",
    "/usr/share/doc/lb/api.md",
    "/usr/share/doc/lb/copyright",
    "/usr/share/doc/lb/operations.md",
    "/usr/share/fish/vendor_completions.d/lbctl.fish",
    "/usr/share/lb/ci-switch.sh",
    "/usr/share/man/man1/lbctl.1.gz",
    "/usr/share/man/man8/lb-daemon.8.gz",
    "/usr/share/zsh/vendor-completions/_lbctl",
];

fn bin_dir() -> PathBuf {
    find_binary("lb-daemon", "LB_DAEMON_BIN").unwrap().parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `xtask ARGS` (the workspace's xtask binary, built by the suite like the others).
fn xtask(args: &[&str]) -> Output {
    run(Command::new(find_binary("xtask", "LB_XTASK_BIN").unwrap()).args(args))
}

/// Builds the .deb into `out` from the suite's binaries; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let bins = bin_dir();
    let printed = stdout(&xtask(&[
        "package",
        "--no-build",
        "--bin-dir",
        bins.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let deb = PathBuf::from(printed.lines().last().expect("xtask package prints the .deb's path").trim());
    assert!(deb.is_file() && deb.extension().is_some_and(|e| e == "deb"), "{printed}");
    deb
}

/// Every path (files and folders) under `root`, relative, leaving out dpkg's admin dir.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            if rel.starts_with("/var/lib/dpkg") {
                continue;
            }
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.insert(rel);
        }
    }
    out
}

/// Regular files under `root`, relative.
fn files(root: &Path) -> BTreeSet<String> {
    tree(root).into_iter().filter(|p| root.join(p.trim_start_matches('/')).is_file()).collect()
}

/// `dpkg --root=ROOT` with its own admin dir; scripts run chrootless (DPKG_ROOT set). The
/// throwaway root has no libc6 recorded, hence --force-depends.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
        .args(args))
}

#[test]
fn deb_has_every_file_and_installs_removes_and_purges_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());

    // Contents: exactly the expected files.
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let listed: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let expected: BTreeSet<String> = PACKAGE_FILES.iter().map(|p| p.to_string()).collect();
    assert_eq!(listed, expected, "dpkg-deb -c:\n{listing}");
    assert!(listing.lines().all(|l| l.contains("root/root")), "{listing}");

    // Control: conffile, maintainer scripts, dependencies.
    let control = out.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap(), "/etc/lb/lb.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(control.join(script).is_file(), "{script} missing");
    }
    let fields = stdout(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).args(["Package", "Depends"])));
    assert!(fields.contains("Package: lb") && fields.contains("libc6 (>= 2."), "{fields}");

    // What is inside: stripped binaries, man pages with their sections, the notify unit.
    let x = out.path().join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    for bin in ["usr/bin/lb-daemon", "usr/bin/lbctl"] {
        let sections = stdout(&run(Command::new("readelf").args(["-S", "-W"]).arg(x.join(bin))));
        assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"), "{bin} not stripped");
    }
    for (page, title) in [
        ("usr/share/man/man8/lb-daemon.8.gz", ".TH lb-daemon 8"),
        ("usr/share/man/man1/lbctl.1.gz", ".TH lbctl 1"),
    ] {
        let text = stdout(&run(Command::new("gzip").arg("-dc").arg(x.join(page))));
        for needle in [title, ".SH FILES", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
            assert!(text.contains(needle), "{page}: {needle} missing");
        }
    }
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/lb-daemon.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecStart=/usr/bin/lb-daemon "), "{unit}");
    assert!(!unit.contains("/usr/local/"), "{unit}");
    let config = std::fs::read_to_string(x.join("etc/lb/lb.toml")).unwrap();
    assert!(config.contains("instance = "), "{config}");

    // dpkg -i / -r / -P in a throwaway root.
    let root = tempfile::tempdir().unwrap();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    let before = tree(root.path());
    dpkg(root.path(), &["-i", deb.to_str().unwrap()]);
    assert_eq!(files(root.path()), expected, "installed files");
    let status = stdout(&dpkg(root.path(), &["-s", "lb"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    // A fresh install starts nothing and enables nothing: no unit links appear.
    assert!(!root.path().join("etc/systemd").exists(), "{:?}", tree(root.path()));

    dpkg(root.path(), &["-r", "lb"]);
    let left: BTreeSet<String> = files(root.path());
    assert_eq!(left, BTreeSet::from(["/etc/lb/lb.toml".to_owned()]), "after dpkg -r only the conffile stays");

    dpkg(root.path(), &["-P", "lb"]);
    assert_eq!(tree(root.path()), before, "dpkg -P leaves nothing behind");
}

#[test]
fn install_and_uninstall_handle_the_files_of_the_package() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    // The package's files with the source install's unit folder: the same list.
    let expected: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').replace("/lib/systemd/system/", "/etc/systemd/system/"))
        .collect();
    assert!(expected.len() >= PACKAGE_FILES.len(), "{listing}");

    let dest = tempfile::tempdir().unwrap();
    let destdir = dest.path().to_str().unwrap();
    let bins = bin_dir();
    let install = [
        "install",
        "--no-build",
        "--bin-dir",
        bins.to_str().unwrap(),
        "--prefix",
        "/usr",
        "--destdir",
        destdir,
    ];
    xtask(&install);
    assert_eq!(files(dest.path()), expected, "cargo xtask install --prefix /usr");
    let unit = std::fs::read_to_string(dest.path().join("etc/systemd/system/lb-daemon.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/lb-daemon "), "{unit}");

    // A second install keeps the operator's config.
    let config = dest.path().join("etc/lb/lb.toml");
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    xtask(&install);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited by the operator\n");

    xtask(&["uninstall", "--prefix", "/usr", "--destdir", destdir]);
    assert_eq!(
        files(dest.path()),
        BTreeSet::from(["/etc/lb/lb.toml".to_owned()]),
        "uninstall keeps /etc/lb only"
    );
    for gone in ["usr/share/lb", "usr/share/doc/lb"] {
        assert!(!dest.path().join(gone).exists(), "{gone} left behind");
    }
}
