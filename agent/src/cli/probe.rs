//! `xvs probe`: loads the datapath into the kernel and reports what the node supports.
use xvs::dataplane::{cgroup2_root, ObjectSource, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP};

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
    // Socket-level load balancing is optional: say whether `--socket-lb auto` turns it on.
    let hooks = dp.load_socket_lb();
    let cgroup = cgroup2_root();
    match (&hooks, &cgroup) {
        (Ok(()), Some(root)) => println!("socket-level load balancing: supported (socket hooks verified and loaded; cgroup v2 at {})", root.display()),
        (Ok(()), None) => println!("socket-level load balancing: not supported: no cgroup v2 is mounted (the socket hooks load)"),
        (Err(e), _) => println!("socket-level load balancing: not supported: {}", xvs::error_chain(e)),
    }
    Ok(())
}
