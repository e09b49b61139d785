//! The running announcer of one host: keeps BIRD's include file equal to what
//! [`super::announce::decide`] says, holds the maintenance (drain) state, and reports both.
//! Evaluation runs on a timer ([`EVALUATE_EVERY`], tokio's blocking pool) and synchronously on
//! drain, undrain and detach.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::announce::{HostState, VipDecision, decide, services_of};
use super::bird::{self, BIRDC_TIMEOUT};
use super::config::BgpConfig;
use crate::api::Control;
use crate::api::model::{ApiError, StatusView};
use crate::atomic_file::write_atomic;

/// How long `shutdown --detach` keeps forwarding after BIRD confirmed the withdraw: the BGP
/// update still has to reach the routers and leave their forwarding tables (12-35 ms measured
/// on the test rig), and a connection they send here meanwhile would otherwise be dropped.
pub const WITHDRAW_GRACE: Duration = Duration::from_millis(500);

/// How often the announcer re-reads the daemon's status (health changes, switches, reloads).
/// Polling keeps the hook into the engine at zero; a health change takes `fall` failed checks
/// (2 s by default) anyway, so half a second more is small. Drain and undrain act at once.
pub const EVALUATE_EVERY: Duration = Duration::from_millis(500);

/// How often a BIRD failure that goes on is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// The maintenance state, persisted in `<state_dir>/<instance>.bgp.json` before it is acted on,
/// so a drained host stays drained across daemon restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// In maintenance: nothing announced.
    pub drained: bool,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Who changed it last.
    #[serde(default)]
    pub by: Option<String>,
}

/// BGP as `GET /v1/status` (`bgp`) and `GET /v1/host` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpView {
    /// The host is drained for maintenance.
    pub drained: bool,
    /// When the drain state last changed (RFC 3339).
    #[serde(default)]
    pub drained_since: Option<String>,
    /// Who changed it.
    #[serde(default)]
    pub drained_by: Option<String>,
    /// The include file the daemon renders.
    pub include_file: String,
    /// Addresses BIRD confirmed announcing (its last successful `configure`); empty before the
    /// first one of this process.
    pub announced: Vec<IpAddr>,
    /// The decision for each VIP address, with the reason when it is not announced.
    pub vips: Vec<VipDecision>,
    /// BIRD holds what the decisions say (false while a `birdc configure` keeps failing).
    pub in_sync: bool,
    /// The last `birdc configure` failure while not in sync.
    #[serde(default)]
    pub bird_error: Option<String>,
    /// When BIRD last confirmed a change (RFC 3339).
    #[serde(default)]
    pub last_configured: Option<String>,
}

/// `GET /v1/host`: the BGP view and the flows still forwarded (what a drained host still has).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Announcements and maintenance state.
    pub bgp: BgpView,
    /// Established flows in the flow table, all services: this host's own (copies received
    /// from peers by flow sync are not waited on).
    pub flows_established: u64,
    /// Established flows per service.
    pub services: Vec<ServiceFlows>,
}

/// Established flows of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFlows {
    /// Service name.
    pub service: String,
    /// Flows seen recently and not closed.
    pub established: u64,
}

#[derive(Default)]
struct State {
    record: HostRecord,
    detaching: bool,
    decisions: Vec<VipDecision>,
    /// What BIRD confirmed last (None: nothing confirmed by this process yet, or a failure since).
    applied: Option<BTreeSet<IpAddr>>,
    confirmed: BTreeSet<IpAddr>,
    bird_error: Option<String>,
    last_configured: Option<String>,
    last_error_log: Option<Instant>,
}

/// A condition the host must meet before it announces anything (the flow sync: the peers'
/// flows received). `Some(reason)` while not met.
pub trait AnnounceGate: Send + Sync {
    /// Why not yet, or `None` when met.
    fn not_ready(&self) -> Option<&'static str>;
}

