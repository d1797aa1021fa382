//! Lookup counters that the threads of a process bump without sharing a cache line: each
//! thread takes one of a few stripes (in turn, as threads first count), and reading sums them.
//! A counter shared by every thread cost more than the lookup it counted once two threads
//! looked up at once (docs/performance.md).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 8;

/// What a lookup found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Found {
    RamHit = 0,
    DiskHit = 1,
    Miss = 2,
    /// Missed locally, found in the shared tier.
    SharedHit = 3,
}

/// One thread's counters, alone on their cache lines (128 bytes: the adjacent-line
/// prefetcher pairs 64-byte lines).
#[derive(Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; 4]);

#[derive(Default)]
pub(crate) struct Tally {
    stripes: [Stripe; STRIPES],
}

impl Tally {
    /// Counts `found` in `stripe` (this thread's: [`stripe`], which the caller also uses to
    /// count it in the pool's statistics).
    #[inline]
    pub(crate) fn add_in(&self, stripe: usize, found: Found) {
        self.stripes[stripe % STRIPES].0[found as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, found: Found) -> u64 {
        let all = self.stripes.iter();
        all.map(|s| s.0[found as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe (of `STRIPES`; the pool statistics use the same number).
pub(crate) fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        mine.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_all_threads_add_up() {
        let tally = Tally::default();
        std::thread::scope(|s| {
            for t in 0..12 {
                let tally = &tally;
                s.spawn(move || {
                    for _ in 0..1000 {
                        tally.add_in(
                            stripe(),
                            if t % 3 == 0 {
                                Found::Miss
                            } else {
                                Found::DiskHit
                            },
                        );
                    }
                });
            }
        });
        assert_eq!(tally.get(Found::Miss), 4000);
        assert_eq!(tally.get(Found::DiskHit), 8000);
        assert_eq!(tally.get(Found::RamHit), 0);
    }
}
