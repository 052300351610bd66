//! `max_tps`: a token bucket per tenant, kept as one time per tenant (GCRA, the generic
//! cell rate algorithm): the tenant's *theoretical arrival time* `tat`. A transaction at
//! `now` is allowed at `max(tat, now) - burst`; taking it moves `tat` one interval
//! (1 / max_tps) on. The bucket holds one second's worth of tokens (at least one), so a
//! tenant that was quiet may start `max_tps` transactions at once, then one per interval.
//!
//! Reservations are made in order, so transactions that wait for their token are served
//! first come, first served, and a refused one (its token would come after its deadline)
//! takes nothing. A tenant whose `tat` is in the past holds a full bucket, the same as a
//! tenant never seen: such entries are dropped as the map grows, so memory is bounded by
//! the tenants that were busy in the last second or so, not by all tenants ever seen.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// A shard is swept of full buckets when it reaches this many entries (then again at
/// twice what was left), so a sweep's cost is spread over the inserts that caused it.
const SWEEP_AT: usize = 1024;

#[derive(Default)]
struct Shard {
    tat: HashMap<Arc<str>, Instant>,
    sweep_at: usize,
}

/// Every tenant's bucket on this instance.
pub struct Buckets {
    shards: [Mutex<Shard>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            hasher: Default::default(),
        }
    }
}

/// A token's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Taken; start after waiting this long (zero: now).
    After(Duration),
    /// Not taken: it would come only after this long, past the caller's deadline.
    TooLate(Duration),
}

impl Buckets {
    /// Take a token of `tenant` at rate `tps` (> 0) at `now`, waiting at most `max_wait`
    /// (None = for as long as it takes).
    pub fn take(
        &self,
        tenant: &Arc<str>,
        tps: f64,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Token {
        let interval = Duration::from_secs_f64(1.0 / tps.max(1e-6)).max(Duration::from_nanos(1));
        let burst = tps.ceil().max(1.0);
        // The bucket's depth: (burst - 1) intervals ahead of now may be reserved at once.
        let depth = interval.mul_f64(burst - 1.0);
        let i = std::hash::BuildHasher::hash_one(&self.hasher, &**tenant) as usize % SHARDS;
        let mut g = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        let tat = g.tat.get(tenant).copied().unwrap_or(now).max(now);
        let allowed_at = tat.checked_sub(depth).unwrap_or(now).max(now);
        let wait = allowed_at - now;
        if max_wait.is_some_and(|m| wait > m) {
            return Token::TooLate(wait);
        }
        let next = tat + interval;
        match g.tat.get_mut(tenant) {
            Some(t) => *t = next,
            None => {
                g.tat.insert(tenant.clone(), next);
                if g.tat.len() >= g.sweep_at.max(SWEEP_AT) {
                    g.tat.retain(|_, t| *t > now);
                    g.sweep_at = g.tat.len() * 2;
                }
            }
        }
        Token::After(wait)
    }

    /// Tenants with a bucket not full now (SHOW TENANT LIMITS, tests).
    pub fn busy(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock().unwrap_or_else(|p| p.into_inner());
                g.tat.values().filter(|t| **t > now).count()
            })
            .sum()
    }

    /// Entries kept (full buckets not swept yet included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).tat.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_tenant_has_one_seconds_burst_then_the_rate() {
        let b = Buckets::default();
        let t: Arc<str> = "42".into();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.take(&t, 10.0, now, None), Token::After(Duration::ZERO));
        }
        // The 11th waits one interval, the 12th two.
        assert_eq!(
            b.take(&t, 10.0, now, None),
            Token::After(Duration::from_millis(100))
        );
        assert_eq!(
            b.take(&t, 10.0, now, None),
            Token::After(Duration::from_millis(200))
        );
        // Another tenant is not touched.
        assert_eq!(
            b.take(&"7".into(), 10.0, now, None),
            Token::After(Duration::ZERO)
        );
    }

    #[test]
    fn a_token_past_the_deadline_is_refused_and_not_taken() {
        let b = Buckets::default();
        let t: Arc<str> = "42".into();
        let now = Instant::now();
        assert_eq!(b.take(&t, 1.0, now, None), Token::After(Duration::ZERO));
        let limit = Some(Duration::from_millis(500));
        assert_eq!(
            b.take(&t, 1.0, now, limit),
            Token::TooLate(Duration::from_secs(1))
        );
        assert_eq!(
            b.take(&t, 1.0, now, limit),
            Token::TooLate(Duration::from_secs(1))
        );
        // Refusals took nothing: after a second, one token is there.
        let later = now + Duration::from_secs(1);
        assert_eq!(b.take(&t, 1.0, later, limit), Token::After(Duration::ZERO));
    }

    #[test]
    fn over_time_the_rate_holds() {
        let b = Buckets::default();
        let t: Arc<str> = "42".into();
        let start = Instant::now();
        let mut now = start;
        let mut taken = 0;
        // Try every millisecond for 10 s, taking only tokens that are there now.
        for _ in 0..10_000 {
            if b.take(&t, 50.0, now, Some(Duration::ZERO)) == Token::After(Duration::ZERO) {
                taken += 1;
            }
            now += Duration::from_millis(1);
        }
        // 50 of burst, then 50 per second for 10 s.
        assert!((540..=551).contains(&taken), "{taken}");
    }

    #[test]
    fn memory_is_bounded_by_busy_tenants() {
        let b = Buckets::default();
        let mut now = Instant::now();
        for i in 0..200_000u32 {
            let t: Arc<str> = i.to_string().into();
            b.take(&t, 1000.0, now, None);
            now += Duration::from_millis(1);
        }
        // Each bucket is full again 1 ms after its only transaction.
        assert!(b.len() < SHARDS * SWEEP_AT * 2, "{}", b.len());
        assert!(b.busy(now) <= 1);
    }
}
