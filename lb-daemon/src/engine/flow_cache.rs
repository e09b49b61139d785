//! The flow-table scan behind `/metrics`, cached: a scan of a 1M-entry table takes ~0.3 s, so
//! scrapes (several Prometheus servers, a dashboard refreshing) reuse one that is at most
//! [`FLOW_SCAN_MAX_AGE`] old instead of each walking the table. `drain-status` and
//! `--wait-drained` never use it: they need a count taken after the switch.

use super::drain::FlowCounts;
use crate::api::model::ApiError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Oldest scan `/metrics` reports; Prometheus' usual 15 s scrape interval sees a new one each
/// time.
pub const FLOW_SCAN_MAX_AGE: Duration = Duration::from_secs(5);

/// The last scan and when it finished.
#[derive(Default)]
pub struct FlowScanCache {
    last: Mutex<Option<(Instant, Arc<FlowCounts>)>>,
}

impl FlowScanCache {
    /// The last scan when it is younger than [`FLOW_SCAN_MAX_AGE`] at `now`, else a new one by
    /// `scan`, with its age. Concurrent callers wait for one scan rather than running their
    /// own. A failed scan is not cached.
    pub fn get(
        &self,
        now: Instant,
        scan: impl FnOnce() -> Result<FlowCounts, ApiError>,
    ) -> Result<(Arc<FlowCounts>, Duration), ApiError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, counts)) = last.as_ref() {
            let age = now.saturating_duration_since(*at);
            if age < FLOW_SCAN_MAX_AGE {
                return Ok((counts.clone(), age));
            }
        }
        let counts = Arc::new(scan()?);
        *last = Some((now, counts.clone()));
        Ok((counts, Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn scans_at_most_once_per_max_age() {
        let cache = FlowScanCache::default();
        let scans = Cell::new(0);
        let scan = || {
            scans.set(scans.get() + 1);
            Ok(FlowCounts::default())
        };
        let t0 = Instant::now();
        let (_, age) = cache.get(t0, scan).unwrap();
        assert_eq!((scans.get(), age), (1, Duration::ZERO));
        let (_, age) = cache.get(t0 + Duration::from_secs(3), scan).unwrap();
        assert_eq!((scans.get(), age), (1, Duration::from_secs(3)));
        let (_, age) = cache.get(t0 + FLOW_SCAN_MAX_AGE, scan).unwrap();
        assert_eq!((scans.get(), age), (2, Duration::ZERO));
        // A failure is reported and not cached: the next call scans again.
        let t1 = t0 + FLOW_SCAN_MAX_AGE * 3;
        let failed = cache.get(t1, || Err(ApiError::internal("walk failed")));
        assert_eq!(failed.unwrap_err().message, "walk failed");
        cache.get(t1, scan).unwrap();
        assert_eq!(scans.get(), 3);
    }
}
