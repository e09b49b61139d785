//! Text pieces several commands print: a change's outcome, a service's header and watch,
//! interfaces, health and up/down cells.

use std::time::Duration;

use lb_daemon::api::model::{
    BackendView, InterfaceView, PoolView, ServiceView, SwitchMode, SwitchOutcome, WatchState, WatchView,
};

use super::Paint;

/// `drain` or `hard`.
pub fn mode_name(mode: SwitchMode) -> &'static str {
    match mode {
        SwitchMode::Drain => "drain",
        SwitchMode::Hard => "hard",
    }
}

/// `web: pool-a -> pool-b (drain), applied in 84 us` or `web: pool-b already active, nothing changed`.
pub fn outcome_line(o: &SwitchOutcome) -> String {
    if o.changed {
        format!(
            "{}: {} -> {} ({}), applied in {} us",
            o.service,
            o.before,
            o.after,
            mode_name(o.mode),
            o.apply_us
        )
    } else {
        format!("{}: {} already active, nothing changed", o.service, o.after)
    }
}

/// The outcome line (`would switch web: pool-a -> pool-b (drain)` for a dry run; `verb` as in
/// "would switch"), then one `warning:` line per warning.
pub fn outcome_text(o: &SwitchOutcome, verb: &str) -> String {
    let mut s = match (o.dry_run, o.changed) {
        (false, _) => outcome_line(o),
        (true, true) => {
            format!("would {verb} {}: {} -> {} ({})", o.service, o.before, o.after, mode_name(o.mode))
        }
        (true, false) => format!("{}: {} already active, nothing would change", o.service, o.after),
    };
    s.push('\n');
    for w in &o.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

/// `eth0 (XDP native), eth1 (XDP generic)` (generic, the slow fallback, in yellow), or `none`.
pub fn interfaces_line(interfaces: &[InterfaceView], paint: Paint) -> String {
    if interfaces.is_empty() {
        return "none".into();
    }
    let each = |i: &InterfaceView| {
        let mode = format!("XDP {}", i.mode);
        let mode = if i.mode == "native" { mode } else { paint.yellow(&mode) };
        format!("{} ({mode})", i.name)
    };
    interfaces.iter().map(each).collect::<Vec<_>>().join(", ")
}

/// `2/3 (min 2)`, with `below min` when a switch to the pool would be refused.
pub fn pool_health(p: &PoolView, paint: Paint) -> String {
    health_text(p.healthy, p.backends.len(), p.min_healthy, paint)
}

/// `healthy/total (min N)`, then ` below min` (red) when `healthy < min_healthy`.
pub fn health_text(healthy: u32, total: usize, min_healthy: u32, paint: Paint) -> String {
    let below = if healthy < min_healthy { format!(" {}", paint.red("below min")) } else { String::new() };
    format!("{healthy}/{total} (min {min_healthy}){below}")
}

/// `: connect: connection refused` when the backend has a last health-check error.
pub fn last_error(b: &BackendView) -> String {
    b.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
}

/// `up` (green) or `DOWN` (red).
pub fn up_down(up: bool, paint: Paint) -> String {
    if up { paint.green("up") } else { paint.red("DOWN") }
}

/// `service web (nat) on 192.0.2.1:80`, its active/previous line and its watch.
pub fn service_header(svc: &ServiceView, paint: Paint) -> String {
    let previous = svc.previous.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".into());
    let mut s = format!(
        "service {} ({}) on {}\n  active: {}   previous: {}   epoch: {}\n",
        paint.bold(&svc.name),
        svc.mode,
        svc.vips.join(", "),
        paint.bold(&svc.active.to_string()),
        previous,
        svc.epoch
    );
    if let Some(w) = &svc.watch {
        s.push_str(&format!("  {}\n", paint.watch(w.state, &watch_line(w))));
    }
    s
}

/// A watch in one line.
pub fn watch_line(w: &WatchView) -> String {
    let switch = w.switch_history_id.map(|id| format!(" of switch #{id}")).unwrap_or_default();
    let reason = w.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match w.state {
        WatchState::Watching => format!(
            "watch{switch}: {} watched for {} more (until {}); rolls back by itself below min_healthy",
            w.pool,
            humantime::format_duration(Duration::from_secs(w.remaining_s)),
            w.until
        ),
        WatchState::Passed => format!("last watch{switch}: {} passed (until {})", w.pool, w.until),
        WatchState::RolledBack => format!(
            "last watch{switch}: {} rolled back automatically{}{reason}",
            w.pool,
            w.rollback_history_id.map(|id| format!(" (#{id})")).unwrap_or_default()
        ),
        WatchState::Cancelled => format!("last watch{switch}: {} cancelled{reason}", w.pool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use lb_daemon::api::model::{Active, PoolWeight};

    #[test]
    fn outcome_lines() {
        let o = SwitchOutcome {
            after: Active::Split(vec![PoolWeight { pool: "a,b:{[\"".into(), weight: 90 }]),
            history_id: None,
            warnings: vec!["forced: b".into()],
            ..switched()
        };
        assert_eq!(outcome_line(&o), "web: pool-a -> split a,b:{[\"=90 (drain), applied in 84 us");
        let same = SwitchOutcome { changed: false, after: Active::Pool("pool-b".into()), ..o };
        assert_eq!(outcome_line(&same), "web: pool-b already active, nothing changed");
    }

    #[test]
    fn dry_run_and_warnings_text() {
        let dry = SwitchOutcome {
            dry_run: true,
            apply_us: 0,
            history_id: None,
            warnings: vec!["forced: pool-b has 0 healthy backend(s), min_healthy is 1".into()],
            ..switched()
        };
        assert_eq!(
            outcome_text(&dry, "switch"),
            "would switch web: pool-a -> pool-b (drain)\n\
             warning: forced: pool-b has 0 healthy backend(s), min_healthy is 1\n"
        );
        let same = SwitchOutcome { changed: false, warnings: vec![], ..dry };
        assert_eq!(outcome_text(&same, "roll back"), "web: pool-b already active, nothing would change\n");
        assert_eq!(outcome_text(&switched(), "switch"), "web: pool-a -> pool-b (drain), applied in 84 us\n");
    }

    #[test]
    fn up_down_is_coloured() {
        assert_eq!(up_down(false, Paint::ON), "\x1b[31mDOWN\x1b[0m");
        assert_eq!(up_down(true, Paint::OFF), "up");
    }
}
