use xvs_integration::*;

#[test]
fn programs_pass_the_verifier() {
    let mut dp = load();
    dp.xdp().unwrap_or_else(|e| panic!("{e}"));
    dp.tc(xvs::dataplane::PROG_TC_INGRESS).unwrap_or_else(|e| panic!("{e}"));
    dp.tc(xvs::dataplane::PROG_TC_EGRESS).unwrap_or_else(|e| panic!("{e}"));
}
