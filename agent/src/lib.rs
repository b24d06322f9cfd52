//! xvs agent library: the userspace side of the datapath. The `xvs` binary and the root-only
//! kernel tests both drive the dataplane through this crate.
pub mod dataplane;
