//! Project tasks: `cargo xtask build | test | bench | demo | demo-fleet | package | install | uninstall | man`. The first run sets up everything the eBPF
//! build needs (pinned nightly with rust-src, bpf-linker built against that nightly's LLVM) and
//! caches it; later runs only check that it is there.

mod ebpf;
mod files;
mod install;
mod package;
mod system;
mod toolchain;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::process::Command as Process;

#[derive(Parser)]
#[command(about = "Build, test and benchmark the load balancer", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the XDP objects and every userspace crate (release).
    Build,
    /// Set up the machine (toolchain pieces, Debian packages), check formatting and lints
    /// (`cargo fmt --check`, `cargo clippy -D warnings`, both workspaces), build, and run the
    /// whole test suite. Needs root: the tests load XDP programs and create network namespaces.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Benchmarks: data plane (kernel-reported ns/packet by BPF_PROG_TEST_RUN), then control
    /// plane (switch latency, and connections/s, failures and convergence through the VIP during
    /// repeated switches, in network namespaces), then the fleet (host failover time by BFD,
    /// connections/s through 2 hosts vs 1, on the BGP rig). Needs root.
    Bench {
        /// Data plane: repeats per test_run call.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Data plane: test_run calls per case (min/median/max are over these).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Control plane: switches by lbctl under load per run.
        #[arg(long, default_value_t = 100)]
        switches: u32,
        /// Control plane: runs, each on a fresh setup (medians, min and max are over these).
        #[arg(long, default_value_t = 3)]
        cp_runs: u32,
        /// Data plane only, as JSON (one object per case: name, min, median, max, floor_median).
        #[arg(long)]
        json: bool,
        /// Fleet (BGP rig): failover rounds (each one SIGSTOP of a host's BIRD and one link down).
        #[arg(long, default_value_t = 5)]
        fleet_failovers: u32,
    },
    /// A guided tour in about 20 seconds: namespaces with a client, the balancer and two
    /// pools, live traffic, `lbctl switch pool-b` and `lbctl rollback`; cleans up after itself
    /// (also on Ctrl-C). Needs root.
    Demo,
    /// The fleet tour in about 40 seconds: a router with ECMP (BIRD), two balancer hosts sharing
    /// their state in etcd, two pools and a client in namespaces; live traffic over both hosts,
    /// one `lbctl switch pool-b --wait-fleet` that moves both, `lbctl rollback`, then one host
    /// drained for maintenance with no failed connection; cleans up (also on Ctrl-C). Needs root.
    DemoFleet,
    /// Only set up the eBPF toolchain (nightly, rust-src, bpf-linker).
    Setup,
    /// Build and install lb-daemon and lbctl (`<prefix>/bin`, stripped), an example config in
    /// /etc/lb/lb.toml (an existing one is kept), the systemd unit (/etc/systemd/system), the
    /// man pages, bash/zsh/fish completions and the CI step script (`<prefix>/share/lb/`): the
    /// same files as the .deb of `cargo xtask package`. Starts nothing.
    Install {
        /// Install prefix of the binaries, man pages, completions and the CI step script.
        #[arg(long, default_value = "/usr/local")]
        prefix: String,
        /// Stage everything under this folder instead of `/` (packaging).
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
        #[command(flatten)]
        bins: Bins,
    },
    /// Stop and disable the service and remove what `cargo xtask install` installed, except
    /// /etc/lb and /var/lib/lb. An attached XDP program keeps forwarding: run
    /// `lbctl shutdown --detach` first to take the balancer out of the path.
    Uninstall {
        /// The prefix given to `cargo xtask install`.
        #[arg(long, default_value = "/usr/local")]
        prefix: String,
        /// The destdir given to `cargo xtask install`.
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
    },
    /// Build a Debian package, target/package/lb_<version>_<arch>.deb (dpkg-deb): the files of
    /// `cargo xtask install` under /usr, the unit in /lib/systemd/system, /etc/lb/lb.toml as a
    /// conffile; installing it starts nothing, removing it stops and disables the service.
    Package {
        /// Folder the .deb is written to [default: target/package in the workspace].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[command(flatten)]
        bins: Bins,
    },
    /// Write the man pages lb-daemon(8) and lbctl(1) to target/man/ (generated from the clap
    /// definitions, with FILES, EXIT STATUS and SEE ALSO).
    Man,
}

