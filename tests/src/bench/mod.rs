//! `cargo xtask bench`: what users of a performance cluster care about, each figure printed
//! beside a baseline measured in the same run (the empty XDP program for per-packet cost,
//! kube-proxy's iptables-restore for control-plane sync, the same agent with one service for
//! memory). Benchmarks, not tests: nothing here fails on a slow machine.
pub mod control;
pub mod datapath;
pub mod eastwest;
pub mod floor;
pub mod kube;
pub mod nodeport;
pub mod svg;
pub mod throughput;
