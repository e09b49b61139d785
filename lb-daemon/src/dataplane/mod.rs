//! The XDP data plane as the control plane sees it: the embedded objects, loading them, and
//! typed access to every map, behind the [`Maps`] trait the engine drives (with an in-memory
//! fake for unit tests).

mod batch;
#[cfg(test)]
pub mod fake;
mod flow_writer;
mod handle;
mod iface_mac;
pub mod links;
pub mod maps;
pub mod netdev;
mod objects;
mod options_file;

pub use batch::{BATCH, FlowReader};
pub use flow_writer::FlowWriter;
pub use handle::{
    AttachMode, Dataplane, DataplaneError, DataplaneOptions, MAP_NAMES, PinDir, REPLACEABLE_MAPS,
    set_flow_events_bytes, set_flow_reports,
};
pub use iface_mac::interface_mac;
pub use maps::{FlowSource, Maps};
pub use objects::{BENCH_XDP_OBJECT, LB_XDP_OBJECT, objects_are_stubs, require_real_objects};
