//! Latency histograms: HdrHistograms per thread, merged when read.
//!
//! Every observation is recorded once, into an HdrHistogram (microseconds, 2 significant
//! digits, 1 µs to 1 h, no auto-resize: 26 KiB) of the recording thread, keyed by (node,
//! kind).
//! Each thread's histograms sit behind their own mutex, which only that thread takes on the
//! record path (uncontended: no global lock per statement) and a reader takes only while
//! it copies them (the merge runs outside it). A thread allocates a histogram the first time it records a (node, kind), and
//! nothing after that.
//!
//! Readers ([`merged`]) add up every thread's histograms: `SHOW LATENCY` prints quantiles
//! from them per node and for the whole process, and `/metrics` turns them into Prometheus
//! histograms with the fixed [`BOUNDS_US`] buckets at scrape time.
//!
//! A thread's histograms outlive it: when a thread ends, they are added to a retired set
//! under the registry's lock, so counts never go down.
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Bucket upper bounds in microseconds of the Prometheus histograms (`le`, inclusive);
/// +Inf is implicit. From 100 µs (a cached point query on a warm connection) to 60 s.
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Highest value a histogram tracks (1 h); longer observations count as 1 h in the
/// quantiles (the sum keeps their real length).
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept: values up to 255 µs are exact, others known to within
/// 1/128 (under 1 %). Three digits (0.1 %) would take 184 KiB per histogram instead of 26,
/// and there is one per thread, node and kind.
pub const SIGFIG: u8 = 2;

/// What was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A query's first message to its ReadyForQuery (as the client sees it).
    Query = 0,
    /// A transaction's first statement to the ReadyForQuery that says idle.
    Transaction = 1,
    /// Time a client waited for a server connection (pool acquire, connect included).
    Wait = 2,
}

const KINDS: usize = 3;

impl Kind {
    pub const ALL: [Kind; KINDS] = [Kind::Query, Kind::Transaction, Kind::Wait];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Transaction => "transaction",
            Kind::Wait => "wait",
        }
    }
}

/// A node's index in the registry of node names (see [`node_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(u32);

/// Node names by `NodeId`; only grows (a pool is created once per node, database, user).
static NODES: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// The id of the node named `name`, registered on first use. Not for the statement path
/// (it takes a lock): call it once, when a pool is created.
pub fn node_id(name: &str) -> NodeId {
    if let Some(i) = read_nodes().iter().position(|n| &**n == name) {
        return NodeId(i as u32);
    }
    let mut nodes = NODES.write().unwrap_or_else(|p| p.into_inner());
    // Someone may have registered it between the two locks.
    let i = match nodes.iter().position(|n| &**n == name) {
        Some(i) => i,
        None => {
            nodes.push(Arc::from(name));
            nodes.len() - 1
        }
    };
    NodeId(i as u32)
}

fn read_nodes() -> std::sync::RwLockReadGuard<'static, Vec<Arc<str>>> {
    NODES.read().unwrap_or_else(|p| p.into_inner())
}

/// Where one kind of latency of one node is recorded: what a pool keeps to record with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    node: NodeId,
    kind: Kind,
}

impl Latency {
    pub fn new(node: NodeId, kind: Kind) -> Latency {
        Latency { node, kind }
    }

    /// Record one observation into this thread's histogram (see [`record`]).
    #[inline]
    pub fn record(&self, d: Duration) {
        record(self.node, self.kind, d);
    }

    /// Record the time since `started`.
    #[inline]
    pub fn record_since(&self, started: Instant) {
        self.record(started.elapsed());
    }
}

/// One (node, kind) histogram of one thread, or a merge of several.
#[derive(Clone)]
pub struct Snapshot {
    hist: Histogram<u64>,
    /// Exact sum of the observations (µs), unclamped.
    sum_us: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("count", &self.count())
            .field("sum_us", &self.sum_us)
            .finish()
    }
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot::empty()
    }
}

