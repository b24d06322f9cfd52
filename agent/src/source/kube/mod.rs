//! The Kubernetes source: Services and EndpointSlices become the desired state by kube-proxy's
//! rules. `translate` (with `endpoints`) is pure; `incremental` keeps each Service's part, so a
//! full sync re-translates only changed Services and an event-driven one (with `slices`, which
//! finds a slice's Services) only the Services the watch events named; `watch` keeps reflector
//! stores of the API objects; `events` reports skipped objects back to the cluster as Events.
mod endpoints;
pub mod events;
pub mod health;
pub mod incremental;
pub mod node_ports;
#[cfg(test)]
mod event_path_tests;
#[cfg(test)]
mod parity;
pub mod slices;
pub mod store;
pub mod translate;
pub mod watch;

pub use node_ports::NodePortAddresses;
pub use translate::{Node, ObjectRef, Warning};
pub use watch::{client, Desired, KubeError, KubeSource, LocalAddresses, Snapshot, Watched};
