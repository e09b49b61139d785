//! The XDP data plane as the control plane sees it: the embedded objects, loading them, and
//! typed access to every map.

mod batch;
mod handle;
mod objects;

pub use batch::{BATCH, FlowReader};
pub use handle::{
    AttachMode, Dataplane, DataplaneError, DataplaneOptions, MAP_NAMES, PinDir, syn_flow_entries,
};
pub use objects::{BENCH_XDP_OBJECT, LB_XDP_OBJECT};
