//! What the benches share (`mod common;`; this directory is not a bench target itself).

/// True when the bench binary runs as a test: `cargo test --all-targets` (or
/// `--benches`) runs it without `--bench`; `cargo bench -- --test` passes both. This is
/// how criterion itself picks its test mode, in which every benchmark runs once.
///
/// The hand-made summaries at the end of a bench use it to run every measurement once,
/// briefly, instead of best-of-5 over millions of calls: the same code runs (and any
/// check in it), but the timing loops of an unoptimized test build measure nothing and
/// took minutes of `cargo test`.
pub fn test_mode() -> bool {
    let (mut bench, mut test) = (false, false);
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--bench" => bench = true,
            "--test" => test = true,
            _ => {}
        }
    }
    !bench || test
}

/// (calls per run, runs): `full` calls best of 5 when measuring, `full / 1000` calls
/// (at least 1) in one run in test mode.
pub fn sizes(full: u64) -> (u64, usize) {
    if test_mode() {
        ((full / 1000).max(1), 1)
    } else {
        (full, 5)
    }
}

/// The line a summary prints under its heading in test mode.
pub const TEST_MODE_NOTE: &str =
    "  (test mode: one short run of each, unoptimized; run `cargo bench` for numbers)";

/// Wall time for each of `threads` threads to run `f(thread, i)` for i in 0..iters, all
/// at once: the time one thread's call takes.
#[allow(dead_code)] // not every bench measures on threads
pub fn on_threads(
    threads: usize,
    iters: u64,
    f: &(impl Fn(usize, u64) + Sync),
) -> std::time::Duration {
    let start = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for th in 0..threads {
            let start = &start;
            s.spawn(move || {
                start.wait();
                for i in 0..iters {
                    f(th, i);
                }
            });
        }
        start.wait();
        std::time::Instant::now()
    })
    .elapsed()
}

/// ns per call from `threads` threads (best of `runs` runs of `n` each).
#[allow(dead_code)] // not every bench measures on threads
pub fn ns_per(threads: usize, (n, runs): (u64, usize), f: &(impl Fn(usize, u64) + Sync)) -> f64 {
    (0..runs)
        .map(|_| on_threads(threads, n, f).as_nanos() as f64 / n as f64)
        .fold(f64::INFINITY, f64::min)
}
