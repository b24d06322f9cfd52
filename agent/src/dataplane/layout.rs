//! What each pinned map must be for this build: its type, key and value sizes (and its size,
//! where that is fixed). Pins are checked against it before anything is loaded or attached, so
//! a map left by another xvs version, or by someone else, is named with what differs instead of
//! surfacing as a verifier dump or an agent that attaches and then fails.
use std::{mem::size_of, path::Path};

use aya::maps::{MapData, MapType};
use xvs_common::{
    reason::REASON_COUNT, AffinityEntry, AffinityKey, Backend, Counters, FlowEntry, FlowKey, ServiceKey, ServiceValue, SlotKey,
    MAP_AFFINITY, MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CLOCK, MAP_CONNTRACK, MAP_DRAINS, MAP_REASONS, MAP_SERVICES,
    MAP_SERVICE_STATS, MAP_SLOTS, MAP_SOURCE_RANGES, MAP_STAMP, ABI_VERSION, SourceRange, NatAddrKey, NatConfig, MAP_NAT,
    MAP_NAT_ADDRS,
    sock::{SockConfig, SockEntry, SockKey, MAP_SOCK_CONFIG, MAP_SOCK_EVENTS, MAP_SOCK_NAT, SOCK_EVENT_COUNT},
};

use super::error::DataplaneError;

/// One map as this build declares it.
struct Layout {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    /// The entries it must have, where the agent does not size it.
    entries: Option<u32>,
}

const fn layout(name: &'static str, kind: MapType, key: usize, value: usize, entries: Option<u32>) -> Layout {
    Layout { name, kind, key, value, entries }
}

const LAYOUTS: [Layout; 17] = [
    layout(MAP_SERVICES, MapType::Hash, size_of::<ServiceKey>(), size_of::<ServiceValue>(), None),
    layout(MAP_SLOTS, MapType::Hash, size_of::<SlotKey>(), size_of::<u32>(), None),
    layout(MAP_BACKENDS, MapType::Array, size_of::<u32>(), size_of::<Backend>(), None),
    layout(MAP_CONNTRACK, MapType::LruHash, size_of::<FlowKey>(), size_of::<FlowEntry>(), None),
    layout(MAP_AFFINITY, MapType::LruHash, size_of::<AffinityKey>(), size_of::<AffinityEntry>(), None),
    layout(MAP_SERVICE_STATS, MapType::PerCpuArray, size_of::<u32>(), size_of::<Counters>(), None),
    layout(MAP_BACKEND_STATS, MapType::PerCpuArray, size_of::<u32>(), size_of::<Counters>(), None),
    layout(MAP_REASONS, MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>(), Some(REASON_COUNT)),
    layout(MAP_CLOCK, MapType::Array, size_of::<u32>(), size_of::<u32>(), Some(1)),
    layout(MAP_DRAINS, MapType::Hash, size_of::<u32>(), size_of::<u32>(), None),
    layout(MAP_STAMP, MapType::Array, size_of::<u32>(), size_of::<u64>(), Some(1)),
    layout(MAP_SOURCE_RANGES, MapType::LpmTrie, size_of::<u32>() + size_of::<SourceRange>(), size_of::<u8>(), None),
    layout(MAP_NAT, MapType::Array, size_of::<u32>(), size_of::<NatConfig>(), Some(1)),
    layout(MAP_NAT_ADDRS, MapType::Hash, size_of::<NatAddrKey>(), size_of::<[u32; 4]>(), None),
    layout(MAP_SOCK_NAT, MapType::LruHash, size_of::<SockKey>(), size_of::<SockEntry>(), None),
    layout(MAP_SOCK_EVENTS, MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>(), Some(SOCK_EVENT_COUNT)),
    layout(MAP_SOCK_CONFIG, MapType::Array, size_of::<u32>(), size_of::<SockConfig>(), Some(1)),
];

/// Checks the map pinned at `path` (named `name`) against this build's layout.
pub fn check_pinned(name: &'static str, path: &Path, dir: &Path) -> Result<(), DataplaneError> {
    let Some(want) = LAYOUTS.iter().find(|l| l.name == name) else { return Ok(()) };
    let mismatch = |what: String| DataplaneError::PinnedMismatch { dir: dir.to_owned(), map: name, what };
    let info = MapData::from_pin(path).and_then(|m| m.info()).map_err(|e| mismatch(format!("cannot be read as a BPF map ({e})")))?;
    let kind = info.map_type().ok();
    if kind != Some(want.kind) {
        return Err(mismatch(format!("it is a {kind:?} map, this build needs {:?}", want.kind)));
    }
    if info.key_size() as usize != want.key || info.value_size() as usize != want.value {
        return Err(mismatch(format!(
            "its keys are {} bytes and values {} bytes, this build's are {} and {}",
            info.key_size(),
            info.value_size(),
            want.key,
            want.value
        )));
    }
    if let Some(entries) = want.entries
        && info.max_entries() != entries
    {
        return Err(mismatch(format!("it has {} entries, this build needs {entries}", info.max_entries())));
    }
    if name == MAP_STAMP {
        let stamp = pinned_stamp(path).map_err(|e| mismatch(format!("cannot be read ({e})")))?;
        // 0: created but not yet stamped (an agent that stopped before it wrote the stamp).
        if stamp != 0 && stamp != ABI_VERSION {
            return Err(mismatch(format!("the maps were made by a build whose maps mean other things (ABI {stamp}; this build's is {ABI_VERSION})")));
        }
    }
    Ok(())
}

fn pinned_stamp(path: &Path) -> Result<u64, String> {
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    let map = aya::maps::Map::from_map_data(data).map_err(|e| e.to_string())?;
    let array = aya::maps::Array::<_, u64>::try_from(map).map_err(|e| e.to_string())?;
    array.get(&0, 0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_layout() {
        for name in xvs_common::ALL_MAPS {
            assert!(LAYOUTS.iter().any(|l| l.name == name), "{name} has no layout");
        }
    }
}
