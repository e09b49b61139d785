//! Types and pure logic shared by the XDP program (`lb-ebpf`) and the control plane
//! (`lb-daemon`): the `#[repr(C)]` map keys and values, counter layout, the flow hash, the
//! incremental checksum arithmetic and (userspace only) the Maglev table builder.
//!
//! Everything the kernel program uses is `no_std`, allocation-free and `#[inline(always)]`, so
//! the same code is unit-tested here and verified in the kernel.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(all(test, not(feature = "user")))]
extern crate std;

pub mod csum;
pub mod filter;
pub mod hash;
pub mod maps;
pub mod packet;
pub mod stats;

#[cfg(feature = "user")]
pub mod maglev;
