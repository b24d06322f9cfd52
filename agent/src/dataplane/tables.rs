//! Pure rendering of a service's selection table (slot -> backend index) for each scheduler.
mod maglev;

pub use maglev::slots as mh_slots;

use xvs_common::{
    sched::{sh_fallback, sh_table, WrrCycle},
    Scheduler,
};

use super::BackendEntry;

/// The largest table one service may have; bounds memory and update time for wrr with large,
/// coprime weights.
pub const MAX_TABLE_LEN: u64 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("wrr weights {weights:?} need a {len}-slot cycle, more than {MAX_TABLE_LEN}; use weights with a larger common divisor")]
    WrrTooLong { weights: Vec<u32>, len: u64 },
    #[error("mh slots hold 16-bit backend ids, and backend id {id} is larger: run with --max-backends 65535 or less")]
    MhIdTooLarge { id: u32 },
}

/// Slot table for a service: each entry indexes `backends` (in the kernel's list order). An
/// empty table means no backend.
///
/// rr ignores weights other than 0 (like IPVS's rr); wrr is one kernel wrr cycle; sh is the
/// kernel's 256-bucket table, where weight-0 backends keep their buckets and those buckets
/// answer with the kernel's `sh-fallback` walk (the mirror sets that flag on every sh service).
/// In these three, backends of weight 0 never appear (they take no new flows). mh is the
/// kernel's 4093-bucket Maglev table built from last weights: a drained backend keeps its
/// buckets there, and the datapath walks on from them as `mh-fallback` does.
pub fn render(scheduler: Scheduler, backends: &[BackendEntry]) -> Result<Vec<usize>, TableError> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let weights = &weights[..];
    Ok(match scheduler {
        Scheduler::RoundRobin => (0..weights.len()).filter(|&i| weights[i] > 0).collect(),
        Scheduler::WeightedRoundRobin => {
            let len = WrrCycle::len_hint(weights);
            if len > MAX_TABLE_LEN {
                return Err(TableError::WrrTooLong { weights: weights.to_vec(), len });
            }
            WrrCycle::new(weights).collect()
        }
        Scheduler::SourceHash => sh_table(weights).and_then(|t| sh_fallback(&t, weights)).map(|t| t.to_vec()).unwrap_or_default(),
        Scheduler::MaglevHash => maglev::table(backends),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backends 10.0.0.<i+1>:80 with `weights`, as the kernel's list holds them.
    pub(super) fn list(weights: &[u32]) -> Vec<BackendEntry> {
        let at = |i: usize| std::net::IpAddr::from([10, 0, 0, i as u8 + 1]);
        weights.iter().enumerate().map(|(i, &w)| BackendEntry { id: i as u32 + 1, addr: at(i), port: 80, weight: w, seq: (weights.len() - i) as u32, last_weight: w }).collect()
    }

    fn render(scheduler: Scheduler, weights: &[u32]) -> Result<Vec<usize>, TableError> {
        super::render(scheduler, &list(weights))
    }

    #[test]
    fn rr_skips_drained_backends() {
        assert_eq!(render(Scheduler::RoundRobin, &[1, 0, 5]), Ok(vec![0, 2]));
        assert_eq!(render(Scheduler::RoundRobin, &[0, 0]), Ok(vec![]));
    }

    #[test]
    fn wrr_golden() {
        assert_eq!(render(Scheduler::WeightedRoundRobin, &[1, 2, 3]), Ok(vec![2, 1, 2, 0, 1, 2]));
    }

    #[test]
    fn wrr_refuses_huge_cycles() {
        let err = render(Scheduler::WeightedRoundRobin, &[65_535, 65_534]);
        assert!(matches!(err, Err(TableError::WrrTooLong { len: 131_069, .. })), "{err:?}");
    }

    #[test]
    fn sh_is_256_buckets_or_empty() {
        let t = render(Scheduler::SourceHash, &[1, 1, 1]).unwrap_or_default();
        assert_eq!(t.len(), 256);
        assert_eq!(&t[..4], &[0, 1, 2, 0]);
        assert_eq!(render(Scheduler::SourceHash, &[0]), Ok(vec![]));
        // A draining backend's buckets fall back to live ones; the others do not move.
        let drained = render(Scheduler::SourceHash, &[1, 0, 1]).unwrap_or_default();
        assert_eq!(&drained[..4], &[0, 2, 2, 0]);
        assert!(!drained.contains(&1));
    }
}
