//! `lbctl switch`: make a pool active, then optionally wait for it to take effect and follow
//! the daemon's watch (see [`crate::follow`]).

use lb_daemon::api::client::Client;
use lb_daemon::api::model::{SwitchOutcome, SwitchRequest};

use super::{changed, parse, service_path};
use crate::failure::Failure;
use crate::fleet;
use crate::follow::{self, Followed, Pace, Waits};
use crate::render::{json, parts, print_stdout};
use crate::{ChangeFlags, SwitchHow, WaitFlags, args};

/// `POST /v1/services/{name}/switch`, then `--wait-fleet` and the other waits asked for. Progress lines are printed as
/// they come (text); JSON output is one document at the end.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json_out: bool,
    pool: &str,
    how: SwitchHow,
    change: &ChangeFlags,
    flags: WaitFlags,
) -> Result<String, Failure> {
    let wait_fleet = flags.fleet.wait_fleet;
    let req = SwitchRequest {
        pool: pool.to_owned(),
        hard: how.hard,
        force: how.force.force,
        dry_run: change.dry_run,
        expect_active: change.expect_active.clone(),
        watch_s: flags.watch.map(args::watch_secs),
    };
    let raw = client.post_text(&service_path(service, "switch"), &req)?;
    let waits = Waits { new_flow: flags.wait, drained: flags.wait_drained, watch: flags.watch };
    if !waits.any() {
        return changed(client, json_out, &raw, "switch", wait_fleet);
    }
    let o: SwitchOutcome = parse(&raw)?;
    if !json_out {
        print_stdout(&parts::outcome_text(&o, "switch"));
    }
    // Every host first (the change is in force everywhere), then what follows it here.
    let raw = match wait_fleet.and_then(|t| fleet::after_change(client, &raw, t)) {
        Some((waited, Err(e))) => {
            if json_out {
                let doc = fleet::with_wait(&raw, &waited);
                print_stdout(&json::followed(&doc, waits, &Followed::default(), Some(&e)));
            }
            return Err(e);
        }
        Some((waited, Ok(()))) => {
            if !json_out {
                print_stdout(&fleet::applied_line(&waited));
            }
            fleet::with_wait(&raw, &waited)
        }
        None => raw,
    };
    let pace = Pace::standard(flags.retry_for);
    let (seen, result) = if o.dry_run {
        if !json_out {
            print_stdout("dry run: nothing changed, so nothing to wait for\n");
        }
        (Followed::default(), Ok(()))
    } else if json_out {
        follow::follow(client, &o, pool, waits, &pace, &mut |_| {})
    } else {
        follow::follow(client, &o, pool, waits, &pace, &mut |line| print_stdout(&line))
    };
    if json_out {
        print_stdout(&json::followed(&raw, waits, &seen, result.as_ref().err()));
    }
    result.map(|()| String::new())
}
