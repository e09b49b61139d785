//! Bounds on API connections ([`ApiLimits`]): the per-connection watchdog (authentication
//! deadline, idle timeout) and what the bounds did, counted for `/metrics`.

use super::*;

/// Bounds on API connections, so that clients (idle, slow or hostile) cannot take the daemon's
/// file descriptors away from its health checks and the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once per listener (Unix, TCP and metrics each); more are closed
    /// at once.
    pub max_connections: usize,
    /// A TCP connection must send a request with the right token within this time.
    pub auth_deadline: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            auth_deadline: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// What the connection bounds did, for `/metrics`.
#[derive(Default)]
pub(super) struct ConnStats {
    /// Closed at once because the listener was full (Unix, TCP, metrics).
    pub(super) refused: [AtomicU64; 3],
    /// TCP connections closed for sending no authenticated request in time.
    pub(super) unauthenticated: AtomicU64,
    /// Connections closed after `idle_timeout` without a request.
    pub(super) idle: AtomicU64,
    /// Requests whose body did not arrive in time.
    pub(super) body_timeouts: AtomicU64,
    /// When a refusal was last logged (refusals are logged at most once a second).
    pub(super) last_refusal_log: Mutex<Option<Instant>>,
}

pub(super) const LISTENERS: [&str; 3] = ["unix", "tcp", "metrics"];

impl Shared {
    /// Prometheus text of the connection bounds.
    pub(super) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let _ = writeln!(out, "# HELP lb_api_connections API connections being served, by listener.");
        let _ = writeln!(out, "# TYPE lb_api_connections gauge");
        for (i, name) in LISTENERS.iter().enumerate() {
            let open = self.limits.max_connections.saturating_sub(self.slots[i].available_permits());
            let _ = writeln!(out, "lb_api_connections{{listener=\"{name}\"}} {open}");
        }
        let _ = writeln!(
            out,
            "# HELP lb_api_connections_closed_total API connections the daemon closed to protect itself, by listener and reason."
        );
        let _ = writeln!(out, "# TYPE lb_api_connections_closed_total counter");
        for (i, name) in LISTENERS.iter().enumerate() {
            let n = s.refused[i].load(Ordering::Relaxed);
            let _ =
                writeln!(out, "lb_api_connections_closed_total{{listener=\"{name}\",reason=\"limit\"}} {n}");
        }
        let n = s.unauthenticated.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lb_api_connections_closed_total{{listener=\"tcp\",reason=\"unauthenticated\"}} {n}"
        );
        let n = s.idle.load(Ordering::Relaxed);
        let _ = writeln!(out, "lb_api_connections_closed_total{{listener=\"any\",reason=\"idle\"}} {n}");
        let n = s.body_timeouts.load(Ordering::Relaxed);
        let _ =
            writeln!(out, "lb_api_connections_closed_total{{listener=\"any\",reason=\"body_timeout\"}} {n}");
    }

    /// Logs a refused connection, at most once a second.
    pub(super) fn log_refusal(&self, listener: usize) {
        let mut last = self.stats.last_refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                listener = LISTENERS[listener],
                max = self.limits.max_connections,
                refused_total = self.stats.refused[listener].load(Ordering::Relaxed),
                "API connection refused: the listener serves {} connections already",
                self.limits.max_connections
            );
        }
    }
}

/// What a connection's watchdog needs to know about it.
pub(super) struct ConnActivity {
    pub(super) accepted: Instant,
    /// A request passed authentication (always true on the Unix socket).
    pub(super) authenticated: AtomicBool,
    /// Requests being handled.
    pub(super) busy: AtomicUsize,
    /// When the last request ended (or the connection was accepted).
    pub(super) last: Mutex<Instant>,
}

impl ConnActivity {
    pub(super) fn new(tcp: bool) -> Self {
        let now = Instant::now();
        Self {
            accepted: now,
            authenticated: AtomicBool::new(!tcp),
            busy: AtomicUsize::new(0),
            last: Mutex::new(now),
        }
    }
}

/// Resolves when the connection must be closed: unauthenticated past the deadline, or idle
/// (no request in progress) for `idle_timeout`. Returns why.
pub(super) async fn watchdog(activity: Arc<ConnActivity>, limits: ApiLimits) -> &'static str {
    loop {
        let now = Instant::now();
        if !activity.authenticated.load(Ordering::Relaxed) {
            let deadline = activity.accepted + limits.auth_deadline;
            if now >= deadline {
                return "unauthenticated";
            }
            tokio::time::sleep_until(deadline.into()).await;
            continue;
        }
        let next = if activity.busy.load(Ordering::Relaxed) > 0 {
            now + limits.idle_timeout
        } else {
            let idle_until = *activity.last.lock().unwrap_or_else(|e| e.into_inner()) + limits.idle_timeout;
            if now >= idle_until {
                return "idle";
            }
            idle_until
        };
        tokio::time::sleep_until(next.into()).await;
    }
}
