//! `lbctl backend drain|disable|enable|weight ADDR`: change one backend at runtime (HAProxy's
//! `set server ... state|weight`, `ipvsadm -e`). `lbctl backends` (backends.rs) lists them;
//! this command changes one. The state and weight columns both commands show are here.

use clap::{Args, Subcommand};
use lb_daemon::api::client::Client;
use lb_daemon::api::model::{BackendAction, BackendAdmin, BackendOutcome, BackendRequest, BackendView};

use super::{parse, service_path};
use crate::failure::Failure;
use crate::help;
use crate::render::{Paint, json, parts};

/// What to do to the backend.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum BackendCommand {
    /// No new flows to ADDR; its established flows stay until they end.
    #[command(after_help = help!("backend-drain"))]
    Drain {
        // Which backend, forced or not. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        target: Target,
    },
    /// Take ADDR out of service now: no new flows, and its established flows move to the
    /// pool's other backends on their next packet (they are reset there).
    #[command(after_help = help!("backend-disable"))]
    Disable {
        // Which backend, forced or not. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        target: Target,
    },
    /// Put ADDR back in service (after drain or disable); its weight is left as it is.
    #[command(after_help = help!("backend-enable"))]
    Enable {
        /// The backend, ip:port (IPv6 in brackets: [2001:db8::1]:443).
        #[arg(value_name = "ADDR")]
        addr: String,
        /// The pool holding ADDR, when it is in several.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
    },
    /// Set the Maglev weight of ADDR (0-10000; 0 takes no new flows), instead of the config's.
    #[command(after_help = help!("backend-weight"))]
    Weight {
        // Which backend, forced or not. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        target: Target,
        /// The new weight.
        #[arg(value_name = "WEIGHT", value_parser = clap::value_parser!(u32).range(0..=10_000))]
        weight: u32,
    },
}

/// The backend a command changes, and `--force`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend, ip:port (IPv6 in brackets: [2001:db8::1]:443).
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The pool holding ADDR, when it is in several.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Change even when it leaves the pool new flows go to with fewer healthy backends in
    /// service than its min_healthy (recorded in the history).
    #[arg(long)]
    pub force: bool,
}

impl BackendCommand {
    /// The API request of the command.
    pub fn request(&self) -> BackendRequest {
        let with = |t: &Target, action| BackendRequest {
            addr: t.addr.clone(),
            pool: t.pool.clone(),
            action,
            weight: None,
            force: t.force,
        };
        match self {
            BackendCommand::Drain { target } => with(target, BackendAction::Drain),
            BackendCommand::Disable { target } => with(target, BackendAction::Disable),
            BackendCommand::Enable { addr, pool } => BackendRequest {
                addr: addr.clone(),
                pool: pool.clone(),
                action: BackendAction::Enable,
                ..BackendRequest::default()
            },
            BackendCommand::Weight { target, weight } => {
                BackendRequest { weight: Some(*weight), ..with(target, BackendAction::Weight) }
            }
        }
    }
}

/// `POST /v1/backend` (`/v1/services/{name}/backend` with --service).
pub fn run(
    client: &Client,
    service: Option<&str>,
    json_out: bool,
    cmd: &BackendCommand,
) -> Result<String, Failure> {
    let raw = client.post_text(&service_path(service, "backend"), &cmd.request())?;
    let out: BackendOutcome = parse(&raw)?;
    Ok(if json_out { json::pretty(&raw) } else { render(&out) })
}

