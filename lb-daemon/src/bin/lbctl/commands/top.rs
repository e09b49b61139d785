//! `lbctl top`: a live dashboard. Every `--interval` one `GET /v1/status` sample, shown with
//! per-second rates since the sample before (new flows and packets per pool and backend,
//! pass/drop reasons); as text frames or one JSON object per line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use lb_daemon::api::client::Client;
use lb_daemon::api::model::{BackendView, PoolView, ServiceView, StatusView, Traffic, WatchState};
use serde::{Serialize, Serializer};

use super::{check_service, parse};
use crate::failure::Failure;
use crate::follow::Daemon;
use crate::render::{Paint, parts, table, write_stdout};

/// Runs top on stdout until `iterations` frames, a failed request, or Ctrl-C.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json: bool,
    interval: Duration,
    iterations: Option<u64>,
) -> Result<String, Failure> {
    let opts = TopOptions {
        interval,
        iterations,
        json,
        clear: !json && std::io::stdout().is_terminal(),
        paint: Paint::stdout(),
        service: service.map(str::to_owned),
    };
    run_frames(client, &opts, &mut write_stdout).map(|()| String::new())
}

/// Per-second rates of a backend's or a pool's counters; `None` when unknown (the first
/// frame, a backend new since the sample before, a counter that went backwards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// New flows per second.
    pub new_flows_per_s: Option<f64>,
    /// Packets per second.
    pub packets_per_s: Option<f64>,
}

impl Rates {
    /// From `before` to `after` in `elapsed`.
    fn between(before: Option<Traffic>, after: Traffic, elapsed: Duration) -> Rates {
        Rates {
            new_flows_per_s: rate(before.map(|t| t.new_flows), after.new_flows, elapsed),
            packets_per_s: rate(before.map(|t| t.packets), after.packets, elapsed),
        }
    }
}

/// One frame of `lbctl top`: the sample as the daemon sent it (the API's views, not copies)
/// with per-second rates since the sample before. `--output json` prints it as one line:
/// `frame`, `elapsed_s`, the status's `instance`, `version`, `uptime_s`, `adopted` and
/// `interfaces`, then `services` and `reasons`.
pub struct TopFrame<'a> {
    /// 1 for the first frame.
    pub frame: u64,
    /// Seconds between the previous sample and this one; `None` in the first frame.
    pub elapsed_s: Option<f64>,
    /// The sample.
    pub status: &'a StatusView,
    /// Services (only `--service` when given).
    pub services: Vec<TopService<'a>>,
    /// Counters by reason with a non-zero total, highest rate first.
    pub reasons: Vec<TopReason<'a>>,
}

/// A service in a [`TopFrame`]: JSON `name`, `active`, `epoch`, `watch`, `pools`.
pub struct TopService<'a> {
    /// As sampled.
    pub view: &'a ServiceView,
    /// Its pools, in config order.
    pub pools: Vec<TopPool<'a>>,
}

/// A pool in a [`TopFrame`]: JSON `name`, `share`, `healthy`, `total`, `min_healthy`, the
/// rates (from the pool's own counters), `backends`.
pub struct TopPool<'a> {
    /// As sampled.
    pub view: &'a PoolView,
    /// Its rates.
    pub rates: Rates,
    /// Its backends.
    pub backends: Vec<TopBackend<'a>>,
}

/// A backend in a [`TopFrame`]: JSON `addr`, `up`, the rates, `last_error`.
pub struct TopBackend<'a> {
    /// As sampled.
    pub view: &'a BackendView,
    /// Its rates.
    pub rates: Rates,
}

/// A pass/drop/forward reason in a [`TopFrame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopReason<'a> {
    /// Reason name, e.g. `drop_no_backend`.
    pub name: &'a str,
    /// Packets counted since the counters were created.
    pub total: u64,
    /// Packets per second.
    pub per_s: Option<f64>,
}

