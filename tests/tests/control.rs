//! The reconciler against the real maps: what a new service's counters start from.
use aya::maps::PerCpuValues;
use xvs::{
    model::Model,
    source::file,
    sync::{monotonic_secs, Reconciler},
};
use xvs_common::Counters;
use xvs_integration::load;

fn model(text: &str) -> Model {
    file::parse(text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Counts a previous agent left on ids (as if it had served and removed services).
fn leave_counts(dp: &mut xvs::dataplane::Dataplane, ids: impl IntoIterator<Item = u32>) {
    let cpus = aya::util::nr_cpus().unwrap_or_else(|(_, e)| panic!("{e}"));
    let stale = || PerCpuValues::try_from(vec![Counters { conns: 7, in_pkts: 9, ..Counters::default() }; cpus]).unwrap_or_else(|e| panic!("{e}"));
    for id in ids {
        dp.maps.service_stats.set(id, stale(), 0).unwrap_or_else(|e| panic!("{e}"));
        dp.maps.backend_stats.set(id, stale(), 0).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Fresh ids are zeroed in a few batched writes before the first sync, not one by one; an id
/// released and handed out again is zeroed as it is reused. Either way a new service and its
/// backends start from zero, whatever counts the maps held.
#[test]
fn new_services_start_from_zero_counters_whether_ids_are_fresh_or_reused() {
    let mut dp = load();
    leave_counts(&mut dp, 1..=8);
    let two = model("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nbackends = [{ endpoint = \"10.0.0.1:80\" }, { endpoint = \"10.0.0.2:80\" }]\n");
    let mut r = Reconciler::new(30, dp.maps.capacity);
    r.zero_unused_counters(&mut dp.maps).unwrap_or_else(|e| panic!("{e}"));
    let zero = Counters::default();
    let check = |dp: &xvs::dataplane::Dataplane, r: &Reconciler, when: &str| {
        for e in r.applied() {
            assert_eq!(dp.maps.service_counters(e.svc_id).ok(), Some(zero), "{when}: service id {}", e.svc_id);
            for b in &e.backends {
                assert_eq!(dp.maps.backend_counters(b.id).ok(), Some(zero), "{when}: backend id {}", b.id);
            }
        }
    };
    let (_, errors) = r.sync(&two, &mut dp.maps, monotonic_secs());
    assert!(errors.is_empty(), "{errors:?}");
    check(&dp, &r, "fresh ids");
    // The service goes; counts land on its ids afterwards; it comes back on the same ids.
    let ids: Vec<u32> = r.applied().flat_map(|e| std::iter::once(e.svc_id).chain(e.backends.iter().map(|b| b.id))).collect();
    let (_, errors) = r.sync(&Model::default(), &mut dp.maps, monotonic_secs());
    assert!(errors.is_empty(), "{errors:?}");
    leave_counts(&mut dp, ids.iter().copied());
    let (_, errors) = r.sync(&two, &mut dp.maps, monotonic_secs());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r.applied().map(|e| e.svc_id).collect::<Vec<_>>(), [1], "the lowest free id again");
    check(&dp, &r, "reused ids");
}
