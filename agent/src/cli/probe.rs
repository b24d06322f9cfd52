//! `xvs probe`: loads the datapath into the kernel and reports what the node supports.
use xvs::dataplane::{ObjectSource, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP};

pub fn run(object: &ObjectSource) -> anyhow::Result<()> {
    println!("eBPF object: {}", object.describe());
    let mut dp = object.load()?;
    println!("maps: created");
    dp.xdp()?;
    println!("program {PROG_XDP}: verified and loaded");
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        dp.tc(name)?;
        println!("program {name}: verified and loaded");
    }
    println!("this node can run the xvs datapath (nothing was attached)");
    Ok(())
}