impl<'a> TopFrame<'a> {
    /// Frame number `frame` from the sample `cur` and, after the first, the sample before it
    /// with the time between the two: rates are matched by service name, pool name and
    /// backend address (`None` for what the earlier sample lacks). Only the service `only`
    /// when given.
    pub fn new(
        prev: Option<(&StatusView, Duration)>,
        cur: &'a StatusView,
        only: Option<&str>,
        frame: u64,
    ) -> Self {
        let elapsed = prev.map(|(_, d)| d).unwrap_or_default();
        let prev_service = |name: &str| prev.and_then(|(p, _)| p.services.iter().find(|s| s.name == name));
        let services = cur
            .services
            .iter()
            .filter(|svc| only.is_none_or(|n| n == svc.name))
            .map(|svc| {
                let before = prev_service(&svc.name);
                let pools = svc
                    .pools
                    .iter()
                    .map(|p| {
                        let before = before.and_then(|s| s.pools.iter().find(|q| q.name == p.name));
                        let backends = p
                            .backends
                            .iter()
                            .map(|b| {
                                let earlier = before
                                    .and_then(|q| q.backends.iter().find(|c| c.addr == b.addr))
                                    .map(|c| c.traffic);
                                TopBackend { view: b, rates: Rates::between(earlier, b.traffic, elapsed) }
                            })
                            .collect();
                        let rates = Rates::between(before.map(|q| q.traffic), p.traffic, elapsed);
                        TopPool { view: p, rates, backends }
                    })
                    .collect();
                TopService { view: svc, pools }
            })
            .collect();
        let mut reasons: Vec<TopReason> = cur
            .reasons
            .iter()
            .filter(|(_, total)| *total > 0)
            .map(|(name, total)| {
                let before =
                    prev.and_then(|(p, _)| p.reasons.iter().find(|(n, _)| n == name)).map(|(_, n)| *n);
                TopReason { name, total: *total, per_s: rate(before, *total, elapsed) }
            })
            .collect();
        // Highest rate first (unknown rates last), then the highest total.
        reasons.sort_by(|a, b| {
            b.per_s.unwrap_or(-1.0).total_cmp(&a.per_s.unwrap_or(-1.0)).then(b.total.cmp(&a.total))
        });
        TopFrame {
            frame,
            elapsed_s: prev.map(|(_, d)| (d.as_secs_f64() * 1000.0).round() / 1000.0),
            status: cur,
            services,
            reasons,
        }
    }

    /// The frame as one JSON object (see [`TopFrame`]).
    fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let s = self.status;
        let services: Vec<serde_json::Value> = self
            .services
            .iter()
            .map(|svc| {
                let pools: Vec<serde_json::Value> = svc
                    .pools
                    .iter()
                    .map(|p| {
                        let backends: Vec<serde_json::Value> = p
                            .backends
                            .iter()
                            .map(|b| {
                                json!({
                                    "addr": b.view.addr,
                                    "up": b.view.up,
                                    "new_flows_per_s": b.rates.new_flows_per_s,
                                    "packets_per_s": b.rates.packets_per_s,
                                    "last_error": b.view.last_error,
                                })
                            })
                            .collect();
                        json!({
                            "name": p.view.name,
                            "share": p.view.share,
                            "healthy": p.view.healthy,
                            "total": p.view.backends.len(),
                            "min_healthy": p.view.min_healthy,
                            "new_flows_per_s": p.rates.new_flows_per_s,
                            "packets_per_s": p.rates.packets_per_s,
                            "backends": backends,
                        })
                    })
                    .collect();
                json!({
                    "name": svc.view.name,
                    "active": svc.view.active,
                    "epoch": svc.view.epoch,
                    "watch": svc.view.watch,
                    "pools": pools,
                })
            })
            .collect();
        json!({
            "frame": self.frame,
            "elapsed_s": self.elapsed_s,
            "instance": s.instance,
            "version": s.version,
            "uptime_s": s.uptime_s,
            "adopted": s.adopted,
            "interfaces": s.interfaces,
            "services": services,
            "reasons": self.reasons,
        })
    }
}