impl Snapshot {
    /// An empty histogram (to record or merge into).
    pub fn empty() -> Snapshot {
        Snapshot {
            hist: Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG)
                .expect("constant histogram bounds are valid"),
            sum_us: 0,
        }
    }

    #[inline]
    fn record_us(&mut self, us: u64) {
        // Clamped to 1 h: auto-resize is off, so nothing is allocated here.
        self.hist.saturating_record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Record one observation.
    pub fn record(&mut self, d: Duration) {
        self.record_us(micros(d));
    }

    /// Add another histogram's observations (every thread of a node, every node).
    pub fn merge(&mut self, other: &Snapshot) {
        // Same bounds and precision on both sides: this cannot fail.
        self.hist
            .add(&other.hist)
            .expect("latency histograms share their bounds");
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Sum of the observations in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The value at quantile `q` (0..=1): the highest value equivalent to it at 2
    /// significant digits (never under, less than 1 % over). None with no observations.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.hist.is_empty() {
            return None;
        }
        Some(Duration::from_micros(
            self.hist.value_at_quantile(q.clamp(0.0, 1.0)),
        ))
    }

    /// (upper bound in seconds, cumulative count) for each of [`BOUNDS_US`]: the
    /// observations at or under the bound. At 2 significant digits a bound shares its
    /// histogram slot with values less than 1 % above it, which count as under it.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut per_bucket = [0u64; BOUNDS_US.len() + 1];
        for v in self.hist.iter_recorded() {
            let low = self.hist.lowest_equivalent(v.value_iterated_to());
            let i = BOUNDS_US.partition_point(|&b| b < low);
            per_bucket[i] += v.count_at_value();
        }
        let mut acc = 0;
        BOUNDS_US
            .iter()
            .zip(per_bucket)
            .map(|(&b, c)| {
                acc += c;
                (b as f64 / 1e6, acc)
            })
            .collect()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One thread's histograms, by node id then kind.
#[derive(Default, Clone)]
struct ThreadHists {
    nodes: Vec<[Option<Snapshot>; KINDS]>,
}

impl ThreadHists {
    const fn new() -> ThreadHists {
        ThreadHists { nodes: Vec::new() }
    }

    #[inline]
    fn record(&mut self, node: NodeId, kind: Kind, us: u64) {
        let i = node.0 as usize;
        if i >= self.nodes.len() {
            self.nodes.resize_with(i + 1, Default::default);
        }
        self.nodes[i][kind as usize]
            .get_or_insert_with(Snapshot::empty)
            .record_us(us);
    }

    fn merge_into(&self, out: &mut [[Option<Snapshot>; KINDS]]) {
        for (row, mine) in out.iter_mut().zip(&self.nodes) {
            for (o, m) in row.iter_mut().zip(mine) {
                if let Some(m) = m {
                    match o {
                        Some(o) => o.merge(m),
                        None => *o = Some(m.clone()),
                    }
                }
            }
        }
    }

    /// As [`merge_into`](Self::merge_into), moving what `out` does not have yet.
    fn merge_owned_into(self, out: &mut [[Option<Snapshot>; KINDS]]) {
        for (row, mine) in out.iter_mut().zip(self.nodes) {
            for (o, m) in row.iter_mut().zip(mine) {
                if let Some(m) = m {
                    match o {
                        Some(o) => o.merge(&m),
                        None => *o = Some(m),
                    }
                }
            }
        }
    }

    fn absorb(&mut self, other: &ThreadHists) {
        if self.nodes.len() < other.nodes.len() {
            self.nodes.resize_with(other.nodes.len(), Default::default);
        }
        other.merge_into(&mut self.nodes);
    }
}

type Shared = Arc<Mutex<ThreadHists>>;

/// Every live thread's histograms, and those of the threads that ended.
struct Registry {
    threads: Vec<Shared>,
    retired: ThreadHists,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    threads: Vec::new(),
    retired: ThreadHists::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(h: &Mutex<ThreadHists>) -> MutexGuard<'_, ThreadHists> {
    // Recording cannot panic half-way through an update; keep the data on poison.
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// A thread's registration: its histograms, moved to the retired set when it ends.
struct Local(Shared);

impl Local {
    fn register() -> Local {
        let h: Shared = Arc::new(Mutex::new(ThreadHists::new()));
        registry().threads.push(h.clone());
        Local(h)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut reg = registry();
        reg.threads.retain(|t| !Arc::ptr_eq(t, &self.0));
        let mine = lock(&self.0);
        reg.retired.absorb(&mine);
    }
}

thread_local! {
    static LOCAL: OnceCell<Local> = const { OnceCell::new() };
}

/// Record one observation of `kind` on `node` into the calling thread's histogram: one
/// uncontended lock, no allocation once the thread has seen this (node, kind).
#[inline]
pub fn record(node: NodeId, kind: Kind, d: Duration) {
    let us = micros(d);
    let done = LOCAL.try_with(|l| {
        let l = l.get_or_init(Local::register);
        lock(&l.0).record(node, kind, us);
    });
    if done.is_err() {
        // The thread is ending and its histograms are gone: record into the retired set.
        registry().retired.record(node, kind, us);
    }
}

/// Every thread's histograms added up, by node.
pub struct Merged {
    /// (node name, one histogram per kind: None where no thread recorded any), by name.
    nodes: BTreeMap<Arc<str>, [Option<Snapshot>; KINDS]>,
}

/// Add up every thread's histograms. Each thread's lock is held only while its histograms
/// are copied (a memcpy each; the merge runs outside it, so the thread's next record does
/// not wait for it); a node registered with [`node_id`] is listed even with no observation.
pub fn merged() -> Merged {
    let names: Vec<Arc<str>> = read_nodes().clone();
    let mut by_id: Vec<[Option<Snapshot>; KINDS]> = Vec::new();
    by_id.resize_with(names.len(), Default::default);
    {
        // The registry's lock stays held (a thread ending meanwhile would otherwise be
        // counted twice, live and retired); only thread start and end wait for it.
        let reg = registry();
        for t in &reg.threads {
            let copy = lock(t).clone();
            copy.merge_owned_into(&mut by_id);
        }
        reg.retired.merge_into(&mut by_id);
    }
    Merged {
        nodes: names.into_iter().zip(by_id).collect(),
    }
}

/// What [`Merged::node`] shows for a (node, kind) with no observation.
fn empty() -> &'static Snapshot {
    static EMPTY: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Snapshot::empty)
}

