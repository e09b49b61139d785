//! The fleet as lbctl sees it: `--wait-fleet` after a switch, rollback or split (poll
//! `GET /v1/fleet` until every live host applied the change's etcd revision) and the fleet
//! section of `lbctl status`.
//!
//! The decision (who lags, when to give up) is separate from the requests and the clock, so it
//! is tested with made-up answers and a fake clock.

use std::time::{Duration, Instant};

use lb_daemon::api::client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::failure::Failure;
use crate::render::{Paint, table};

/// Time between two polls of `GET /v1/fleet` while waiting (a change reaches every host in a
/// few milliseconds: polling slower would only add latency to the CI step).
pub const POLL: Duration = Duration::from_millis(2);
/// How long the wait polls every [`POLL`]: a change reaches every host within that on a healthy
/// fleet. A host that lags longer (down, cut off) is polled every [`SLOW_POLL`] until the
/// timeout, so a wait on a lost host does not keep the daemon answering 500 requests a second.
pub const FAST_FOR: Duration = Duration::from_millis(100);
/// The poll interval after [`FAST_FOR`].
pub const SLOW_POLL: Duration = Duration::from_millis(10);

/// What lbctl reads of the daemon's fleet view (`GET /v1/fleet`, or the `fleet` member of
/// `GET /v1/status`): the fields it shows or waits on, by the names the daemon sends.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FleetSnapshot {
    /// Cluster name (keys under `/lb/<cluster>/`).
    #[serde(default)]
    pub cluster: String,
    /// The host lbctl talks to.
    #[serde(default)]
    pub host: String,
    /// Whether that host reaches etcd now.
    #[serde(default)]
    pub connected: bool,
    /// Latest revision that host saw.
    #[serde(default)]
    pub revision: i64,
    /// Revision that host applied.
    #[serde(default)]
    pub applied_revision: i64,
    /// Whether that host applied everything it saw.
    #[serde(default)]
    pub in_sync: bool,
    /// Every live host (its status key's lease alive), this one included.
    #[serde(default)]
    pub hosts: Vec<FleetHost>,
    /// Live hosts whose service config digest differs from that host's.
    #[serde(default)]
    pub config_mismatch: Vec<String>,
}

/// One live host of the fleet.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FleetHost {
    /// Host name.
    pub host: String,
    /// Latest revision it applied.
    #[serde(default)]
    pub applied_revision: i64,
    /// Whether it says it applied everything it saw.
    #[serde(default)]
    pub in_sync: bool,
    /// VIPs it announces.
    #[serde(default)]
    pub announced: Vec<String>,
    /// Milliseconds since it last published its status.
    #[serde(default)]
    pub age_ms: Option<u64>,
    /// Its service config digest differs from that of the host lbctl talks to.
    #[serde(default)]
    pub config_mismatch: bool,
}

impl FleetSnapshot {
    /// Hosts that have not applied `revision` yet, with the revision they are at.
    pub fn lagging(&self, revision: i64) -> Vec<&FleetHost> {
        self.hosts.iter().filter(|h| h.applied_revision < revision).collect()
    }

    /// Whether every live host applied `revision`. An empty host list is not "every host":
    /// at least the host lbctl talks to must be listed.
    pub fn all_applied(&self, revision: i64) -> bool {
        !self.hosts.is_empty() && self.lagging(revision).is_empty()
    }
}

/// Time as the wait sees it (a fake one in tests).
pub trait Clock {
    /// Time since an arbitrary start.
    fn now(&self) -> Duration;
    /// Waits `d`.
    fn sleep(&mut self, d: Duration);
}

/// The real clock.
pub struct RealClock(Instant);

