//! How active each tenant was over the last minutes and hours, in fixed memory: count-min
//! sketches in time buckets (`SHOW TENANT ACTIVITY`, `SHOW QUIET TENANTS`).
//!
//! Rules:
//! - **Fixed memory.** Two rings of count-min sketches of [`ROWS`] rows of `u32` counters:
//!   [`MINUTES`] one-minute buckets ([`MINUTE_WIDTH`] counters a row) and [`HOURS`]
//!   one-hour buckets ([`HOUR_WIDTH`] a row), allocated once at start ([`BYTES`], 5.0 MiB)
//!   whatever the number of tenants. Buckets are counted from the process start
//!   (monotonic clock): a restart starts from zero, and each pgtenant process sees only its
//!   own traffic.
//! - **Tiny per-transaction cost, no lock.** A routed transaction adds 1 to one counter per
//!   row in the current minute bucket and in the current hour bucket: 2 × [`ROWS`] relaxed
//!   atomic adds, one column a row taken from a 16-bit field of the tenant's 64-bit hash
//!   (already computed for SHOW TENANTS). Only the first transaction of a new minute takes a
//!   lock, to clear the buckets the clock moved into.
//! - **Never under-counts.** Plain count-min (conservative update would lose counts under
//!   concurrent updates with atomics): an estimate is the smallest of the tenant's
//!   [`ROWS`] counters summed over the window's buckets, so it is ≥ the true count. It
//!   over-counts by at most `e/width × N` (N: every tenant's transactions in the window)
//!   with probability ≥ 1 − e^−[`ROWS`] (98.2 %); [`Estimate::bound`] is that number.
//!   Counters are `u32`: one wraps only past 4.29 G transactions in one bucket (1.19 M a
//!   second for an hour into one counter), beyond what one pgtenant process routes.
//! - **Windows are whole buckets.** A window of n minutes (1 ≤ n ≤ 60) sums the current
//!   minute and the n previous ones; of n hours (2 ≤ n ≤ 24, `1h` is 60 minutes) the
//!   current hour and the n previous ones. A window thus covers at least n and at most
//!   n + 1 buckets of time: again more, never less.
//! - **Last seen** comes from the buckets, at their resolution: the end of the latest
//!   bucket where the tenant's estimate is not zero (minutes over the last hour, then
//!   hours over the last day); its true last transaction was no later. None: no
//!   transaction in the last 24 hours (or since start).
//! - The sketch cannot list tenants: callers bring the candidates (the admin console reads
//!   them from the database) and rank them with [`WindowSketch::estimate`].
//!
//! Lower layers only: this file knows tenants as 64-bit hashes.
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Rows of every sketch (independent hash functions).
pub const ROWS: usize = 4;
/// Counters per row of a minute bucket.
pub const MINUTE_WIDTH: usize = 2048;
/// Counters per row of an hour bucket.
pub const HOUR_WIDTH: usize = 8192;
/// Minute buckets: the current one and 60 before it.
pub const MINUTES: usize = 61;
/// Hour buckets: the current one and 24 before it.
pub const HOURS: usize = 25;
/// Memory of all counters: 5,275,648 bytes.
pub const BYTES: usize = 4 * ROWS * (MINUTES * MINUTE_WIDTH + HOURS * HOUR_WIDTH);

/// Over how long to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 1..=60 minutes.
    Minutes(u32),
    /// 2..=24 hours.
    Hours(u32),
}

impl Window {
    /// `5m`, `1h`, `24h` (also `min`, `hour(s)` suffixes).
    pub fn parse(s: &str) -> Option<Window> {
        let s = s.trim().to_ascii_lowercase();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (n, unit) = s.split_at(digits);
        let n: u32 = n.parse().ok()?;
        match unit {
            "m" | "min" | "mins" | "minute" | "minutes" if (1..=60).contains(&n) => {
                Some(Window::Minutes(n))
            }
            "h" | "hour" | "hours" if n == 1 => Some(Window::Minutes(60)),
            "h" | "hour" | "hours" if (2..=24).contains(&n) => Some(Window::Hours(n)),
            _ => None,
        }
    }

    /// As [`Window::parse`] reads it back: `5m`, `1h`, `24h`.
    pub fn label(self) -> String {
        match self {
            Window::Minutes(60) => "1h".into(),
            Window::Minutes(n) => format!("{n}m"),
            Window::Hours(n) => format!("{n}h"),
        }
    }
}

