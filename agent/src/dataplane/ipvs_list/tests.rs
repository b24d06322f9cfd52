//! The model against a line-by-line transcription of the kernel (ip_vs_ctl.c's list handling,
//! ip_vs_rr.c, ip_vs_wrr.c, ip_vs_sh.c with sh-fallback): random sequences of changes and
//! flows, and every choice compared.
use std::net::{IpAddr, SocketAddr};

use xvs_common::{sched::sh_bucket, Scheduler, ServiceValue};

use crate::dataplane::ServiceEntry;

use super::*;

/// The kernel's side: the list (head first) and each scheduler's private state.
struct Kernel {
    scheduler: Scheduler,
    list: Vec<(SocketAddr, u32)>,
    /// rr: `sched_data`, the last choice (None: the list head).
    rr_last: Option<SocketAddr>,
    /// wrr: `mark->cl` (None: head) and `mark->cw`.
    cl: Option<SocketAddr>,
    cw: i64,
    sh: Vec<usize>,
}

impl Kernel {
    fn new(scheduler: Scheduler) -> Self {
        let mut k = Self { scheduler, list: Vec::new(), rr_last: None, cl: None, cw: 0, sh: Vec::new() };
        k.init();
        k
    }

    fn weights(&self) -> Vec<u32> {
        self.list.iter().map(|d| d.1).collect()
    }

    /// init_service.
    fn init(&mut self) {
        self.rr_last = None;
        self.cl = None;
        self.cw = i64::from(xvs_common::sched::wrr_params(&self.weights()).1);
        self.reassign();
    }

    fn reassign(&mut self) {
        self.sh = xvs_common::sched::sh_table(&self.weights()).map(|t| t.to_vec()).unwrap_or_default();
    }

    /// ip_vs_wrr_dest_changed / ip_vs_sh_dest_changed, for add, edit and delete alike.
    fn changed(&mut self) {
        let (di, mw) = xvs_common::sched::wrr_params(&self.weights());
        let (di, mw) = (i64::from(di), i64::from(mw));
        self.cl = None;
        if self.cw > mw || self.cw == 0 {
            self.cw = mw;
        } else if di > 1 {
            self.cw = (self.cw / di) * di + 1;
        }
        self.reassign();
    }

    fn switch(&mut self, scheduler: Scheduler) {
        if scheduler != self.scheduler {
            self.scheduler = scheduler;
            self.init();
        }
    }

    fn add(&mut self, d: (SocketAddr, u32)) {
        self.list.insert(0, d);
        self.changed();
    }

    fn edit(&mut self, ep: SocketAddr, weight: u32) {
        if let Some(d) = self.list.iter_mut().find(|d| d.0 == ep) {
            d.1 = weight;
        }
        self.changed();
    }

    fn del(&mut self, ep: SocketAddr) {
        let k = self.list.iter().position(|d| d.0 == ep).unwrap_or(usize::MAX);
        if self.rr_last == Some(ep) {
            self.rr_last = if k == 0 { None } else { Some(self.list[k - 1].0) };
        }
        self.list.remove(k);
        self.changed();
    }

    fn index(&self, at: Option<SocketAddr>) -> Option<usize> {
        at.and_then(|ep| self.list.iter().position(|d| d.0 == ep))
    }

