//! Value parsers of the command line: one duration parser behind every duration flag, service
//! names, `--expect-active` and the `POOL=PCT` pairs of `split`. Each returns the message clap
//! shows with a usage error (exit 2).

use std::time::Duration;

use lb_daemon::api::model::{PoolWeight, SplitRequest};

/// Longest accepted duration for every duration flag (the daemon's watch limit too).
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Shortest `--interval` of `top`.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why a text is not an accepted duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadDuration {
    /// Not a number nor humantime.
    Syntax,
    /// Zero, negative, or more than [`MAX_DURATION`].
    Range,
}

/// The one duration parser: plain seconds (`90`, `0.5`) or humantime (`500ms`, `60s`, `2m`,
/// `1h30m`); more than 0, at most 24 h.
fn parse(s: &str) -> Result<Duration, BadDuration> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= MAX_DURATION.as_secs_f64() => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(BadDuration::Range),
        Err(_) => humantime::parse_duration(s).map_err(|_| BadDuration::Syntax)?,
    };
    if d.is_zero() || d > MAX_DURATION { Err(BadDuration::Range) } else { Ok(d) }
}

/// `--wait`, `--wait-drained`, `--watch`, `--retry-for`.
pub fn duration(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| match e {
        BadDuration::Syntax => {
            format!("{:?} is not a duration: expected e.g. 60s, 2m, 500ms or plain seconds", s.trim())
        }
        BadDuration::Range => "must be more than 0 and at most 24h".into(),
    })
}

/// `--timeout`: documented in seconds, humantime accepted too.
pub fn timeout(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| match e {
        BadDuration::Syntax => "expected seconds, e.g. 10 or 0.5".into(),
        BadDuration::Range => "must be more than 0 and at most 86400 seconds".into(),
    })
}

/// `top --interval`: a [`duration`] of at least 100ms.
pub fn interval(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < MIN_INTERVAL { Err("must be at least 100ms".into()) } else { Ok(d) }
}

/// The `watch_s` of a `--watch` duration: whole seconds, rounded up.
pub fn watch_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `--service`: the characters the daemon accepts in a service name.
pub fn service_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Ok(s.to_owned())
    } else {
        Err("service names are made of a-z, 0-9, '.', '_' and '-'".into())
    }
}

/// `--expect-active`: a pool or the text form of a split, not empty.
pub fn expect_active(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("expected the active pool (or split, e.g. \"split pool-a=90 pool-b=10\")".into())
    } else {
        Ok(s.to_owned())
    }
}

/// `split`'s arguments (`POOL=PCT`, a trailing `%` allowed): at least two distinct pools,
/// each 1-100, summing to 100.
pub fn split(args: &[String]) -> Result<SplitRequest, String> {
    let mut weights: Vec<PoolWeight> = Vec::with_capacity(args.len());
    for arg in args {
        let (pool, pct) =
            arg.split_once('=').ok_or_else(|| format!("{arg:?} is not POOL=PCT (e.g. pool-a=90)"))?;
        let pool = pool.trim();
        if pool.is_empty() {
            return Err(format!("{arg:?}: the pool name is missing"));
        }
        let pct = pct.trim();
        let weight: u32 = pct
            .strip_suffix('%')
            .unwrap_or(pct)
            .parse()
            .ok()
            .filter(|w| (1..=100).contains(w))
            .ok_or_else(|| format!("{arg:?}: the percentage must be a whole number from 1 to 100"))?;
        if weights.iter().any(|w| w.pool == pool) {
            return Err(format!("pool {pool} is given twice"));
        }
        weights.push(PoolWeight { pool: pool.to_owned(), weight });
    }
    if weights.len() < 2 {
        return Err("a split needs at least two pools (for one pool, use `lbctl switch POOL`)".into());
    }
    let sum: u32 = weights.iter().map(|w| w.weight).sum();
    if sum != 100 {
        return Err(format!("the percentages add up to {sum}, not 100"));
    }
    Ok(SplitRequest { weights, ..SplitRequest::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn durations() {
        let ok = |s: &str| duration(s).unwrap();
        assert_eq!(ok("60s"), Duration::from_secs(60));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 0.5 "), Duration::from_millis(500));
        assert_eq!(ok("24h"), Duration::from_secs(86_400));
        for bad in ["", "0", "0s", "-1", "-5s", "abc", "5 parsecs", "NaN", "inf", "25h", "86401"] {
            assert!(duration(bad).is_err(), "{bad:?}");
            assert!(timeout(bad).is_err(), "{bad:?}");
        }
        assert!(duration("ten").unwrap_err().contains("60s"));
        assert_eq!(timeout("ten").unwrap_err(), "expected seconds, e.g. 10 or 0.5");
        assert_eq!(timeout("0").unwrap_err(), "must be more than 0 and at most 86400 seconds");
        assert_eq!(timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(timeout("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(interval("50ms").unwrap_err(), "must be at least 100ms");
        assert_eq!(interval("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(watch_secs(Duration::from_millis(500)), 1);
        assert_eq!(watch_secs(Duration::from_secs(60)), 60);
        assert_eq!(watch_secs(Duration::from_millis(60_001)), 61);
    }

    #[test]
    fn split_arguments() {
        let req = split(&args(&["pool-a=90", "pool-b=10%"])).unwrap();
        assert_eq!(
            req.weights,
            vec![
                PoolWeight { pool: "pool-a".into(), weight: 90 },
                PoolWeight { pool: "pool-b".into(), weight: 10 }
            ]
        );
        assert!(!req.force && !req.dry_run && req.expect_active.is_none());
        let three = split(&args(&["a=50", "b=25", "c=25"])).unwrap();
        assert_eq!(three.weights.len(), 3);
        for bad in [
            &["pool-a=90"][..],
            &["pool-a=90", "pool-b"],
            &["pool-a=90", "=10"],
            &["pool-a=90", "pool-b=ten"],
            &["pool-a=100", "pool-b=0"],
            &["pool-a=90", "pool-b=20"],
            &["pool-a=50", "pool-a=50"],
            &["pool-a=-10", "pool-b=110"],
            &[],
        ] {
            assert!(split(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(service_name("web-1.a_b").is_ok());
        assert!(service_name("Web Site").is_err() && service_name("").is_err());
        assert_eq!(expect_active(" pool-a ").unwrap(), "pool-a");
        assert!(expect_active("  ").is_err());
    }
}
