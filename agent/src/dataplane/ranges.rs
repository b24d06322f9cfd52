//! Writing and reading a service's source ranges (`XVS_SOURCE_RANGES`, an LPM trie keyed by
//! service id and client prefix; see ebpf/src/ranges.rs).
use std::{collections::BTreeMap, net::IpAddr};


use aya::maps::lpm_trie::Key;
use xvs_common::{SourceRange, MAP_SOURCE_RANGES};

use super::{addr::to_map_addr, error::is_missing, DataplaneError, Maps, ServiceEntry};

/// Source ranges read back: service id -> (map address, prefix bits).
pub type RawRanges = BTreeMap<u32, Vec<([u32; 4], u8)>>;

fn key(svc_id: u32, &(addr, prefix): &(IpAddr, u8)) -> Key<SourceRange> {
    Key::new(SourceRange::prefix_len(prefix), SourceRange { svc_id_be: svc_id.to_be(), addr: to_map_addr(addr).0 })
}

impl Maps {
    /// Adds the ranges `new` has and `old` (as written; `None`: unknown) had not: before the
    /// service entry that turns the check on, so no allowed client is refused meanwhile.
    pub(super) fn add_ranges(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError> {
        let had = |r: &(IpAddr, u8)| old.is_some_and(|o| o.svc_id == new.svc_id && o.source_ranges.contains(r));
        for r in new.source_ranges.iter().filter(|r| !had(r)) {
            self.source_ranges.insert(&key(new.svc_id, r), 1, 0).map_err(DataplaneError::map(MAP_SOURCE_RANGES, "write"))?;
        }
        Ok(())
    }

    /// Removes the ranges of `old` that `new` (`None`: the service goes) has not: after the
    /// service entry, so no allowed client is refused meanwhile.
    pub(super) fn drop_ranges(&mut self, old: &ServiceEntry, new: Option<&ServiceEntry>) -> Result<(), DataplaneError> {
        let kept = |r: &(IpAddr, u8)| new.is_some_and(|n| n.svc_id == old.svc_id && n.source_ranges.contains(r));
        for r in old.source_ranges.iter().filter(|r| !kept(r)) {
            match self.source_ranges.remove(&key(old.svc_id, r)) {
                Err(e) if !is_missing(&e) => return Err(DataplaneError::map(MAP_SOURCE_RANGES, "delete")(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every service's ranges by service id, as (map address, prefix bits): the family is the
    /// service's (a v6 /32 and a v4 /32 look alike here).
    pub fn source_ranges(&self) -> Result<RawRanges, DataplaneError> {
        let mut out = RawRanges::new();
        for item in self.source_ranges.keys() {
            let k = match item {
                Ok(k) => k,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(DataplaneError::map(MAP_SOURCE_RANGES, "read")(e)),
            };
            let data = k.data();
            let bits = k.prefix_len().saturating_sub(32).min(128) as u8;
            out.entry(u32::from_be(data.svc_id_be)).or_default().push((data.addr, bits));
        }
        Ok(out)
    }
}
