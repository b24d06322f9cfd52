//! The Kubernetes source: Services and EndpointSlices become the desired state by kube-proxy's
//! rules. `translate` (with `endpoints`) is pure (`incremental` reuses unchanged Services' parts); `watch` keeps reflector stores of the API objects; `events`
//! reports skipped objects back to the cluster as Events.
mod endpoints;
pub mod events;
pub mod health;
pub mod incremental;
pub mod node_ports;
#[cfg(test)]
mod parity;
pub mod translate;
pub mod watch;

pub use node_ports::NodePortAddresses;
pub use translate::{Node, ObjectRef, Warning};
pub use watch::{client, KubeError, KubeSource, LocalAddresses, Snapshot, Watched};
