use xvs_integration::*;

#[test]
fn programs_pass_the_verifier() {
    let mut dp = load();
    dp.xdp().unwrap_or_else(|e| panic!("{e}"));
    dp.tc(xvs::dataplane::PROG_TC_INGRESS).unwrap_or_else(|e| panic!("{e}"));
    dp.tc(xvs::dataplane::PROG_TC_EGRESS).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn maps_take_the_capacity_asked_for_and_ids_follow_it() {
    use xvs::dataplane::{Capacity, ObjectSource};
    let capacity = Capacity { services: 20_000, backends: 200_000, slots: 400_000, flows: 4096 };
    let mut dp = ObjectSource::resolve(None).load_with(None, capacity).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dp.maps.capacity, capacity);
    // `services: 20_000` holds 20,000 services and `backends: 200_000` as many backends: the
    // last ids are usable (id 0 is reserved on top of what was asked for).
    let svc = xvs_integration::service(20_000, "10.96.0.10:80", xvs_common::IPPROTO_TCP, xvs_common::Scheduler::RoundRobin, &[(200_000, "10.0.0.1:80", 1)]);
    dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    let too_big = xvs_integration::service(1, "10.96.0.11:80", xvs_common::IPPROTO_TCP, xvs_common::Scheduler::RoundRobin, &[(200_001, "10.0.0.1:80", 1)]);
    let err = dp.maps.apply_service(&too_big).map_err(|e| e.to_string());
    assert_eq!(err, Err("service TCP 10.96.0.11:80: backend id 200001 is out of range (1..=200000)".into()));
}
