//! The daemon process's own resources for `/metrics`, read from `/proc/self`: open file
//! descriptors and their limit, resident and virtual memory, CPU time and start time. The
//! names are Prometheus' conventional `process_*` ones, so the usual dashboards and alerts (a
//! descriptor leak, a restart loop) work unchanged.

use std::fmt::Write;

/// One reading of the process's resources.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE` (None: unlimited).
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/<pid>/stat` this module uses, converted with the host's clock tick rate,
/// page size and boot time (seconds since the epoch).
fn parse_stat(text: &str, ticks_per_s: f64, page_size: u64, boot_time: u64) -> Result<ProcessStats, String> {
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .ok_or_else(|| format!("field {n} missing"))?
            .parse::<u64>()
            .map_err(|e| format!("field {n}: {e}"))
    };
    let (utime, stime, start, vsize, rss) = (field(14)?, field(15)?, field(22)?, field(23)?, field(24)?);
    Ok(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_s,
        resident_bytes: rss * page_size,
        virtual_bytes: vsize,
        start_time_seconds: boot_time as f64 + start as f64 / ticks_per_s,
        open_fds: 0,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: when the host booted, in seconds since the epoch.
fn parse_boot_time(proc_stat: &str) -> Result<u64, String> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .ok_or("no btime line")?
        .trim()
        .parse()
        .map_err(|e| format!("btime: {e}"))
}

/// Reads this process's resources.
pub fn read() -> Result<ProcessStats, String> {
    use nix::unistd::{SysconfVar, sysconf};
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).ok_or("no CLK_TCK")?;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().filter(|p| *p > 0).ok_or("no PAGE_SIZE")?;
    let boot = parse_boot_time(&read("/proc/stat")?)?;
    let mut stats = parse_stat(&read("/proc/self/stat")?, ticks as f64, page as u64, boot)?;
    stats.open_fds =
        std::fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?.count() as u64;
    stats.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
        .filter(|soft| *soft != nix::sys::resource::RLIM_INFINITY);
    Ok(stats)
}

/// Appends the `process_*` metrics; when `/proc` cannot be read, only a comment saying why (a
/// scrape must not fail because of it).
pub fn render(out: &mut String) {
    let stats = match read() {
        Ok(stats) => stats,
        Err(e) => {
            let _ = writeln!(out, "# process metrics unavailable: {}", e.replace('\n', " "));
            return;
        }
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the daemon, in seconds.",
        stats.cpu_seconds.to_string(),
    );
    metric("process_open_fds", "gauge", "Open file descriptors of the daemon.", stats.open_fds.to_string());
    if let Some(max) = stats.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "The daemon's open-file limit (soft RLIMIT_NOFILE).",
            max.to_string(),
        );
    }
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon, in bytes.",
        stats.resident_bytes.to_string(),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory of the daemon, in bytes.",
        stats.virtual_bytes.to_string(),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the daemon, in seconds since the Unix epoch.",
        stats.start_time_seconds.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_tricky_command_name() {
        // Fields 3..=24 of proc(5); comm holds a space and a ')'.
        let line = "4242 (lb-d) aemon) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 \
                    12000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 2560 * 4096);
        assert_eq!(s.virtual_bytes, 104_857_600);
        assert_eq!(s.start_time_seconds, 1_700_000_120.0);
        assert!(parse_stat("4242 (x) S 1 2", 100.0, 4096, 0).unwrap_err().contains("field 14 missing"));
        assert!(parse_stat("garbage", 100.0, 4096, 0).is_err());
        assert_eq!(parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"), Ok(1_700_000_000));
        assert!(parse_boot_time("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn this_process_reads_and_renders() {
        let s = read().unwrap();
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > 1_600_000_000.0 && s.start_time_seconds <= now + 1.0, "{s:?}");
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(out.lines().any(|l| l.starts_with(name)), "{name} missing:\n{out}");
        }
    }
}
