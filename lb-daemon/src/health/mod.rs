//! Active health checks of backends.
//!
//! A [`HealthMonitor`] runs one tokio task per [`HealthTarget`]. Each task probes its backend
//! every `interval` ([`HealthConfig`]), each probe bounded by `timeout`, so a slow or hanging
//! backend never delays the checks of the others:
//!
//! - TCP check (no `http_path`): the probe passes when a connection is established.
//! - HTTP check: after connecting, the probe sends
//!   `GET <http_path> HTTP/1.0` with `Host`, `User-Agent: lb-daemon-health` and
//!   `Connection: close` headers, and passes when the status line arrives in time and its code
//!   is in `http_status`.
//!
//! Backends start up, so starting the daemon never drops traffic before the first failures. An
//! up backend goes down after `fall` consecutive failed probes; a down backend comes back up
//! after `rise` consecutive passed ones. Each transition is logged and reported once to the
//! [`HealthSink`].
//!
//! A probe that fails because of the checker itself (out of file descriptors, memory, socket
//! buffers or local ports: EMFILE, ENFILE, ENOMEM, ENOBUFS, EADDRNOTAVAIL) says nothing about
//! the backend: the backend keeps its state, the error is logged (once per episode) and counted
//! (`lb_health_check_local_errors_total`).
//!
//! This file holds the monitor (tasks, rise/fall state, the sink); one probe and the
//! classification of its errors are in `probe`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::config::HealthConfig;

mod probe;
pub mod stats;

use probe::{ProbeError, probe};
use stats::{HealthStats, ProbeResult};

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    /// The data-plane backend index; one target per index.
    pub index: u32,
    /// Address the probes connect to.
    pub addr: SocketAddr,
    /// How to check it.
    pub check: HealthConfig,
}

/// Health of one backend as the monitor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendHealth {
    /// Whether the backend takes traffic (backends start up).
    pub up: bool,
    /// Consecutive passed probes up to the latest.
    pub consecutive_ok: u32,
    /// Consecutive failed probes up to the latest.
    pub consecutive_fail: u32,
    /// Why the most recent failed probe failed (kept after the backend recovers).
    pub last_error: Option<String>,
    /// Probes run so far.
    pub checks: u64,
}

impl BackendHealth {
    /// Up, nothing checked yet.
    fn new() -> Self {
        Self { up: true, consecutive_ok: 0, consecutive_fail: 0, last_error: None, checks: 0 }
    }

    /// Records one probe result; returns the new state when it changes.
    fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        self.checks += 1;
        match result {
            Ok(()) => {
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                self.consecutive_fail = 0;
                if !self.up && self.consecutive_ok >= rise.max(1) {
                    self.up = true;
                    return Some(true);
                }
            }
            Err(error) => {
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.consecutive_ok = 0;
                self.last_error = Some(error);
                if self.up && self.consecutive_fail >= fall.max(1) {
                    self.up = false;
                    return Some(false);
                }
            }
        }
        None
    }
}

/// Receives every up/down transition: `(index, up, reason)`, with the failure that took the
/// backend down as the reason (`None` when it comes back up). Called on a blocking-safe thread
/// (`spawn_blocking`); a target's next probe waits for the call to return.
pub type HealthSink = Arc<dyn Fn(u32, bool, Option<String>) + Send + Sync>;

/// Runs the health checks; dropping it stops them all.
pub struct HealthMonitor {
    shared: Arc<Shared>,
    handle: Handle,
}

struct Shared {
    state: Mutex<State>,
    sink: HealthSink,
    /// Probes that failed because of the checker itself (see the module doc).
    local_errors: AtomicU64,
    /// Probe results and durations, for `/metrics`.
    stats: HealthStats,
}

#[derive(Default)]
struct State {
    slots: BTreeMap<u32, Slot>,
    /// Tags each started target so a task that was replaced cannot write into its successor.
    next_generation: u64,
}

