//! The XDP data plane as the control plane sees it: the embedded objects, loading them, and
//! typed access to every map.

mod batch;
mod handle;
mod iface_mac;
mod objects;

pub use batch::{BATCH, FlowReader};
pub use handle::{AttachMode, Dataplane, DataplaneError, DataplaneOptions, MAP_NAMES, PinDir};
pub use iface_mac::interface_mac;
pub use objects::{BENCH_XDP_OBJECT, LB_XDP_OBJECT};
