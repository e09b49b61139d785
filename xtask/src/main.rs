//! Project tasks: `cargo xtask build | test | bench`. The first run sets up everything the eBPF
//! build needs (pinned nightly with rust-src, bpf-linker built against that nightly's LLVM) and
//! caches it; later runs only check that it is there.

mod ebpf;
mod system;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Set up the machine (toolchain pieces, Debian packages), build, and run the whole test
    /// suite. Needs root: the tests load XDP programs and create network namespaces.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Data-plane benchmark: kernel-reported ns/packet by BPF_PROG_TEST_RUN.
    Bench {
        /// Repeats per test_run call.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// test_run calls per case (min/median/max are over these).
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Only set up the eBPF toolchain (nightly, rust-src, bpf-linker).
    Setup,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => {
            toolchain::ensure()?;
        }
        Command::Build => {
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            system::cargo(&["build", "--release", "--workspace", "--all-targets"])?;
        }
        Command::Test { cargo_args } => {
            system::require_root("the tests load XDP programs and create network namespaces")?;
            system::ensure_debian_packages(&[("ip", "iproute2"), ("ethtool", "ethtool")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            let mut args = vec!["test", "--workspace", "--release"];
            if !cargo_args.is_empty() {
                args.push("--");
                args.extend(cargo_args.iter().map(String::as_str));
            }
            system::cargo(&args)?;
        }
        Command::Bench { repeat, runs } => {
            system::require_root("test_run needs CAP_BPF and CAP_NET_ADMIN")?;
            system::ensure_debian_packages(&[("ip", "iproute2"), ("ethtool", "ethtool")])?;
            let tc = toolchain::ensure()?;
            ebpf::build(&tc)?;
            let repeat = repeat.to_string();
            let runs = runs.to_string();
            system::cargo(&[
                "run", "--release", "--quiet", "-p", "lb-tests", "--bin", "dataplane-bench", "--",
                "--repeat", &repeat, "--runs", &runs,
            ])?;
        }
    }
    Ok(())
}
