//! Blue-green cutovers run by this instance: how they ended and the pause each caused
//! (from the cutover row's creation, when instances start holding the tenant, to its
//! end). Counted by the runner only, so a cutover is counted once across instances.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the pause histogram's buckets, in seconds.
pub const PAUSE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Cutovers {
    pub done: AtomicU64,
    pub aborted: AtomicU64,
    /// Cutovers whose pause was longer than their own TIMEOUT (one phase's bound).
    pub over_timeout: AtomicU64,
    /// Cumulative counts per bucket of [`PAUSE_BUCKETS`] (not cumulative here: each
    /// pause counts in its first bucket that holds it; the collector sums them up).
    pub pause_buckets: [AtomicU64; PAUSE_BUCKETS.len()],
    pub pause_count: AtomicU64,
    pub pause_sum_us: AtomicU64,
}

pub static CUTOVERS: Cutovers = Cutovers {
    done: AtomicU64::new(0),
    aborted: AtomicU64::new(0),
    over_timeout: AtomicU64::new(0),
    pause_buckets: [const { AtomicU64::new(0) }; PAUSE_BUCKETS.len()],
    pause_count: AtomicU64::new(0),
    pause_sum_us: AtomicU64::new(0),
};

/// A cutover this instance ran ended (done or aborted) after `pause`; `timeout` is its
/// TIMEOUT.
pub fn cutover_ended(done: bool, pause: Duration, timeout: Duration) {
    let c = &CUTOVERS;
    if pause > timeout {
        c.over_timeout.fetch_add(1, Ordering::Relaxed);
    }
    if done {
        c.done.fetch_add(1, Ordering::Relaxed);
    } else {
        c.aborted.fetch_add(1, Ordering::Relaxed);
    }
    let secs = pause.as_secs_f64();
    if let Some(i) = PAUSE_BUCKETS.iter().position(|b| secs <= *b) {
        c.pause_buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    c.pause_count.fetch_add(1, Ordering::Relaxed);
    c.pause_sum_us
        .fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
}