impl Serialize for TopFrame<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Per-second rate of a counter that went from `before` to `after` in `elapsed` (rounded to
/// 0.001); `None` without an earlier value, without elapsed time, or when the counter went
/// backwards (it was reset).
pub fn rate(before: Option<u64>, after: u64, elapsed: Duration) -> Option<f64> {
    let before = before?;
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || after < before {
        return None;
    }
    Some(((after - before) as f64 / secs * 1000.0).round() / 1000.0)
}

/// A rate for a table cell: `-` when unknown, else `0.5`, `950.0`, `12.3k`, `4.1M`.
fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".into(),
        Some(r) if r < 1e3 => format!("{r:.1}"),
        Some(r) if r < 1e6 => format!("{:.1}k", r / 1e3),
        Some(r) if r < 1e9 => format!("{:.1}M", r / 1e6),
        Some(r) => format!("{:.1}G", r / 1e9),
    }
}

/// How many pass/drop reasons a text frame shows.
const TOP_REASONS: usize = 5;

/// A [`TopFrame`] as text: a header line, interfaces, per service its active pool, epoch and
/// watch and a table of pools with their backends, then the busiest pass/drop reasons.
fn render(f: &TopFrame<'_>, interval: Duration, interactive: bool, paint: Paint) -> String {
    let mut out = format!(
        "lb-daemon {} (instance {}): uptime {}{}   every {}, frame {}{}\n",
        f.status.version,
        f.status.instance,
        humantime::format_duration(Duration::from_secs(f.status.uptime_s)),
        if f.status.adopted { ", adopted pinned state" } else { "" },
        humantime::format_duration(interval),
        f.frame,
        if interactive { "   (Ctrl-C to quit)" } else { "" }
    );
    out.push_str(&format!("interfaces: {}\n", parts::interfaces_line(&f.status.interfaces, paint)));
    for svc in &f.services {
        let watch = match &svc.view.watch {
            None => "none".to_owned(),
            Some(w) => paint.watch(
                w.state,
                &match w.state {
                    WatchState::Watching => format!(
                        "{} watched, {} left",
                        w.pool,
                        humantime::format_duration(Duration::from_secs(w.remaining_s))
                    ),
                    WatchState::Passed => format!("{} passed", w.pool),
                    WatchState::RolledBack => format!("{} rolled back", w.pool),
                    WatchState::Cancelled => format!("{} cancelled", w.pool),
                },
            ),
        };
        out.push_str(&format!(
            "\n{}  active: {}   epoch: {}   watch: {watch}\n",
            paint.bold(&format!("service {}", svc.view.name)),
            paint.bold(&svc.view.active.to_string()),
            svc.view.epoch
        ));
        let mut rows = vec![
            ["POOL / BACKEND", "SHARE", "HEALTHY", "NEW FLOWS/S", "PACKETS/S", "LAST ERROR"]
                .map(String::from)
                .to_vec(),
        ];
        for p in &svc.pools {
            rows.push(vec![
                paint.bold(&p.view.name),
                format!("{}%", p.view.share),
                parts::pool_health(p.view, paint),
                fmt_rate(p.rates.new_flows_per_s),
                fmt_rate(p.rates.packets_per_s),
                String::new(),
            ]);
            for b in &p.backends {
                rows.push(vec![
                    format!("  {}", b.view.addr),
                    String::new(),
                    parts::up_down(b.view.up, paint),
                    fmt_rate(b.rates.new_flows_per_s),
                    fmt_rate(b.rates.packets_per_s),
                    b.view.last_error.clone().unwrap_or_default(),
                ]);
            }
        }
        out.push_str(&table::table(&rows, &[false, true, false, true, true, false], "  "));
    }
    let busiest: Vec<String> = f
        .reasons
        .iter()
        .filter(|r| r.name.starts_with("pass_") || r.name.starts_with("drop_"))
        .filter(|r| r.per_s.is_some_and(|x| x > 0.0))
        .take(TOP_REASONS)
        .map(|r| {
            let name = if r.name.starts_with("drop_") { paint.red(r.name) } else { r.name.to_owned() };
            format!("{name} {}/s", fmt_rate(r.per_s))
        })
        .collect();
    let reasons = if f.elapsed_s.is_none() {
        "- (rates from the next frame on)".to_owned()
    } else if busiest.is_empty() {
        "none".to_owned()
    } else {
        busiest.join("  ")
    };
    out.push_str(&format!("\npass/drop: {reasons}\n"));
    out
}