    fn schedule(&mut self, client: IpAddr) -> Option<SocketAddr> {
        match self.scheduler {
            Scheduler::RoundRobin => {
                // From after the last choice to the end, then (unless at the head) from the
                // head up to and including it.
                let start = self.index(self.rr_last).map_or(0, |i| i + 1);
                let n = self.list.len();
                let span = if self.rr_last.is_some() { n } else { n - start };
                let pick = (0..span).map(|k| (start + k) % n.max(1)).find(|&i| self.list[i].1 > 0)?;
                self.rr_last = Some(self.list[pick].0);
                Some(self.list[pick].0)
            }
            Scheduler::WeightedRoundRobin => {
                let (di, mw) = xvs_common::sched::wrr_params(&self.weights());
                let (di, mw) = (i64::from(di), i64::from(mw));
                if mw == 0 {
                    return None;
                }
                let mut i = self.index(self.cl).map_or(0, |i| i + 1);
                loop {
                    while i < self.list.len() {
                        if i64::from(self.list[i].1) >= self.cw {
                            self.cl = Some(self.list[i].0);
                            return Some(self.list[i].0);
                        }
                        i += 1;
                    }
                    i = 0;
                    self.cw -= di;
                    if self.cw <= 0 {
                        self.cw = mw;
                    }
                }
            }
            // mh is checked against the kernel itself (ipvs_vm.rs, the differential test).
            Scheduler::MaglevHash => None,
            Scheduler::SourceHash => {
                if self.sh.is_empty() {
                    return None;
                }
                let (addr, family) = crate::dataplane::to_map_addr(client);
                let ihash = sh_bucket(&addr, family == xvs_common::AF_INET6, 0) as usize;
                let d = self.sh[ihash];
                if self.list[d].1 > 0 {
                    return Some(self.list[d].0);
                }
                (0..256).map(|k| self.sh[(k + 2 * ihash) % 256]).find(|&d| self.list[d].1 > 0).map(|d| self.list[d].0)
            }
        }
    }
}

/// xvs's side: the entry as the reconciler builds it, its fields as update_service writes
/// them, and the datapath's choice.
struct Ebpf {
    entry: ServiceEntry,
    table: Vec<usize>,
    value: ServiceValue,
    next_seq: u32,
}

impl Ebpf {
    fn new(scheduler: Scheduler) -> Self {
        let entry = ServiceEntry { svc_id: 1, vip: IpAddr::from([10, 96, 0, 1]), port: 80, proto: 6, scheduler, flags: 0, affinity_timeout: 0, backends: Vec::new(), source_ranges: Vec::new() };
        Self { entry, table: Vec::new(), value: ServiceValue::default(), next_seq: 1 }
    }

    /// One sync: the kernel operations the mirror would send, and the eBPF side's writes.
    fn sync(&mut self, kernel: &mut Kernel, scheduler: Scheduler, want: &[(SocketAddr, u32)]) {
        let old = self.entry.clone();
        let want_entries: Vec<BackendEntry> = want
            .iter()
            .map(|&(ep, weight)| {
                let kept = old.backends.iter().find(|b| SocketAddr::new(b.addr, b.port) == ep).map(|b| b.seq);
                let seq = kept.unwrap_or_else(|| {
                    self.next_seq += 1;
                    self.next_seq - 1
                });
                BackendEntry { id: seq, addr: ep.ip(), port: ep.port(), weight, seq, last_weight: weight }
            })
            .collect();
        let ops = dest_ops(&endpoints(&old.backends), want);
        kernel.switch(scheduler);
        for op in &ops {
            match *op {
                DestOp::Del(i) => kernel.del(SocketAddr::new(old.backends[i].addr, old.backends[i].port)),
                DestOp::Edit(i, j) => kernel.edit(SocketAddr::new(old.backends[i].addr, old.backends[i].port), want[j].1),
                DestOp::Add(j) => kernel.add(want[j]),
            }
        }
        let (list, _) = replay(&old.backends, &want_entries, &ops, Position::Stateless);
        let new = ServiceEntry { scheduler, backends: list, ..old.clone() };
        let table = new.table_indexes().unwrap_or_default();
        let first = old.backends.is_empty() && self.value == ServiceValue::default();
        let live = (!first).then_some(self.value);
        let (rr_cursor, sched_mark, sched_state) =
            scheduler_fields((!first).then_some(&old), live.as_ref(), &new, &table).unwrap_or_else(|e| panic!("{e}"));
        self.value = ServiceValue { svc_id: 1, rr_cursor, sched_mark, sched_state, ..ServiceValue::default() };
        self.entry = new;
        self.table = table;
    }