impl Merged {
    /// The node's histogram of `kind` (empty with no observation); None for a node never
    /// registered.
    pub fn node(&self, name: &str, kind: Kind) -> Option<&Snapshot> {
        self.nodes
            .get(name)
            .map(|h| h[kind as usize].as_ref().unwrap_or_else(|| empty()))
    }

    /// Node names, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(|n| &**n)
    }

    /// The whole process: every node's histogram of `kind` added up.
    pub fn all(&self, kind: Kind) -> Snapshot {
        let mut s = Snapshot::empty();
        for h in self.nodes.values() {
            if let Some(h) = &h[kind as usize] {
                s.merge(h);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node name no other test uses (the registry is process-wide).
    fn node(name: &str) -> NodeId {
        node_id(&format!("latency-test-{name}"))
    }

    fn get(name: &str, kind: Kind) -> Snapshot {
        merged()
            .node(&format!("latency-test-{name}"), kind)
            .unwrap()
            .clone()
    }

    #[test]
    fn node_ids_are_interned() {
        let a = node("intern-a");
        assert_eq!(node("intern-a"), a);
        assert_ne!(node("intern-b"), a);
        // Registered nodes are listed before any observation.
        let m = merged();
        assert_eq!(
            m.node("latency-test-intern-b", Kind::Wait).unwrap().count(),
            0
        );
        assert!(m.nodes().any(|n| n == "latency-test-intern-a"));
        assert_eq!(
            m.node("latency-test-intern-b", Kind::Query)
                .unwrap()
                .quantile(0.5),
            None
        );
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        let n = node("uniform");
        let l = Latency::new(n, Kind::Query);
        // 1..=100_000 µs, each once: the q-quantile is q * 100_000 µs.
        for us in 1..=100_000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = get("uniform", Kind::Query);
        assert_eq!(s.count(), 100_000);
        assert_eq!(s.sum_us(), 100_000 * 100_001 / 2);
        for (q, exact) in [
            (0.5, 50_000u64),
            (0.9, 90_000),
            (0.99, 99_000),
            (0.999, 99_900),
        ] {
            let got = s.quantile(q).unwrap().as_micros() as u64;
            // Never under, over by less than one slot at 2 significant digits (1/128).
            assert!(got >= exact, "p{q}: {got} < {exact}");
            assert!(got - exact < exact / 128, "p{q}: {got} vs {exact}");
        }
        // 100,000 µs sits in the 512 µs wide slot 99,840..=100,351.
        assert_eq!(s.quantile(1.0).unwrap().as_micros(), 100_351);
        // Other kinds of the node are untouched.
        assert_eq!(get("uniform", Kind::Transaction).count(), 0);
    }

    #[test]
    fn small_values_are_exact_and_long_ones_clamped() {
        let n = node("exact");
        let l = Latency::new(n, Kind::Wait);
        for us in [0u64, 1, 7, 250, 2047] {
            l.record(Duration::from_micros(us));
        }
        l.record(Duration::from_secs(2 * 3600));
        let s = get("exact", Kind::Wait);
        assert_eq!(s.count(), 6);
        assert_eq!(s.quantile(0.0), Some(Duration::ZERO));
        assert_eq!(s.quantile(0.5).unwrap().as_micros(), 7);
        // Ranks ceil(0.6 * 6) = 4 and ceil(0.8 * 6) = 5.
        assert_eq!(s.quantile(0.6).unwrap().as_micros(), 250);
        assert_eq!(s.quantile(0.8).unwrap().as_micros(), 2047);
        // Two hours count as the 1 h ceiling in quantiles, at their length in the sum.
        let top = s.quantile(1.0).unwrap().as_micros() as u64;
        assert!((HIGHEST_US..HIGHEST_US + HIGHEST_US / 128).contains(&top));
        assert_eq!(s.sum_us(), 1 + 7 + 250 + 2047 + 7_200_000_000);
    }

    #[test]
    fn threads_merge_to_the_sum() {
        let n = node("threads");
        let mut expected = Snapshot::empty();
        for t in 0..4u64 {
            for i in 0..5_000u64 {
                expected.record(Duration::from_micros(
                    1 + (i * 37 + t * 1_000_003) % 900_000,
                ));
            }
        }
        std::thread::scope(|s| {
            for t in 0..4u64 {
                s.spawn(move || {
                    let l = Latency::new(n, Kind::Transaction);
                    for i in 0..5_000u64 {
                        l.record(Duration::from_micros(
                            1 + (i * 37 + t * 1_000_003) % 900_000,
                        ));
                    }
                });
            }
        });
        // The threads have ended: their histograms are in the retired set now, and still
        // counted.
        let got = get("threads", Kind::Transaction);
        assert_eq!(got.count(), 20_000);
        assert_eq!(got.sum_us(), expected.sum_us());
        assert_eq!(got.hist, expected.hist);
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(got.quantile(q), expected.quantile(q), "q {q}");
        }
        assert_eq!(got.cumulative(), expected.cumulative());
    }

    #[test]
    fn live_threads_are_merged_too() {
        let n = node("live");
        let l = Latency::new(n, Kind::Query);
        let (recorded_tx, recorded_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            for _ in 0..10 {
                l.record(Duration::from_micros(300));
            }
            recorded_tx.send(()).unwrap();
            // Stay alive until the reader has looked.
            done_rx.recv().unwrap();
        });
        recorded_rx.recv().unwrap();
        l.record(Duration::from_micros(300));
        assert_eq!(get("live", Kind::Query).count(), 11);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(get("live", Kind::Query).count(), 11);
    }

    #[test]
    fn prometheus_buckets_are_cumulative_and_end_at_the_count() {
        let n = node("buckets");
        let l = Latency::new(n, Kind::Wait);
        let values = [
            50u64,
            100,
            101,
            250,
            999,
            1_000,
            7_000,
            49_000,
            300_000,
            59_000_000,
            61_000_000,
            3_000_000_000,
        ];
        for us in values {
            l.record(Duration::from_micros(us));
        }
        let s = get("buckets", Kind::Wait);
        let c = s.cumulative();
        assert_eq!(c.len(), BOUNDS_US.len());
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1), "{c:?}");
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0), "{c:?}");
        // Each bucket holds exactly the values at or under its bound (none of these is
        // less than 1 % above a bound).
        for (&b, &(le, n)) in BOUNDS_US.iter().zip(&c) {
            assert_eq!(le, b as f64 / 1e6);
            let exact = values.iter().filter(|&&v| v <= b).count() as u64;
            assert_eq!(n, exact, "le {le}");
        }
        assert_eq!(c[0], (0.0001, 2));
        assert_eq!(c[1], (0.00025, 4));
        // Two observations over 60 s are only in +Inf, which is the count.
        assert_eq!(c.last().unwrap().1, s.count() - 2);
        assert_eq!(s.sum_us(), values.iter().sum::<u64>());
    }

    #[test]
    fn a_histogram_is_small_and_absent_ones_are_not_built() {
        // 1 µs to 1 h at 2 significant digits: 3,328 counters of 8 bytes (26 KiB), where 3
        // digits took 23,552 (184 KiB), per thread, node and kind.
        assert_eq!(Snapshot::empty().hist.distinct_values(), 3_328);
        let l = Latency::new(node("absent"), Kind::Wait);
        l.record(Duration::from_micros(5));
        let m = merged();
        let h = &m.nodes[&*Arc::<str>::from("latency-test-absent")];
        assert!(h[Kind::Query as usize].is_none() && h[Kind::Transaction as usize].is_none());
        assert_eq!(h[Kind::Wait as usize].as_ref().unwrap().count(), 1);
        // Shown as empty all the same.
        let q = m.node("latency-test-absent", Kind::Query).unwrap();
        assert_eq!((q.count(), q.quantile(0.5)), (0, None));
    }

    #[test]
    fn nodes_add_up_to_the_process() {
        let a = Latency::new(node("sum-a"), Kind::Query);
        let b = Latency::new(node("sum-b"), Kind::Query);
        let before = merged().all(Kind::Query).count();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(20));
        b.record(Duration::from_micros(30));
        let m = merged();
        assert_eq!(
            m.node("latency-test-sum-a", Kind::Query).unwrap().count(),
            1
        );
        assert_eq!(
            m.node("latency-test-sum-b", Kind::Query).unwrap().count(),
            2
        );
        // Other tests record at the same time: the process-wide count grew by at least 3.
        assert!(m.all(Kind::Query).count() >= before + 3);
    }
}
