//! Latency histograms with a lock-free record path.
//!
//! A [`Latency`] is a fixed Prometheus histogram: one `AtomicU64` per bucket plus a sum.
//! Recording is a binary search over 18 bounds and two relaxed atomic adds; nothing is
//! allocated and no lock is taken, so it can sit on the per-statement path. The buckets
//! are cumulated only when `/metrics` is scraped (or the admin console asks).
//!
//! The three process-wide histograms are statics so that any module can record into them
//! without a handle: [`QUERY`], [`TRANSACTION`] and [`WAIT`].
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in microseconds (Prometheus `le`, inclusive); +Inf is implicit.
/// From 100 µs (a cached point query on a warm connection) to 60 s.
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Time from a query's first message to its ReadyForQuery (as the client sees it).
pub static QUERY: Latency = Latency::new();
/// Time from a transaction's first statement to the ReadyForQuery that says idle.
pub static TRANSACTION: Latency = Latency::new();
/// Time a client waited for a server connection (pool acquire, connect included).
pub static WAIT: Latency = Latency::new();

pub struct Latency {
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

impl Latency {
    pub const fn new() -> Latency {
        Latency {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }

    /// Record one observation. Lock-free, allocation-free.
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Record the time since `started`.
    #[inline]
    pub fn record_since(&self, started: std::time::Instant) {
        self.record(started.elapsed());
    }

    /// A consistent-enough copy for a scrape (each bucket read once).
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = [0u64; BUCKETS];
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c = b.load(Ordering::Relaxed);
        }
        Snapshot {
            counts,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Bucket counts read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    counts: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Snapshot {
    /// An empty snapshot (to sum others into).
    pub fn empty() -> Snapshot {
        Snapshot {
            counts: [0; BUCKETS],
            sum_us: 0,
        }
    }

    /// Add another histogram's counts (e.g. every pool of one node).
    pub fn merge(&mut self, other: &Snapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (upper bound in seconds, cumulative count) for each finite bucket.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        BOUNDS_US
            .iter()
            .zip(&self.counts)
            .map(|(&b, &c)| {
                acc += c;
                (b as f64 / 1e6, acc)
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1): an over-estimate by at
    /// most one bucket width. None with no observations; `Duration::MAX` past the last bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut acc = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= rank {
                return Some(
                    BOUNDS_US
                        .get(i)
                        .map_or(Duration::MAX, |&b| Duration::from_micros(b)),
                );
            }
        }
        Some(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let l = Latency::new();
        l.record(Duration::from_micros(100)); // le 0.0001
        l.record(Duration::from_micros(101)); // le 0.00025
        l.record(Duration::from_secs(3600)); // +Inf
        let s = l.snapshot();
        assert_eq!(s.count(), 3);
        let c = s.cumulative();
        assert_eq!(c[0], (0.0001, 1));
        assert_eq!(c[1], (0.00025, 2));
        assert_eq!(c.last().unwrap().1, 2);
        assert_eq!(s.sum_us, 100 + 101 + 3_600_000_000);
    }

    #[test]
    fn quantiles_from_buckets() {
        let l = Latency::new();
        assert_eq!(l.snapshot().quantile(0.5), None);
        for _ in 0..99 {
            l.record(Duration::from_micros(800));
        }
        l.record(Duration::from_millis(40));
        let s = l.snapshot();
        assert_eq!(s.quantile(0.5), Some(Duration::from_micros(1_000)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_micros(1_000)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_millis(50)));
    }

    #[test]
    fn records_from_many_threads() {
        static L: Latency = Latency::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..10_000u64 {
                        L.record(Duration::from_micros(i % 3000));
                    }
                });
            }
        });
        assert_eq!(L.snapshot().count(), 40_000);
    }
}