    fn schedule(&mut self, client: IpAddr) -> Option<SocketAddr> {
        if self.table.is_empty() {
            return None;
        }
        let slot = match self.entry.scheduler {
            Scheduler::SourceHash => {
                let (addr, family) = crate::dataplane::to_map_addr(client);
                sh_bucket(&addr, family == xvs_common::AF_INET6, 0) as usize
            }
            _ => {
                let c = self.value.rr_cursor;
                self.value.rr_cursor = c.wrapping_add(1);
                c as usize % self.table.len()
            }
        };
        let b = &self.entry.backends[self.table[slot]];
        Some(SocketAddr::new(b.addr, b.port))
    }
}

/// xorshift: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn ep(i: u64) -> SocketAddr {
    SocketAddr::from(([10, 244, (i % 3) as u8, (10 + i) as u8], 8080 + (i % 2) as u16))
}

#[test]
fn random_change_sequences_choose_exactly_what_the_kernel_chooses() {
    let schedulers = [Scheduler::RoundRobin, Scheduler::WeightedRoundRobin, Scheduler::SourceHash];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decisions = 0;
    for case in 0..400 {
        let first = schedulers[case % 3];
        let (mut kernel, mut ebpf) = (Kernel::new(first), Ebpf::new(first));
        let mut want: Vec<(SocketAddr, u32)> = Vec::new();
        for round in 0..8 {
            // Change a few destinations: add (or re-add), remove, reweight (0 included).
            for _ in 0..1 + rng.next(4) {
                let e = ep(rng.next(12));
                match (want.iter().position(|d| d.0 == e), rng.next(3)) {
                    (Some(i), 0) => {
                        want.remove(i);
                    }
                    (Some(i), _) => want[i].1 = rng.next(5) as u32 * if rng.next(2) == 0 { 1 } else { 2 },
                    (None, _) => want.push((e, rng.next(4) as u32 + 1)),
                }
            }
            want.sort_by_key(|d| (d.0.ip(), d.0.port()));
            let scheduler = if rng.next(6) == 0 { schedulers[rng.next(3) as usize] } else { ebpf.entry.scheduler };
            ebpf.sync(&mut kernel, scheduler, &want);
            assert_eq!(kernel.list, endpoints(&ebpf.entry.backends), "case {case} round {round}: list order");
            for f in 0..rng.next(25) {
                let client = IpAddr::from([192, 168, rng.next(256) as u8, f as u8]);
                let (k, e) = (kernel.schedule(client), ebpf.schedule(client));
                assert_eq!(e, k, "case {case} round {round} flow {f} {scheduler:?} list {:?}", kernel.list);
                decisions += 1;
            }
        }
    }
    assert!(decisions > 10_000, "{decisions}");
}

#[test]
fn ops_delete_then_edit_in_list_order_then_add_in_address_order() {
    let cur = [(ep(3), 1), (ep(1), 1), (ep(2), 1)];
    let want = [(ep(5), 1), (ep(2), 4), (ep(4), 1)];
    assert_eq!(dest_ops(&cur, &want), [DestOp::Del(0), DestOp::Del(1), DestOp::Edit(2, 1), DestOp::Add(2), DestOp::Add(0)]);
}

#[test]
fn added_destinations_go_to_the_head() {
    let b = |i: u64, seq: u32| BackendEntry { id: seq, addr: ep(i).ip(), port: ep(i).port(), weight: 1, seq, last_weight: 1 };
    let old = [b(1, 1)];
    let want = [b(1, 0), b(2, 5), b(3, 6)];
    let ops = dest_ops(&endpoints(&old), &endpoints(&want));
    let (list, _) = replay(&old, &want, &ops, Position::After(0));
    // ep(3) (10.244.0.13) sorts before ep(2) (10.244.2.12): added first, it ends up second.
    assert_eq!(endpoints(&list), [(ep(2), 1), (ep(3), 1), (ep(1), 1)]);
}
