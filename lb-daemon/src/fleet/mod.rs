//! Several balancer hosts behind ECMP: this host announces the VIPs it can serve by BGP, spoken
//! by a local BIRD 2 (see the README's "Fleet (BGP)" section for BIRD's side).
//!
//! Completely inert without a `[bgp]` table ([`BgpConfig`]): no file is written, `birdc` is
//! never run and the host API answers that BGP is not configured.
//!
//! - [`config`]: the `[bgp]` table and its rules (also: no `nat` service with BGP).
//! - [`announce`]: which VIP addresses to announce and why not the others (pure).
//! - [`bird`]: the BIRD include file and `birdc configure`.
//! - [`host`]: the running announcer: re-evaluates every [`EVALUATE_EVERY`] (health changes,
//!   switches and reloads show up in the daemon's status) and at once on `host drain` /
//!   `host undrain`; persists the maintenance state; withdraws everything on
//!   `shutdown --detach`. A plain exit, a restart or `kill -9` leaves the include file as it is,
//!   so BIRD keeps announcing while forwarding continues from the pins.
//! - [`etcd`]: the shared desired state in etcd (`[fleet]`), inert without it.
//! - [`api`]: `GET /v1/host`, `POST /v1/host/drain`, `POST /v1/host/undrain` and the `bgp`
//!   part of `GET /v1/status`.

pub mod announce;
pub mod api;
pub mod bird;
pub mod config;
pub mod etcd;
pub mod host;

pub use config::BgpConfig;
pub use host::{EVALUATE_EVERY, Fleet};

/// A `birdc` stand-in for unit tests, written once per test process (so no test executes a file
/// another thread still has open for writing). Called as `birdc -s <dir>/bird.ctl configure`, it
/// appends its arguments to `<dir>/calls`, hangs while `<dir>/hang` exists, fails like an
/// unreachable BIRD while `<dir>/fail` exists, and answers `Reconfigured` otherwise.
#[cfg(test)]
pub(crate) fn fake_birdc() -> &'static std::path::Path {
    static FAKE: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    &FAKE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let path = dir.path().join("birdc");
            let script = "#!/bin/sh\nd=$(dirname \"$2\")\necho \"$@\" >> \"$d/calls\"\n\
                          if [ -e \"$d/hang\" ]; then sleep 5; fi\n\
                          if [ -e \"$d/fail\" ]; then echo \"Unable to connect to server control socket ($2): \
                          Connection refused\"; exit 1; fi\n\
                          echo 'BIRD 2.0.12 ready.'\necho Reconfigured\n";
            std::fs::write(&path, script).expect("writing the fake birdc");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("making the fake birdc executable");
            (dir, path)
        })
        .1
}
