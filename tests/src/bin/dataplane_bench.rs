//! Data-plane benchmark (`cargo xtask bench`): kernel-reported ns/packet of the XDP program by
//! BPF_PROG_TEST_RUN, beside trivial programs in the same run. Every case runs through the
//! `bench_restore` wrapper, which puts the original packet back before each repeat (test_run
//! does not) and tail-calls the program under test; the trivial programs are wrapped too, so the
//! differences are the programs' own cost.

use anyhow::{Context, Result};
use aya::{
    EbpfLoader,
    maps::{Array, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use clap::Parser;
use lb_common::{
    maps::{BENCH_PACKET_MAX, BenchPacket, Settings},
    stats::{Reason, reason_counter},
};
use lb_daemon::dataplane::{BENCH_XDP_OBJECT, DataplaneOptions};
use lb_tests::{
    packets::{ACK, Frame, PSH},
    testbed::{LB_MAC, PacketBed, backend_mac},
    xdp_run::{run, verdict_name, xdp_md},
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

#[derive(Parser)]
#[command(about = "ns/packet of the XDP data plane by BPF_PROG_TEST_RUN")]
struct Args {
    /// Repeats per test_run call.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// test_run calls per case.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Flow-table sizes to run the cases on (new-flow cost depends on it: a larger table is
    /// colder in cache and TLB).
    #[arg(long, value_delimiter = ',', default_values_t = [lb_common::maps::DEFAULT_FLOW_ENTRIES, 65_536])]
    flow_entries: Vec<u32>,
    /// Print one JSON array (an object per case: name, flow_entries, min, median, max,
    /// floor_median, ratio) instead of the table.
    #[arg(long)]
    json: bool,
    /// Load the program with flow reports on (as with `[sync]`): a completed handshake or a
    /// close writes a record to the `FLOW_EVENTS` ring, drained after every test_run call. Keep
    /// `--repeat` under 50,000 for the reporting cases, or the 4 MiB ring fills within a call
    /// and the rest of its repeats measure a failing write.
    #[arg(long)]
    flow_reports: bool,
}

/// One measured case, as `--json` prints it.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    flow_entries: u32,
    min: u64,
    median: u64,
    max: u64,
    /// Median of the trivial XDP_PASS program in the same run.
    floor_median: u64,
    /// `median / floor_median`.
    ratio: f64,
    verdict: &'static str,
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Offset of the IPv4 source address in an untagged frame.
const IPV4_SRC_OFFSET: u32 = 26;

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    target: Target,
    vary_offset: u32,
    /// `Settings::new_flow_limit` while the case runs (flood mode: 1 engages it after the first
    /// new flow, 0 turns the guard off).
    new_flow_limit: u32,
}

/// Flood-mode limit of the cases that do not depend on it.
const DEFAULT_LIMIT: u32 = lb_common::maps::DEFAULT_NEW_FLOW_LIMIT;

#[derive(Clone, Copy)]
enum Target {
    Pass,
    Tx,
    Lb,
    /// The same program loaded with flow reports on (flow sync, `[sync]`), beside `Lb` in the
    /// same run: its rows give the per-packet and per-new-flow cost of the sync.
    LbSync,
}

/// Bytes of a `FLOW_EVENTS` ring that `repeat` reports (96 bytes each with the ring's header)
/// cannot fill within one test_run call: the ring is drained only between calls, and a full
/// ring would measure failing writes.
fn ring_bytes_for(repeat: u32) -> u32 {
    let need = (u64::from(repeat) + 16) * 96;
    need.next_power_of_two().clamp(u64::from(lb_common::maps::FLOW_EVENTS_BYTES), 1 << 30) as u32
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.json {
        println!(
            "BPF_PROG_TEST_RUN, repeat {} x {} runs, one CPU, kernel-reported ns/packet",
            args.repeat, args.runs
        );
    }
    let mut rows = Vec::new();
    let mut floor = 0;
    for (i, flow_entries) in args.flow_entries.iter().enumerate() {
        // The trivial and established cases do not depend on the table size: run them once.
        bench_table_size(&args, *flow_entries, i == 0, &mut floor, &mut rows)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn bench_table_size(
    args: &Args,
    flow_entries: u32,
    all_cases: bool,
    floor: &mut u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let options = DataplaneOptions { table_slots: 8, flow_entries, ..DataplaneOptions::default() };
    // The `LbSync` cases' program: reports on, a ring they cannot fill. Loaded first so that
    // the `Lb` program is the one `--flow-reports` says.
    lb_daemon::dataplane::set_flow_reports(true);
    lb_daemon::dataplane::set_flow_events_bytes(ring_bytes_for(args.repeat));
    let mut sync_bed = PacketBed::with_options(options)?;
    lb_daemon::dataplane::set_flow_events_bytes(lb_common::maps::FLOW_EVENTS_BYTES);
    let mut sync_ring = sync_bed.dp.take_flow_events().context("FLOW_EVENTS of the sync program")?;
    lb_daemon::dataplane::set_flow_reports(args.flow_reports);
    let mut bed = PacketBed::with_options(options)?;
    // Each bed has its namespace; the thread stays in the last one. The two are built alike, so
    // the sync program's interface index and neighbours are the same here.
    anyhow::ensure!(sync_bed.v0 == bed.v0, "the two beds' interfaces differ");
    let mut bench = EbpfLoader::new().load(BENCH_XDP_OBJECT).context("loading the bench object")?;
    for name in ["bench_restore", "bench_pass", "bench_tx"] {
        let p: &mut Xdp = bench.program_mut(name).context(name)?.try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let mut packet: Array<_, BenchPacket> =
        Array::try_from(bench.take_map("BENCH_PACKET").context("BENCH_PACKET")?)?;
    let mut targets = ProgramArray::try_from(bench.take_map("BENCH_TARGET").context("BENCH_TARGET")?)?;

    let client = sa("10.0.0.100:40000");
    let nat = sa("10.0.0.200:80");
    let dsr = sa("10.0.0.201:80");
    let established = Frame::syn(client, nat).with(ACK | PSH, b"");
    let backend = bed.backends[&bed.expected_backend(0, client, nat)];
    let reply = Frame { src_mac: backend_mac(backend.ip()), dst_mac: LB_MAC, ..Frame::syn(backend, client) }
        .with(ACK, b"");
    let client6 = sa("[fd00::100]:40000");
    let cases = [
        Case {
            name: "trivial XDP_PASS",
            frame: established.build(),
            target: Target::Pass,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "trivial MAC swap + XDP_TX",
            frame: established.build(),
            target: Target::Tx,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "non-VIP (host traffic, port 22)",
            frame: Frame::syn(client, sa("10.0.0.1:22")).build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "non-VIP (VIP port, other address)",
            frame: Frame::syn(client, sa("10.0.0.1:80")).build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "established flow, nat v4",
            frame: established.build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "established flow, dsr v4",
            frame: Frame::syn(client, dsr).with(ACK, b"").build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "established flow, nat v6",
            frame: Frame::syn(client6, sa("[fd00::200]:80")).with(ACK, b"").build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "nat reply (backend to client)",
            frame: reply.build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "SYN same 5-tuple, nat v4, flood mode off (entry found)",
            frame: Frame::syn(client, nat).build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: 0,
        },
        Case {
            name: "SYN same 5-tuple, nat v4, flood mode engaged",
            frame: Frame::syn(client, nat).build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: 1,
        },
        Case {
            name: "SYN same 5-tuple, dsr v4, flood mode engaged",
            frame: Frame::syn(client, dsr).build(),
            target: Target::Lb,
            vary_offset: 0,
            new_flow_limit: 1,
        },
        Case {
            name: "SYN new source, nat v4, flood mode off (recorded)",
            frame: Frame::syn(client, nat).build(),
            target: Target::Lb,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 0,
        },
        Case {
            name: "SYN new source, dsr v4, flood mode off (recorded)",
            frame: Frame::syn(client, dsr).build(),
            target: Target::Lb,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 0,
        },
        Case {
            name: "SYN new source, dsr v4, flood mode engaged",
            frame: Frame::syn(client, dsr).build(),
            target: Target::Lb,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 1,
        },
        Case {
            name: "first ACK new source, dsr v4 (recorded established; reported)",
            frame: Frame::syn(client, dsr).with(ACK, b"").build(),
            target: Target::Lb,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 0,
        },
        Case {
            name: "SYN new source, nat v4, flood mode engaged (HALF_OPEN)",
            frame: Frame::syn(client, nat).build(),
            target: Target::Lb,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 1,
        },
        Case {
            name: "established flow, nat v4, sync on",
            frame: established.build(),
            target: Target::LbSync,
            vary_offset: 0,
            new_flow_limit: DEFAULT_LIMIT,
        },
        Case {
            name: "SYN new source, nat v4, flood mode off (recorded), sync on",
            frame: Frame::syn(client, nat).build(),
            target: Target::LbSync,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 0,
        },
        Case {
            name: "first ACK new source, dsr v4 (recorded established), sync on",
            frame: Frame::syn(client, dsr).with(ACK, b"").build(),
            target: Target::LbSync,
            vary_offset: IPV4_SRC_OFFSET,
            new_flow_limit: 0,
        },
    ];

    let mut ring = bed.dp.take_flow_events();
    if !args.json {
        let insns = bed.dp.program().info().ok().and_then(|i| i.size_translated()).unwrap_or(0) / 8;
        println!(
            "\nflow table {flow_entries} entries, Maglev ring {}, lb_xdp {insns} translated instructions",
            bed.dp.options().ring_size
        );
        println!("{:<58} {:>7} {:>7} {:>7} {:>6}  verdict", "case", "min", "median", "max", "÷ pass");
    }
    for case in cases.iter().filter(|c| all_cases || c.vary_offset != 0) {
        let lb = if matches!(case.target, Target::LbSync) { &mut sync_bed } else { &mut bed };
        lb.dp.set_settings(&Settings { new_flow_limit: case.new_flow_limit, ..Settings::default() })?;
        // One plain run first: records the flow (established cases) and resolves next hops.
        let warm = run(lb.dp.program(), &case.frame, Some(lb.v0))?;
        let target = match case.target {
            Target::Pass => bench.program("bench_pass"),
            Target::Tx => bench.program("bench_tx"),
            Target::Lb | Target::LbSync => None,
        };
        let target: &Xdp = match target {
            Some(p) => p.try_into()?,
            None => lb.dp.program(),
        };
        targets.set(0, target.fd()?, 0)?;
        let mut data = [0u8; BENCH_PACKET_MAX];
        data[..case.frame.len()].copy_from_slice(&case.frame);
        packet.set(
            0,
            &BenchPacket { data, len: case.frame.len() as u32, vary_offset: case.vary_offset },
            0,
        )?;
        let wrapper: &Xdp = bench.program("bench_restore").context("bench_restore")?.try_into()?;
        let md = xdp_md(case.frame.len(), lb.v0);
        let mut times = Vec::new();
        let mut verdict = 0;
        for _ in 0..args.runs {
            let mut out = vec![0u8; case.frame.len() + 256];
            let r = wrapper.test_run(TestRunOptions {
                data_in: Some(&case.frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                repeat: args.repeat,
                ..TestRunOptions::new()
            })?;
            verdict = r.return_value;
            times.push(r.duration.as_nanos() as u64);
            if let Some(ring) = ring.as_mut() {
                while ring.next().is_some() {}
            }
            while sync_ring.next().is_some() {}
        }
        times.sort_unstable();
        let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
        if matches!(case.target, Target::Pass) {
            *floor = median;
        }
        let ratio = if *floor > 0 { median as f64 / *floor as f64 } else { 0.0 };
        if !args.json {
            println!(
                "{:<58} {min:>7} {median:>7} {max:>7} {ratio:>5.1}x  {} (plain run: {})",
                case.name,
                verdict_name(verdict),
                verdict_name(warm.verdict)
            );
        }
        rows.push(Row {
            name: case.name.to_string(),
            flow_entries,
            min,
            median,
            max,
            floor_median: *floor,
            ratio,
            verdict: verdict_name(verdict),
        });
    }
    bed.dp.set_settings(&Settings::default())?;
    let ring_full = sync_bed.packets(reason_counter(Reason::SyncEventDropped));
    anyhow::ensure!(
        ring_full == 0,
        "{ring_full} flow reports found the ring full: the sync rows measured failing writes"
    );
    if args.json {
        return Ok(());
    }
    scan_flow_table(&bed, args.runs)
}

/// Times counting the flow table the way `drain-status`, `--wait-drained` and `/metrics` do
/// (batched), beside a one-by-one walk, now that the new-flow cases have filled it.
fn scan_flow_table(bed: &PacketBed, runs: u32) -> Result<()> {
    let mut batched = Vec::new();
    let mut flows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        flows = bed.dp.for_each_flow(|_, _| {})?;
        batched.push(started.elapsed());
    }
    let mut walked = Vec::new();
    for _ in 0..runs.min(3) {
        let started = Instant::now();
        let n = bed.dp.flows_one_by_one().len();
        walked.push(started.elapsed());
        flows = flows.max(n);
    }
    let row = |name: &str, times: &mut Vec<Duration>, note: &str| {
        times.sort_unstable();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
        println!("{name:<50} {:>7} {:>7} {:>7}  ms{note}", ms(min), ms(median), ms(max));
    };
    row("flow-table count, batched (drain-status)", &mut batched, &format!(", {flows} flows"));
    row("flow-table count, one entry at a time", &mut walked, "");
    Ok(())
}
