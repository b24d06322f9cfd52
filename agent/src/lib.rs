//! xvs agent library: the desired-state model, its sources, and the dataplane it is rendered
//! into. The `xvs` binary and the root-only kernel tests both drive xvs through this crate.
pub mod dataplane;
pub mod model;
pub mod source;