struct Slot {
    addr: SocketAddr,
    check: HealthConfig,
    health: BackendHealth,
    generation: u64,
    /// `None` for targets with checks disabled.
    task: Option<AbortHandle>,
}

/// What recording one probe result led to.
enum Recorded {
    /// The target was removed or replaced: its task ends.
    Gone,
    /// Same state as before.
    Unchanged,
    /// The backend went up (`true`) or down.
    Changed(bool),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(
        &self,
        index: u32,
        generation: u64,
        result: Result<(), String>,
        check: &HealthConfig,
    ) -> Recorded {
        let mut state = self.lock();
        match state.slots.get_mut(&index) {
            Some(slot) if slot.generation == generation => {
                match slot.health.record(result, check.rise, check.fall) {
                    Some(up) => Recorded::Changed(up),
                    None => Recorded::Unchanged,
                }
            }
            _ => Recorded::Gone,
        }
    }
}

impl HealthMonitor {
    /// Starts the monitor on the given tokio runtime handle; `sink` is called (from a
    /// blocking-safe context: use spawn_blocking) on every up/down transition.
    pub fn start(handle: tokio::runtime::Handle, sink: HealthSink) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                sink,
                local_errors: AtomicU64::new(0),
                stats: HealthStats::default(),
            }),
            handle,
        }
    }

    /// Probes that failed because of the checker itself, since start.
    pub fn local_errors(&self) -> u64 {
        self.shared.local_errors.load(Ordering::Relaxed)
    }

    /// Prometheus text of the checker's own failures.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP lb_health_check_local_errors_total Health probes that failed because of the daemon itself (out of descriptors, memory, ports); the backend kept its state."
        );
        let _ = writeln!(out, "# TYPE lb_health_check_local_errors_total counter");
        let _ = writeln!(out, "lb_health_check_local_errors_total {}", self.local_errors());
        self.shared.stats.render(out);
    }

    /// Replaces the set of targets. Targets whose (index, addr, check) are unchanged keep their
    /// state and task; removed ones stop; new ones start "up" (so starting the daemon never
    /// drops traffic before the first failures) and are probed at once. Of several targets with
    /// one index, the last counts.
    pub fn set_targets(&self, targets: Vec<HealthTarget>) {
        let mut wanted: BTreeMap<u32, HealthTarget> = targets.into_iter().map(|t| (t.index, t)).collect();
        let mut state = self.shared.lock();
        state.slots.retain(|index, slot| {
            let unchanged = wanted.get(index).is_some_and(|t| t.addr == slot.addr && t.check == slot.check);
            if unchanged {
                wanted.remove(index);
            } else {
                if let Some(task) = &slot.task {
                    task.abort();
                }
                tracing::debug!(backend = %slot.addr, index, "health: stopped checking");
            }
            unchanged
        });
        for (index, target) in wanted {
            let generation = state.next_generation;
            state.next_generation += 1;
            let task = target.check.enabled.then(|| {
                self.handle
                    .spawn(run_checks(Arc::downgrade(&self.shared), generation, target.clone()))
                    .abort_handle()
            });
            tracing::debug!(
                backend = %target.addr,
                index,
                enabled = target.check.enabled,
                "health: started checking"
            );
            state.slots.insert(
                index,
                Slot {
                    addr: target.addr,
                    check: target.check,
                    health: BackendHealth::new(),
                    generation,
                    task,
                },
            );
        }
    }

    /// Current health by backend index.
    pub fn snapshot(&self) -> BTreeMap<u32, BackendHealth> {
        self.shared.lock().slots.iter().map(|(index, slot)| (*index, slot.health.clone())).collect()
    }

    /// Whether a backend is currently up (true for unknown indexes).
    pub fn is_up(&self, index: u32) -> bool {
        self.shared.lock().slots.get(&index).is_none_or(|slot| slot.health.up)
    }
}

impl fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthMonitor").field("health", &self.snapshot()).finish_non_exhaustive()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for slot in self.shared.lock().slots.values() {
            if let Some(task) = &slot.task {
                task.abort();
            }
        }
    }
}

