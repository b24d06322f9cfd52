//! Whether a desired state fits the maps, checked whole before anything is written: a state
//! over capacity is refused with one error naming the flag to raise, never applied in part
//! (which would leave an arbitrary subset of services programmed, and one error per service
//! in the log on every resync).
use xvs_common::{sched::WrrCycle, Scheduler};

use std::collections::BTreeMap;

use crate::{
    dataplane::Capacity,
    model::{Model, Service},
};

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
    Usage::of(model).check(capacity)
}

/// What a desired state takes of the maps, kept service by service: a patch is checked at the
/// cost of its services, not of the whole model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    services: u64,
    backends: u64,
    slots: u64,
    /// Table lengths in use, with how many services have each (the largest is needed).
    tables: BTreeMap<u64, u64>,
}

impl Usage {
    pub fn of(model: &Model) -> Self {
        let mut usage = Self::default();
        for svc in model.services() {
            usage.add(svc);
        }
        usage
    }

    pub fn add(&mut self, svc: &Service) {
        if !svc.id.proto.in_ebpf() {
            return;
        }
        let len = table_len(svc);
        self.services += 1;
        self.backends += svc.backends.len() as u64;
        self.slots += len;
        *self.tables.entry(len).or_default() += 1;
    }

    pub fn remove(&mut self, svc: &Service) {
        if !svc.id.proto.in_ebpf() {
            return;
        }
        let len = table_len(svc);
        self.services = self.services.saturating_sub(1);
        self.backends = self.backends.saturating_sub(svc.backends.len() as u64);
        self.slots = self.slots.saturating_sub(len);
        if let Some(n) = self.tables.get_mut(&len) {
            *n -= 1;
            if *n == 0 {
                self.tables.remove(&len);
            }
        }
    }

    pub fn check(&self, capacity: &Capacity) -> Result<(), OverCapacity> {
        // Make-before-break writes a service's new table beside its old one: room for the largest.
        let slots = self.slots + self.tables.keys().next_back().copied().unwrap_or(0);
        for (what, needed, have, flag) in [
            ("services", self.services, capacity.services, "--max-services"),
            ("backends", self.backends, capacity.backends, "--max-backends"),
            ("selection-table slots", slots, capacity.slots, "--max-slots"),
        ] {
            if needed > u64::from(have) {
                return Err(OverCapacity { what, needed, have: u64::from(have), flag });
            }
        }
        Ok(())
    }
}

/// The slots a service's selection table takes (see dataplane/tables.rs).
fn table_len(service: &Service) -> u64 {
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

    /// Kept service by service, the usage always equals one counted from scratch.
    #[test]
    fn usage_kept_by_patches_equals_a_fresh_count() {
        let small = model(3, 2);
        let big = model(5, 4);
        let mut usage = Usage::of(&small);
        for svc in small.services() {
            usage.remove(svc);
        }
        assert_eq!(usage, Usage::default());
        for svc in big.services() {
            usage.add(svc);
        }
        assert_eq!(usage, Usage::of(&big));
        // The largest table goes with the last service that has it.
        for svc in big.services().filter(|s| s.id.vip.to_string() != "10.96.0.1") {
            usage.remove(svc);
        }
        let one = big.services().find(|s| s.id.vip.to_string() == "10.96.0.1").cloned().into_iter().collect::<Vec<_>>();
        assert_eq!(usage, Usage::of(&Model::new(one).unwrap_or_default()));
    }
}
