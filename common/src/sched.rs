//! Scheduler logic with IPVS semantics, shared by the datapath (per-packet steps) and the agent
//! (building the per-service selection tables).
//!
//! Every scheduler is a table of slots -> backend plus a per-packet way to pick a slot:
//! - `rr`: one slot per active backend; slot = shared atomic cursor % len.
//! - `wrr`: one full cycle of the kernel's `ip_vs_wrr_schedule` sequence; slot = cursor % len.
//! - `sh`: the kernel's 256-bucket table from `ip_vs_sh_reassign`, with each bucket whose
//!   destination has weight 0 resolved by the kernel's `sh-fallback` walk; slot = source hash.
//!
//! Tables follow the kernel's destination list order (newest first; see the agent's
//! `dataplane::ipvs_list`). Weight-0 backends never answer a new flow (graceful drain), while
//! their established flows keep going through the connection table; sh still gives them their
//! buckets, as the kernel does, so that a drain moves no other source.

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
        let (di, mw) = wrr_params(weights);
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

/// The kernel's `ip_vs_wrr_gcd_weight` and `mw` (max weight - (di - 1)): the cycle's step and
/// its top level. `(1, 0)` when no weight is positive.
pub fn wrr_params(weights: &[u32]) -> (u32, u32) {
    let (mut di, mut max) = (0u32, 0u32);
    for &w in weights {
        if w > 0 {
            di = gcd(di, w);
            max = max.max(w);
        }
    }
    let di = di.max(1);
    (di, max.saturating_sub(di - 1))
}

/// `ip_vs_wrr_dest_changed`: the level `cw` the kernel continues at after any destination is
/// added, edited or removed (it also restarts at the list head).
pub fn wrr_changed_level(cw: u32, weights: &[u32]) -> u32 {
    let (di, mw) = wrr_params(weights);
    if cw > mw || cw == 0 {
        mw
    } else if di > 1 {
        (cw / di) * di + 1
    } else {
        cw
    }
}

/// The wrr cycle's blocks, top level first, as (level, first position, length): one block per
/// level (mw, mw - di, ... > 0), each every backend of weight >= level in list order.
fn wrr_blocks(weights: &[u32]) -> impl Iterator<Item = (u32, usize, usize)> + '_ {
    let (di, mw) = wrr_params(weights);
    let mut start = 0;
    core::iter::successors((mw > 0).then_some(mw), move |&level| level.checked_sub(di).filter(|&l| l > 0)).map(move |level| {
        let len = weights.iter().filter(|&&w| w >= level).count();
        start += len;
        (level, start - len, len)
    })
}

/// The cycle position where the kernel's pass at level `cw` from the list head begins. A level
/// between two block levels starts at the next lower block.
pub fn wrr_level_offset(weights: &[u32], cw: u32) -> usize {
    wrr_blocks(weights).take_while(|&(level, _, _)| level > cw).map(|(_, _, len)| len).sum()
}

/// The level of the block the cycle position `slot` lies in (the kernel's `cw` after it
/// picked that slot); 0 when the cycle is empty.
pub fn wrr_slot_level(weights: &[u32], slot: usize) -> u32 {
    wrr_blocks(weights).find(|&(_, start, len)| slot < start + len).map_or(0, |(level, _, _)| level)
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
/// `weight` consecutive buckets (a weight-0 destination one: `++d_count >= weight`), wrapping
/// around until all 256 are assigned. `None` when there is no destination.
pub fn sh_table(weights: &[u32]) -> Option<[usize; SH_TABLE_SIZE]> {
    if weights.is_empty() {
        return None;
    }
    let mut table = [0usize; SH_TABLE_SIZE];
    let mut p = 0usize;
    let mut given = 0u32;
    for bucket in &mut table {
        *bucket = p;
        given += 1;
        if given >= weights[p] {
            p = (p + 1) % weights.len();
            given = 0;
        }
    }
    Some(table)
}

/// `ip_vs_sh_get_fallback()` for every bucket of `table`: a bucket whose destination has
/// weight 0 takes the first available one the kernel's walk finds. The walk adds its offset
/// to the bucket twice (`(offset + ihash) % 256` fed back into the hash with offset), so it
/// visits buckets `2 * ihash + k` for k = 0..255. `None` when no destination is available.
pub fn sh_fallback(table: &[usize; SH_TABLE_SIZE], weights: &[u32]) -> Option<[usize; SH_TABLE_SIZE]> {
    if !table.iter().any(|&d| weights[d] > 0) {
        return None;
    }
    let mut out = *table;
    for (ihash, slot) in out.iter_mut().enumerate() {
        if weights[*slot] > 0 {
            continue;
        }
        for k in 0..SH_TABLE_SIZE {
            let d = table[(2 * ihash + k) % SH_TABLE_SIZE];
            if weights[d] > 0 {
                *slot = d;
                break;
            }
        }
    }
    Some(out)
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
        // A weight-0 destination keeps one bucket per round, as in the kernel.
        let t = sh_table(&[2, 0, 1]).unwrap_or([9; SH_TABLE_SIZE]);
        assert_eq!(&t[..8], &[0, 0, 1, 2, 0, 0, 1, 2]);
        assert!(sh_table(&[0, 0]).is_some());
        assert!(sh_table(&[]).is_none());
    }

    #[test]
    fn sh_fallback_walks_from_twice_the_bucket() {
        // Buckets: 0 1 2 0 1 2 ...; backend 1 drains. Bucket 1 (ihash 1) walks 2, 3, ...: 2.
        // Bucket 4 (ihash 4) walks 8 (backend 2). Bucket 130 walks 260 % 256 = 4 (backend 1,
        // drained), then 5 (backend 2).
        let weights = [1, 0, 1];
        let t = sh_table(&weights).unwrap_or([9; SH_TABLE_SIZE]);
        let f = sh_fallback(&t, &weights).unwrap_or([9; SH_TABLE_SIZE]);
        assert_eq!((f[0], f[1], f[2], f[3]), (0, 2, 2, 0));
        assert_eq!(t[4], 1);
        assert_eq!(f[4], t[8]);
        assert_eq!((t[130], t[4], t[5], f[130]), (1, 1, 2, 2));
        assert!(f.iter().all(|&d| weights[d] > 0));
        assert!(sh_fallback(&t, &[0, 0, 0]).is_none());
    }

    #[test]
    fn wrr_levels_and_offsets_follow_the_blocks() {
        // Weights 1/2/3 (list order): blocks cw=3 [2], cw=2 [1,2], cw=1 [0,1,2].
        let w = [1, 2, 3];
        assert_eq!(wrr_params(&w), (1, 3));
        assert_eq!([0, 1, 2, 3].map(|cw| wrr_level_offset(&w, cw)), [6, 3, 1, 0]);
        assert_eq!((0..6).map(|s| wrr_slot_level(&w, s)).collect::<Vec<_>>(), [3, 2, 2, 1, 1, 1]);
        // di = 2: mw = 6 - 1 = 5, levels 5, 3, 1.
        let w = [2, 4, 6];
        assert_eq!(wrr_params(&w), (2, 5));
        assert_eq!(wrr_changed_level(4, &w), 5);
        assert_eq!(wrr_changed_level(2, &w), 3);
        assert_eq!(wrr_changed_level(0, &w), 5);
        assert_eq!(wrr_changed_level(9, &w), 5);
        assert_eq!(wrr_level_offset(&w, 3), 1);
        // Nothing positive: no levels.
        assert_eq!(wrr_params(&[0, 0]), (1, 0));
        assert_eq!(wrr_changed_level(3, &[0]), 0);
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