/// The task of one target: probe every interval, record, report transitions.
async fn run_checks(shared: Weak<Shared>, generation: u64, target: HealthTarget) {
    let HealthTarget { index, addr, check } = target;
    let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Consecutive probes that failed because of the checker itself.
    let mut local_streak = 0u64;
    loop {
        // The first tick completes at once: new targets are probed immediately.
        ticker.tick().await;
        let started = std::time::Instant::now();
        let outcome = probe(addr, &check).await;
        if let Some(strong) = shared.upgrade() {
            let result = match &outcome {
                Ok(()) => ProbeResult::Pass,
                Err(ProbeError::Backend(_)) => ProbeResult::Fail,
                Err(ProbeError::Local(_)) => ProbeResult::LocalError,
            };
            strong.stats.record(result, started.elapsed());
        }
        let result = match outcome {
            Err(ProbeError::Local(error)) => {
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                strong.local_errors.fetch_add(1, Ordering::Relaxed);
                if local_streak == 0 {
                    tracing::error!(
                        backend = %addr,
                        index,
                        error,
                        "health: cannot probe backend {addr}: {error}; this is the daemon's own failure, the backend keeps its state"
                    );
                }
                local_streak += 1;
                continue;
            }
            Err(ProbeError::Backend(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        if local_streak > 0 {
            tracing::warn!(backend = %addr, index, failed = local_streak, "health: probing works again");
            local_streak = 0;
        }
        let reason = result.as_ref().err().cloned();
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let up = match strong.record(index, generation, result, &check) {
            Recorded::Gone => return,
            Recorded::Unchanged => continue,
            Recorded::Changed(up) => up,
        };
        let sink = strong.sink.clone();
        drop(strong);
        if up {
            tracing::info!(
                backend = %addr,
                index,
                "health: backend {addr} (index {index}) is up after {} passed check(s)",
                check.rise
            );
        } else {
            let why = reason.as_deref().unwrap_or("check failed");
            tracing::warn!(
                backend = %addr,
                index,
                reason = why,
                "health: backend {addr} (index {index}) is down after {} failed check(s): {why}",
                check.fall
            );
        }
        let reason = if up { None } else { reason };
        if let Err(e) = tokio::task::spawn_blocking(move || sink(index, up, reason)).await {
            tracing::error!(backend = %addr, index, "health: the transition sink failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::sync::mpsc;

    /// Bound of every wait in these tests.
    const LIMIT: Duration = Duration::from_secs(10);

    /// A transition as the sink saw it, with the backend's health at that moment.
    type Event = (u32, bool, Option<String>, Option<BackendHealth>);

    fn tcp_check(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise,
            fall,
            ..HealthConfig::default()
        }
    }

    fn http_check(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> HealthConfig {
        HealthConfig { http_path: Some("/healthz".into()), ..tcp_check(interval_ms, timeout_ms, rise, fall) }
    }

    fn target(index: u32, addr: SocketAddr, check: HealthConfig) -> HealthTarget {
        HealthTarget { index, addr, check }
    }

    /// A monitor whose sink sends every transition, with the backend's health as recorded when
    /// the sink runs (its task waits for the sink, so that is the health of the transition).
    fn monitor() -> (Arc<HealthMonitor>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cell: Arc<OnceLock<Weak<HealthMonitor>>> = Arc::new(OnceLock::new());
        let seen = cell.clone();
        let sink: HealthSink = Arc::new(move |index, up, reason| {
            let health = seen.get().and_then(Weak::upgrade).and_then(|m| m.snapshot().get(&index).cloned());
            let _ = tx.send((index, up, reason, health));
        });
        let monitor = Arc::new(HealthMonitor::start(Handle::current(), sink));
        cell.set(Arc::downgrade(&monitor)).unwrap();
        (monitor, rx)
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(LIMIT, rx.recv()).await.expect("no transition in time").expect("sink dropped")
    }

    /// Polls `cond` every 5 ms; panics after [`LIMIT`].
    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < LIMIT, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `lb_health_checks_total{result="<result>"}` of the monitor's metrics.
    fn checks_total(m: &HealthMonitor, result: &str) -> u64 {
        let mut text = String::new();
        m.render_metrics(&mut text);
        let prefix = format!("lb_health_checks_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).expect(&prefix).parse().unwrap()
    }

    fn health(m: &HealthMonitor, index: u32) -> BackendHealth {
        m.snapshot()[&index].clone()
    }

    /// A listener that accepts and closes connections, counting them.
    async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, serve_counting(listener))
    }

    fn serve_counting(listener: TcpListener) -> Arc<AtomicUsize> {
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        count
    }

    /// An address that refuses connections: a socket bound to it that does not listen. Keeping
    /// the socket keeps the port from other tests; `listen` on it opens the port.
    fn closed_addr() -> (SocketAddr, TcpSocket) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (socket.local_addr().unwrap(), socket)
    }

    /// An HTTP server answering every request with `status`; keeps the requests it got.
    async fn http_server(status: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 512];
                    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 4096 {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
                    let answer = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, requests)
    }

    /// A server that accepts connections and never answers (it keeps them open).
    async fn hanging_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        addr
    }

    #[test]
    fn state_machine_counts_rise_and_fall() {
        let mut h = BackendHealth::new();
        assert!(h.up);
        let fail = || Err("refused".to_owned());
        // fall = 3: two failures keep it up, the third takes it down.
        assert_eq!(h.record(fail(), 2, 3), None);
        assert_eq!(h.record(fail(), 2, 3), None);
        // A success in between starts the count again.
        assert_eq!(h.record(Ok(()), 2, 3), None);
        assert_eq!(h.record(fail(), 2, 3), None);
        assert_eq!(h.record(fail(), 2, 3), None);
        assert_eq!(h.record(fail(), 2, 3), Some(false));
        assert_eq!(h.record(fail(), 2, 3), None);
        assert_eq!(
            h,
            BackendHealth {
                up: false,
                consecutive_ok: 0,
                consecutive_fail: 4,
                last_error: Some("refused".into()),
                checks: 7,
            }
        );
        // rise = 2.
        assert_eq!(h.record(Ok(()), 2, 3), None);
        assert_eq!(h.record(fail(), 2, 3), None);
        assert_eq!(h.record(Ok(()), 2, 3), None);
        assert_eq!(h.record(Ok(()), 2, 3), Some(true));
        assert_eq!(h.record(Ok(()), 2, 3), None);
        assert!(h.up && h.consecutive_ok == 3 && h.consecutive_fail == 0 && h.checks == 12);
        assert_eq!(h.last_error.as_deref(), Some("refused"));
        // rise and fall of 1.
        assert_eq!(h.record(fail(), 1, 1), Some(false));
        assert_eq!(h.record(Ok(()), 1, 1), Some(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listening_backend_stays_up() {
        let (addr, accepted) = counting_listener().await;
        let (m, mut rx) = monitor();
        m.set_targets(vec![target(1, addr, tcp_check(50, 50, 1, 1))]);
        assert!(m.is_up(1));
        wait_until("4 checks", || health(&m, 1).checks >= 4).await;
        let h = health(&m, 1);
        assert!(h.up, "{h:?}");
        assert_eq!((h.consecutive_fail, h.last_error.clone()), (0, None));
        assert!(h.consecutive_ok as u64 >= 4 && h.consecutive_ok as u64 <= h.checks);
        wait_until("4 connections", || accepted.load(Ordering::SeqCst) >= 4).await;
        assert!(rx.try_recv().is_err(), "no transition expected");
        assert!(m.is_up(1) && m.is_up(99));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_port_goes_down_then_comes_back() {
        let (addr, socket) = closed_addr();
        let (m, mut rx) = monitor();
        m.set_targets(vec![target(7, addr, tcp_check(50, 50, 3, 2))]);
        let (index, up, reason, h) = next_event(&mut rx).await;
        assert_eq!((index, up), (7, false));
        let reason = reason.unwrap();
        assert!(reason.starts_with("connect: "), "{reason}");
        // Down exactly at the `fall`th failure.
        let h = h.unwrap();
        assert_eq!((h.up, h.checks, h.consecutive_fail), (false, 2, 2), "{h:?}");
        assert_eq!(h.last_error.as_deref(), Some(reason.as_str()));
        assert!(!m.is_up(7));
        // Still down and failing, without another transition.
        wait_until("more failures", || health(&m, 7).consecutive_fail >= 4).await;
        assert!(rx.try_recv().is_err(), "one transition expected");
        // Every probe is counted (before it is recorded), with its duration.
        assert!(checks_total(&m, "fail") >= 4 && checks_total(&m, "pass") == 0);

        // A listener appears on that port: up after `rise` passed checks.
        let accepted = serve_counting(socket.listen(64).unwrap());
        let (index, up, reason, h) = next_event(&mut rx).await;
        assert_eq!((index, up, reason), (7, true, None));
        let h = h.unwrap();
        assert!(h.up && h.consecutive_ok == 3 && h.consecutive_fail == 0, "{h:?}");
        assert!(m.is_up(7));
        wait_until("3 connections", || accepted.load(Ordering::SeqCst) >= 3).await;
        assert!(checks_total(&m, "pass") >= 3);
        let mut text = String::new();
        m.render_metrics(&mut text);
        let count =
            |line: &str| -> u64 { text.lines().find_map(|l| l.strip_prefix(line)).unwrap().parse().unwrap() };
        let total = count("lb_health_check_duration_seconds_count ");
        let results = count("lb_health_checks_total{result=\"pass\"} ")
            + count("lb_health_checks_total{result=\"fail\"} ")
            + count("lb_health_checks_total{result=\"local_error\"} ");
        // (One probe may be between its two increments.)
        assert!(total.abs_diff(results) <= 1 && total >= 7, "{text}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "one transition expected");
        assert!(health(&m, 7).up);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_status_decides() {
        let (bad, _) = http_server("503 Service Unavailable").await;
        let (good, requests) = http_server("200 OK").await;
        let (m, mut rx) = monitor();
        let accept_503 = HealthConfig { http_status: (500, 503), ..http_check(50, 50, 1, 2) };
        m.set_targets(vec![
            target(1, bad, http_check(50, 50, 1, 2)),
            target(2, good, http_check(50, 50, 1, 2)),
            target(3, bad, accept_503),
        ]);
        let (index, up, reason, h) = next_event(&mut rx).await;
        assert_eq!((index, up), (1, false));
        assert_eq!(reason.as_deref(), Some("HTTP status 503 (expected 200..=299)"));
        assert_eq!(h.unwrap().checks, 2);
        wait_until("checks of 2 and 3", || {
            let s = m.snapshot();
            s[&2].checks >= 3 && s[&3].checks >= 3
        })
        .await;
        let s = m.snapshot();
        assert!(!s[&1].up);
        for i in [2, 3] {
            assert!(s[&i].up && s[&i].consecutive_fail == 0 && s[&i].last_error.is_none());
        }
        assert!(rx.try_recv().is_err(), "one transition expected");
        let first = requests.lock().unwrap()[0].clone();
        assert_eq!(
            first,
            format!(
                "GET /healthz HTTP/1.0\r\nHost: {good}\r\nUser-Agent: lb-daemon-health\r\n\
                 Connection: close\r\n\r\n"
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hanging_backend_times_out_without_delaying_others() {
        let hanging = hanging_server().await;
        let (fine, _) = counting_listener().await;
        let (m, mut rx) = monitor();
        let start = Instant::now();
        m.set_targets(vec![
            target(1, hanging, http_check(500, 400, 1, 1)),
            target(2, fine, tcp_check(50, 50, 1, 1)),
        ]);
        // Target 2 is checked again and again while target 1's first probe hangs.
        wait_until("3 checks of target 2", || health(&m, 2).checks >= 3).await;
        if start.elapsed() < Duration::from_millis(350) {
            assert_eq!(health(&m, 1).checks, 0, "target 1's probe should still hang");
        }
        let (index, up, reason, _) = next_event(&mut rx).await;
        let elapsed = start.elapsed();
        assert_eq!((index, up), (1, false));
        assert_eq!(reason.as_deref(), Some("timed out after 400ms waiting for the HTTP status line"));
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        let fine_checks = health(&m, 2).checks;
        assert!(fine_checks >= 5, "target 2 was held up: {fine_checks} checks in {elapsed:?}");
        assert!(health(&m, 2).up);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_targets_keeps_unchanged_and_stops_removed() {
        let (closed, _socket) = closed_addr();
        let (removed, removed_count) = counting_listener().await;
        let (added, added_count) = counting_listener().await;
        let (m, mut rx) = monitor();
        let a = target(1, closed, tcp_check(50, 50, 1, 1));
        m.set_targets(vec![a.clone(), target(2, removed, tcp_check(50, 50, 1, 1))]);
        let (index, up, _, _) = next_event(&mut rx).await;
        assert_eq!((index, up), (1, false));
        wait_until("2 checks of target 2", || health(&m, 2).checks >= 2).await;
        let before = health(&m, 1);

        // Keep 1, drop 2, add 3 (with a long interval: its first probe comes at once).
        m.set_targets(vec![a.clone(), target(3, added, tcp_check(60_000, 500, 1, 1))]);
        let kept = health(&m, 1);
        assert!(!kept.up && kept.checks >= before.checks, "{kept:?}");
        assert!(!m.is_up(1));
        assert!(!m.snapshot().contains_key(&2));
        assert!(m.is_up(2));
        wait_until("the first probe of target 3", || added_count.load(Ordering::SeqCst) == 1).await;
        wait_until("target 3 checked", || health(&m, 3).checks == 1).await;
        assert!(health(&m, 3).up);
        wait_until("target 1 still checked", || health(&m, 1).checks >= kept.checks + 2).await;
        // Target 2's task is gone: no more connections.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = removed_count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(removed_count.load(Ordering::SeqCst), n);
        assert!(rx.try_recv().is_err(), "no transition expected");

        // Changing target 1's check restarts it fresh: up, then down again.
        let changed = target(1, closed, tcp_check(50, 50, 1, 2));
        m.set_targets(vec![changed, target(3, added, tcp_check(60_000, 500, 1, 1))]);
        assert!(m.is_up(1));
        let (index, up, _, h) = next_event(&mut rx).await;
        assert_eq!((index, up), (1, false));
        assert_eq!(h.unwrap().checks, 2);
        assert_eq!(added_count.load(Ordering::SeqCst), 1, "target 3 kept its task");
        assert_eq!(health(&m, 3).checks, 1);

        m.set_targets(Vec::new());
        assert!(m.snapshot().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disabled_target_is_up_and_never_probed() {
        let (closed, _socket) = closed_addr();
        let (listening, accepted) = counting_listener().await;
        let (m, mut rx) = monitor();
        let off = HealthConfig { enabled: false, ..tcp_check(50, 50, 1, 1) };
        m.set_targets(vec![target(1, closed, off.clone()), target(2, listening, off)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(m.snapshot().len(), 2);
        for i in [1, 2] {
            assert_eq!(health(&m, i), BackendHealth::new());
            assert!(m.is_up(i));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_monitor_stops_checks() {
        let (addr, accepted) = counting_listener().await;
        let (m, _rx) = monitor();
        m.set_targets(vec![target(1, addr, tcp_check(50, 50, 1, 1))]);
        wait_until("2 connections", || accepted.load(Ordering::SeqCst) >= 2).await;
        drop(m);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = accepted.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}
