//! Whether a desired state fits the maps, checked whole before anything is written: a state
//! over capacity is refused with one error naming the flag to raise, never applied in part
//! (which would leave an arbitrary subset of services programmed, and one error per service
//! in the log on every resync).
use xvs_common::{sched::WrrCycle, Scheduler};

use crate::{dataplane::Capacity, model::Model};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the desired state needs {needed} {what}, the eBPF maps hold {have}: raise {flag} (maps already pinned keep their \
     size: `xvs cleanup` first, which drops established flows); keeping the last good state"
)]
pub struct OverCapacity {
    pub what: &'static str,
    pub needed: u64,
    pub have: u64,
    pub flag: &'static str,
}

/// Checks services, backends and selection-table slots against `capacity`.
pub fn check(model: &Model, capacity: &Capacity) -> Result<(), OverCapacity> {
    let services = model.in_ebpf().count() as u64;
    let backends: u64 = model.in_ebpf().map(|s| s.backends.len() as u64).sum();
    // Make-before-break writes a service's new table beside its old one: room for the largest.
    let tables: Vec<u64> = model.in_ebpf().map(table_len).collect();
    let slots = tables.iter().sum::<u64>() + tables.iter().max().copied().unwrap_or(0);
    for (what, needed, have, flag) in [
        ("services", services, capacity.services, "--max-services"),
        ("backends", backends, capacity.backends, "--max-backends"),
        ("selection-table slots", slots, capacity.slots, "--max-slots"),
    ] {
        if needed > u64::from(have) {
            return Err(OverCapacity { what, needed, have: u64::from(have), flag });
        }
    }
    Ok(())
}

/// The slots a service's selection table takes (see dataplane/tables.rs).
fn table_len(service: &crate::model::Service) -> u64 {
    let weights: Vec<u32> = service.backends.iter().map(|b| b.effective_weight()).collect();
    match service.scheduler {
        Scheduler::RoundRobin => weights.iter().filter(|&&w| w > 0).count() as u64,
        Scheduler::WeightedRoundRobin => WrrCycle::len_hint(&weights),
        Scheduler::SourceHash if weights.iter().any(|&w| w > 0) => xvs_common::sched::SH_TABLE_SIZE as u64,
        Scheduler::SourceHash => 0,
        // Built from last weights, which a drained destination keeps: any backend may hold one.
        Scheduler::MaglevHash if !weights.is_empty() => u64::from(xvs_common::maglev::MH_TABLE_SIZE),
        Scheduler::MaglevHash => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file;

    fn model(services: usize, backends_each: usize) -> Model {
        let mut text = String::new();
        for s in 0..services {
            let backends: Vec<String> = (0..backends_each).map(|b| format!("{{ endpoint = \"10.1.{s}.{}:80\" }}", b + 1)).collect();
            text.push_str(&format!("[[service]]\nvip = \"10.96.0.{}\"\nport = 80\nbackends = [{}]\n", s + 1, backends.join(", ")));
        }
        file::parse(&text, std::path::Path::new("t")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn exactly_full_fits_and_one_more_is_refused_naming_the_flag() {
        let capacity = Capacity { services: 3, backends: 6, slots: 8, flows: 100 };
        assert_eq!(check(&model(3, 2), &capacity), Ok(()));
        let err = check(&model(4, 1), &capacity).err();
        assert_eq!(err.as_ref().map(|e| (e.what, e.needed, e.have, e.flag)), Some(("services", 4, 3, "--max-services")));
        assert!(err.is_some_and(|e| e.to_string().starts_with("the desired state needs 4 services, the eBPF maps hold 3: raise --max-services")));
        let err = check(&model(2, 4), &capacity).err();
        assert_eq!(err.map(|e| (e.what, e.needed)), Some(("backends", 8)));
        let tight = Capacity { slots: 5, ..capacity };
        assert_eq!(check(&model(3, 2), &tight).err().map(|e| (e.what, e.needed, e.flag)), Some(("selection-table slots", 8, "--max-slots")));
    }
}
