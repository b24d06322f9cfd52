//! Scheduler logic with IPVS semantics, shared by the datapath (per-packet steps) and the agent
//! (building the per-service selection tables).
//!
//! Every scheduler is a table of slots -> backend plus a per-packet way to pick a slot:
//! - `rr`: one slot per active backend; slot = shared atomic cursor % len.
//! - `wrr`: one full cycle of the kernel's `ip_vs_wrr_schedule` sequence; slot = cursor % len.
//! - `sh`: the kernel's 256-bucket table from `ip_vs_sh_reassign`; slot = kernel's source hash.
//!
//! Weight-0 backends are left out of every table: they take no new flows (graceful drain), while
//! their established flows keep going through the connection table.

/// IPVS `IP_VS_SH_TAB_BITS` (default 8): the source-hash table has 256 buckets.
pub const SH_TABLE_BITS: u32 = 8;
pub const SH_TABLE_SIZE: usize = 1 << SH_TABLE_BITS;
/// The kernel's `GOLDEN_RATIO_32` used by `hash_32()`.
const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// The kernel's `ip_vs_sh_hashkey()` at offset 0: bucket for a client address (and port, 0
/// unless the service hashes ports). `addr` is in map representation (raw network-order words).
#[inline(always)]
pub const fn sh_bucket(addr: &[u32; 4], v6: bool, port_be: u16) -> u32 {
    let fold = if v6 { addr[0] ^ addr[1] ^ addr[2] ^ addr[3] } else { addr[0] };
    let val = (u16::from_be(port_be) as u32).wrapping_add(u32::from_be(fold));
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - SH_TABLE_BITS)
}

/// Position in a cursor-driven table (rr, wrr) for the `cursor`-th new flow.
#[inline(always)]
pub const fn cursor_slot(cursor: u32, slot_count: u32) -> u32 {
    if slot_count == 0 { 0 } else { cursor % slot_count }
}

const fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// One full cycle of IPVS weighted round robin, as backend indices, in the order the kernel
/// picks them for a freshly created service (`ip_vs_wrr_init_svc` then repeated
/// `ip_vs_wrr_schedule`): for cw = mw, mw-di, ... > 0, every backend with weight >= cw in list
/// order, where di = gcd of the positive weights and mw = max - (di - 1).
#[derive(Clone, Debug)]
pub struct WrrCycle<'a> {
    weights: &'a [u32],
    di: u32,
    cw: u32,
    next: usize,
}

impl<'a> WrrCycle<'a> {
    pub fn new(weights: &'a [u32]) -> Self {
        let (mut di, mut max) = (0u32, 0u32);
        for &w in weights {
            if w > 0 {
                di = gcd(di, w);
                max = max.max(w);
            }
        }
        let mw = if max == 0 { 0 } else { max - (di - 1) };
        Self { weights, di, cw: mw, next: 0 }
    }

    /// Length of the cycle without walking it: sum of weight / gcd (each backend appears
    /// weight/di times, see the derivation in the module tests).
    pub fn len_hint(weights: &[u32]) -> u64 {
        let di = weights.iter().filter(|&&w| w > 0).fold(0, |g, &w| gcd(g, w));
        if di == 0 {
            return 0;
        }
        weights.iter().map(|&w| u64::from(w / di)).sum()
    }
}

impl Iterator for WrrCycle<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.cw > 0 {
            while self.next < self.weights.len() {
                let i = self.next;
                self.next += 1;
                if self.weights[i] >= self.cw {
                    return Some(i);
                }
            }
            self.next = 0;
            self.cw = self.cw.saturating_sub(self.di);
        }
        None
    }
}