/// The announcer; see the module documentation.
pub struct Fleet {
    /// The `[bgp]` settings in use; replaced by [`reconfigure`](Self::reconfigure) on reload.
    cfg: Mutex<BgpConfig>,
    instance: String,
    record_file: PathBuf,
    control: Weak<dyn Control>,
    state: Mutex<State>,
    /// Serializes evaluations (file write + `birdc configure`).
    apply: Mutex<()>,
    /// Met before anything is announced (the flow sync's readiness), when set.
    gate: Option<Arc<dyn AnnounceGate>>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Fleet {
    /// Starts the announcer when `cfg` is set (else `None`: nothing happens, ever). Reads the
    /// persisted drain state (an unreadable one fails the start rather than announcing a host
    /// under maintenance), then evaluates every [`EVALUATE_EVERY`] on `handle`. Call it once the
    /// data plane is attached.
    pub fn start(
        cfg: Option<BgpConfig>,
        state_dir: &Path,
        instance: &str,
        control: &Arc<dyn Control>,
        handle: &tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Arc<Fleet>>> {
        Self::start_gated(cfg, state_dir, instance, control, handle, None)
    }

    /// [`Fleet::start`], announcing nothing until `gate` is met (the flow sync: a joining host
    /// first receives its peers' flows).
    pub fn start_gated(
        cfg: Option<BgpConfig>,
        state_dir: &Path,
        instance: &str,
        control: &Arc<dyn Control>,
        handle: &tokio::runtime::Handle,
        gate: Option<Arc<dyn AnnounceGate>>,
    ) -> anyhow::Result<Option<Arc<Fleet>>> {
        let Some(cfg) = cfg else { return Ok(None) };
        let record_file = state_dir.join(format!("{instance}.bgp.json"));
        let record = match std::fs::read_to_string(&record_file) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading the host's drain state {}", record_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HostRecord::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", record_file.display())),
        };
        tracing::info!(
            include_file = %cfg.include_file.display(),
            birdc_socket = %cfg.birdc_socket.display(),
            drained = record.drained,
            "BGP announcements through BIRD"
        );
        let fleet = Arc::new(Fleet {
            cfg: Mutex::new(cfg),
            instance: instance.to_owned(),
            record_file,
            control: Arc::downgrade(control),
            state: Mutex::new(State { record, ..State::default() }),
            apply: Mutex::new(()),
            gate,
        });
        let weak = Arc::downgrade(&fleet);
        handle.spawn(async move {
            loop {
                let Some(fleet) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || fleet.evaluate()).await;
                tokio::time::sleep(EVALUATE_EVERY).await;
            }
        });
        Ok(Some(fleet))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-decides and, when the decision differs from what BIRD holds, rewrites the include
    /// file and runs `birdc configure`. Failures are logged (rate-limited) and retried on the
    /// next evaluation; forwarding never depends on them.
    pub fn evaluate(&self) {
        let _serial = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let Some(control) = self.control.upgrade() else { return };
        let status = match control.status() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "BGP: reading the daemon's status failed");
                return;
            }
        };
        drop(control);
        self.apply_status(&status);
    }

    /// The part of [`evaluate`](Self::evaluate) after reading the status (callers serialize).
    fn apply_status(&self, status: &StatusView) {
        let host = {
            let st = self.lock();
            HostState {
                attached: !status.interfaces.is_empty() && status.interfaces.iter().all(|i| i.attached),
                drained: st.record.drained,
                detaching: st.detaching,
                not_ready: self.gate.as_ref().and_then(|g| g.not_ready()),
            }
        };
        let decisions = decide(host, &services_of(status));
        let want: BTreeSet<IpAddr> = decisions.iter().filter(|d| d.announce).map(|d| d.vip).collect();
        let previous = {
            let mut st = self.lock();
            st.decisions = decisions.clone();
            if st.applied.as_ref() == Some(&want) {
                return;
            }
            st.confirmed.clone()
        };
        let started = Instant::now();
        let result = self.push_to_bird(&want);
        let mut st = self.lock();
        match result {
            Ok(()) => {
                let added: Vec<&IpAddr> = want.difference(&previous).collect();
                let withdrawn: Vec<&IpAddr> = previous.difference(&want).collect();
                let why: Vec<String> = decisions
                    .iter()
                    .filter_map(|d| d.why_not.as_ref().map(|w| format!("{}: {w}", d.vip)))
                    .collect();
                tracing::info!(
                    ?added,
                    ?withdrawn,
                    announced = want.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    not_announced = ?why,
                    "BGP: BIRD reconfigured"
                );
                st.applied = Some(want.clone());
                st.confirmed = want;
                st.bird_error = None;
                st.last_error_log = None;
                st.last_configured = Some(now_rfc3339());
            }
            Err(e) => {
                let again = st.last_error_log.is_some_and(|t| t.elapsed() < ERROR_LOG_EVERY)
                    && st.bird_error.as_deref() == Some(e.as_str());
                if !again {
                    tracing::error!(error = %e, "BGP: announcing through BIRD failed; retrying every 500 ms, forwarding is unaffected");
                    st.last_error_log = Some(Instant::now());
                }
                st.applied = None;
                st.bird_error = Some(e);
            }
        }
    }

    fn push_to_bird(&self, want: &BTreeSet<IpAddr>) -> Result<(), String> {
        let cfg = self.settings();
        self.push_with(&cfg, want)
    }

    /// Writes `want` to `cfg`'s include file and runs its `birdc configure`.
    fn push_with(&self, cfg: &BgpConfig, want: &BTreeSet<IpAddr>) -> Result<(), String> {
        let text = bird::render(&self.instance, want);
        write_atomic(&cfg.include_file, text.as_bytes())
            .map_err(|e| format!("writing {}: {e}", cfg.include_file.display()))?;
        bird::configure(&cfg.birdc, &cfg.birdc_socket, BIRDC_TIMEOUT).map_err(|e| e.to_string())
    }

    /// The `[bgp]` settings in use.
    pub fn settings(&self) -> BgpConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's new `[bgp]` settings (already validated), tried before they are kept: what
    /// BIRD holds now (or what the rules want, before the first confirmation) is written to the
    /// new include file and the new `birdc` is run on the new socket. Kept when BIRD confirms;
    /// otherwise the error, and nothing changed (a new include file this created is removed).
    /// Returns the changes in words (empty when the settings are the same).
    pub fn reconfigure(&self, new: &BgpConfig) -> Result<Vec<String>, String> {
        let _serial = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.settings();
        let mut changes = Vec::new();
        if new.include_file != old.include_file {
            changes.push(format!(
                "bgp.include_file {} -> {} (the old file is left as it is: BIRD's config must include the new one)",
                old.include_file.display(),
                new.include_file.display()
            ));
        }
        if new.birdc_socket != old.birdc_socket {
            changes.push(format!(
                "bgp.birdc_socket {} -> {}",
                old.birdc_socket.display(),
                new.birdc_socket.display()
            ));
        }
        if new.birdc != old.birdc {
            changes.push(format!("bgp.birdc {} -> {}", old.birdc.display(), new.birdc.display()));
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        let want: BTreeSet<IpAddr> = {
            let st = self.lock();
            st.applied
                .clone()
                .unwrap_or_else(|| st.decisions.iter().filter(|d| d.announce).map(|d| d.vip).collect())
        };
        let created = new.include_file != old.include_file && !new.include_file.exists();
        if let Err(e) = self.push_with(new, &want) {
            if created {
                let _ = std::fs::remove_file(&new.include_file);
            }
            return Err(e);
        }
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = new.clone();
        let mut st = self.lock();
        st.applied = Some(want.clone());
        st.confirmed = want;
        st.bird_error = None;
        st.last_error_log = None;
        st.last_configured = Some(now_rfc3339());
        tracing::info!(changes = ?changes, "BGP: new [bgp] settings confirmed by BIRD");
        Ok(changes)
    }

    /// Enters (`true`) or leaves maintenance. The state is persisted first (an error changes
    /// nothing), then BIRD is told at once; the answer says whether BIRD confirmed it.
    pub fn set_drained(&self, drained: bool, requester: &str) -> Result<BgpView, ApiError> {
        let record = HostRecord { drained, since: Some(now_rfc3339()), by: Some(requester.to_owned()) };
        {
            let st = self.lock();
            if st.record.drained == drained {
                drop(st);
                self.evaluate();
                return Ok(self.view());
            }
        }
        let text = serde_json::to_string_pretty(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        write_atomic(&self.record_file, (text + "\n").as_bytes()).map_err(|e| {
            ApiError::internal(format!("persisting the drain state to {}: {e}", self.record_file.display()))
        })?;
        tracing::warn!(
            drained,
            requester,
            "host {}",
            if drained { "drained for maintenance" } else { "undrained" }
        );
        self.lock().record = record;
        self.evaluate();
        Ok(self.view())
    }

    /// Withdraws everything before `shutdown --detach` stops forwarding (bounded by
    /// [`BIRDC_TIMEOUT`]); returns whether BIRD confirmed.
    pub fn withdraw_for_detach(&self) -> bool {
        self.lock().detaching = true;
        self.evaluate();
        let st = self.lock();
        let ok = st.applied.as_ref().is_some_and(|a| a.is_empty());
        drop(st);
        if ok {
            tracing::warn!("BGP: every VIP withdrawn before detaching");
            // BIRD has sent the withdraw; the routers still need a moment to act on it, and what
            // they send meanwhile must still be forwarded.
            std::thread::sleep(WITHDRAW_GRACE);
        } else {
            let st = self.lock();
            tracing::error!(error = ?st.bird_error, "BGP: withdrawing before detaching failed; BIRD may still announce this host");
        }
        ok
    }

    /// The BGP part of the status.
    pub fn view(&self) -> BgpView {
        let st = self.lock();
        let wanted: BTreeSet<IpAddr> = st.decisions.iter().filter(|d| d.announce).map(|d| d.vip).collect();
        BgpView {
            drained: st.record.drained,
            drained_since: st.record.since.clone(),
            drained_by: st.record.by.clone(),
            include_file: self.settings().include_file.display().to_string(),
            announced: st.confirmed.iter().copied().collect(),
            vips: st.decisions.clone(),
            in_sync: st.applied.as_ref() == Some(&wanted),
            bird_error: st.bird_error.clone(),
            last_configured: st.last_configured.clone(),
        }
    }

    /// The BGP view and the flows left per service (a flow-table scan: not for hot paths).
    pub fn host_view(&self) -> Result<HostView, ApiError> {
        let control = self.control.upgrade().ok_or_else(|| ApiError::internal("the daemon is stopping"))?;
        let status = control.status()?;
        let mut services = Vec::new();
        for s in &status.services {
            let drain = control.drain(Some(&s.name))?;
            services.push(ServiceFlows {
                service: s.name.clone(),
                established: drain.pools.iter().map(|p| p.established).sum(),
            });
        }
        Ok(HostView {
            bgp: self.view(),
            flows_established: services.iter().map(|s| s.established).sum(),
            services,
        })
    }
}

#[cfg(test)]
impl Fleet {
    /// A fleet with no daemon behind it (the fake `birdc`, files under `dir`): tests feed it
    /// statuses through `apply_status`.
    pub(crate) fn for_tests(dir: &Path) -> Fleet {
        let control: Weak<dyn Control> = Weak::<crate::engine::Engine>::new();
        Fleet {
            cfg: Mutex::new(BgpConfig {
                include_file: dir.join("vips.conf"),
                birdc_socket: dir.join("bird.ctl"),
                birdc: crate::fleet::fake_birdc().to_path_buf(),
            }),
            instance: "t".into(),
            record_file: dir.join("t.bgp.json"),
            control,
            state: Mutex::new(State::default()),
            apply: Mutex::new(()),
            gate: None,
        }
    }

    /// The decisions and BIRD state of a status, as the timer would apply them.
    pub(crate) fn apply_for_tests(&self, status: &StatusView) {
        self.apply_status(status);
    }
}

/// One dsr service `web` on 192.0.2.10:80 whose only pool (min_healthy 1) has `healthy` backends up.
#[cfg(test)]
pub(crate) fn test_status(healthy: u32) -> StatusView {
    use crate::api::model::{Active, PoolView, ServiceView, Traffic};
    StatusView::fixture(
        "t",
        vec![ServiceView {
            name: "web".into(),
            mode: "dsr".into(),
            vips: vec!["192.0.2.10:80".into()],
            active: Active::Pool("pool-a".into()),
            previous: None,
            epoch: 0,
            pools: vec![PoolView {
                name: "pool-a".into(),
                share: 100,
                min_healthy: 1,
                healthy,
                backends: Vec::new(),
                traffic: Traffic::default(),
            }],
            watch: None,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("calls")).map(|t| t.lines().count()).unwrap_or(0)
    }

    fn fleet(dir: &Path) -> Fleet {
        Fleet::for_tests(dir)
    }

    fn status(healthy: u32) -> StatusView {
        test_status(healthy)
    }

    fn file(f: &Fleet) -> String {
        std::fs::read_to_string(f.settings().include_file).unwrap()
    }

    #[test]
    fn announces_once_then_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path());
        f.apply_status(&status(2));
        assert!(file(&f).contains("route 192.0.2.10/32 blackhole;"), "{}", file(&f));
        assert_eq!(calls(dir.path()), 1);
        let v = f.view();
        assert!(v.in_sync && v.bird_error.is_none(), "{v:?}");
        assert_eq!(v.announced, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
        // Nothing changed: BIRD is not asked again.
        f.apply_status(&status(2));
        assert_eq!(calls(dir.path()), 1);
        // The pool falls below min_healthy: withdrawn, with the reason.
        f.apply_status(&status(0));
        assert_eq!(calls(dir.path()), 2);
        assert!(!file(&f).contains("route"), "{}", file(&f));
        let v = f.view();
        assert!(v.announced.is_empty() && v.in_sync, "{v:?}");
        assert!(v.vips[0].why_not.as_deref().unwrap().contains("pool pool-a has 0 healthy"), "{v:?}");
    }

    #[test]
    fn a_bird_failure_is_reported_and_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path());
        std::fs::write(dir.path().join("fail"), "").unwrap();
        f.apply_status(&status(2));
        let v = f.view();
        assert!(!v.in_sync, "{v:?}");
        assert!(v.bird_error.as_deref().unwrap().contains("Connection refused"), "{v:?}");
        assert!(v.announced.is_empty(), "nothing confirmed: {v:?}");
        // Same decision, still failing: retried on every evaluation.
        f.apply_status(&status(2));
        assert_eq!(calls(dir.path()), 2);
        std::fs::remove_file(dir.path().join("fail")).unwrap();
        f.apply_status(&status(2));
        assert_eq!(calls(dir.path()), 3);
        let v = f.view();
        assert!(v.in_sync && v.bird_error.is_none() && v.announced.len() == 1, "{v:?}");
    }

    #[test]
    fn drain_is_persisted_before_it_acts_and_detach_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path());
        f.apply_status(&status(2));
        f.set_drained(true, "ops").unwrap();
        let record: HostRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.bgp.json")).unwrap()).unwrap();
        assert!(record.drained && record.by.as_deref() == Some("ops"), "{record:?}");
        f.apply_status(&status(2));
        assert!(!file(&f).contains("route"), "drained: {}", file(&f));
        assert!(f.view().vips[0].why_not.as_deref().unwrap().contains("drained"));

        // A record that cannot be written changes nothing.
        let mut g = fleet(dir.path());
        std::fs::write(dir.path().join("blocked"), "").unwrap();
        g.record_file = dir.path().join("blocked/t.bgp.json");
        assert!(g.set_drained(true, "ops").is_err());
        assert!(!g.view().drained);

        f.set_drained(false, "ops").unwrap();
        f.apply_status(&status(2));
        assert!(file(&f).contains("route"), "{}", file(&f));
        f.lock().detaching = true;
        f.apply_status(&status(2));
        assert!(!file(&f).contains("route"), "detaching: {}", file(&f));
        assert!(f.view().in_sync);
    }
}