/// Which binaries `install` and `package` take.
#[derive(clap::Args)]
struct Bins {
    /// Take the binaries already built in --bin-dir instead of building them (the test suite
    /// packages what it has just built).
    #[arg(long)]
    no_build: bool,
    /// Folder of the built lb-daemon and lbctl [default: target/release in the workspace].
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

impl Bins {
    /// Builds the binaries unless --no-build; returns their folder.
    fn ready(&self) -> Result<std::path::PathBuf> {
        if !self.no_build {
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "-p", "lb-daemon", "--bins"])?;
        }
        Ok(self.bin_dir.clone().unwrap_or_else(|| system::workspace_root().join("target/release")))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => {
            toolchain::ensure()?;
        }
        Command::Install { prefix, destdir, bins } => {
            system::ensure_debian_packages(&[("strip", "binutils"), ("protoc", "protobuf-compiler")])?;
            install::install(&destdir, &prefix, &bins.ready()?)?;
        }
        Command::Uninstall { prefix, destdir } => {
            install::uninstall(&destdir, &prefix)?;
        }
        Command::Package { out, bins } => {
            system::ensure_debian_packages(&[
                ("strip", "binutils"),
                ("dpkg-deb", "dpkg"),
                ("protoc", "protobuf-compiler"),
            ])?;
            let bin_dir = bins.ready()?;
            let out = out.unwrap_or_else(|| system::workspace_root().join("target/package"));
            println!("{}", package::package(&bin_dir, &out)?.display());
        }
        Command::Man => {
            // etcd-client's build generates its gRPC code with protoc.
            system::ensure_debian_packages(&[("protoc", "protobuf-compiler")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "-p", "lb-daemon", "--bins"])?;
            for page in install::man(&system::workspace_root().join("target/release"))? {
                println!("{}", page.display());
            }
        }
        Command::Build => {
            // etcd-client's build generates its gRPC code with protoc.
            system::ensure_debian_packages(&[("protoc", "protobuf-compiler")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "--workspace", "--all-targets"])?;
        }
        Command::Test { cargo_args } => {
            system::require_root("the tests load XDP programs and create network namespaces")?;
            system::ensure_debian_packages(&[
                ("ip", "iproute2"),
                ("ethtool", "ethtool"),
                ("promtool", "prometheus"),
                ("systemd-analyze", "systemd"),
                ("bird", "bird2"),
                ("etcd", "etcd-server"),
                ("protoc", "protobuf-compiler"),
                // The fleet's TLS test makes its certificates with it (not in every base system).
                ("openssl", "openssl"),
            ])?;
            let tc = toolchain::ensure()?;
            // Formatting and lints first, both workspaces: they fail in seconds, a build does
            // not. (Before the XDP object exists lb-daemon embeds a stub, enough for clippy.)
            system::run(&mut system::cargo_command(&["fmt", "--all", "--check"]))?;
            system::run(&mut system::cargo_command(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]))?;
            ebpf::lint(&tc)?;
            ebpf::build(&tc)?;
            // The end-to-end tests run the real lb-daemon, lbctl and test-backend binaries.
            system::cargo(&["build", "--release", "--workspace", "--bins"])?;
            let mut args = vec!["test", "--workspace", "--release"];
            if !cargo_args.is_empty() {
                args.push("--");
                args.extend(cargo_args.iter().map(String::as_str));
            }
            system::cargo(&args)?;
        }
        Command::Bench { repeat, runs, switches, cp_runs, json, fleet_failovers } => {
            system::require_root(
                "test_run needs CAP_BPF and CAP_NET_ADMIN; the control-plane bench creates network namespaces",
            )?;
            system::ensure_debian_packages(&[
                ("ip", "iproute2"),
                ("ethtool", "ethtool"),
                ("bird", "bird2"),
                ("etcd", "etcd-server"),
                ("protoc", "protobuf-compiler"),
            ])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            // The control-plane bench runs the real lb-daemon, lbctl and test-backend binaries.
            system::cargo(&["build", "--release", "--workspace", "--bins"])?;
            let bin = system::workspace_root().join("target/release");
            let mut dataplane = Process::new(bin.join("dataplane-bench"));
            dataplane.args(["--repeat", &repeat.to_string(), "--runs", &runs.to_string()]);
            if json {
                system::run(dataplane.arg("--json"))?;
                return Ok(());
            }
            system::run(&mut dataplane)?;
            println!();
            system::run(Process::new(bin.join("controlplane-bench")).args([
                "--switches",
                &switches.to_string(),
                "--runs",
                &cp_runs.to_string(),
            ]))?;
            println!();
            // Fleet: host failover by BFD, connections/s through 2 hosts vs 1 (BGP rig).
            system::run(
                Process::new(bin.join("fleet-bench")).args(["--failovers", &fleet_failovers.to_string()]),
            )?;
        }
        Command::DemoFleet => demo(
            "lb-demo-fleet",
            "the demo creates network namespaces and attaches XDP programs",
            &[("bird", "bird2"), ("etcd", "etcd-server")],
        )?,
        Command::Demo => {
            demo("lb-demo", "the demo creates network namespaces and attaches an XDP program", &[])?
        }
    }
    Ok(())
}

/// Builds everything and runs one of the demo binaries (`lb-demo`, `lb-demo-fleet`), exiting
/// with its status; `extra` are the Debian packages it needs beyond the build's.
fn demo(bin: &str, why_root: &str, extra: &[(&str, &str)]) -> Result<()> {
    system::require_root(why_root)?;
    let mut packages = vec![("ip", "iproute2"), ("ethtool", "ethtool"), ("protoc", "protobuf-compiler")];
    packages.extend_from_slice(extra);
    system::ensure_debian_packages(&packages)?;
    let tc = toolchain::ensure()?;
    ebpf::build(&tc)?;
    system::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let demo = system::workspace_root().join("target/release").join(bin);
    let code = system::run_passing_status(&mut Process::new(&demo))?;
    if code < 0 {
        bail!("{} could not report a status", demo.display());
    }
    std::process::exit(code);
}
