//! Types and pure logic shared by the xvs eBPF datapath (kernel side) and the agent (user side).
//!
//! Everything that crosses the kernel/user boundary lives here, `#[repr(C)]` with explicit
//! padding so both sides agree on every byte. The pure helpers (checksums, scheduler tables,
//! the source hash) are the same code in the datapath and in host unit tests.
#![no_std]
#![deny(unsafe_code)]

pub mod csum;
pub mod flow;
pub mod maglev;
pub mod maps;
pub mod reason;
pub mod sched;
pub mod snat;
pub mod sock;

pub use maps::*;
pub use reason::Reason;

#[cfg(feature = "user")]
mod pod;
