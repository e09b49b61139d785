//! `lbctl host status|drain|undrain`: this balancer host in a BGP fleet. Drain is maintenance:
//! the daemon withdraws every VIP from BIRD (routers stop sending new flows here) and keeps
//! forwarding what still arrives; `host status` shows the flows left so an operator knows when
//! the host is empty (`drain --wait` waits for that). Also the `bgp` lines of `lbctl status`.

use std::time::{Duration, Instant};

use lb_daemon::api::client::Client;
use lb_daemon::fleet::host::{BgpView, HostView};

use super::parse;
use crate::failure::Failure;
use crate::render::{self, Paint, json, table};

/// What `lbctl host` does.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// Show the maintenance state, the VIPs announced (and why not), and the flows left.
    Status,
    /// Maintenance: withdraw every VIP from BGP, keep forwarding the flows that still arrive.
    Drain {
        /// Then wait until no established flow is left (default 5m); exit 8 on timeout.
        #[arg(
            long,
            value_name = "TIMEOUT",
            num_args = 0..=1,
            default_missing_value = "5m",
            value_parser = crate::args::duration
        )]
        wait: Option<Duration>,
    },
    /// Leave maintenance: announce again every VIP the rules allow.
    Undrain,
}

/// How often `drain --wait` reads the flows left (a flow-table scan on the daemon).
const WAIT_POLL: Duration = Duration::from_secs(1);

/// Runs `lbctl host <action>`.
pub fn run(client: &Client, json_out: bool, action: HostAction) -> Result<String, Failure> {
    match action {
        HostAction::Status => {
            let raw = client.host_text()?;
            let view: HostView = parse(&raw)?;
            Ok(if json_out { json::pretty(&raw) } else { render_host(&view, Paint::stdout()) })
        }
        HostAction::Drain { wait } => {
            let raw = client.host_drain_text(true)?;
            let view: BgpView = parse(&raw)?;
            let out = if json_out && wait.is_none() {
                json::pretty(&raw)
            } else if json_out {
                String::new()
            } else {
                render_change(&view, true, Paint::stdout())
            };
            if !view.in_sync {
                render::print_stdout(&out);
                return Err(not_confirmed(&view, true));
            }
            match wait {
                None => Ok(out),
                Some(timeout) => {
                    render::print_stdout(&out);
                    wait_empty(client, json_out, timeout)
                }
            }
        }
        HostAction::Undrain => {
            let raw = client.host_drain_text(false)?;
            let view: BgpView = parse(&raw)?;
            let out =
                if json_out { json::pretty(&raw) } else { render_change(&view, false, Paint::stdout()) };
            if !view.in_sync {
                render::print_stdout(&out);
                return Err(not_confirmed(&view, false));
            }
            Ok(out)
        }
    }
}

/// The state is recorded, but BIRD did not confirm it (the daemon keeps retrying).
fn not_confirmed(view: &BgpView, drain: bool) -> Failure {
    Failure::Unexpected(format!(
        "host {} (recorded), but BIRD did not confirm it: {}; lb-daemon keeps retrying every 500 ms \
         (lbctl host status shows when it is in sync)",
        if drain { "drained" } else { "undrained" },
        view.bird_error.as_deref().unwrap_or("no answer yet")
    ))
}