impl RealClock {
    /// Starting now.
    pub fn start() -> RealClock {
        RealClock(Instant::now())
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// What `--wait-fleet` saw (the `fleet_wait` member of the JSON output).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FleetWaited {
    /// The change's etcd revision.
    pub revision: i64,
    /// Whether every live host applied it.
    pub applied: bool,
    /// Milliseconds from the change's answer to the poll that saw it everywhere (or to the
    /// timeout).
    pub waited_ms: u64,
    /// Hosts that applied it.
    pub hosts: Vec<String>,
    /// Hosts that had not when the wait gave up: `host (at revision N)`.
    pub lagging: Vec<String>,
}

/// Polls `fetch` until every live host applied `revision` or `timeout` passed. A request that
/// fails stops the wait (the change itself was made: [`Failure::Following`]).
pub fn wait_applied(
    fetch: &mut dyn FnMut() -> Result<FleetSnapshot, ClientError>,
    revision: i64,
    timeout: Duration,
    clock: &mut dyn Clock,
) -> (FleetWaited, Result<(), Failure>) {
    let start = clock.now();
    let mut waited = FleetWaited { revision, ..FleetWaited::default() };
    loop {
        let snap = match fetch() {
            Ok(s) => s,
            Err(error) => {
                let note = format!("revision {revision} was committed; its application is unknown");
                return (waited, Err(Failure::Following { error, note: Some(note) }));
            }
        };
        let elapsed = clock.now().saturating_sub(start);
        waited.waited_ms = elapsed.as_millis() as u64;
        waited.hosts =
            snap.hosts.iter().filter(|h| h.applied_revision >= revision).map(|h| h.host.clone()).collect();
        waited.lagging = snap
            .lagging(revision)
            .iter()
            .map(|h| format!("{} (at {})", h.host, h.applied_revision))
            .collect();
        if snap.all_applied(revision) {
            waited.applied = true;
            return (waited, Ok(()));
        }
        if elapsed >= timeout {
            let who = if snap.hosts.is_empty() {
                "the daemon lists no live host".to_owned()
            } else {
                format!("not applied by {}", waited.lagging.join(", "))
            };
            let msg = format!(
                "revision {revision} not applied on every live host within {}: {who}",
                humantime::format_duration(timeout)
            );
            return (waited, Err(Failure::WaitTimedOut(msg)));
        }
        let poll = if elapsed < FAST_FOR { POLL } else { SLOW_POLL };
        clock.sleep(poll.min(timeout - elapsed));
    }
}

/// `GET /v1/fleet`.
pub fn fetch(client: &Client) -> Result<FleetSnapshot, ClientError> {
    let raw = client.get_text("/v1/fleet")?;
    serde_json::from_str(&raw)
        .map_err(|e| ClientError::Protocol(format!("unexpected /v1/fleet response from lb-daemon: {e}")))
}

/// The etcd revision of a change's answer (`revision`; absent or null without `[fleet]`).
pub fn revision_of(raw_outcome: &str) -> Option<i64> {
    serde_json::from_str::<Value>(raw_outcome).ok()?.get("revision")?.as_i64()
}

/// The line printed once `--wait-fleet` saw the change everywhere.
pub fn applied_line(w: &FleetWaited) -> String {
    format!(
        "fleet: revision {} applied on every live host ({}) after {} ms\n",
        w.revision,
        w.hosts.join(", "),
        w.waited_ms
    )
}

/// `raw_outcome` (a JSON object) with a `fleet_wait` member added.
pub fn with_wait(raw_outcome: &str, waited: &FleetWaited) -> String {
    match serde_json::from_str::<Value>(raw_outcome) {
        Ok(Value::Object(mut o)) => {
            o.insert("fleet_wait".into(), serde_json::to_value(waited).unwrap_or(Value::Null));
            Value::Object(o).to_string()
        }
        _ => raw_outcome.to_owned(),
    }
}

/// The outcome of `--wait-fleet` after a change whose answer is `raw`: `Ok(None)` when there is
/// nothing to wait for (a dry run; a daemon without `[fleet]`, said on stderr), else the wait
/// and its result.
pub fn after_change(
    client: &Client,
    raw: &str,
    timeout: Duration,
) -> Option<(FleetWaited, Result<(), Failure>)> {
    if serde_json::from_str::<Value>(raw).ok().and_then(|v| v.get("dry_run")?.as_bool()) == Some(true) {
        return None;
    }
    let Some(revision) = revision_of(raw) else {
        eprintln!(
            "lbctl: --wait-fleet: this daemon is not in a fleet (no [fleet] table): nothing to wait for"
        );
        return None;
    };
    let mut fetch = || fetch(client);
    Some(wait_applied(&mut fetch, revision, timeout, &mut RealClock::start()))
}

/// The fleet section of `lbctl status`: this host's view, then one row per live host.
pub fn render(f: &FleetSnapshot, paint: Paint) -> String {
    let etcd = if f.connected { paint.green("connected") } else { paint.red("UNREACHABLE") };
    let sync = if f.in_sync {
        format!("applied {}, in sync", f.applied_revision)
    } else {
        paint.yellow(&format!("applied {}, LAGGING", f.applied_revision))
    };
    let mut out =
        format!("fleet {}: host {}, etcd {etcd}, revision {} ({sync})\n", f.cluster, f.host, f.revision);
    // Lagging means behind the newest desired state some host serves, not behind etcd's latest
    // revision, which every host's status write moves.
    let newest = f.hosts.iter().map(|h| h.applied_revision).max().unwrap_or(0).max(f.applied_revision);
    let mut rows = vec![["HOST", "APPLIED", "STATE", "ANNOUNCES", "SEEN"].map(String::from).to_vec()];
    for h in &f.hosts {
        let state = if h.in_sync && h.applied_revision >= newest {
            paint.green("in sync")
        } else {
            paint.yellow(&format!("LAGGING ({} behind)", (newest - h.applied_revision).max(0)))
        };
        let state =
            if h.config_mismatch { format!("{state}, {}", paint.red("CONFIG DIFFERS")) } else { state };
        let announces = if h.announced.is_empty() { "-".to_owned() } else { h.announced.join(" ") };
        let seen = h.age_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0));
        let me = if h.host == f.host { " *" } else { "" };
        rows.push(vec![format!("{}{me}", h.host), h.applied_revision.to_string(), state, announces, seen]);
    }
    out.push_str(&table::table(&rows, &[false, true, false, false, true], "  "));
    out.push_str(&mismatch_note(f, paint));
    out
}

