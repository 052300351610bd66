//! Counters bumped on every transaction by every worker thread, split into one cache line
//! per thread so that threads do not take the line from each other on each bump; a read
//! (admin console, `/metrics`) adds the stripes up.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter: threads beyond this share stripes (still correct, less spread).
const STRIPES: usize = 8;

#[repr(align(64))]
struct Line(AtomicU64);

/// A u64 counter (or, with wrapping arithmetic, a gauge) with one stripe per thread.
pub struct Striped {
    lines: [Line; STRIPES],
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe, given out in turn on first use.
#[inline]
fn stripe() -> usize {
    STRIPE.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(i);
        i
    })
}

impl Default for Striped {
    fn default() -> Striped {
        Striped::new()
    }
}

impl Striped {
    pub const fn new() -> Striped {
        Striped {
            lines: [const { Line(AtomicU64::new(0)) }; STRIPES],
        }
    }

    #[inline]
    pub fn add(&self, v: u64) {
        self.lines[stripe()].0.fetch_add(v, Ordering::Relaxed);
    }

    /// For a gauge: the stripe may go "below zero" (wrapping); the sum does not.
    #[inline]
    pub fn sub(&self, v: u64) {
        self.lines[stripe()].0.fetch_sub(v, Ordering::Relaxed);
    }

    /// The total (a moment's sum: bumps racing with the read may or may not be in it).
    pub fn get(&self) -> u64 {
        self.lines
            .iter()
            .fold(0u64, |t, l| t.wrapping_add(l.0.load(Ordering::Relaxed)))
    }

    /// The value of a gauge. A read racing with a short-lived raise and lower on two
    /// stripes may see the lower alone: such a moment's sum below zero reads as 0.
    pub fn get_gauge(&self) -> u64 {
        (self.get() as i64).max(0) as u64
    }
}

impl std::fmt::Debug for Striped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_add_up() {
        let c = Striped::new();
        let g = Striped::new();
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(2);
                        g.add(1);
                    }
                    for _ in 0..1000 {
                        g.sub(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), 24_000);
        // A gauge raised on one stripe and lowered on another still sums to its value.
        g.add(5);
        std::thread::scope(|s| {
            s.spawn(|| g.sub(3));
        });
        assert_eq!(g.get(), 2);
        // Lowered before it is seen raised: reads as 0, not as a huge number.
        let h = Striped::new();
        h.sub(1);
        assert_eq!(h.get_gauge(), 0);
        h.add(3);
        assert_eq!(h.get_gauge(), 2);
    }
}
