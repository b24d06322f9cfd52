//! The kernel's Maglev table (`ip_vs_mh_permutate` + `ip_vs_mh_populate`): every destination
//! gets a preference order over the 4093 buckets from two hashes of its address and port
//! (start `offset`, step `skip`), and the destinations, in list order, take turns claiming
//! their next free preferred bucket, `turns` claims a turn in proportion to their last weights.
use std::net::IpAddr;

use xvs_common::maglev::{mh_hash, MH_KEY1, MH_KEY2, MH_SLOT_FALLBACK_SHIFT, MH_SLOT_ID_MASK, MH_TABLE_BITS, MH_TABLE_SIZE};

use super::TableError;
use crate::dataplane::{to_map_addr, BackendEntry};

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The table as indexes into `list` (the kernel's destination order), or empty when no
/// destination takes new flows (the kernel's walk then finds none: nothing is chosen; with no
/// last weight at all it resets its table, the same outcome).
pub fn table(list: &[BackendEntry]) -> Vec<usize> {
    let size = MH_TABLE_SIZE as usize;
    if list.iter().all(|b| b.weight == 0) {
        return Vec::new();
    }
    // ip_vs_mh_gcd_weight and ip_vs_mh_shift_weight, over last weights.
    let g = list.iter().map(|b| b.last_weight).filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let max = list.iter().map(|b| b.last_weight).max().unwrap_or(0) / g;
    let fls = u32::BITS - max.leading_zeros();
    let shift = fls.saturating_sub(MH_TABLE_BITS);
    let mut setup: Vec<(usize, usize, u32)> = list
        .iter()
        .map(|b| {
            let (addr, _) = to_map_addr(b.addr);
            let v6 = matches!(b.addr, IpAddr::V6(_));
            let offset = (mh_hash(&addr, v6, b.port.to_be(), 0, &MH_KEY1) % MH_TABLE_SIZE) as usize;
            let skip = (mh_hash(&addr, v6, b.port.to_be(), 0, &MH_KEY2) % (MH_TABLE_SIZE - 1) + 1) as usize;
            let turns = match (b.last_weight / g) >> shift {
                0 => u32::from(b.last_weight != 0),
                t => t,
            };
            (offset, skip, turns)
        })
        .collect();
    let mut table = vec![usize::MAX; size];
    let mut filled = 0;
    'populate: while filled < size {
        for (d, (perm, skip, turns)) in setup.iter_mut().enumerate() {
            for _ in 0..*turns {
                while table[*perm] != usize::MAX {
                    *perm = (*perm + *skip) % size;
                }
                table[*perm] = d;
                filled += 1;
                if filled == size {
                    break 'populate;
                }
            }
        }
    }
    table
}

/// The slot values the datapath reads for `table` (see `xvs_common::maglev::MH_SLOT_ID_MASK`):
/// the backend id, and for a bucket whose backend takes no new flows, the backend of the next
/// bucket (in table order) whose backend does, in the high bits.
pub fn slots(table: &[usize], list: &[BackendEntry]) -> Result<Vec<u32>, TableError> {
    if let Some(b) = list.iter().find(|b| b.id > MH_SLOT_ID_MASK) {
        return Err(TableError::MhIdTooLarge { id: b.id });
    }
    let live = |bucket: usize| list[table[bucket]].weight > 0;
    let n = table.len();
    // Walking backwards twice round finds every bucket's next live one in one pass.
    let mut next_live = vec![0u32; n];
    let mut seen = None;
    for k in (0..2 * n).rev() {
        let bucket = k % n;
        next_live[bucket] = seen.unwrap_or(0);
        if live(bucket) {
            seen = Some(list[table[bucket]].id);
        }
    }
    Ok((0..n)
        .map(|bucket| {
            let id = list[table[bucket]].id;
            if live(bucket) { id } else { id | next_live[bucket] << MH_SLOT_FALLBACK_SHIFT }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::tests::list;
    use super::*;

    fn share(table: &[usize], d: usize) -> usize {
        table.iter().filter(|&&x| x == d).count()
    }

    #[test]
    fn full_table_in_proportion_to_last_weights() {
        let t = table(&list(&[1, 1, 2]));
        assert_eq!(t.len(), 4093);
        assert!(t.iter().all(|&d| d < 3));
        // Claims go 1, 1, 2 per round: 1023 rounds, then the first destination takes the last.
        assert_eq!((share(&t, 0), share(&t, 1), share(&t, 2)), (1024, 1023, 2046));
        assert!(table(&list(&[0, 0])).is_empty());
        let mut drained = list(&[1, 1]);
        drained[0].weight = 0;
        drained[1].weight = 0;
        assert!(table(&drained).is_empty(), "no live backend: no table, as the kernel refuses all");
        // Weights scaled by their gcd, and huge ones shifted to 6 bits (ip_vs_mh_shift_weight).
        assert_eq!(table(&list(&[100, 100, 200])), t);
        // 1000 has 10 bits: shifted by 4 to 62 turns; 1 >> 4 is 0, kept at one turn. 64 rounds
        // of 63 claims, then 61 more for the first.
        let big = table(&list(&[1000, 1]));
        assert_eq!((share(&big, 0), share(&big, 1)), (64 * 62 + 61, 64));
    }

    #[test]
    fn a_drained_destination_keeps_its_buckets_and_a_removal_moves_few_others() {
        let mut drained = list(&[3, 2, 1, 1]);
        let before = table(&drained);
        drained[1].weight = 0;
        assert_eq!(table(&drained), before, "last weights, not weights, build the table");
        let mut removed = list(&[3, 2, 1, 1]);
        removed.remove(1);
        let after = table(&removed);
        let index = |i: usize| if i >= 1 { i + 1 } else { i };
        let moved = before.iter().zip(&after).filter(|(b, a)| **b != 1 && **b != index(**a)).count();
        assert!(moved < 4093 / 10, "Maglev moves few buckets of the destinations that stay: {moved}");
    }

    #[test]
    fn draining_slots_carry_the_next_live_backend() {
        let mut l = list(&[1, 1, 1]);
        l[1].weight = 0;
        let t = table(&l);
        let s = slots(&t, &l).unwrap_or_default();
        for (bucket, &v) in s.iter().enumerate() {
            let id = v & MH_SLOT_ID_MASK;
            assert_eq!(id, l[t[bucket]].id);
            if id != 2 {
                assert_eq!(v >> MH_SLOT_FALLBACK_SHIFT, 0, "a live bucket has no fallback");
                continue;
            }
            let next = (1..4093).map(|k| t[(bucket + k) % 4093]).find(|&d| d != 1).map(|d| l[d].id);
            assert_eq!(Some(v >> MH_SLOT_FALLBACK_SHIFT), next, "bucket {bucket}");
        }
        l[0].id = 70_000;
        assert_eq!(slots(&t, &l), Err(TableError::MhIdTooLarge { id: 70_000 }));
    }
}