/// How `lbctl top` runs.
#[derive(Clone, Debug)]
struct TopOptions {
    /// Time between two samples.
    interval: Duration,
    /// Stop after this many frames.
    iterations: Option<u64>,
    /// One JSON line per frame instead of text.
    json: bool,
    /// Clear the screen before each text frame (stdout is a terminal).
    clear: bool,
    /// Colours of the text frames.
    paint: Paint,
    /// Only this service.
    service: Option<String>,
}

/// Samples `GET /v1/status` every `interval` and hands each frame to `emit` (which returns
/// false when the output is gone: top then ends with success). Ends after `iterations` frames,
/// on a failed request (its error), or never (Ctrl-C).
fn run_frames(
    daemon: &dyn Daemon,
    opts: &TopOptions,
    emit: &mut dyn FnMut(&str) -> bool,
) -> Result<(), Failure> {
    let mut prev: Option<(StatusView, Instant)> = None;
    let mut next = Instant::now();
    let mut frame = 0u64;
    loop {
        let raw = daemon.fetch("/v1/status")?;
        let at = Instant::now();
        let cur: StatusView = parse(&raw)?;
        check_service(&cur, opts.service.as_deref())?;
        frame += 1;
        let text = {
            let f = TopFrame::new(
                prev.as_ref().map(|(s, t)| (s, at.duration_since(*t))),
                &cur,
                opts.service.as_deref(),
                frame,
            );
            if opts.json {
                let mut line = serde_json::to_string(&f)
                    .map_err(|e| Failure::Unexpected(format!("cannot write a frame as JSON: {e}")))?;
                line.push('\n');
                line
            } else {
                let body = render(&f, opts.interval, opts.clear, opts.paint);
                if opts.clear {
                    format!("\x1b[H\x1b[2J{body}")
                } else if frame > 1 {
                    format!("\n{body}")
                } else {
                    body
                }
            }
        };
        if !emit(&text) || opts.iterations.is_some_and(|n| frame >= n) {
            return Ok(());
        }
        prev = Some((cur, at));
        next += opts.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // The request took longer than the interval: no catching up.
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use lb_daemon::api::model::Active;

    #[test]
    fn rates_from_two_status_samples() {
        assert_eq!(rate(Some(100), 300, Duration::from_secs(2)), Some(100.0));
        assert_eq!(rate(Some(0), 1, Duration::from_secs(3)), Some(0.333));
        assert_eq!(rate(None, 300, Duration::from_secs(2)), None, "no earlier sample");
        assert_eq!(rate(Some(300), 100, Duration::from_secs(2)), None, "counter reset");
        assert_eq!(rate(Some(1), 2, Duration::ZERO), None);

        let before =
            status_view(vec![counted(1)], &[("pass_not_vip", 10), ("drop_no_backend", 4), ("fwd_tx", 0)]);
        let mut after =
            status_view(vec![counted(3)], &[("pass_not_vip", 30), ("drop_no_backend", 34), ("fwd_tx", 0)]);
        // A backend added since the first sample has no rate yet.
        after.services[0].pools[1].backends.push(backend("10.0.1.3:8080", true, 7, None));

        let first = TopFrame::new(None, &before, None, 1);
        assert_eq!((first.frame, first.elapsed_s), (1, None));
        let pool_b = &first.services[0].pools[1];
        assert_eq!((pool_b.rates.new_flows_per_s, pool_b.rates.packets_per_s), (None, None));
        assert_eq!((pool_b.view.healthy, pool_b.view.backends.len(), pool_b.view.min_healthy), (2, 2, 1));

        let f = TopFrame::new(Some((&before, Duration::from_secs(2))), &after, None, 2);
        assert_eq!((f.frame, f.elapsed_s), (2, Some(2.0)));
        let svc = &f.services[0];
        assert_eq!(
            (svc.view.name.as_str(), svc.view.epoch, &svc.view.active),
            ("web", 3, &Active::Pool("pool-b".into()))
        );
        // pool-a: new flows 5 -> 15, packets 20 -> 60, over 2 s.
        let a = &svc.pools[0];
        assert_eq!((a.rates.new_flows_per_s, a.rates.packets_per_s), (Some(5.0), Some(20.0)));
        assert_eq!(a.backends[1].rates.new_flows_per_s, Some(0.0));
        assert_eq!(a.backends[1].view.last_error.as_deref(), Some("connect: connection refused"));
        // pool-b: backends 2 -> 6 new flows and 10 -> 30 packets each; the pool's rates come
        // from its own counters (the daemon's sum), 4 -> 12 new flows.
        let b = &svc.pools[1];
        assert_eq!(
            b.backends.iter().map(|x| x.rates.new_flows_per_s).collect::<Vec<_>>(),
            [Some(2.0), Some(2.0), None]
        );
        assert_eq!(b.backends[0].rates.packets_per_s, Some(10.0));
        assert_eq!((b.rates.new_flows_per_s, b.rates.packets_per_s), (Some(4.0), Some(20.0)));
        // Non-zero reasons only, busiest first.
        let reasons: Vec<(&str, Option<f64>)> = f.reasons.iter().map(|r| (r.name, r.per_s)).collect();
        assert_eq!(reasons, [("drop_no_backend", Some(15.0)), ("pass_not_vip", Some(10.0))]);
        // --service, and what JSON mode prints.
        assert!(TopFrame::new(None, &after, Some("other"), 1).services.is_empty());
        let json: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(json["services"][0]["pools"][0]["new_flows_per_s"], 5.0);
        assert_eq!(json["services"][0]["pools"][1]["backends"][2]["packets_per_s"], serde_json::Value::Null);
        assert_eq!(serde_json::to_value(&first).unwrap()["elapsed_s"], serde_json::Value::Null);

        let text = render(&first, Duration::from_secs(1), false, Paint::OFF);
        assert!(text.contains("pass/drop: - (rates from the next frame on)"), "{text}");
        assert!(text.contains("service web  active: pool-b   epoch: 3   watch: none"), "{text}");
        let text = render(&f, Duration::from_secs(1), false, Paint::OFF);
        assert!(
            text.contains("  pool-a              0%  1/2 (min 2) below min          5.0       20.0\n"),
            "{text}"
        );
        assert!(text.contains("    10.0.0.2:8080         DOWN                           0.0       10.0  connect: connection refused\n"), "{text}");
        assert!(
            text.contains("    10.0.1.3:8080         up                               -          -\n"),
            "{text}"
        );
        assert!(text.contains("pass/drop: drop_no_backend 15.0/s  pass_not_vip 10.0/s\n"), "{text}");
        assert!(!text.contains('\x1b'));
        assert_eq!(
            [None, Some(0.25), Some(999.94), Some(12_345.0), Some(4_100_000.0)].map(fmt_rate),
            ["-", "0.2", "999.9", "12.3k", "4.1M"]
        );
    }

    #[test]
    fn top_frames_json_lines_and_text_blocks() {
        let statuses = [1, 2, 3].map(|k| serde_json::to_string(&status_view(vec![counted(k)], &[])).unwrap());
        let daemon = scripted(move |path, n| match path {
            "/v1/status" => Ok(statuses[n.min(2)].clone()),
            other => panic!("unexpected GET {other}"),
        });
        let opts = TopOptions {
            interval: Duration::from_millis(5),
            iterations: Some(3),
            json: true,
            clear: false,
            paint: Paint::OFF,
            service: None,
        };
        let mut out = String::new();
        run_frames(&daemon, &opts, &mut |t| {
            out.push_str(t);
            true
        })
        .unwrap();
        let frames: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(frames.len(), 3, "{out}");
        assert_eq!(frames[0]["services"][0]["pools"][1]["new_flows_per_s"], serde_json::Value::Null);
        for f in &frames[1..] {
            assert!(f["elapsed_s"].as_f64().unwrap() > 0.0, "{f}");
            assert!(f["services"][0]["pools"][1]["new_flows_per_s"].as_f64().unwrap() > 0.0, "{f}");
        }
        assert_eq!(frames[2]["frame"], 3);

        // Text, not a terminal: blocks one blank line apart, no escape sequences.
        let text_opts = TopOptions { json: false, iterations: Some(2), ..opts.clone() };
        let mut blocks = Vec::new();
        run_frames(&daemon, &text_opts, &mut |t| {
            blocks.push(t.to_owned());
            true
        })
        .unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(
            blocks[0].starts_with("lb-daemon 0.1.0 (instance lb)") && blocks[1].starts_with("\nlb-daemon")
        );
        assert!(blocks.iter().all(|b| !b.contains('\x1b')));
        // A terminal: the screen is cleared before each frame.
        let mut frames = Vec::new();
        run_frames(&daemon, &TopOptions { clear: true, ..text_opts.clone() }, &mut |t| {
            frames.push(t.to_owned());
            true
        })
        .unwrap();
        assert!(frames.iter().all(|f| f.starts_with("\x1b[H\x1b[2Jlb-daemon")), "{frames:?}");
        // The output going away ends top (successfully) at once.
        let mut calls = 0;
        run_frames(&daemon, &TopOptions { iterations: None, ..text_opts.clone() }, &mut |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
        // A failed request or an unknown --service ends it with the usual exit code.
        let gone = scripted(|_, _| Err(unreachable()));
        assert_eq!(run_frames(&gone, &text_opts, &mut |_| true).unwrap_err().exit_code(), 3);
        let other = TopOptions { service: Some("other".into()), ..text_opts };
        assert_eq!(run_frames(&daemon, &other, &mut |_| true).unwrap_err().exit_code(), 4);
    }

    #[test]
    fn json_frames_keep_their_shape() {
        let before = status_view(vec![counted(1)], &[("drop_no_backend", 4)]);
        let after = status_view(vec![counted(3)], &[("drop_no_backend", 34)]);
        let f = TopFrame::new(Some((&before, Duration::from_secs(2))), &after, None, 2);
        let v = serde_json::to_value(&f).unwrap();
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&v),
            [
                "frame",
                "elapsed_s",
                "instance",
                "version",
                "uptime_s",
                "adopted",
                "interfaces",
                "services",
                "reasons"
            ]
        );
        assert_eq!(keys(&v["services"][0]), ["name", "active", "epoch", "watch", "pools"]);
        assert_eq!(
            keys(&v["services"][0]["pools"][0]),
            [
                "name",
                "share",
                "healthy",
                "total",
                "min_healthy",
                "new_flows_per_s",
                "packets_per_s",
                "backends"
            ]
        );
        assert_eq!(
            keys(&v["services"][0]["pools"][0]["backends"][0]),
            ["addr", "up", "new_flows_per_s", "packets_per_s", "last_error"]
        );
        assert_eq!(keys(&v["reasons"][0]), ["name", "total", "per_s"]);
        assert_eq!(v["services"][0]["pools"][0]["total"], 2);
        assert_eq!(
            v["reasons"][0],
            serde_json::json!({ "name": "drop_no_backend", "total": 34, "per_s": 15.0 })
        );
        assert_eq!(v["services"][0]["active"], serde_json::json!({ "pool": "pool-b" }));
    }
}