/// The kernel's `ip_vs_sh_reassign()`: walks the destinations in list order and gives each
/// `weight` consecutive buckets, wrapping around until all 256 are assigned. Returns the backend
/// index per bucket, or `None` when no weight is positive. Weight-0 backends are skipped.
pub fn sh_table(weights: &[u32]) -> Option<[usize; SH_TABLE_SIZE]> {
    if !weights.iter().any(|&w| w > 0) {
        return None;
    }
    let mut table = [0usize; SH_TABLE_SIZE];
    let mut p = 0usize;
    let mut given = 0u32;
    for bucket in &mut table {
        while weights[p] == 0 {
            p = (p + 1) % weights.len();
        }
        *bucket = p;
        given += 1;
        if given >= weights[p] {
            p = (p + 1) % weights.len();
            given = 0;
        }
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::addr_v4;

    #[test]
    fn wrr_cycle_is_the_kernel_sequence() {
        // Weights 1/2/3: cw=3 -> c; cw=2 -> b,c; cw=1 -> a,b,c.
        let seq: Vec<usize> = WrrCycle::new(&[1, 2, 3]).collect();
        assert_eq!(seq, [2, 1, 2, 0, 1, 2]);
        assert_eq!(WrrCycle::len_hint(&[1, 2, 3]), 6);
    }

    #[test]
    fn wrr_uses_gcd_and_skips_zero() {
        // di = 2, mw = 4 - 1 = 3: cw=3 -> (4); cw=1 -> (2),(4).
        let seq: Vec<usize> = WrrCycle::new(&[2, 0, 4]).collect();
        assert_eq!(seq, [2, 0, 2]);
        assert_eq!(WrrCycle::len_hint(&[2, 0, 4]), 3);
        assert_eq!(WrrCycle::new(&[0, 0]).count(), 0);
        assert_eq!(WrrCycle::len_hint(&[0, 0]), 0);
    }

    #[test]
    fn wrr_len_hint_matches_walk_and_ratio_holds() {
        for weights in [&[1u32, 1, 1][..], &[5, 3, 7], &[10, 20, 30, 0, 40], &[100], &[6, 9, 12]] {
            let seq: Vec<usize> = WrrCycle::new(weights).collect();
            assert_eq!(seq.len() as u64, WrrCycle::len_hint(weights), "{weights:?}");
            let di = weights.iter().filter(|&&w| w > 0).fold(0, |g, &w| gcd(g, w));
            for (i, &w) in weights.iter().enumerate() {
                let n = seq.iter().filter(|&&x| x == i).count() as u32;
                assert_eq!(n, w / di.max(1), "{weights:?} backend {i}");
            }
        }
    }

    #[test]
    fn sh_table_gives_weight_consecutive_buckets() {
        let t = sh_table(&[1, 1, 1]).unwrap_or([9; SH_TABLE_SIZE]);
        assert_eq!(&t[..6], &[0, 1, 2, 0, 1, 2]);
        let t = sh_table(&[2, 0, 1]).unwrap_or([9; SH_TABLE_SIZE]);
        assert_eq!(&t[..6], &[0, 0, 2, 0, 0, 2]);
        assert!(sh_table(&[0, 0]).is_none());
    }

    #[test]
    fn sh_bucket_matches_kernel_hash_32() {
        // hash_32(ntohl(10.0.1.2), 8) computed by hand: 0x0a000102 * 0x61c88647 >> 24.
        let ip = 0x0a00_0102u32;
        let expect = ip.wrapping_mul(0x61c8_8647) >> 24;
        assert_eq!(sh_bucket(&addr_v4([10, 0, 1, 2]), false, 0), expect);
        // The port (when hashed) is added in host order.
        let expect_port = (ip + 8080).wrapping_mul(0x61c8_8647) >> 24;
        assert_eq!(sh_bucket(&addr_v4([10, 0, 1, 2]), false, 8080u16.to_be()), expect_port);
    }

    #[test]
    fn sh_spreads_many_sources() {
        let mut hits = [0u32; SH_TABLE_SIZE];
        for a in 0..=255u8 {
            for b in 0..16u8 {
                hits[sh_bucket(&addr_v4([10, b, 7, a]), false, 0) as usize] += 1;
            }
        }
        assert!(hits.iter().filter(|&&h| h > 0).count() > 200);
    }

    #[test]
    fn cursor_slot_wraps() {
        assert_eq!(cursor_slot(7, 3), 1);
        assert_eq!(cursor_slot(u32::MAX, 3), u32::MAX % 3);
        assert_eq!(cursor_slot(5, 0), 0);
    }
}
