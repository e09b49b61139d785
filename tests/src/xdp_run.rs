//! Running an XDP program once on a crafted packet through BPF_PROG_TEST_RUN.

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// XDP verdicts.
pub const XDP_ABORTED: u32 = 0;
/// Verdict `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// Verdict `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// Verdict `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// Verdict `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// Human name of a verdict.
pub fn verdict_name(v: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"].get(v as usize).copied().unwrap_or("?")
}

/// The result of one run.
#[derive(Debug)]
pub struct Outcome {
    /// The program's return value.
    pub verdict: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// `struct xdp_md` as test_run takes it in `ctx_in`: a frame of `len` bytes received on
/// `ingress_ifindex`.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

/// Runs `prog` once on `packet`, as received on `ingress_ifindex` (`None`: the namespace's
/// loopback, as test_run does by default).
pub fn run(prog: &Xdp, packet: &[u8], ingress_ifindex: Option<u32>) -> Result<Outcome> {
    let mut out = vec![0u8; packet.len() + 256];
    let md = ingress_ifindex.map(|i| xdp_md(packet.len(), i));
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: md.as_ref().map(|m| &m[..]),
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome { verdict: r.return_value, packet: out })
}
