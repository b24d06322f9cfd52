//! The Kubernetes source: Services and EndpointSlices become the desired state by kube-proxy's
//! rules. `translate` is pure (`incremental` reuses unchanged Services' parts); `watch` keeps reflector stores of the API objects; `events`
//! reports skipped objects back to the cluster as Events.
pub mod events;
pub mod incremental;
pub mod translate;
pub mod watch;

pub use translate::{Node, ObjectRef, Warning};
pub use watch::{client, KubeError, KubeSource, Snapshot, Watched};
