//! Id allocation for services and backends: lowest free id first, so ids stay small and dense
//! (they index the stats arrays), and a restarted agent continues from the ids the maps hold.
use std::collections::BTreeSet;

#[derive(Debug)]
pub struct IdPool {
    /// Ids below `next` that are free again.
    free: BTreeSet<u32>,
    /// Lowest id never handed out.
    next: u32,
    /// Ids are `1..=max` (0 is reserved in every id space).
    max: u32,
    /// From this id up, ids never handed out have zeroed counters (see `zeroed_from_next`).
    zeroed_from: Option<u32>,
}

impl IdPool {
    pub fn new(max: u32) -> Self {
        Self { free: BTreeSet::new(), next: 1, max, zeroed_from: None }
    }

    /// A pool where `used` are taken.
    pub fn with_used(max: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|&id| id != 0 && id <= max).collect();
        let next = used.last().map_or(1, |&max| max + 1);
        let free = (1..next).filter(|id| !used.contains(id)).collect();
        Self { free, next, max, zeroed_from: None }
    }

    #[cfg(test)]
    pub fn allocate(&mut self) -> Option<u32> {
        self.allocate_checked().map(|(id, _)| id)
    }

    /// An id, and whether its counters are known to be zero (never handed out since they
    /// were zeroed): then it needs no reset.
    pub fn allocate_checked(&mut self) -> Option<(u32, bool)> {
        if let Some(id) = self.free.pop_first() {
            return Some((id, false));
        }
        (self.next <= self.max).then(|| {
            self.next += 1;
            let id = self.next - 1;
            (id, self.zeroed_from.is_some_and(|from| id >= from))
        })
    }

    /// The ids never handed out (`next..=max`): their counters are about to be zeroed.
    pub fn never_used(&self) -> std::ops::RangeInclusive<u32> {
        self.next..=self.max
    }

    /// The counters of every id never handed out were zeroed.
    pub fn zeroed_from_next(&mut self) {
        self.zeroed_from = Some(self.next);
    }

    pub fn release(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first_and_bounded() {
        let mut pool = IdPool::new(3);
        assert_eq!([pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate()], [Some(1), Some(2), Some(3), None]);
        pool.release(2);
        assert_eq!(pool.allocate(), Some(2));
    }

    #[test]
    fn only_ids_never_handed_out_since_zeroing_are_known_zero() {
        let mut pool = IdPool::with_used(10, [2]);
        assert_eq!(pool.allocate_checked(), Some((1, false)), "unknown before zeroing");
        assert_eq!(pool.never_used(), 3..=10);
        pool.zeroed_from_next();
        assert_eq!(pool.allocate_checked(), Some((3, true)));
        pool.release(3);
        assert_eq!(pool.allocate_checked(), Some((3, false)), "a released id may hold counts");
        assert_eq!(pool.allocate_checked(), Some((4, true)));
    }

    #[test]
    fn adopts_used_ids() {
        let mut pool = IdPool::with_used(100, [5, 2, 0]);
        assert_eq!([pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate()], [Some(1), Some(3), Some(4), Some(6), Some(7)]);
    }
}
