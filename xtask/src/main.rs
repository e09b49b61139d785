//! Project tasks: `cargo xtask build | test | bench | demo | demo-fleet`. The first run sets up everything the eBPF
//! build needs (pinned nightly with rust-src, bpf-linker built against that nightly's LLVM) and
//! caches it; later runs only check that it is there.

mod ebpf;
mod install;
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
    /// repeated switches, in network namespaces). Needs root.
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
    /// Build and install lb-daemon and lbctl (`<prefix>/bin`), an example config in
    /// /etc/lb/lb.toml (an existing one is kept), the systemd unit, the man page and bash
    /// completions.
    Install {
        /// Install prefix of the binaries and the man page.
        #[arg(long, default_value = "/usr/local")]
        prefix: String,
        /// Stage everything under this folder instead of `/` (packaging).
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
    },
    /// Write lbctl's man page to target/man/lbctl.1 (generated from its clap definitions).
    Man,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => {
            toolchain::ensure()?;
        }
        Command::Install { prefix, destdir } => {
            // etcd-client's build generates its gRPC code with protoc.
            system::ensure_debian_packages(&[("protoc", "protobuf-compiler")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "-p", "lb-daemon", "--bins"])?;
            install::install(&destdir, &prefix)?;
        }
        Command::Man => {
            // etcd-client's build generates its gRPC code with protoc.
            system::ensure_debian_packages(&[("protoc", "protobuf-compiler")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "-p", "lb-daemon", "--bin", "lbctl"])?;
            println!("{}", install::man()?.display());
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
        Command::Bench { repeat, runs, switches, cp_runs, json } => {
            system::require_root(
                "test_run needs CAP_BPF and CAP_NET_ADMIN; the control-plane bench creates network namespaces",
            )?;
            system::ensure_debian_packages(&[("ip", "iproute2"), ("ethtool", "ethtool")])?;
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
        }
        Command::DemoFleet => {
            system::require_root("the demo creates network namespaces and attaches XDP programs")?;
            system::ensure_debian_packages(&[
                ("ip", "iproute2"),
                ("ethtool", "ethtool"),
                ("bird", "bird2"),
                ("etcd", "etcd-server"),
            ])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "--workspace", "--bins"])?;
            let demo = system::workspace_root().join("target/release/lb-demo-fleet");
            let code = system::run_passing_status(&mut Process::new(&demo))?;
            if code < 0 {
                bail!("{} could not report a status", demo.display());
            }
            std::process::exit(code);
        }
        Command::Demo => {
            system::require_root("the demo creates network namespaces and attaches an XDP program")?;
            system::ensure_debian_packages(&[("ip", "iproute2"), ("ethtool", "ethtool")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "--workspace", "--bins"])?;
            let demo = system::workspace_root().join("target/release/lb-demo");
            let code = system::run_passing_status(&mut Process::new(&demo))?;
            if code < 0 {
                bail!("{} could not report a status", demo.display());
            }
            std::process::exit(code);
        }
    }
    Ok(())
}
