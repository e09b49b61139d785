//! The XDP attachments of a data plane: which mode to attach in, the BPF links the daemon holds
//! (an open link keeps the program attached even when someone removes its pin), their pins
//! (so the program stays attached after the daemon exits and the next daemon adopts it), and
//! the periodic check that notices an interface that lost the program and attaches it again.
//!
//! The mode reported is always the one the kernel says it runs (`IFLA_XDP`), never the one
//! asked for.

use super::{
    handle::{AttachMode, DataplaneError, MAP_NAMES, PinDir},
    netdev::{self, Netdev},
};
use crate::api::model::InterfaceView;
use aya::{
    maps::MapData,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use std::{collections::BTreeMap, fmt::Write, fs, io, path::Path, time::SystemTime};

/// The modes to try, in order, for one interface, and what to warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModePlan {
    /// Modes to try in order (the first that attaches wins).
    pub attempts: Vec<(XdpMode, &'static str)>,
    /// A warning to show at start and in status (native XDP on a veth).
    pub warning: Option<String>,
}

impl ModePlan {
    /// Whether a program already attached in `mode` (kernel label) fits this plan.
    pub fn accepts(&self, mode: &str) -> bool {
        self.attempts.iter().any(|(_, label)| *label == mode)
    }
}

/// Decides how to attach to interface `iface` configured with `mode`, knowing whether it is a
/// veth. On a veth, native XDP forwards only when the peer runs NAPI (an XDP program of its own,
/// or GRO on) and the senders' frames carry full checksums (locally sent frames carry
/// CHECKSUM_PARTIAL ones XDP cannot see), and it is slower than generic mode there anyway:
/// `auto` picks generic, and `native` is honoured with a warning that says how to make it work.
pub fn plan_mode(mode: AttachMode, iface: &str, is_veth: bool) -> ModePlan {
    const NATIVE: (XdpMode, &str) = (XdpMode::Driver, "native");
    const GENERIC: (XdpMode, &str) = (XdpMode::Skb, "generic");
    match (mode, is_veth) {
        (AttachMode::Auto, true) | (AttachMode::Generic, _) => {
            ModePlan { attempts: vec![GENERIC], warning: None }
        }
        (AttachMode::Auto, false) => ModePlan { attempts: vec![NATIVE, GENERIC], warning: None },
        (AttachMode::Native, false) => ModePlan { attempts: vec![NATIVE], warning: None },
        (AttachMode::Native, true) => ModePlan {
            attempts: vec![NATIVE],
            warning: Some(format!(
                "native XDP on veth {iface}: frames sent back out ({iface}'s peer) are dropped unless that \
                 peer has NAPI (an XDP program of its own, or `ethtool -K <peer> gro on` in the peer's \
                 namespace), and connections from senders on this host fail unless they send full \
                 checksums (`ethtool -K <dev> tx off` on each local sender's interface); generic mode \
                 (xdp_mode = \"auto\" or \"generic\") needs neither and is faster on veths"
            )),
        },
    }
}

/// One interface the program is attached to.
struct Attachment {
    /// Interface index when attached (a re-created interface gets another one).
    ifindex: u32,
    /// The modes to use when (re-)attaching.
    plan: ModePlan,
    /// Our BPF link, held open: while it is, the program stays attached even without its pin.
    link: Option<FdLink>,
    /// What the kernel reported at the last check.
    kind: Option<String>,
    mode: Option<&'static str>,
    attached: bool,
    reattachments: u64,
    last_reattach: Option<String>,
    problem: Option<String>,
}

/// The attachments of one data plane and their counters.
#[derive(Default)]
pub struct Links {
    by_iface: BTreeMap<String, Attachment>,
    /// Pins re-created after they were removed from under the daemon.
    pins_restored: u64,
    /// Checks that could not run because of this process's own errors (out of descriptors…).
    local_errors: u64,
}

fn attach_err(iface: &str, what: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Attach(format!("{iface}: {what}"))
}

fn ifindex_of(iface: &str) -> Result<u32, DataplaneError> {
    if iface.contains('\0') {
        return Err(attach_err(iface, "bad interface name"));
    }
    nix::net::if_::if_nametoindex(iface).map_err(|_| attach_err(iface, "no such interface"))
}

fn program_id(prog: &Xdp) -> Result<u32, DataplaneError> {
    prog.info().map(|i| i.id()).map_err(|e| DataplaneError::Attach(format!("reading the program's id: {e}")))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Removes a file, absent being fine.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Links {
    /// Attaches `prog` to `iface` as `mode` asks (see [`plan_mode`]). A link pinned by an
    /// earlier daemon is adopted and switched to `prog` in one atomic step when its mode fits
    /// the plan; when `xdp_mode` changed, it is replaced by a new link in the right mode (a
    /// short gap). Returns the warning of the plan, if any.
    pub fn attach(
        &mut self,
        prog: &mut Xdp,
        pins: Option<&PinDir>,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Option<String>, DataplaneError> {
        let ifindex = ifindex_of(iface)?;
        let dev = netdev::query(ifindex).map_err(|e| attach_err(iface, format!("reading its state: {e}")))?;
        let plan = plan_mode(mode, iface, dev.is_veth());
        if let Some(w) = &plan.warning {
            tracing::warn!(iface, "{w}");
        } else if dev.is_veth() && mode == AttachMode::Auto {
            tracing::info!(
                iface,
                "veth: attaching in generic mode (native XDP on veths needs NAPI on the peer)"
            );
        }
        let mut link = None;
        if let Some(pin) = pins.map(|p| p.link(iface)).filter(|p| p.exists()) {
            link = self.adopt(prog, &pin, iface, &dev, &plan)?;
        }
        let link = match link {
            Some(l) => l,
            None => fresh_attach(prog, pins, iface, ifindex, &plan)?,
        };
        let mut att = Attachment {
            ifindex,
            plan: plan.clone(),
            link: Some(link),
            kind: dev.kind.clone(),
            mode: None,
            attached: false,
            reattachments: 0,
            last_reattach: None,
            problem: None,
        };
        let id = program_id(prog)?;
        let now_dev =
            netdev::query(ifindex).map_err(|e| attach_err(iface, format!("reading its state: {e}")))?;
        att.mode = now_dev.xdp.mode_of(id);
        att.attached = att.mode.is_some();
        if !att.attached {
            return Err(attach_err(iface, "attached, but the kernel reports another or no XDP program"));
        }
        tracing::info!(
            iface,
            mode = att.mode.unwrap_or("?"),
            kind = dev.kind.as_deref().unwrap_or("-"),
            "XDP attached (mode as the kernel reports it)"
        );
        self.by_iface.insert(iface.to_owned(), att);
        Ok(plan.warning)
    }

    /// Adopts the link pinned at `pin`: `Some(link)` now running `prog`, or `None` when it had
    /// to go (no longer attached, or attached in a mode the plan does not accept).
    fn adopt(
        &mut self,
        prog: &mut Xdp,
        pin: &Path,
        iface: &str,
        dev: &Netdev,
        plan: &ModePlan,
    ) -> Result<Option<FdLink>, DataplaneError> {
        let remove_pin = |why: &str| -> Result<(), DataplaneError> {
            tracing::warn!(iface, pin = %pin.display(), "{why}");
            remove_if_present(pin)
                .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", pin.display())))
        };
        let link: FdLink = match PinnedLink::from_pin(pin) {
            Ok(p) => p.into(),
            Err(e) => {
                remove_pin(&format!("the pinned link cannot be opened ({e}); attaching anew"))?;
                return Ok(None);
            }
        };
        let old_prog = link.info().map(|i| i.program_id()).map_err(|e| attach_err(iface, e))?;
        match dev.xdp.mode_of(old_prog) {
            None => {
                remove_pin("the pinned link is no longer attached to the interface; attaching anew")?;
                drop(link);
                Ok(None)
            }
            Some(current) if !plan.accepts(current) => {
                let wanted = plan.attempts[0].1;
                remove_pin(&format!(
                    "xdp_mode changed: replacing the {current} attachment by a {wanted} one (forwarding pauses for a moment)"
                ))?;
                // The pin is gone; closing our descriptor drops the last reference and detaches.
                drop(link);
                Ok(None)
            }
            Some(_) => {
                let xdp_link =
                    XdpLink::try_from(link).map_err(|e| attach_err(iface, format!("pinned link: {e}")))?;
                let id = prog
                    .attach_to_link(xdp_link)
                    .map_err(|e| attach_err(iface, format!("replacing the program: {e}")))?;
                let taken = prog.take_link(id).map_err(|e| attach_err(iface, e))?;
                Ok(Some(FdLink::try_from(taken).map_err(|e| attach_err(iface, e))?))
            }
        }
    }

    /// Checks every attachment against the kernel: an interface whose program is gone (link
    /// detached, interface re-created) gets it again, and removed pins are re-created. Returns
    /// the interfaces attached again (their index may be new).
    pub fn check(&mut self, prog: &mut Xdp, pins: Option<&PinDir>) -> Vec<u32> {
        let mut reattached = Vec::new();
        let id = match program_id(prog) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("XDP check skipped: {e}");
                return reattached;
            }
        };
        let names: Vec<String> = self.by_iface.keys().cloned().collect();
        for iface in names {
            let ifindex = match ifindex_of(&iface) {
                Ok(i) => i,
                Err(_) => {
                    let att = self.by_iface.get_mut(&iface).expect("listed");
                    if att.attached {
                        tracing::error!(iface, "interface gone: XDP is not running there");
                    }
                    att.attached = false;
                    att.mode = None;
                    att.problem = Some(format!("interface {iface} does not exist"));
                    continue;
                }
            };
            let dev = match netdev::query(ifindex) {
                Ok(d) => d,
                Err(e) if netdev::is_local_error(&e) => {
                    self.local_errors += 1;
                    tracing::warn!(
                        iface,
                        "XDP check skipped (the daemon's own error, not the interface's): {e}"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(iface, "XDP check failed: {e}");
                    continue;
                }
            };
            let att = self.by_iface.get_mut(&iface).expect("listed");
            att.kind = dev.kind.clone();
            let running = dev.xdp.mode_of(id).filter(|_| ifindex == att.ifindex);
            if let Some(mode) = running {
                att.mode = Some(mode);
                att.attached = true;
                att.problem = None;
                if let Some(pins) = pins {
                    self.pins_restored += restore_link_pin(att, pins, &iface);
                }
                continue;
            }
            let reason = if ifindex != att.ifindex {
                "the interface was re-created".to_owned()
            } else if dev.xdp.is_empty() {
                "no XDP program is attached any more".to_owned()
            } else {
                format!("another XDP program runs there ({:?})", dev.xdp)
            };
            tracing::error!(iface, reason, "XDP program lost; attaching again");
            // Our link is defunct: let it go with its pin before attaching anew.
            if let Some(pins) = pins
                && let Err(e) = remove_if_present(&pins.link(&iface))
            {
                tracing::warn!(iface, "removing the stale link pin: {e}");
            }
            att.link = None;
            att.attached = false;
            att.mode = None;
            let plan = att.plan.clone();
            match fresh_attach(prog, pins, &iface, ifindex, &plan) {
                Ok(link) => {
                    let mode = netdev::query(ifindex).ok().and_then(|d| d.xdp.mode_of(id));
                    let att = self.by_iface.get_mut(&iface).expect("listed");
                    att.link = Some(link);
                    att.ifindex = ifindex;
                    att.mode = mode;
                    att.attached = mode.is_some();
                    att.reattachments += 1;
                    att.last_reattach = Some(format!("{}: {reason}", now()));
                    att.problem = None;
                    reattached.push(ifindex);
                    tracing::warn!(
                        iface,
                        mode = mode.unwrap_or("?"),
                        reattachments = att.reattachments,
                        "XDP attached again"
                    );
                }
                Err(e) => {
                    tracing::error!(iface, "attaching XDP again failed: {e}");
                    let att = self.by_iface.get_mut(&iface).expect("listed");
                    att.problem =
                        Some(format!("XDP program lost ({reason}) and attaching again failed: {e}"));
                }
            }
        }
        if let Some(pins) = pins {
            self.pins_restored += restore_map_pins(prog, pins);
        }
        reattached
    }

    /// Status of every attachment.
    pub fn views(&self) -> Vec<InterfaceView> {
        self.by_iface
            .iter()
            .map(|(name, a)| InterfaceView {
                name: name.clone(),
                mode: a.mode.unwrap_or("none").to_owned(),
                kind: a.kind.clone(),
                attached: a.attached,
                reattachments: a.reattachments,
                last_reattach: a.last_reattach.clone(),
                problem: a.problem.clone(),
            })
            .collect()
    }

    /// Warnings of the attachments' plans (native XDP on a veth).
    pub fn warnings(&self) -> Vec<String> {
        self.by_iface.values().filter_map(|a| a.plan.warning.clone()).collect()
    }

    /// Prometheus text of the attachments.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lb_xdp_attached Whether the kernel runs this daemon's XDP program on the interface, by the mode it reports."
        );
        let _ = writeln!(out, "# TYPE lb_xdp_attached gauge");
        for (name, a) in &self.by_iface {
            let _ = writeln!(
                out,
                "lb_xdp_attached{{interface=\"{name}\",mode=\"{}\"}} {}",
                a.mode.unwrap_or("none"),
                u8::from(a.attached)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lb_xdp_reattachments_total Times the XDP program was found missing on the interface and attached again."
        );
        let _ = writeln!(out, "# TYPE lb_xdp_reattachments_total counter");
        for (name, a) in &self.by_iface {
            let _ = writeln!(out, "lb_xdp_reattachments_total{{interface=\"{name}\"}} {}", a.reattachments);
        }
        let _ = writeln!(
            out,
            "# HELP lb_pins_restored_total Pins (maps, links) re-created after they were removed while the daemon ran."
        );
        let _ = writeln!(out, "# TYPE lb_pins_restored_total counter");
        let _ = writeln!(out, "lb_pins_restored_total {}", self.pins_restored);
        let _ = writeln!(
            out,
            "# HELP lb_xdp_check_local_errors_total XDP checks skipped because of the daemon's own errors (out of descriptors, memory)."
        );
        let _ = writeln!(out, "# TYPE lb_xdp_check_local_errors_total counter");
        let _ = writeln!(out, "lb_xdp_check_local_errors_total {}", self.local_errors);
    }
}

/// Creates a new link for `prog` on `ifindex` in the first mode of `plan` that works, and pins
/// it when there are pins.
fn fresh_attach(
    prog: &mut Xdp,
    pins: Option<&PinDir>,
    iface: &str,
    ifindex: u32,
    plan: &ModePlan,
) -> Result<FdLink, DataplaneError> {
    let mut errors = Vec::new();
    for (mode, label) in &plan.attempts {
        match prog.attach(ifindex, *mode) {
            Ok(id) => {
                if !errors.is_empty() {
                    tracing::warn!(iface, errors = ?errors, "native XDP failed, attached in {label} mode (slower)");
                }
                let link = prog.take_link(id).map_err(|e| attach_err(iface, e))?;
                let link = FdLink::try_from(link)
                    .map_err(|e| attach_err(iface, format!("not a BPF link (kernel too old?): {e}")))?;
                return match pins {
                    Some(pins) => pin_link(link, &pins.link(iface)),
                    None => Ok(link),
                };
            }
            Err(e) => errors.push(format!("{label}: {e:#}")),
        }
    }
    Err(attach_err(iface, errors.join("; ")))
}

/// Pins `link` at `path` (replacing a stale pin) and returns it, still held.
fn pin_link(link: FdLink, path: &Path) -> Result<FdLink, DataplaneError> {
    let pin_err = |e: &dyn std::fmt::Display| DataplaneError::Pin(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| pin_err(&e))?;
    }
    remove_if_present(path).map_err(|e| pin_err(&e))?;
    link.pin(path).map(FdLink::from).map_err(|e| pin_err(&e))
}

