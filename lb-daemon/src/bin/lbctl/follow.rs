//! After a switch, `--wait`, `--wait-drained` and `--watch` poll the daemon until the change
//! took effect: a new flow reached the new pool, the old pools drained, the daemon's watch
//! passed (or it rolled back: exit 9). The watch is the daemon's; lbctl only reports on it, and
//! keeps polling through a daemon restart for up to `--retry-for` (the restarted daemon adopts
//! the watch with the rest of its state).

use std::time::{Duration, Instant};

use lb_daemon::api::client::{Client, ClientError};
use lb_daemon::api::model::{
    DrainView, ErrorCode, PoolDrain, ServiceView, SwitchOutcome, WatchState, WatchView,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::args;
use crate::failure::{self, Failure};

/// Poll intervals of [`follow`] (tests go faster).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// `--wait`: the service's counters.
    new_flow: Duration,
    /// `--wait-drained`: the drain view.
    drain: Duration,
    /// `--watch`: the watch.
    watch: Duration,
    /// How long past its window a watch may still be reported running.
    watch_grace: Duration,
    /// Shortest time between two drain progress lines.
    drain_report: Duration,
    /// How long polls may fail in a row (daemon restarting, busy) before lbctl gives up
    /// (`--retry-for`).
    patience: Duration,
}

impl Pace {
    /// The pace of a real daemon; `patience` is `--retry-for`.
    pub fn standard(patience: Duration) -> Pace {
        Pace {
            new_flow: Duration::from_millis(100),
            drain: Duration::from_millis(250),
            watch: Duration::from_millis(200),
            watch_grace: Duration::from_secs(10),
            drain_report: Duration::from_secs(1),
            patience,
        }
    }
}

/// What to wait for after a switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waits {
    /// `--wait`: timeout for a new flow to reach the new pool.
    pub new_flow: Option<Duration>,
    /// `--wait-drained`: timeout for the old pools to empty.
    pub drained: Option<Duration>,
    /// `--watch`: the daemon's watch window.
    pub watch: Option<Duration>,
}

impl Waits {
    /// Whether any wait was asked for.
    pub fn any(&self) -> bool {
        self.new_flow.is_some() || self.drained.is_some() || self.watch.is_some()
    }
}

/// What `--wait` saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewFlowReport {
    /// The new pool.
    pub pool: String,
    /// Whether a new flow reached it.
    pub reached: bool,
    /// Its backends' `new_flows` right after the switch.
    pub baseline: u64,
    /// ... and at the last look.
    pub new_flows: u64,
    /// Since the switch.
    pub elapsed_ms: u64,
}

/// What `--wait-drained` saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Whether the pools drained.
    pub drained: bool,
    /// Established flows left on them at the last look.
    pub remaining: u64,
    /// The pools waited for (those with share 0 after the switch), at the last look.
    pub pools: Vec<PoolDrain>,
    /// Since the wait started.
    pub elapsed_ms: u64,
}

/// What the waits saw, for `--output json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// `--wait`, at the last look.
    pub wait: Option<NewFlowReport>,
    /// `--watch`, at the last look.
    pub watch: Option<WatchView>,
    /// `--wait-drained`, at the last look.
    pub drain: Option<DrainReport>,
}

/// Where [`follow`] reads the daemon's state (the client; a script in tests).
pub trait Daemon {
    /// `GET path`: the response body.
    fn fetch(&self, path: &str) -> Result<String, ClientError>;
}

impl Daemon for Client {
    fn fetch(&self, path: &str) -> Result<String, ClientError> {
        self.get_text(path)
    }
}

/// Polls, riding out a daemon that does not answer for up to `patience` in a row: a restart
/// (the restarted daemon adopts the pinned state and the watch it holds), or a busy daemon.
/// Says when contact is lost and when it is back.
struct Contact {
    /// Since when polls fail, while they do.
    lost_since: Option<Instant>,
    /// Time spent without contact, over the whole follow (the watch's end moves by it).
    lost_total: Duration,
    patience: Duration,
}

