//! The eBPF dataplane: loading the object, attaching its programs, and typed access to its maps.
mod addr;
mod attachment;
mod capacity;
mod error;
pub mod ipvs_list;
mod layout;
mod link_events;
mod loader;
mod lock;
mod maps;
mod pin;
mod ranges;
mod service;
mod tc_netlink;
pub mod tables;

pub use addr::{from_map_addr, to_map_addr};
pub use attachment::{Attachment, Ingress};
pub use capacity::Capacity;
pub use error::{is_missing, DataplaneError};
pub use loader::{Dataplane, ObjectSource, PROG_FLOOR_FLOW_HIT, PROG_FLOOR_FLOW_INSERT, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP};
pub use link_events::LinkEvents;
pub use lock::{Holder, PinLock};
pub use tc_netlink::{detach_tc_filters, TcLinks};
pub use maps::Maps;
pub use pin::{ensure_bpffs, map_pin, unpin_all, DEFAULT_PIN_DIR};
pub use service::{BackendEntry, ServiceEntry};
pub use tables::MAX_TABLE_LEN;
