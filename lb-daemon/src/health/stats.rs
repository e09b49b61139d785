//! Counts of the health probes for `/metrics`: how many passed, failed (the backend's fault) or
//! could not be made (the checker's own, see the parent module), and how long they took (a
//! histogram: slow checks warn of a backend about to fail its timeout).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the duration buckets, in seconds (checks time out at 500 ms by default).
pub const DURATION_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// The backend passed.
    Pass,
    /// The backend failed (counts towards `fall`).
    Fail,
    /// The checker could not probe (its own resources); the backend kept its state.
    LocalError,
}

impl ProbeResult {
    const ALL: [ProbeResult; 3] = [ProbeResult::Pass, ProbeResult::Fail, ProbeResult::LocalError];

    /// The `result` label.
    pub fn name(self) -> &'static str {
        match self {
            ProbeResult::Pass => "pass",
            ProbeResult::Fail => "fail",
            ProbeResult::LocalError => "local_error",
        }
    }
}

/// Probe counters and the duration histogram, updated lock-free by every check task.
#[derive(Default)]
pub struct HealthStats {
    results: [AtomicU64; 3],
    /// Non-cumulative bucket counts; the last is the overflow (`+Inf` only).
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl HealthStats {
    /// Records one probe.
    pub fn record(&self, result: ProbeResult, took: Duration) {
        self.results[result as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Probes that ended with `result`.
    pub fn count(&self, result: ProbeResult) -> u64 {
        self.results[result as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text: `lb_health_checks_total{result}` and the
    /// `lb_health_check_duration_seconds` histogram.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lb_health_checks_total Health probes of backends, by result (local_error: the daemon could not probe, the backend kept its state)."
        );
        let _ = writeln!(out, "# TYPE lb_health_checks_total counter");
        for r in ProbeResult::ALL {
            let _ = writeln!(out, "lb_health_checks_total{{result=\"{}\"}} {}", r.name(), self.count(r));
        }
        let _ = writeln!(
            out,
            "# HELP lb_health_check_duration_seconds How long health probes took (connect, and the HTTP status line for HTTP checks)."
        );
        let _ = writeln!(out, "# TYPE lb_health_check_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lb_health_check_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "lb_health_check_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "lb_health_check_duration_seconds_sum {sum}");
        let _ = writeln!(out, "lb_health_check_duration_seconds_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cumulative_buckets() {
        let s = HealthStats::default();
        s.record(ProbeResult::Pass, Duration::from_micros(800));
        s.record(ProbeResult::Pass, Duration::from_millis(10));
        s.record(ProbeResult::Fail, Duration::from_millis(500));
        s.record(ProbeResult::LocalError, Duration::from_secs(3));
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "lb_health_checks_total{result=\"pass\"} 2",
            "lb_health_checks_total{result=\"fail\"} 1",
            "lb_health_checks_total{result=\"local_error\"} 1",
            "lb_health_check_duration_seconds_bucket{le=\"0.001\"} 1",
            "lb_health_check_duration_seconds_bucket{le=\"0.005\"} 1",
            "lb_health_check_duration_seconds_bucket{le=\"0.01\"} 2",
            "lb_health_check_duration_seconds_bucket{le=\"0.5\"} 3",
            "lb_health_check_duration_seconds_bucket{le=\"2.5\"} 3",
            "lb_health_check_duration_seconds_bucket{le=\"+Inf\"} 4",
            "lb_health_check_duration_seconds_sum 3.5108",
            "lb_health_check_duration_seconds_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