impl Contact {
    /// The answer; `Ok(None)` when the daemon did not answer and lbctl should try again.
    /// `note` goes with an error when the daemon still does something by itself.
    fn poll<T: DeserializeOwned>(
        &mut self,
        daemon: &dyn Daemon,
        path: &str,
        note: Option<&str>,
        say: &mut dyn FnMut(String),
    ) -> Result<Option<T>, Failure> {
        let failed = |error| Failure::Following { error, note: note.map(str::to_owned) };
        match daemon.fetch(path) {
            Ok(raw) => {
                if let Some(since) = self.lost_since.take() {
                    let gone = since.elapsed();
                    self.lost_total += gone;
                    say(format!("lb-daemon answers again (no answer for {})", short(gone)));
                }
                serde_json::from_str(&raw).map(Some).map_err(|e| {
                    Failure::Unexpected(format!("unexpected response from lb-daemon to GET {path}: {e}"))
                })
            }
            Err(e @ ClientError::Api { .. }) => Err(failed(e)),
            Err(e) => {
                let since = match self.lost_since {
                    Some(since) => since,
                    None => {
                        say(format!(
                            "lost contact with lb-daemon ({e}); trying again for up to {}",
                            humantime::format_duration(self.patience)
                        ));
                        *self.lost_since.insert(Instant::now())
                    }
                };
                if since.elapsed() >= self.patience { Err(failed(e)) } else { Ok(None) }
            }
        }
    }
}

/// The watch being followed.
struct WatchFollow {
    /// History id of the switch it watches.
    switch_id: Option<u64>,
    /// After this, a watch still running is an error.
    deadline: Instant,
    next: Instant,
    /// What an error says the daemon still does.
    note: String,
    /// What an automatic rollback goes back to: what was active before our switch, or, when
    /// following an earlier switch's watch, the service's active pool read after the rollback.
    back_to: Option<String>,
}

/// A `--wait` in progress.
struct FlowFollow {
    timeout: Duration,
    deadline: Instant,
    next: Instant,
    baseline: Option<u64>,
}

