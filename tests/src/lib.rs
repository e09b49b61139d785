//! Fixtures shared by the packet tests, the end-to-end tests and the data-plane benchmark:
//! network namespaces, crafted packets, and BPF_PROG_TEST_RUN.

pub mod cli;
pub mod daemon;
pub mod e2e;
pub mod etcd;
pub mod fleet_bench;
pub mod fleet_ctl;
pub mod fleet_rig;
pub mod fleet_switch_bench;
pub mod fleet_sync_bench;
pub mod flood;
pub mod interrupt;
pub mod load;
pub mod netns;
pub mod packets;
pub mod testbed;
pub mod topology;
pub mod xdp_run;
