//! Source ranges (kube-proxy's `loadBalancerSourceRanges`): a service that has them opens new
//! flows only for clients inside one, looked up in an LPM trie keyed by service and address.
//! As in kube-proxy, the check is on new flows: established ones were allowed when they began.
use aya_ebpf::maps::lpm_trie::Key;
use xvs_common::{Reason, ServiceValue, SourceRange, SERVICE_F_SOURCE_RANGES};

use crate::{maps::XVS_SOURCE_RANGES, parse::PacketMeta};

#[inline(always)]
pub fn admit(svc: &ServiceValue, meta: &PacketMeta) -> Result<(), Reason> {
    if svc.flags & SERVICE_F_SOURCE_RANGES == 0 {
        return Ok(());
    }
    let bits = if meta.is_v6() { 128 } else { 32 };
    let key = Key { prefix_len: SourceRange::prefix_len(bits), data: SourceRange { svc_id_be: svc.svc_id.to_be(), addr: meta.saddr } };
    XVS_SOURCE_RANGES.get(&key).map(|_| ()).ok_or(Reason::SourceRangeDenied)
}