/// A `--wait-drained` in progress.
struct DrainFollow {
    timeout: Duration,
    started: Instant,
    deadline: Instant,
    next: Instant,
    /// The pools with share 0 at the first look.
    pools: Option<Vec<String>>,
    /// Last count printed and when.
    said: Option<(u64, Instant)>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `1.2s`, `42s`, `5m`: a short readable duration.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

fn flows(n: u64) -> String {
    format!("{n} established flow{}", if n == 1 { "" } else { "s" })
}

/// Follows a switch to `pool` (outcome `o`) through the waits asked for, telling progress to
/// `say`: a new flow reaching the pool (`--wait`), then the other pools draining
/// (`--wait-drained`), and all along the daemon's watch (`--watch`), which outranks the rest:
/// an automatic rollback ends everything with [`Failure::RolledBack`]. Returns what it saw
/// (for `--output json`) and how it ended.
pub fn follow(
    daemon: &dyn Daemon,
    o: &SwitchOutcome,
    pool: &str,
    waits: Waits,
    pace: &Pace,
    say: &mut dyn FnMut(String),
) -> (Followed, Result<(), Failure>) {
    let mut seen = Followed::default();
    let result = follow_into(daemon, o, pool, waits, pace, say, &mut seen);
    (seen, result)
}

fn follow_into(
    daemon: &dyn Daemon,
    o: &SwitchOutcome,
    pool: &str,
    waits: Waits,
    pace: &Pace,
    say: &mut dyn FnMut(String),
    seen: &mut Followed,
) -> Result<(), Failure> {
    let start = Instant::now();
    let svc = o.service.as_str();
    let service_path = format!("/v1/services/{svc}");
    let drain_path = format!("/v1/services/{svc}/drain");
    let watch_path = format!("/v1/services/{svc}/watch");
    let mut contact = Contact { lost_since: None, lost_total: Duration::ZERO, patience: pace.patience };

    let mut watch = waits.watch.and_then(|window| {
        let follow = |switch_id: Option<u64>, window: Duration, until: &str, back_to| WatchFollow {
            switch_id,
            back_to,
            deadline: start + window + pace.watch_grace,
            next: start,
            note: format!(
                "lb-daemon still holds the watch of {pool} (until {until}) and rolls back by itself if \
                 {pool} falls below min_healthy; check with `lbctl status`"
            ),
        };
        let until = |w: &Option<WatchView>| w.as_ref().map(|w| w.until.clone()).unwrap_or_else(|| "its end".into());
        if o.changed {
            seen.watch = o.watch.clone();
            let window = Duration::from_secs(args::watch_secs(window));
            say(format!(
                "watching {pool} for {} (until {}): lb-daemon rolls back to {} by itself if {pool} falls below \
                 min_healthy; stopping lbctl does not stop the watch",
                humantime::format_duration(window),
                until(&o.watch),
                o.before
            ));
            Some(follow(o.history_id, window, &until(&o.watch), Some(o.before.to_string())))
        } else if let Some(w) = o.watch.as_ref().filter(|w| w.state == WatchState::Watching && w.pool == pool) {
            // Already active and still watched since an earlier switch: follow that watch.
            seen.watch = Some(w.clone());
            say(format!("{pool} is already active and watched by lb-daemon until {}; following that watch", w.until));
            Some(follow(w.switch_history_id, Duration::from_secs(w.remaining_s), &w.until, None))
        } else {
            say(format!("{svc}: {pool} was already active, so no watch was started"));
            None
        }
    });
    let mut flow = waits.new_flow.map(|timeout| FlowFollow {
        timeout,
        deadline: start + timeout,
        next: start,
        baseline: None,
    });
    let mut drain_timeout = waits.drained;
    let mut drain: Option<DrainFollow> = None;

    loop {
        // The watch first: an automatic rollback outranks everything else.
        let note = watch.as_ref().map(|w| w.note.clone());
        if let Some(w) = watch.as_mut()
            && Instant::now() >= w.next
        {
            let now = Instant::now();
            w.next = now + pace.watch;
            let view = contact.poll::<Option<WatchView>>(daemon, &watch_path, note.as_deref(), say)?;
            // Time without contact (a restart) does not count against the watch's end.
            let overdue = now >= w.deadline + contact.lost_total;
            if w.back_to.is_none()
                && view
                    .as_ref()
                    .is_some_and(|v| v.as_ref().is_some_and(|v| v.state == WatchState::RolledBack))
                && let Some(service) =
                    contact.poll::<ServiceView>(daemon, &service_path, note.as_deref(), say)?
            {
                w.back_to = Some(service.active.to_string());
            }
            if let Some(view) = view
                && judge_watch(w, view, o, pool, overdue, seen, say)?
            {
                watch = None;
            }
        }
        let note = watch.as_ref().map(|w| w.note.clone());
        let with_note = |msg: String| match &note {
            Some(n) => format!("{msg}; {n}"),
            None => msg,
        };

        if let Some(f) = flow.as_mut()
            && Instant::now() >= f.next
        {
            let now = Instant::now();
            let mut reached = false;
            if let Some(view) = contact.poll::<ServiceView>(daemon, &service_path, note.as_deref(), say)? {
                let n = pool_new_flows(&view, pool);
                let baseline = *f.baseline.get_or_insert(n);
                reached = n > baseline;
                let elapsed = now.duration_since(start);
                seen.wait = Some(NewFlowReport {
                    pool: pool.to_owned(),
                    reached,
                    baseline,
                    new_flows: n,
                    elapsed_ms: ms(elapsed),
                });
                if reached {
                    say(format!("new flows reach {pool} ({} within {})", n - baseline, short(elapsed)));
                }
            }
            if reached {
                flow = None;
            } else if now >= f.deadline {
                return Err(Failure::WaitTimedOut(with_note(format!(
                    "no new flow reached {pool} within {}",
                    humantime::format_duration(f.timeout)
                ))));
            } else {
                f.next = (now + pace.new_flow).min(f.deadline);
            }
        }

        // --wait-drained starts once --wait is satisfied.
        if flow.is_none()
            && let Some(timeout) = drain_timeout.take()
        {
            let now = Instant::now();
            drain = Some(DrainFollow {
                timeout,
                started: now,
                deadline: now + timeout,
                next: now,
                pools: None,
                said: None,
            });
        }
        if let Some(d) = drain.as_mut()
            && Instant::now() >= d.next
        {
            let now = Instant::now();
            let mut drained = false;
            if let Some(view) = contact.poll::<DrainView>(daemon, &drain_path, note.as_deref(), say)? {
                let first = d.pools.is_none();
                let names = d.pools.get_or_insert_with(|| {
                    view.pools.iter().filter(|p| p.share == 0).map(|p| p.pool.clone()).collect()
                });
                let pools: Vec<PoolDrain> =
                    view.pools.iter().filter(|p| names.contains(&p.pool)).cloned().collect();
                let remaining: u64 = pools.iter().map(|p| p.established).sum();
                let label = if names.is_empty() { "the other pools".to_owned() } else { names.join(", ") };
                let elapsed = now.duration_since(d.started);
                drained = remaining == 0;
                seen.drain =
                    Some(DrainReport { drained, remaining, pools: pools.clone(), elapsed_ms: ms(elapsed) });
                if let Some(back) = pools.iter().find(|p| p.share > 0) {
                    if let Some(w) = watch.as_mut() {
                        // Most likely the daemon rolled back: let the watch say so first.
                        w.next = now;
                        d.next = now + pace.drain;
                        continue;
                    }
                    return Err(Failure::Following {
                        error: failure::local_error(
                            ErrorCode::Conflict,
                            format!(
                                "{} gets new flows again ({}%): {svc} was changed meanwhile (see `lbctl history`)",
                                back.pool, back.share
                            ),
                        ),
                        note: None,
                    });
                }
                if drained {
                    say(if first {
                        format!("{label}: no established flows left")
                    } else {
                        format!("{label} drained after {}", short(elapsed))
                    });
                } else if first {
                    say(format!(
                        "waiting for {label} to drain: {} (timeout {})",
                        flows(remaining),
                        humantime::format_duration(d.timeout)
                    ));
                    d.said = Some((remaining, now));
                } else if d
                    .said
                    .is_none_or(|(n, at)| n != remaining && now.duration_since(at) >= pace.drain_report)
                {
                    say(format!("  {label}: {} left", flows(remaining)));
                    d.said = Some((remaining, now));
                }
            }
            if drained {
                drain = None;
            } else if now >= d.deadline {
                let names = d.pools.as_ref().map(|n| n.join(", ")).unwrap_or_else(|| "the old pools".into());
                let msg = match &seen.drain {
                    Some(r) => format!(
                        "{names} still {} {} after {} (see `lbctl drain-status`)",
                        if d.pools.as_ref().is_some_and(|n| n.len() > 1) { "have" } else { "has" },
                        flows(r.remaining),
                        humantime::format_duration(d.timeout)
                    ),
                    None => format!(
                        "could not count the established flows within {}",
                        humantime::format_duration(d.timeout)
                    ),
                };
                return Err(Failure::WaitTimedOut(with_note(msg)));
            } else {
                d.next = (now + pace.drain).min(d.deadline);
            }
        }

        let next =
            [watch.as_ref().map(|w| w.next), flow.as_ref().map(|f| f.next), drain.as_ref().map(|d| d.next)]
                .into_iter()
                .flatten()
                .min();
        match next {
            Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
            None if drain_timeout.is_none() => return Ok(()),
            None => {}
        }
    }
}

/// One look at the watch: `Ok(true)` when it passed, `Ok(false)` while it runs (an error when
/// it is `overdue`: still running well past its end).
fn judge_watch(
    w: &WatchFollow,
    view: Option<WatchView>,
    o: &SwitchOutcome,
    pool: &str,
    overdue: bool,
    seen: &mut Followed,
    say: &mut dyn FnMut(String),
) -> Result<bool, Failure> {
    let svc = o.service.as_str();
    let Some(view) = view else {
        return Err(Failure::Unexpected(format!(
            "lb-daemon holds no watch of {svc} any more: was its state reset? (see `lbctl status`)"
        )));
    };
    if view.switch_history_id != w.switch_id {
        say(format!("watch of {pool} ended: superseded"));
        return Err(Failure::Unexpected(format!(
            "the watch of {pool} ended early: {svc} was changed again (lb-daemon now reports the watch of switch #{}); \
             see `lbctl history`",
            view.switch_history_id.map(|id| id.to_string()).unwrap_or_else(|| "?".into())
        )));
    }
    seen.watch = Some(view.clone());
    match view.state {
        WatchState::Watching if overdue => Err(Failure::Unexpected(format!(
            "lb-daemon still reports the watch of {pool} running after its end ({}); it keeps holding it, \
             see `lbctl status`",
            view.until
        ))),
        WatchState::Watching => Ok(false),
        WatchState::Passed => {
            say(format!("watch of {pool} passed: it stayed healthy until {}", view.until));
            Ok(true)
        }
        WatchState::RolledBack => {
            let back_to = w.back_to.as_deref().unwrap_or("the previous pool or split");
            say(format!("watch of {pool} ended: lb-daemon rolled back to {back_to}"));
            let id = |id: Option<u64>| id.map(|id| format!("#{id}")).unwrap_or_else(|| "#?".into());
            Err(Failure::RolledBack(format!(
                "lb-daemon rolled back {svc} from {pool} to {} automatically: {} (rollback {} in the history, \
                 switch {})",
                back_to,
                view.reason.as_deref().unwrap_or("no reason given"),
                id(view.rollback_history_id),
                id(view.switch_history_id),
            )))
        }
        WatchState::Cancelled => {
            say(format!("watch of {pool} ended: cancelled"));
            Err(Failure::Unexpected(format!(
                "the watch of {pool} was cancelled: {}",
                view.reason.as_deref().unwrap_or("no reason given")
            )))
        }
    }
}

/// The `new_flows` counters of `pool`'s backends, summed.
fn pool_new_flows(view: &ServiceView, pool: &str) -> u64 {
    view.pools.iter().filter(|p| p.name == pool).flat_map(|p| &p.backends).map(|b| b.traffic.new_flows).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    const FAST: Pace = Pace {
        new_flow: Duration::from_millis(2),
        drain: Duration::from_millis(2),
        watch: Duration::from_millis(2),
        watch_grace: Duration::from_millis(300),
        drain_report: Duration::ZERO,
        patience: Duration::from_millis(40),
    };

    fn run_follow(
        daemon: &dyn Daemon,
        o: &SwitchOutcome,
        waits: Waits,
    ) -> (Followed, Result<(), Failure>, Vec<String>) {
        let mut said = Vec::new();
        let (seen, result) = follow(daemon, o, "pool-b", waits, &FAST, &mut |l| said.push(l));
        (seen, result, said)
    }

    fn ms_(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn follow_passes_when_flows_arrive_the_old_pool_drains_and_the_watch_passes() {
        let daemon = scripted(|path, n| match path {
            "/v1/services/web" => json(&service(0, if n < 3 { 10 } else { 12 }, None)),
            "/v1/services/web/drain" => json(&drain_view(0, [3, 3, 2, 1].get(n).copied().unwrap_or(0))),
            "/v1/services/web/watch" => {
                json(&Some(watch_view(if n < 20 { WatchState::Watching } else { WatchState::Passed }, 7)))
            }
            other => panic!("unexpected GET {other}"),
        });
        let o = SwitchOutcome { watch: Some(watch_view(WatchState::Watching, 7)), ..switched() };
        let waits =
            Waits { new_flow: ms_(5000), drained: ms_(5000), watch: Some(Duration::from_millis(1500)) };
        let (seen, result, said) = run_follow(&daemon, &o, waits);
        result.unwrap();
        assert_eq!(seen.wait.as_ref().map(|w| (w.reached, w.baseline, w.new_flows)), Some((true, 10, 12)));
        let drain = seen.drain.unwrap();
        assert!(
            drain.drained
                && drain.remaining == 0
                && drain.pools.len() == 1
                && drain.pools[0].pool == "pool-a"
        );
        assert_eq!(seen.watch.unwrap().state, WatchState::Passed);
        assert!(said[0].starts_with("watching pool-b for 2s (until 2030-01-01T00:01:00Z)"), "{said:?}");
        assert!(said[0].contains("stopping lbctl does not stop the watch"), "{said:?}");
        for want in [
            "new flows reach pool-b (2 within",
            "waiting for pool-a to drain: 3 established flows (timeout 5s)",
            "  pool-a: 2 established flows left",
            "pool-a drained after",
            "watch of pool-b passed",
        ] {
            assert!(said.iter().any(|l| l.starts_with(want)), "{want:?} in {said:?}");
        }
        // --wait-drained started only once a new flow reached pool-b.
        let calls = daemon.calls.borrow();
        let first_drain = calls.iter().position(|p| p.ends_with("/drain")).unwrap();
        let services_before = calls[..first_drain].iter().filter(|p| *p == "/v1/services/web").count();
        assert_eq!(services_before, 4, "{calls:?}");
    }

    #[test]
    fn follow_exits_9_when_the_daemon_rolls_back() {
        let daemon = scripted(|path, n| match path {
            "/v1/services/web" => json(&service(if n < 2 { 0 } else { 100 }, 10, None)),
            "/v1/services/web/drain" => json(&drain_view(0, 5)),
            "/v1/services/web/watch" => {
                json(&Some(watch_view(if n < 4 { WatchState::Watching } else { WatchState::RolledBack }, 7)))
            }
            other => panic!("unexpected GET {other}"),
        });
        let waits = Waits { new_flow: ms_(5000), drained: ms_(5000), watch: Some(Duration::from_secs(60)) };
        let (seen, result, said) = run_follow(&daemon, &switched(), waits);
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 9, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("rolled back web from pool-b to pool-a automatically"), "{msg}");
        assert!(msg.contains("pool-b: 0 of 2 backends healthy, min_healthy 1"), "{msg}");
        assert!(msg.contains("rollback #8") && msg.contains("switch #7"), "{msg}");
        assert_eq!(seen.watch.unwrap().rollback_history_id, Some(8));
        assert_eq!(said.last().unwrap(), "watch of pool-b ended: lb-daemon rolled back to pool-a");
    }

    #[test]
    fn follow_prefers_the_rollback_over_a_pool_that_gets_flows_again() {
        // The drain view sees pool-a active again before the watch says why.
        let daemon = || {
            scripted(|path, n| match path {
                "/v1/services/web/drain" => json(&drain_view(if n < 1 { 0 } else { 100 }, 5)),
                "/v1/services/web/watch" => json(&Some(watch_view(
                    if n < 2 { WatchState::Watching } else { WatchState::RolledBack },
                    7,
                ))),
                other => panic!("unexpected GET {other}"),
            })
        };
        let waits = Waits { drained: ms_(5000), watch: Some(Duration::from_secs(60)), ..Waits::default() };
        let d = daemon();
        let (_, result, _) = run_follow(&d, &switched(), waits);
        assert_eq!(result.unwrap_err().exit_code(), 9);
        let calls = d.calls.borrow();
        assert_eq!(calls.iter().filter(|p| p.ends_with("/drain")).count(), 2, "{calls:?}");
        // Without a watch it is someone else's change: a conflict.
        let (_, result, _) =
            run_follow(&daemon(), &switched(), Waits { drained: ms_(5000), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(e.to_string().contains("pool-a gets new flows again (100%)"), "{e}");
    }

    #[test]
    fn follow_times_out_with_8() {
        let daemon = scripted(|path, _| match path {
            "/v1/services/web" => json(&service(0, 10, None)),
            "/v1/services/web/drain" => json(&drain_view(0, 4)),
            other => panic!("unexpected GET {other}"),
        });
        let (seen, result, _) =
            run_follow(&daemon, &switched(), Waits { new_flow: ms_(60), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (8, "no new flow reached pool-b within 60ms".to_owned()));
        assert_eq!(seen.wait.map(|w| w.reached), Some(false));

        let (seen, result, said) =
            run_follow(&daemon, &switched(), Waits { drained: ms_(60), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 8);
        assert_eq!(
            e.to_string(),
            "pool-a still has 4 established flows after 60ms (see `lbctl drain-status`)"
        );
        assert_eq!(seen.drain.map(|d| (d.drained, d.remaining)), Some((false, 4)));
        // One line when it starts; the count never dropped, so no more.
        assert_eq!(said, vec!["waiting for pool-a to drain: 4 established flows (timeout 60ms)".to_owned()]);
    }

    #[test]
    fn follow_exits_3_when_the_daemon_goes_away_during_the_watch() {
        let daemon = scripted(|path, n| match (path, n) {
            ("/v1/services/web/watch", 0) => json(&Some(watch_view(WatchState::Watching, 7))),
            _ => Err(unreachable()),
        });
        let started = Instant::now();
        let (_, result, _) = run_follow(
            &daemon,
            &switched(),
            Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() },
        );
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(started.elapsed() >= FAST.patience, "retried for a while first");
        let msg = e.to_string();
        assert!(msg.starts_with("cannot reach lb-daemon at /run/lb/lb.sock"), "{msg}");
        assert!(msg.contains("lb-daemon still holds the watch of pool-b"), "{msg}");
        // A short outage is ridden out.
        let daemon = scripted(|path, n| match (path, n) {
            ("/v1/services/web/watch", 1 | 2) => Err(unreachable()),
            ("/v1/services/web/watch", n) => {
                json(&Some(watch_view(if n < 5 { WatchState::Watching } else { WatchState::Passed }, 7)))
            }
            _ => Err(unreachable()),
        });
        let (_, result, _) = run_follow(
            &daemon,
            &switched(),
            Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() },
        );
        result.unwrap();
    }

    /// A daemon that answers `watch`'s first poll, then none for `outage` (a restart), then
    /// `after` for the n-th poll since it came back.
    fn restarting(
        outage: Duration,
        after: impl Fn(usize) -> WatchState,
    ) -> Scripted<impl Fn(&str, usize) -> Result<String, ClientError>> {
        let started = Instant::now();
        let back = std::cell::Cell::new(None::<usize>);
        scripted(move |path, n| {
            assert_eq!(path, "/v1/services/web/watch");
            if n > 0 && started.elapsed() < outage {
                return Err(unreachable());
            }
            let first = back.get().unwrap_or(n);
            back.set(Some(first));
            json(&Some(watch_view(if n == 0 { WatchState::Watching } else { after(n - first) }, 7)))
        })
    }

    #[test]
    fn follow_rides_out_a_daemon_restart_and_reports_its_rollback() {
        // Away for far longer than a blip, less than the patience: the rollback the restarted
        // daemon made is reported (exit 9), not "unreachable" (exit 3).
        let pace = Pace { patience: Duration::from_secs(5), ..FAST };
        let daemon = restarting(Duration::from_millis(300), |n| {
            if n < 2 { WatchState::Watching } else { WatchState::RolledBack }
        });
        let mut said = Vec::new();
        let waits = Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() };
        let (seen, result) = follow(&daemon, &switched(), "pool-b", waits, &pace, &mut |l| said.push(l));
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 9, "{e}");
        assert_eq!(seen.watch.unwrap().state, WatchState::RolledBack);
        assert!(
            said.iter().any(|l| l
                .starts_with("lost contact with lb-daemon (cannot reach lb-daemon at /run/lb/lb.sock")
                && l.ends_with("trying again for up to 5s")),
            "{said:?}"
        );
        assert!(said.iter().any(|l| l.starts_with("lb-daemon answers again (no answer for 0.")), "{said:?}");
        assert_eq!(said.iter().filter(|l| l.starts_with("lost contact")).count(), 1, "said once: {said:?}");
        // Longer than the patience: exit 3, the watch still the daemon's.
        let pace = Pace { patience: Duration::from_millis(100), ..FAST };
        let daemon = restarting(Duration::from_secs(2), |_| WatchState::Passed);
        let (_, result) = follow(&daemon, &switched(), "pool-b", waits, &pace, &mut |_| {});
        assert_eq!(result.unwrap_err().exit_code(), 3);
    }

    #[test]
    fn time_without_contact_does_not_count_against_the_watch_s_end() {
        // A 1 ms window and 300 ms of grace, and the daemon away for 500 ms: when it is back,
        // a watch still running for one more look is not "stuck".
        let pace = Pace { patience: Duration::from_secs(5), ..FAST };
        let daemon = restarting(Duration::from_millis(500), |n| {
            if n < 1 { WatchState::Watching } else { WatchState::Passed }
        });
        let waits = Waits { watch: Some(Duration::from_millis(1)), ..Waits::default() };
        let (seen, result) = follow(&daemon, &switched(), "pool-b", waits, &pace, &mut |_| {});
        result.unwrap();
        assert_eq!(seen.watch.unwrap().state, WatchState::Passed);
    }

    #[test]
    fn follow_exits_1_when_the_watch_is_cancelled_superseded_or_stuck() {
        let cancelled = scripted(|_, _| json(&Some(watch_view(WatchState::Cancelled, 7))));
        let watch = Waits { watch: Some(Duration::from_secs(1)), ..Waits::default() };
        let e = run_follow(&cancelled, &switched(), watch).1.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "the watch of pool-b was cancelled: superseded by change #9");
        let superseded = scripted(|_, _| json(&Some(watch_view(WatchState::Watching, 9))));
        let e = run_follow(&superseded, &switched(), watch).1.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("switch #9"), "{e}");
        let gone = scripted(|_, _| json(&None::<WatchView>));
        assert_eq!(run_follow(&gone, &switched(), watch).1.unwrap_err().exit_code(), 1);
        // Still "watching" well after the window plus the grace.
        let stuck = scripted(|_, _| json(&Some(watch_view(WatchState::Watching, 7))));
        let short_watch = Waits { watch: ms_(1), ..Waits::default() };
        let e = run_follow(&stuck, &switched(), short_watch).1.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("still reports the watch of pool-b running"), "{e}");
    }

    #[test]
    fn follow_without_a_change_starts_no_watch() {
        let daemon = scripted(|path, _| panic!("unexpected GET {path}"));
        let same = SwitchOutcome { changed: false, history_id: None, ..switched() };
        let (seen, result, said) =
            run_follow(&daemon, &same, Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() });
        result.unwrap();
        assert_eq!(seen, Followed::default());
        assert_eq!(said, vec!["web: pool-b was already active, so no watch was started".to_owned()]);
        // ...but follows the earlier switch's watch when it still runs.
        let daemon = scripted(|_, n| {
            json(&Some(watch_view(if n < 2 { WatchState::Watching } else { WatchState::Passed }, 5)))
        });
        let same = SwitchOutcome { watch: Some(watch_view(WatchState::Watching, 5)), ..same };
        let (seen, result, _) =
            run_follow(&daemon, &same, Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() });
        result.unwrap();
        assert_eq!(seen.watch.unwrap().state, WatchState::Passed);
        // ...and when that watch ends in a rollback, says where the daemon went (the no-op
        // outcome's `before` is pool-b itself): pool-a, read from the service.
        let daemon = scripted(|path, n| match path {
            "/v1/services/web/watch" => {
                json(&Some(watch_view(if n < 2 { WatchState::Watching } else { WatchState::RolledBack }, 5)))
            }
            "/v1/services/web" => json(&service(100, 0, None)),
            other => panic!("unexpected GET {other}"),
        });
        let no_op = SwitchOutcome { before: lb_daemon::api::model::Active::Pool("pool-b".into()), ..same };
        let (_, result, said) =
            run_follow(&daemon, &no_op, Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), 9);
        assert!(e.to_string().contains("rolled back web from pool-b to pool-a automatically"), "{e}");
        assert_eq!(said.last().unwrap(), "watch of pool-b ended: lb-daemon rolled back to pool-a");
    }
}