/// Pins the held link of `att` again when its pin is gone; returns 1 when it did.
fn restore_link_pin(att: &mut Attachment, pins: &PinDir, iface: &str) -> u64 {
    let path = pins.link(iface);
    if path.exists() {
        return 0;
    }
    let Some(link) = att.link.take() else { return 0 };
    match pin_link(link, &path) {
        Ok(link) => {
            att.link = Some(link);
            tracing::warn!(iface, pin = %path.display(), "the link's pin was removed; pinned it again");
            1
        }
        Err(e) => {
            // The link went with the failed pin; the next check attaches the program again.
            tracing::error!(iface, "re-pinning the link failed: {e}");
            0
        }
    }
}

/// Pins again every map of `prog` whose pin is gone; returns how many.
fn restore_map_pins(prog: &Xdp, pins: &PinDir) -> u64 {
    let missing: Vec<&str> = MAP_NAMES.iter().copied().filter(|n| !pins.map(n).exists()).collect();
    if missing.is_empty() {
        return 0;
    }
    let ids =
        match prog.info().map_err(|e| e.to_string()).and_then(|i| i.map_ids().map_err(|e| e.to_string())) {
            Ok(ids) => ids.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("cannot list the program's maps to pin them again: {e}");
                return 0;
            }
        };
    if let Err(e) = fs::create_dir_all(pins.map("x").parent().expect("maps dir")) {
        tracing::warn!("cannot re-create the map pin folder: {e}");
        return 0;
    }
    let mut restored = 0;
    for id in ids {
        let Ok(map) = MapData::from_id(id) else { continue };
        let Some(name) = map.info().ok().and_then(|i| i.name_as_str().map(str::to_owned)) else { continue };
        if !missing.contains(&name.as_str()) {
            continue;
        }
        match map.pin(pins.map(&name)) {
            Ok(()) => restored += 1,
            Err(e) => tracing::warn!(map = name, "re-pinning the map failed: {e}"),
        }
    }
    if restored > 0 {
        tracing::warn!(restored, "map pins were removed; pinned them again");
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(p: &ModePlan) -> Vec<&'static str> {
        p.attempts.iter().map(|(_, l)| *l).collect()
    }

    #[test]
    fn auto_picks_generic_on_a_veth_and_native_first_elsewhere() {
        let veth_auto = plan_mode(AttachMode::Auto, "eth0", true);
        assert_eq!(labels(&veth_auto), ["generic"]);
        assert!(veth_auto.warning.is_none());
        let nic_auto = plan_mode(AttachMode::Auto, "eth0", false);
        assert_eq!(labels(&nic_auto), ["native", "generic"]);
        assert!(nic_auto.accepts("generic") && nic_auto.accepts("native"));
        assert_eq!(labels(&plan_mode(AttachMode::Generic, "eth0", false)), ["generic"]);
        assert_eq!(labels(&plan_mode(AttachMode::Native, "eth0", false)), ["native"]);
        assert!(plan_mode(AttachMode::Native, "eth0", false).warning.is_none());
    }

    #[test]
    fn native_on_a_veth_is_honoured_with_the_fix_in_the_warning() {
        let p = plan_mode(AttachMode::Native, "veth7", true);
        assert_eq!(labels(&p), ["native"]);
        assert!(!p.accepts("generic"), "a generic attachment is replaced when native is configured");
        let w = p.warning.expect("a warning");
        assert!(w.contains("veth7"), "{w}");
        assert!(w.contains("gro on") && w.contains("tx off"), "{w}");
    }
}