/// The warning under the fleet table when some hosts' service config differs from this one's.
fn mismatch_note(f: &FleetSnapshot, paint: Paint) -> String {
    if f.config_mismatch.is_empty() {
        return String::new();
    }
    format!(
        "{}: {} ha{} other pools, backends, weights or ring size than {}: their Maglev tables differ, so a \
         flow ECMP moves between hosts may change backend; make the configs equal and reload\n",
        paint.red("CONFIG MISMATCH"),
        f.config_mismatch.join(", "),
        if f.config_mismatch.len() == 1 { "s" } else { "ve" },
        f.host
    )
}

/// The `fleet` member of a raw `GET /v1/status` answer, when the daemon is in a fleet.
pub fn of_status(raw_status: &str) -> Option<FleetSnapshot> {
    let v = serde_json::from_str::<Value>(raw_status).ok()?.get("fleet")?.clone();
    if v.is_null() { None } else { serde_json::from_value(v).ok() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::unreachable;

    struct FakeClock(Duration);

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0
        }
        fn sleep(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    fn host(name: &str, applied: i64) -> FleetHost {
        FleetHost { host: name.into(), applied_revision: applied, in_sync: true, ..FleetHost::default() }
    }

    fn snap(hosts: &[(&str, i64)]) -> FleetSnapshot {
        FleetSnapshot {
            cluster: "edge1".into(),
            host: "lb1".into(),
            connected: true,
            revision: 42,
            applied_revision: 42,
            in_sync: true,
            hosts: hosts.iter().map(|(n, r)| host(n, *r)).collect(),
            ..FleetSnapshot::default()
        }
    }

    /// Answers in order, the last one repeated; counts the calls.
    fn answers(
        list: Vec<FleetSnapshot>,
    ) -> (impl FnMut() -> Result<FleetSnapshot, ClientError>, std::rc::Rc<std::cell::Cell<usize>>) {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let c = calls.clone();
        let f = move || {
            let i = c.get();
            c.set(i + 1);
            Ok(list[i.min(list.len() - 1)].clone())
        };
        (f, calls)
    }

    #[test]
    fn returns_once_every_live_host_applied_the_revision() {
        let (mut f, calls) = answers(vec![
            snap(&[("lb1", 42), ("lb2", 41)]),
            snap(&[("lb1", 42), ("lb2", 41)]),
            snap(&[("lb1", 43), ("lb2", 42)]),
        ]);
        let mut clock = FakeClock(Duration::ZERO);
        let (w, r) = wait_applied(&mut f, 42, Duration::from_secs(30), &mut clock);
        assert!(r.is_ok());
        assert_eq!(calls.get(), 3);
        assert!(w.applied && w.lagging.is_empty());
        assert_eq!(w.hosts, vec!["lb1", "lb2"]);
        assert_eq!(w.waited_ms, 4, "two polls of 2 ms");
        assert_eq!(applied_line(&w), "fleet: revision 42 applied on every live host (lb1, lb2) after 4 ms\n");
    }

    #[test]
    fn times_out_with_exit_8_naming_the_hosts_that_did_not_apply() {
        let (mut f, calls) = answers(vec![snap(&[("lb1", 42), ("lb2", 40), ("lb3", 41)])]);
        let mut clock = FakeClock(Duration::ZERO);
        let (w, r) = wait_applied(&mut f, 42, Duration::from_secs(2), &mut clock);
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 8);
        assert_eq!(
            e.to_string(),
            "revision 42 not applied on every live host within 2s: not applied by lb2 (at 40), lb3 (at 41)"
        );
        assert!(!w.applied);
        assert_eq!(w.hosts, vec!["lb1"]);
        assert_eq!(w.lagging, vec!["lb2 (at 40)", "lb3 (at 41)"]);
        // Polled every 2 ms for the first 100 ms (50 polls), then every 10 ms from 100 ms to
        // the deadline itself (191 polls).
        assert_eq!(calls.get(), 241);
        assert_eq!(clock.0, Duration::from_secs(2));
    }

    #[test]
    fn no_live_host_is_not_every_host_applied() {
        let (mut f, _) = answers(vec![snap(&[])]);
        let mut clock = FakeClock(Duration::ZERO);
        let (w, r) = wait_applied(&mut f, 5, Duration::from_millis(50), &mut clock);
        assert!(!w.applied);
        assert!(r.unwrap_err().to_string().ends_with("the daemon lists no live host"));
        // A host gone (its lease expired) is no longer waited for.
        let (mut f, _) = answers(vec![snap(&[("lb1", 5), ("lb2", 4)]), snap(&[("lb1", 5)])]);
        let (w, r) = wait_applied(&mut f, 5, Duration::from_secs(1), &mut clock);
        assert!(r.is_ok() && w.hosts == vec!["lb1"]);
    }

    #[test]
    fn a_failed_poll_stops_the_wait_saying_the_change_was_made() {
        let mut f = || Err(unreachable());
        let (w, r) = wait_applied(&mut f, 7, Duration::from_secs(1), &mut FakeClock(Duration::ZERO));
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("revision 7 was committed"), "{e}");
        assert!(!w.applied);
    }

    #[test]
    fn revision_and_json_of_a_change() {
        assert_eq!(revision_of(r#"{"service":"web","revision":17}"#), Some(17));
        assert_eq!(revision_of(r#"{"service":"web","revision":null}"#), None);
        assert_eq!(revision_of(r#"{"service":"web"}"#), None);
        assert_eq!(revision_of("not json"), None);
        let w = FleetWaited {
            revision: 17,
            applied: true,
            waited_ms: 3,
            hosts: vec!["lb1".into()],
            lagging: vec![],
        };
        let doc: Value = serde_json::from_str(&with_wait(r#"{"service":"web","revision":17}"#, &w)).unwrap();
        assert_eq!(doc["service"], "web");
        assert_eq!(doc["fleet_wait"]["applied"], true);
        assert_eq!(doc["fleet_wait"]["hosts"][0], "lb1");
    }

    #[test]
    fn status_section_shows_every_host_and_who_lags() {
        let mut f = snap(&[("lb1", 42), ("lb2", 40)]);
        f.hosts[0].announced = vec!["10.77.100.1".into()];
        f.hosts[0].age_ms = Some(300);
        f.hosts[1].in_sync = false;
        let text = render(&f, Paint::OFF);
        assert!(
            text.starts_with("fleet edge1: host lb1, etcd connected, revision 42 (applied 42, in sync)\n"),
            "{text}"
        );
        assert!(text.contains("  HOST   APPLIED  STATE               ANNOUNCES        SEEN\n"), "{text}");
        assert!(text.contains("  lb1 *       42  in sync             10.77.100.1  0.3s ago\n"), "{text}");
        assert!(text.contains("  lb2         40  LAGGING (2 behind)  -                   -\n"), "{text}");
        f.connected = false;
        f.in_sync = false;
        let text = render(&f, Paint::OFF);
        assert!(text.contains("etcd UNREACHABLE, revision 42 (applied 42, LAGGING)"), "{text}");
    }

    #[test]
    fn status_section_flags_hosts_whose_config_differs() {
        let mut f = snap(&[("lb1", 42), ("lb2", 42), ("lb3", 42)]);
        assert!(!render(&f, Paint::OFF).contains("CONFIG"));
        f.hosts[2].config_mismatch = true;
        f.config_mismatch = vec!["lb3".into()];
        let text = render(&f, Paint::OFF);
        assert!(text.contains("  lb3         42  in sync, CONFIG DIFFERS"), "{text}");
        assert!(
            text.contains("CONFIG MISMATCH: lb3 has other pools, backends, weights or ring size than lb1"),
            "{text}"
        );
    }

    #[test]
    fn the_fleet_member_of_a_status() {
        assert_eq!(of_status(r#"{"instance":"lb"}"#), None);
        assert_eq!(of_status(r#"{"instance":"lb","fleet":null}"#), None);
        let f = of_status(
            r#"{"fleet":{"cluster":"c","host":"lb2","connected":true,"revision":9,"applied_revision":9,
                "in_sync":true,"hosts":[{"host":"lb2","applied_revision":9,"in_sync":true,"extra":1}]}}"#,
        )
        .unwrap();
        assert_eq!(f.host, "lb2");
        assert!(f.all_applied(9) && !f.all_applied(10));
    }
}
