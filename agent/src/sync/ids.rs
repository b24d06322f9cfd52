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
}

impl IdPool {
    pub fn new(max: u32) -> Self {
        Self { free: BTreeSet::new(), next: 1, max }
    }

    /// A pool where `used` are taken.
    pub fn with_used(max: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|&id| id != 0 && id <= max).collect();
        let next = used.last().map_or(1, |&max| max + 1);
        let free = (1..next).filter(|id| !used.contains(id)).collect();
        Self { free, next, max }
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next <= self.max).then(|| {
            self.next += 1;
            self.next - 1
        })
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
    fn adopts_used_ids() {
        let mut pool = IdPool::with_used(100, [5, 2, 0]);
        assert_eq!([pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate()], [Some(1), Some(3), Some(4), Some(6), Some(7)]);
    }
}
