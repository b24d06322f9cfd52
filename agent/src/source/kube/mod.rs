//! The Kubernetes source: Services and EndpointSlices become the desired state by kube-proxy's
//! rules. This module is the pure translation; the API watchers are still to come (issue 5).
pub mod translate;
