//! xvs agent library: the desired-state model, its sources, and the dataplane it is rendered
//! into. The `xvs` binary and the root-only kernel tests both drive xvs through this crate.
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod ipvs;
pub mod metrics;
pub mod model;
pub mod source;
pub mod sync;
pub mod view;

/// An error with its causes, `: `-separated, for one-line logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
