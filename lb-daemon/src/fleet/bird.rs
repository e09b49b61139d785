//! BIRD 2 as the BGP speaker: the include file the daemon renders, and `birdc configure`.
//!
//! The rendered file defines two static protocols, one per address family, each holding one
//! `blackhole` route per VIP address to announce (/32 or /128):
//!
//! ```text
//! # Written by lb-daemon (instance edge1); do not edit: it is replaced on every change.
//! protocol static lb_vips4 {
//!     ipv4;
//!     route 192.0.2.10/32 blackhole;
//! }
//! protocol static lb_vips6 {
//!     ipv6;
//! }
//! ```
//!
//! `bird.conf` includes the file at the top level and exports exactly those protocols' routes
//! to its BGP peers (`export where proto = "lb_vips4";`, see the README). Both protocols are
//! always present, even empty, so the operator's filters never name a protocol that does not
//! exist and `birdc configure` never fails because nothing is announced. A withdrawal is a
//! file without the route: BIRD removes the static route on reconfiguration and its BGP
//! sessions send the withdrawal. Blackhole routes are only a carrier: BIRD must not export them
//! to the balancer's own kernel table (the README's snippet has no kernel export of them).

use std::collections::BTreeSet;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the static protocol holding the IPv4 VIPs.
pub const PROTOCOL_V4: &str = "lb_vips4";
/// Name of the static protocol holding the IPv6 VIPs.
pub const PROTOCOL_V6: &str = "lb_vips6";

/// Longest time one `birdc configure` may take before it is killed and counted as failed.
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// The include file for `announce` (addresses, any family). Deterministic: sorted, one route
/// per address.
pub fn render(instance: &str, announce: &BTreeSet<IpAddr>) -> String {
    let mut out = format!(
        "# Written by lb-daemon (instance {instance}); do not edit: it is replaced on every change.\n\
         # {} address(es) announced.\n",
        announce.len()
    );
    for (proto, channel, v6) in [(PROTOCOL_V4, "ipv4", false), (PROTOCOL_V6, "ipv6", true)] {
        out += &format!("protocol static {proto} {{\n    {channel};\n");
        for ip in announce.iter().filter(|ip| ip.is_ipv6() == v6) {
            let len = if v6 { 128 } else { 32 };
            out += &format!("    route {ip}/{len} blackhole;\n");
        }
        out += "}\n";
    }
    out
}

/// Why `birdc configure` did not confirm the new configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirdError {
    /// `birdc` could not be started.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        reason: String,
    },
    /// `birdc` did not finish within [`BIRDC_TIMEOUT`] (killed).
    #[error("birdc configure did not finish within {0:?}")]
    Timeout(Duration),
    /// BIRD (or birdc) answered something other than a successful reconfiguration.
    #[error("birdc configure failed: {0}")]
    Refused(String),
}

/// Whether `birdc configure`'s output and exit status mean BIRD took the new configuration.
/// BIRD 2 answers `Reconfigured`, `Reconfiguration in progress` (protocols still restarting) or
/// `Reconfiguration already in progress, queueing new config`; a parse error, an unreachable
/// socket or anything else is an error carrying BIRD's own words.
pub fn check_configure_output(success: bool, output: &str) -> Result<(), BirdError> {
    let confirmed = output.lines().map(str::trim).any(|l| {
        l == "Reconfigured"
            || l.starts_with("Reconfiguration in progress")
            || l.starts_with("Reconfiguration already in progress")
    });
    if success && confirmed {
        return Ok(());
    }
    let words: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("BIRD ") && !l.starts_with("Reading configuration"))
        .collect();
    let words = if words.is_empty() { "no answer".to_owned() } else { words.join("; ") };
    Err(BirdError::Refused(if success { words } else { format!("{words} (birdc exited with an error)") }))
}

/// Runs `<birdc> -s <socket> configure` (bounded by `timeout`) and checks that BIRD reconfigured.
pub fn configure(birdc: &Path, socket: &Path, timeout: Duration) -> Result<(), BirdError> {
    let mut child = Command::new(birdc)
        .arg("-s")
        .arg(socket)
        .arg("configure")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BirdError::Spawn { program: birdc.display().to_string(), reason: e.to_string() })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::Timeout(timeout));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::Refused(format!("waiting for birdc: {e}")));
            }
        }
    };
    // birdc's output is a few lines: it fits the pipe, so reading after the exit is safe.
    let mut output = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut output);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut output);
    }
    check_configure_output(status.success(), &output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn renders_one_host_route_per_address_in_its_family() {
        let text = render("edge1", &set(&["192.0.2.10", "2001:db8::10", "192.0.2.9"]));
        let expected = "\
# Written by lb-daemon (instance edge1); do not edit: it is replaced on every change.
# 3 address(es) announced.
protocol static lb_vips4 {
    ipv4;
    route 192.0.2.9/32 blackhole;
    route 192.0.2.10/32 blackhole;
}
protocol static lb_vips6 {
    ipv6;
    route 2001:db8::10/128 blackhole;
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn nothing_to_announce_keeps_both_protocols_empty() {
        let text = render("lb", &BTreeSet::new());
        assert!(text.contains("protocol static lb_vips4 {\n    ipv4;\n}\n"), "{text}");
        assert!(text.contains("protocol static lb_vips6 {\n    ipv6;\n}\n"), "{text}");
        assert!(!text.contains("route"), "{text}");
    }

    #[test]
    fn configure_output_is_read_as_bird_prints_it() {
        let ok = "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured\n";
        assert_eq!(check_configure_output(true, ok), Ok(()));
        let busy = "BIRD 2.0.12 ready.\nReading configuration from bird.conf\nReconfiguration in progress\n";
        assert_eq!(check_configure_output(true, busy), Ok(()));
        let queued = "Reconfiguration already in progress, queueing new config\n";
        assert_eq!(check_configure_output(true, queued), Ok(()));
        let parse = "BIRD 2.0.12 ready.\nReading configuration from lb.conf\n/x/vips.conf:1:1 syntax error, unexpected GARBAGE\n";
        assert_eq!(
            check_configure_output(false, parse),
            Err(BirdError::Refused(
                "/x/vips.conf:1:1 syntax error, unexpected GARBAGE (birdc exited with an error)".into()
            ))
        );
        let socket = "Unable to connect to server control socket (/nonexist): No such file or directory\n";
        assert!(
            matches!(check_configure_output(false, socket), Err(BirdError::Refused(m)) if m.contains("/nonexist"))
        );
        // A success word with a failed exit is still a failure, and silence is never success.
        assert!(check_configure_output(false, "Reconfigured\n").is_err());
        assert_eq!(check_configure_output(true, ""), Err(BirdError::Refused("no answer".into())));
    }

    #[test]
    fn a_missing_birdc_or_a_silent_one_is_an_error_not_a_hang() {
        let missing = configure(Path::new("/nonexistent/birdc"), Path::new("/tmp/x.ctl"), BIRDC_TIMEOUT);
        assert!(matches!(missing, Err(BirdError::Spawn { .. })), "{missing:?}");
        // A birdc that never answers is killed at the timeout.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hang"), "").unwrap();
        let fake = crate::fleet::fake_birdc();
        let slow = configure(fake, &dir.path().join("bird.ctl"), Duration::from_millis(100));
        assert_eq!(slow, Err(BirdError::Timeout(Duration::from_millis(100))));
    }
}
