//! Shared desired state in etcd (`[fleet]`): several balancer hosts serve the same VIPs and
//! switch together. Completely inert without the table: the state file alone holds the desired
//! state, as on a single host.
//!
//! - [`config`]: the `[fleet]` table and its rules (also: no `nat` service in a fleet).
//! - [`records`]: the keys under `/lb/<cluster>/` and their JSON values.
//! - [`store`]: the small interface to etcd the fleet needs ([`DesiredStore`]);
//!   [`client`] implements it with `etcd-client`, `memory` (tests) in memory.
//! - [`node`]: a host's membership: resync, watch, apply through the engine's
//!   [`Core::apply_fleet`](crate::engine::Core::apply_fleet), out of sync while etcd is away.
//! - [`change`]: a switch, rollback or split as ONE etcd transaction, gated on the fleet's view.
//! - [`rollback`]: `--watch` records any host executes, once.
//! - [`status`]: the host's status under a lease, the fleet view, `/metrics`.
//! - [`api`]: `GET /v1/fleet` and `fleet` in `GET /v1/status`.
//! - [`history`]: the fleet's history (entries and applied marks) for `GET /v1/history`.
//! - [`digest`]: the digest of the service config each host publishes, compared across hosts.

pub mod api;
pub mod change;
pub mod client;
pub mod config;
pub mod digest;
pub mod history;
pub mod join;
#[cfg(test)]
pub mod memory;
pub mod node;
pub mod records;
pub mod rollback;
pub mod status;
pub mod store;
#[cfg(test)]
mod tests;

pub use change::ChangeRequest;
pub use config::FleetConfig;
pub use node::FleetNode;
pub use store::DesiredStore;