/// `drain --wait`: polls `GET /v1/host` until no established flow is left; prints each new
/// count (text) or the last view (JSON); exit 8 on timeout.
fn wait_empty(client: &Client, json_out: bool, timeout: Duration) -> Result<String, Failure> {
    let start = Instant::now();
    let mut last: Option<u64> = None;
    loop {
        let raw = client.host_text()?;
        let view: HostView = parse(&raw)?;
        let left = view.flows_established;
        if left == 0 {
            return Ok(if json_out {
                json::pretty(&raw)
            } else {
                format!("host empty after {}: no established flow left\n", seconds(start.elapsed()))
            });
        }
        if !json_out && last != Some(left) {
            render::print_stdout(&format!("  {}\n", flows_left_line(&view)));
        }
        last = Some(left);
        if start.elapsed() >= timeout {
            if json_out {
                render::print_stdout(&json::pretty(&raw));
            }
            return Err(Failure::WaitTimedOut(format!(
                "{left} established flow(s) still on this host after {} (drained: no new flows come; \
                 idle flows stop counting after the flow table's idle timeout)",
                humantime::format_duration(timeout)
            )));
        }
        std::thread::sleep(WAIT_POLL.min(timeout.saturating_sub(start.elapsed())));
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The answer to drain/undrain, in words.
pub fn render_change(v: &BgpView, drain: bool, paint: Paint) -> String {
    let mut out = if drain {
        format!(
            "host drained: every VIP withdrawn from BGP{}; forwarding continues for the flows that still arrive\n",
            if v.in_sync { " (BIRD confirmed)" } else { "" }
        )
    } else {
        format!(
            "host undrained: announcing {}{}\n",
            announced_list(v),
            if v.in_sync { " (BIRD confirmed)" } else { "" }
        )
    };
    out.push_str(&vip_table(v, paint));
    if drain {
        out.push_str("  see the flows left with: lbctl host status (or lbctl host drain --wait)\n");
    }
    out
}

/// `lbctl host status` as text: state line, the VIP table, the flows left.
pub fn render_host(h: &HostView, paint: Paint) -> String {
    let mut out = String::new();
    for line in bgp_lines(&h.bgp, paint) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&vip_table(&h.bgp, paint));
    out.push_str(&format!("{}\n", flows_left_line(h)));
    if h.bgp.drained && h.flows_established == 0 {
        out.push_str("the host is empty: nothing announced, no established flow (safe to stop)\n");
    }
    out
}

/// "flows left: 12 established (web 10, api 2)".
fn flows_left_line(h: &HostView) -> String {
    let per: Vec<String> = h
        .services
        .iter()
        .filter(|s| s.established > 0)
        .map(|s| format!("{} {}", s.service, s.established))
        .collect();
    if per.is_empty() {
        format!("flows left: {} established", h.flows_established)
    } else {
        format!("flows left: {} established ({})", h.flows_established, per.join(", "))
    }
}

fn announced_list(v: &BgpView) -> String {
    if v.announced.is_empty() {
        "nothing".into()
    } else {
        v.announced.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// The state of BGP in a few lines (also `lbctl status`'s `bgp` part): maintenance, what BIRD
/// announces, BIRD errors.
pub fn bgp_lines(v: &BgpView, paint: Paint) -> Vec<String> {
    let mut lines = Vec::new();
    if v.drained {
        let mut since = String::new();
        if let Some(s) = &v.drained_since {
            since.push_str(&format!(" since {s}"));
        }
        if let Some(by) = &v.drained_by {
            since.push_str(&format!(" by {by}"));
        }
        lines.push(format!("bgp: {}{since}: nothing announced", paint.yellow("DRAINED for maintenance")));
    } else {
        let want = v.vips.iter().filter(|d| d.announce).count();
        lines.push(format!("bgp: announcing {} ({} of {} VIP(s))", announced_list(v), want, v.vips.len()));
    }
    if v.in_sync {
        if let Some(at) = &v.last_configured {
            lines.push(format!("  BIRD in sync (last configured {at}); include file {}", v.include_file));
        } else {
            lines.push(format!("  BIRD in sync; include file {}", v.include_file));
        }
    } else {
        lines.push(format!(
            "  {} BIRD not in sync: {} (retrying every 500 ms; forwarding is unaffected)",
            paint.red("warning:"),
            v.bird_error.as_deref().unwrap_or("not configured yet")
        ));
    }
    lines
}

/// One row per VIP address: announced or not, and why not.
fn vip_table(v: &BgpView, paint: Paint) -> String {
    if v.vips.is_empty() {
        return "  no VIP\n".into();
    }
    let mut rows = vec![["VIP", "SERVICES", "ANNOUNCED", "WHY NOT"].map(String::from).to_vec()];
    for d in &v.vips {
        rows.push(vec![
            d.vip.to_string(),
            d.services.join(","),
            if d.announce { paint.green("yes") } else { paint.red("no") },
            d.why_not.clone().unwrap_or_default(),
        ]);
    }
    table::table(&rows, &[false, false, false, false], "  ")
}

/// `lbctl status`'s BGP part from the raw status (its `bgp` member; nothing without `[bgp]`):
/// the state lines, then the VIPs not announced with why.
pub fn status_part(raw_status: &str, paint: Paint) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(raw_status) else { return String::new() };
    let Some(Ok(bgp)) = value.get("bgp").map(|b| serde_json::from_value::<BgpView>(b.clone())) else {
        return String::new();
    };
    let mut out = String::new();
    for line in bgp_lines(&bgp, paint) {
        out.push_str(&line);
        out.push('\n');
    }
    for d in bgp.vips.iter().filter(|d| !d.announce && !bgp.drained) {
        out.push_str(&format!("  {} not announced: {}\n", d.vip, d.why_not.as_deref().unwrap_or("-")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_daemon::fleet::announce::VipDecision;
    use lb_daemon::fleet::host::ServiceFlows;

    fn decision(vip: &str, why_not: Option<&str>) -> VipDecision {
        VipDecision {
            vip: vip.parse().unwrap(),
            services: vec!["web".into()],
            announce: why_not.is_none(),
            why_not: why_not.map(String::from),
        }
    }

    fn bgp(drained: bool) -> BgpView {
        let (vips, announced) = if drained {
            (
                vec![
                    decision("192.0.2.10", Some("the host is drained for maintenance")),
                    decision("192.0.2.11", Some("the host is drained for maintenance")),
                ],
                vec![],
            )
        } else {
            (
                vec![
                    decision("192.0.2.10", None),
                    decision(
                        "192.0.2.11",
                        Some("service web: pool pool-a has 0 healthy backend(s), min_healthy is 1"),
                    ),
                ],
                vec!["192.0.2.10".parse().unwrap()],
            )
        };
        BgpView {
            drained,
            drained_since: drained.then(|| "2026-12-03T08:00:00.000Z".into()),
            drained_by: drained.then(|| "ops@lb1".into()),
            include_file: "/etc/bird/lb-vips.conf".into(),
            announced,
            vips,
            in_sync: true,
            bird_error: None,
            last_configured: Some("2026-12-03T08:00:00.004Z".into()),
        }
    }

    fn host(drained: bool, flows: u64) -> HostView {
        HostView {
            bgp: bgp(drained),
            flows_established: flows,
            services: vec![ServiceFlows { service: "web".into(), established: flows }],
        }
    }

    #[test]
    fn host_status_announced_and_why_not() {
        let text = render_host(&host(false, 7), Paint::OFF);
        assert_eq!(
            text,
            "bgp: announcing 192.0.2.10 (1 of 2 VIP(s))\n  \
             BIRD in sync (last configured 2026-12-03T08:00:00.004Z); include file /etc/bird/lb-vips.conf\n  \
             VIP         SERVICES  ANNOUNCED  WHY NOT\n  \
             192.0.2.10  web       yes\n  \
             192.0.2.11  web       no         service web: pool pool-a has 0 healthy backend(s), min_healthy is 1\n\
             flows left: 7 established (web 7)\n"
        );
    }

    #[test]
    fn host_status_drained_counts_down_to_empty() {
        let text = render_host(&host(true, 3), Paint::OFF);
        assert!(
            text.starts_with(
                "bgp: DRAINED for maintenance since 2026-12-03T08:00:00.000Z by ops@lb1: nothing announced\n"
            ),
            "{text}"
        );
        assert!(text.contains("flows left: 3 established (web 3)\n"), "{text}");
        assert!(!text.contains("the host is empty"), "{text}");
        let text = render_host(&host(true, 0), Paint::OFF);
        assert!(text.contains("flows left: 0 established\n"), "{text}");
        assert!(text.ends_with("the host is empty: nothing announced, no established flow (safe to stop)\n"));
    }

    #[test]
    fn bird_errors_are_shown() {
        let mut v = bgp(false);
        v.in_sync = false;
        v.bird_error = Some("birdc: Unable to connect to server control socket".into());
        let lines = bgp_lines(&v, Paint::OFF);
        assert!(lines[1].contains("warning: BIRD not in sync: birdc: Unable to connect"), "{lines:?}");
        let e = not_confirmed(&v, true);
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("host drained (recorded), but BIRD did not confirm it: birdc"));
    }

    #[test]
    fn drain_and_undrain_answers() {
        let text = render_change(&bgp(true), true, Paint::OFF);
        assert!(text.starts_with("host drained: every VIP withdrawn from BGP (BIRD confirmed);"), "{text}");
        assert!(text.contains("192.0.2.11  web       no         the host is drained"), "{text}");
        assert!(text.ends_with("lbctl host drain --wait)\n"), "{text}");
        let text = render_change(&bgp(false), false, Paint::OFF);
        assert!(text.starts_with("host undrained: announcing 192.0.2.10 (BIRD confirmed)\n"), "{text}");
    }

    #[test]
    fn status_part_only_with_bgp() {
        assert_eq!(status_part(r#"{"instance":"lb"}"#, Paint::OFF), "");
        let raw = serde_json::json!({ "instance": "lb", "bgp": bgp(false) }).to_string();
        let text = status_part(&raw, Paint::OFF);
        assert!(text.starts_with("bgp: announcing 192.0.2.10 (1 of 2 VIP(s))\n"), "{text}");
        assert!(
            text.ends_with(
                "  192.0.2.11 not announced: service web: pool pool-a has 0 healthy backend(s), min_healthy is 1\n"
            ),
            "{text}"
        );
        let raw = serde_json::json!({ "bgp": bgp(true) }).to_string();
        let text = status_part(&raw, Paint::OFF);
        assert!(text.starts_with("bgp: DRAINED for maintenance"), "{text}");
        assert!(!text.contains("not announced:"), "one reason for all when drained: {text}");
    }
}