/// `web/pool-a 10.0.1.1:8080: enabled -> drain (weight 1), applied in 52 us`.
pub fn render(o: &BackendOutcome) -> String {
    let setting = |admin: BackendAdmin, weight: u32| format!("{admin} (weight {weight})");
    let mut s = if o.changed {
        format!(
            "{}/{} {}: {} -> {}, applied in {} us\n",
            o.service,
            o.pool,
            o.addr,
            setting(o.before.admin, o.before.weight),
            setting(o.after.admin, o.after.weight),
            o.apply_us
        )
    } else {
        format!(
            "{}/{} {}: already {}, nothing changed\n",
            o.service,
            o.pool,
            o.addr,
            setting(o.after.admin, o.after.weight)
        )
    };
    for w in &o.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

/// The STATE column of `status` and `backends`: health, then what an operator set, e.g.
/// `up`, `DOWN`, `up, drain`, `DOWN, disabled`.
pub fn state_text(b: &BackendView, paint: Paint) -> String {
    let health = parts::up_down(b.up, paint);
    match b.admin {
        BackendAdmin::Enabled => health,
        BackendAdmin::Drain => format!("{health}, {}", paint.yellow("drain")),
        BackendAdmin::Disabled => format!("{health}, {}", paint.red("disabled")),
    }
}

/// The WEIGHT column: the weight in force, and the config's when `lbctl backend weight`
/// set another one (`3 (config 1)`).
pub fn weight_text(b: &BackendView) -> String {
    match b.configured_weight {
        Some(c) if c != b.weight => format!("{} (config {c})", b.weight),
        _ => b.weight.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::backend;
    use crate::{Cli, Command};
    use clap::Parser;
    use lb_daemon::api::model::BackendSetting;

    fn parsed(args: &[&str]) -> BackendCommand {
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Backend { action }) => action,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn commands_make_their_requests() {
        let r = parsed(&["lbctl", "backend", "drain", "10.0.1.1:8080"]).request();
        assert_eq!(
            (r.addr.as_str(), r.action, r.pool, r.force),
            ("10.0.1.1:8080", BackendAction::Drain, None, false)
        );
        let r = parsed(&[
            "lbctl",
            "-s",
            "web",
            "backend",
            "disable",
            "10.0.1.1:8080",
            "--pool",
            "pool-a",
            "--force",
        ])
        .request();
        assert_eq!((r.action, r.pool.as_deref(), r.force), (BackendAction::Disable, Some("pool-a"), true));
        let r = parsed(&["lbctl", "backend", "enable", "[2001:db8::1]:443"]).request();
        assert_eq!((r.action, r.weight), (BackendAction::Enable, None));
        let r = parsed(&["lbctl", "backend", "weight", "10.0.1.1:8080", "3"]).request();
        assert_eq!((r.action, r.weight), (BackendAction::Weight, Some(3)));
        for bad in [
            &["lbctl", "backend", "weight", "10.0.1.1:8080", "10001"][..],
            &["lbctl", "backend", "weight", "10.0.1.1:8080"],
            &["lbctl", "backend", "drain"],
            &["lbctl", "backend", "enable", "10.0.1.1:8080", "--force"],
            &["lbctl", "backend", "pause", "10.0.1.1:8080"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outcome_and_columns() {
        let mut o = BackendOutcome {
            service: "web".into(),
            pool: "pool-a".into(),
            addr: "10.0.1.1:8080".into(),
            changed: true,
            before: BackendSetting { admin: BackendAdmin::Enabled, weight: 1 },
            after: BackendSetting { admin: BackendAdmin::Drain, weight: 1 },
            apply_us: 52,
            history_id: Some(3),
            warnings: vec!["forced: pool-a takes new flows and would be left with 0".into()],
        };
        assert_eq!(
            render(&o),
            "web/pool-a 10.0.1.1:8080: enabled (weight 1) -> drain (weight 1), applied in 52 us\n\
             warning: forced: pool-a takes new flows and would be left with 0\n"
        );
        o.changed = false;
        o.warnings.clear();
        assert_eq!(render(&o), "web/pool-a 10.0.1.1:8080: already drain (weight 1), nothing changed\n");
        let mut b = backend("10.0.1.1:8080", true, 0, None);
        assert_eq!((state_text(&b, Paint::OFF), weight_text(&b)), ("up".into(), "1".into()));
        b.admin = BackendAdmin::Disabled;
        b.weight = 3;
        b.configured_weight = Some(1);
        assert_eq!(
            (state_text(&b, Paint::OFF), weight_text(&b)),
            ("up, disabled".into(), "3 (config 1)".into())
        );
    }
}
