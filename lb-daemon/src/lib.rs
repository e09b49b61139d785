//! The load balancer's control plane: loading and driving the XDP data plane.

pub mod dataplane;