/// A tenant's transactions in a window: `count` ≥ the truth, and ≤ truth + `bound` with
/// probability ≥ 1 − e^−ROWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub count: u64,
    pub bound: u64,
}

/// `n` counters at 0, from a zeroed allocation: the OS hands out the pages only as they
/// are first written.
fn zeroed(n: usize) -> Box<[AtomicU32]> {
    let layout = std::alloc::Layout::array::<AtomicU32>(n).expect("a fixed, small size");
    assert!(layout.size() > 0);
    // SAFETY: `layout` has a non-zero size. AtomicU32 has the size, alignment and bit
    // validity of u32, so zeroed memory holds `n` valid AtomicU32 (0); the Box frees it
    // with the same layout (`[AtomicU32]` of length `n`), from the global allocator.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<AtomicU32>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

/// One ring of buckets.
struct Ring {
    width: usize,
    slots: usize,
    /// `slots × ROWS × width` counters.
    cells: Box<[AtomicU32]>,
}

impl Ring {
    fn new(slots: usize, width: usize) -> Ring {
        debug_assert!(width.is_power_of_two());
        let n = slots * ROWS * width;
        Ring {
            width,
            slots,
            cells: zeroed(n),
        }
    }

    fn base(&self, unit: u64, row: usize) -> usize {
        ((unit % self.slots as u64) as usize * ROWS + row) * self.width
    }

    fn add(&self, unit: u64, cols: [usize; ROWS]) {
        for (row, c) in cols.iter().enumerate() {
            let i = self.base(unit, row) + (c & (self.width - 1));
            self.cells[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear(&self, unit: u64) {
        let start = self.base(unit, 0);
        for c in &self.cells[start..start + ROWS * self.width] {
            // Reading first leaves a page never written (a bucket of a quiet time) unmapped.
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The estimate of one bucket alone (the smallest of the tenant's counters).
    fn bucket_count(&self, unit: u64, cols: [usize; ROWS]) -> u64 {
        (0..ROWS)
            .map(|row| {
                let i = self.base(unit, row) + (cols[row] & (self.width - 1));
                u64::from(self.cells[i].load(Ordering::Relaxed))
            })
            .min()
            .unwrap_or(0)
    }
}

/// The process-wide activity sketches (`Context::activity`).
pub struct Activity {
    minutes: Ring,
    hours: Ring,
    start: Instant,
    started_at: SystemTime,
    /// The latest minute (since `start`) whose buckets are cleared and in use.
    current: AtomicU64,
    /// Held only while the clock moves to a new minute (clearing buckets).
    rotating: Mutex<()>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new(Instant::now(), SystemTime::now())
    }
}

/// The column of a tenant in each row: row i takes bits 16·i.. of the tenant's 64-bit
/// hash (SipHash with a per-process random key), so the rows' columns are independent
/// (double hashing, h1 + i·h2, is not: two tenants that meet in two rows meet in all).
/// Widths are powers of two up to 2^16: a row keeps the low bits of its field.
fn columns(hash: u64) -> [usize; ROWS] {
    std::array::from_fn(|i| (hash >> (16 * i)) as usize & 0xffff)
}

const _: () = assert!(ROWS * 16 <= 64 && MINUTE_WIDTH <= 1 << 16 && HOUR_WIDTH <= 1 << 16);

impl Activity {
    /// Empty sketches whose minute 0 starts at `start` (wall clock `started_at`).
    pub fn new(start: Instant, started_at: SystemTime) -> Activity {
        Activity {
            minutes: Ring::new(MINUTES, MINUTE_WIDTH),
            hours: Ring::new(HOURS, HOUR_WIDTH),
            start,
            started_at,
            current: AtomicU64::new(0),
            rotating: Mutex::new(()),
        }
    }

    /// The minute (since start) `at` falls in.
    pub fn minute(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs() / 60
    }

    /// Count one transaction of the tenant with this hash, ended at `at`.
    #[inline]
    pub fn record(&self, hash: u64, at: Instant) {
        self.record_at(hash, self.minute(at));
    }

    /// [`Activity::record`] in minute `minute` since start.
    pub fn record_at(&self, hash: u64, minute: u64) {
        self.advance(minute);
        let cols = columns(hash);
        self.minutes.add(minute, cols);
        self.hours.add(minute / 60, cols);
    }

    /// Move the clock to `minute`: clear the buckets of the minutes (and hours) in between,
    /// which still hold counts of 61 minutes (25 hours) ago. Counts of a late transaction
    /// (its minute already past) go to its own bucket, which is not cleared before the
    /// ring comes round.
    fn advance(&self, minute: u64) {
        if minute <= self.current.load(Ordering::Acquire) {
            return;
        }
        let _g = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load(Ordering::Acquire);
        if minute <= cur {
            return;
        }
        let from = (cur + 1).max(minute.saturating_sub(MINUTES as u64 - 1));
        for m in from..=minute {
            self.minutes.clear(m);
        }
        let (ch, h) = (cur / 60, minute / 60);
        let from = (ch + 1).max(h.saturating_sub(HOURS as u64 - 1));
        for hour in from..=h {
            self.hours.clear(hour);
        }
        self.current.store(minute, Ordering::Release);
    }

    /// The window ending at minute `now`, summed into one sketch (count-min sketches add
    /// up cell by cell): ranks many tenants at ROWS reads each.
    pub fn window_at(&self, window: Window, now: u64) -> WindowSketch {
        self.advance(now);
        let (ring, last, n) = match window {
            Window::Minutes(n) => (&self.minutes, now, u64::from(n)),
            Window::Hours(n) => (&self.hours, now / 60, u64::from(n)),
        };
        let mut cells = vec![0u64; ROWS * ring.width];
        for unit in last.saturating_sub(n)..=last {
            let start = ring.base(unit, 0);
            for (sum, c) in cells
                .iter_mut()
                .zip(&ring.cells[start..start + ROWS * ring.width])
            {
                *sum += u64::from(c.load(Ordering::Relaxed));
            }
        }
        // Every row counts every transaction once: row 0's sum is the window's total.
        let total: u64 = cells[..ring.width].iter().sum();
        let bound = (std::f64::consts::E * total as f64 / ring.width as f64).ceil() as u64;
        WindowSketch {
            width: ring.width,
            cells,
            total,
            bound,
        }
    }

    /// [`Activity::window_at`] ending now.
    pub fn window(&self, window: Window) -> WindowSketch {
        self.window_at(window, self.minute(Instant::now()))
    }

    /// The end of the latest bucket in which the tenant's estimate is not zero, as minutes
    /// since start (capped at `now + 1`, the end of the current minute); None: none in the
    /// last 24 hours.
    pub fn last_seen_at(&self, hash: u64, now: u64) -> Option<u64> {
        self.advance(now);
        let cols = columns(hash);
        for m in (now.saturating_sub(MINUTES as u64 - 1)..=now).rev() {
            if self.minutes.bucket_count(m, cols) > 0 {
                return Some(m + 1);
            }
        }
        let h = now / 60;
        for hour in (h.saturating_sub(HOURS as u64 - 1)..=h).rev() {
            if self.hours.bucket_count(hour, cols) > 0 {
                return Some(((hour + 1) * 60).min(now + 1));
            }
        }
        None
    }

    /// [`Activity::last_seen_at`] now, as a wall-clock time (never after now).
    pub fn last_seen(&self, hash: u64) -> Option<SystemTime> {
        let now = Instant::now();
        let end = self.last_seen_at(hash, self.minute(now))?;
        let t = self.started_at + Duration::from_secs(end * 60);
        let wall_now = self.started_at + now.saturating_duration_since(self.start);
        Some(t.min(wall_now))
    }

    /// Bytes of counters (fixed: [`BYTES`]).
    pub fn bytes(&self) -> usize {
        4 * (self.minutes.cells.len() + self.hours.cells.len())
    }
}

/// A window's buckets summed (see [`Activity::window_at`]).
pub struct WindowSketch {
    width: usize,
    cells: Vec<u64>,
    /// Every tenant's transactions in the window.
    pub total: u64,
    /// e/width × total: the over-count of an estimate, with probability ≥ 1 − e^−ROWS.
    pub bound: u64,
}

impl WindowSketch {
    pub fn estimate(&self, hash: u64) -> Estimate {
        let cols = columns(hash);
        let count = (0..ROWS)
            .map(|row| self.cells[row * self.width + (cols[row] & (self.width - 1))])
            .min()
            .unwrap_or(0);
        Estimate {
            count,
            bound: self.bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    fn hashes(n: u64) -> Vec<u64> {
        let s = std::collections::hash_map::RandomState::new();
        (0..n).map(|i| s.hash_one((1u32, i.to_string()))).collect()
    }

    /// A Zipf-like stream over 20,000 tenants (tenant i gets ~ 200,000 / (i+1)), plus
    /// 2,000 tenants that never run anything: every estimate ≥ truth; the share over
    /// truth + bound is within what the probability allows; the idle rank first.
    #[test]
    fn never_under_counts_and_stays_within_the_bound_on_a_skewed_stream() {
        let a = Activity::default();
        let h = hashes(22_000);
        let mut truth = HashMap::new();
        for (i, &x) in h[..20_000].iter().enumerate() {
            let n = 200_000 / (i as u64 + 1);
            for _ in 0..n.max(1) {
                a.record_at(x, 30);
            }
            truth.insert(x, n.max(1));
        }
        for w in [Window::Minutes(1), Window::Minutes(60), Window::Hours(24)] {
            let s = a.window_at(w, 30);
            let total: u64 = truth.values().sum();
            assert_eq!(s.total, total, "{w:?}");
            let mut over = 0;
            for (i, &x) in h.iter().enumerate() {
                let t = truth.get(&x).copied().unwrap_or(0);
                let e = s.estimate(x);
                assert!(e.count >= t, "{w:?} tenant {i}: {e:?} < {t}");
                if e.count > t + e.bound {
                    over += 1;
                }
            }
            // Allowed: e^-4 = 1.8 % of 22,000 = 403; with margin for chance.
            assert!(over < 600, "{w:?}: {over} estimates beyond the bound");
            // Quiet ones: about half of the idle tenants estimate under the bound.
            let idle_low = h[20_000..]
                .iter()
                .filter(|&&x| s.estimate(x).count <= s.bound)
                .count();
            assert!(idle_low > 1_500, "{w:?}: {idle_low}");
        }
        // The exact heavy hitter stays on top; its share of the bound is small.
        let s = a.window_at(Window::Hours(24), 30);
        assert!(s.estimate(h[0]).count - 200_000 <= s.bound);
    }

    #[test]
    fn windows_roll() {
        let a = Activity::default();
        let [x, y] = [0x0001_0002_0003_0004u64, 0x0101_0202_0303_0404];
        // x: 10 transactions in minute 0; y: 1 per minute from minute 0 to 179.
        for _ in 0..10 {
            a.record_at(x, 0);
        }
        for m in 0..180 {
            a.record_at(y, m);
            let e = a.window_at(Window::Minutes(1), m).estimate(y);
            assert!(e.count >= 2.min(m + 1), "minute {m}: {e:?}");
        }
        // At minute 179 (hour 2): x is out of the last 60 minutes (119..=179), but in the
        // 2h window (the current hour and the 2 before it: hours 0..=2).
        let w = |win, now| a.window_at(win, now);
        assert_eq!(w(Window::Minutes(60), 179).estimate(x).count, 0);
        assert_eq!(w(Window::Minutes(60), 179).estimate(y).count, 61);
        assert_eq!(w(Window::Hours(2), 179).estimate(x).count, 10);
        assert_eq!(w(Window::Hours(2), 179).estimate(y).count, 180);
        assert_eq!(a.last_seen_at(x, 179), Some(60));
        assert_eq!(a.last_seen_at(y, 179), Some(180));
        // A day later (with no traffic in between), everything is gone.
        let later = 179 + 25 * 60;
        assert_eq!(w(Window::Hours(24), later).estimate(y).count, 0);
        assert_eq!(w(Window::Hours(24), later).total, 0);
        assert_eq!(a.last_seen_at(y, later), None);
        // A late transaction (its minute already past) still counts in its bucket.
        a.record_at(x, later);
        a.record_at(x, later - 2);
        assert_eq!(w(Window::Minutes(5), later).estimate(x).count, 2);
    }

    #[test]
    fn memory_is_fixed() {
        let a = Activity::default();
        assert_eq!(a.bytes(), BYTES);
        assert_eq!(BYTES, 5_275_648);
        for (i, x) in hashes(100_000).into_iter().enumerate() {
            a.record_at(x, i as u64 / 1000);
        }
        assert_eq!(a.bytes(), BYTES);
    }

    #[test]
    fn parses_windows() {
        assert_eq!(Window::parse("5m"), Some(Window::Minutes(5)));
        assert_eq!(Window::parse("1h"), Some(Window::Minutes(60)));
        assert_eq!(Window::parse("24H"), Some(Window::Hours(24)));
        assert_eq!(Window::parse("90m"), None);
        assert_eq!(Window::parse("25h"), None);
        assert_eq!(Window::parse("0m"), None);
        assert_eq!(Window::parse("h"), None);
        assert_eq!(Window::parse("7d"), None);
        for w in ["1m", "1h", "6h", "24h"] {
            assert_eq!(Window::parse(w).unwrap().label(), w);
        }
    }
}
