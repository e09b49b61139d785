//! The load balancer's control plane: configuration, the engine that drives the XDP data plane,
//! the management API and the `lbctl` client.

pub mod api;
pub mod atomic_file;
pub mod config;
pub mod dataplane;
pub mod engine;
pub mod fleet;
pub mod health;
pub mod lock;
pub mod man;
pub mod neighbours;
pub mod preflight;
pub mod process_metrics;
pub mod service_manager;
