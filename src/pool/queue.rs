//! A pool's queue of clients waiting for a server connection, and the per-tenant
//! concurrency limit (`tenant_max_active`, `crate::limits`).
//!
//! Rules:
//! - A waiter without a tenant claim (no limit is on, or its transaction has no single
//!   tenant) is a turn of its own: with no claims at all the queue is plain FIFO, as it
//!   was before tenant limits.
//! - Waiters of one tenant wait in that tenant's own FIFO queue, and the tenant takes one
//!   place in the turn order (`ring`), however many it has waiting: a free connection goes
//!   to the turn at the front, and a tenant that still waits goes to the back. So a tenant
//!   with 500 queued transactions gets one connection per round, like a tenant with one,
//!   and the front is always the turn that has waited longest since it was last served.
//! - A tenant holding `max_active` connections of the pool is *parked*: out of the turn
//!   order, its waiters waiting, while other turns take the free connections. When one of
//!   its connections comes back (`unlend`) it takes a place at the back again.
//! - `active` counts the connections (and granted slots being opened) lent to a tenant
//!   with a limit; whoever is handed one records the tenant on the connection
//!   (`ServerConn::lent_to`) so that release and close give it back exactly once.
//!   Tenants without a limit are not counted (nothing to enforce).
//! - Near the front, a turn of its own whose task runs on the releasing thread may go
//!   before up to `window - 1` turns of their own ahead of it (`bring_forward`), so the
//!   connection is handed over without waking another thread; each turn is passed at most
//!   [`MAX_PASSED`] times, so no one waits more than that many extra hand-overs.
//!   Tenants' turns are never passed nor moved. The pool does not use it with server
//!   pipelining (a batch takes waiters in turn order).
//! - Memory: a tenant's entry exists only while it has connections counted or waiters;
//!   waiters that gave up are dropped as they are met, and a tenant's queue is swept
//!   of them when it grows (amortised), so a parked tenant cannot pile up dead entries.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// What the queue needs to know of a waiter.
pub(super) trait Waits {
    /// The client stopped waiting (timed out, left, retried).
    fn is_closed(&self) -> bool;
    /// How long it has waited.
    fn waited(&self) -> Duration;
    /// Times a later turn was served before it (`bring_forward`).
    fn passed(&mut self) -> &mut u8;
}

/// A turn is passed by later ones at most this many times.
pub(super) const MAX_PASSED: u8 = 2;

enum Turn<W> {
    Tenant(Arc<str>),
    One(W),
}

struct Tenant<W> {
    /// Its key, for the turn order (no second lookup to find it).
    key: Arc<str>,
    /// Connections lent to it (counted only while it has a limit).
    active: u32,
    /// Its limit as its latest transaction's claim says; 0 = none.
    max: u32,
    waiting: VecDeque<W>,
    /// It has a place in the turn order.
    in_ring: bool,
    /// Sweep its queue of closed waiters when it reaches this length.
    sweep_at: usize,
}

impl<W: Waits> Tenant<W> {
    fn at_limit(&self) -> bool {
        self.max > 0 && self.active >= self.max
    }
    fn drop_closed_front(&mut self) {
        while self.waiting.front().is_some_and(|w| w.is_closed()) {
            self.waiting.pop_front();
        }
    }
    fn unused(&self) -> bool {
        self.active == 0 && self.waiting.is_empty() && !self.in_ring
    }
}

/// A waiter taken from the queue, with the tenant counted for it (hand the tenant on
/// with what it is given, or give it back with [`Queue::unlend`]).
pub(super) struct Popped<W> {
    pub waiter: W,
    pub counted: Option<Arc<str>>,
}

pub(super) struct Queue<W> {
    ring: VecDeque<Turn<W>>,
    tenants: HashMap<Arc<str>, Tenant<W>>,
}

/// A tenant's queue is swept of closed waiters from this length on.
const SWEEP_AT: usize = 16;

impl<W: Waits> Default for Queue<W> {
    fn default() -> Self {
        Queue {
            ring: VecDeque::new(),
            tenants: HashMap::new(),
        }
    }
}

impl<W: Waits> Queue<W> {
    /// Is anyone (perhaps) waiting for a turn? False when only parked tenants wait: then
    /// others may take an idle connection directly.
    pub fn has_turns(&self) -> bool {
        !self.ring.is_empty()
    }

    /// Anyone waiting at all, parked tenants included (closed waiters not counted).
    pub fn any_open(&self) -> bool {
        self.ring.iter().any(|t| match t {
            Turn::One(w) => !w.is_closed(),
            Turn::Tenant(_) => false,
        }) || self
            .tenants
            .values()
            .any(|t| t.waiting.iter().any(|w| !w.is_closed()))
    }

    /// The longest wait of anyone waiting (zero when none).
    pub fn max_wait(&self) -> Duration {
        let ones = self.ring.iter().filter_map(|t| match t {
            Turn::One(w) if !w.is_closed() => Some(w.waited()),
            _ => None,
        });
        let tenants = self
            .tenants
            .values()
            .flat_map(|t| t.waiting.iter())
            .filter(|w| !w.is_closed())
            .map(|w| w.waited());
        ones.chain(tenants).max().unwrap_or_default()
    }

    /// May a transaction of `tenant` with limit `max` take a connection now?
    pub fn may_take(&self, tenant: &str, max: u32) -> bool {
        max == 0 || self.tenants.get(tenant).is_none_or(|t| t.active < max)
    }

    /// Count a connection lent to `tenant` (limit `max` > 0) outside the queue (an idle
    /// one taken at once, or a new one opened at once).
    pub fn lend(&mut self, tenant: &Arc<str>, max: u32) {
        let t = self.tenant(tenant);
        t.max = max;
        t.active += 1;
    }

    /// A connection lent to `tenant` came back (or was closed, or never opened).
    pub fn unlend(&mut self, tenant: &str) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            debug_assert!(false, "unlend of an uncounted tenant");
            return;
        };
        t.active = t.active.saturating_sub(1);
        t.drop_closed_front();
        if !t.in_ring && !t.waiting.is_empty() && !t.at_limit() {
            t.in_ring = true;
            self.ring.push_back(Turn::Tenant(t.key.clone()));
        } else if t.unused() {
            self.tenants.remove(tenant);
        }
    }

    /// Queue a waiter: its own turn without a tenant, else in its tenant's queue
    /// (`max`: the tenant's limit in its claim). True when the tenant is at its limit
    /// (the waiter waits for the tenant, not for the pool).
    pub fn push(&mut self, w: W, tenant: Option<(&Arc<str>, u32)>) -> bool {
        let Some((tenant, max)) = tenant else {
            self.ring.push_back(Turn::One(w));
            return false;
        };
        let t = self.tenant(tenant);
        t.max = max;
        t.drop_closed_front();
        if t.waiting.len() >= t.sweep_at.max(SWEEP_AT) {
            t.waiting.retain(|w| !w.is_closed());
            t.sweep_at = t.waiting.len() * 2;
        }
        t.waiting.push_back(w);
        let parked = t.at_limit();
        if !parked && !t.in_ring {
            t.in_ring = true;
            self.ring.push_back(Turn::Tenant(tenant.clone()));
        }
        parked
    }

    /// The next waiter whose turn it is (closed ones are dropped on the way), with its
    /// tenant counted when the tenant has a limit.
    pub fn pop(&mut self) -> Option<Popped<W>> {
        while let Some(turn) = self.ring.pop_front() {
            let key = match turn {
                Turn::One(w) if w.is_closed() => continue,
                Turn::One(w) => {
                    return Some(Popped {
                        waiter: w,
                        counted: None,
                    })
                }
                Turn::Tenant(key) => key,
            };
            let Some(t) = self.tenants.get_mut(&key) else {
                continue;
            };
            t.drop_closed_front();
            if t.waiting.is_empty() || t.at_limit() {
                // Nobody left, or parked until one of its connections comes back.
                t.in_ring = false;
                if t.unused() {
                    self.tenants.remove(&key);
                }
                continue;
            }
            let w = t.waiting.pop_front().expect("not empty");
            let counted = (t.max > 0).then(|| {
                t.active += 1;
                key.clone()
            });
            t.drop_closed_front();
            if !t.waiting.is_empty() && !t.at_limit() {
                self.ring.push_back(Turn::Tenant(key));
            } else {
                t.in_ring = false;
                if t.unused() {
                    self.tenants.remove(&key);
                }
            }
            return Some(Popped { waiter: w, counted });
        }
        None
    }

    /// The waiter at the front when it is a turn of its own (no tenant) that `take`
    /// accepts (closed ones are dropped on the way): the next in line, never one behind
    /// another (a batch takes waiters in turn order).
    pub fn pop_one_if(&mut self, take: impl Fn(&W) -> bool) -> Option<W> {
        loop {
            match self.ring.front() {
                Some(Turn::One(w)) if w.is_closed() => {
                    self.ring.pop_front();
                }
                Some(Turn::One(w)) if take(w) => match self.ring.pop_front() {
                    Some(Turn::One(w)) => return Some(w),
                    _ => unreachable!("the front was a turn of its own"),
                },
                _ => return None,
            }
        }
    }

    /// Move the first turn of its own within the first `window` turns that `here`
    /// accepts to the front, when every turn it passes is a turn of its own that was
    /// passed fewer than [`MAX_PASSED`] times (those are counted as passed once more).
    /// Closed turns at the front are dropped; nothing moves past a tenant's turn.
    pub fn bring_forward(&mut self, window: usize, here: impl Fn(&W) -> bool) {
        while let Some(Turn::One(w)) = self.ring.front() {
            if !w.is_closed() {
                break;
            }
            self.ring.pop_front();
        }
        let mut found = None;
        for (i, t) in self.ring.iter_mut().take(window).enumerate() {
            let Turn::One(w) = t else { return };
            if !w.is_closed() && here(w) {
                found = Some(i);
                break;
            }
            if *w.passed() >= MAX_PASSED {
                return;
            }
        }
        let Some(i) = found.filter(|&i| i > 0) else {
            return;
        };
        for t in self.ring.iter_mut().take(i) {
            if let Turn::One(w) = t {
                *w.passed() += 1;
            }
        }
        let t = self.ring.remove(i).expect("within the ring");
        self.ring.push_front(t);
    }

    /// Put a waiter of no tenant back at the front (taken by [`Queue::pop_one_if`] for a
    /// batch that did not form).
    pub fn push_front_one(&mut self, w: W) {
        self.ring.push_front(Turn::One(w));
    }

    /// Waiting transactions per tenant now (SHOW TENANTS, SHOW TENANT LIMITS).
    pub fn waiting_by_tenant(&self) -> impl Iterator<Item = (&Arc<str>, u32)> {
        self.tenants.iter().filter_map(|(k, t)| {
            let n = t.waiting.iter().filter(|w| !w.is_closed()).count() as u32;
            (n > 0).then_some((k, n))
        })
    }

    /// Connections counted for tenants now: (tenant, active).
    pub fn active_by_tenant(&self) -> impl Iterator<Item = (&Arc<str>, u32)> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.active > 0)
            .map(|(k, t)| (k, t.active))
    }

    /// Tenants with an entry (tests: memory is bounded).
    #[cfg(test)]
    pub fn tenant_entries(&self) -> usize {
        self.tenants.len()
    }

    fn tenant(&mut self, key: &Arc<str>) -> &mut Tenant<W> {
        self.tenants.entry(key.clone()).or_insert_with(|| Tenant {
            key: key.clone(),
            active: 0,
            max: 0,
            waiting: VecDeque::new(),
            in_ring: false,
            sweep_at: SWEEP_AT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A waiter for tests: a name, and a flag the test flips to make it give up.
    #[derive(Clone)]
    struct W(&'static str, Rc<Cell<bool>>, u8);
    impl Waits for W {
        fn is_closed(&self) -> bool {
            self.1.get()
        }
        fn waited(&self) -> Duration {
            Duration::ZERO
        }
        fn passed(&mut self) -> &mut u8 {
            &mut self.2
        }
    }
    fn w(name: &'static str) -> W {
        W(name, Rc::new(Cell::new(false)), 0)
    }
    fn names(q: &mut Queue<W>, n: usize) -> Vec<&'static str> {
        (0..n).filter_map(|_| q.pop().map(|p| p.waiter.0)).collect()
    }

    #[test]
    fn without_tenants_it_is_fifo() {
        let mut q = Queue::default();
        for n in ["a", "b", "c"] {
            assert!(!q.push(w(n), None));
        }
        assert_eq!(names(&mut q, 4), ["a", "b", "c"]);
        assert!(!q.has_turns());
    }

    #[test]
    fn a_waiter_of_this_thread_near_the_front_goes_first_a_bounded_number_of_times() {
        let mut q = Queue::default();
        // Names ending in "h" run on the releasing thread.
        let here = |w: &W| w.0.ends_with('h');
        for n in ["a", "b", "ch", "d", "eh", "fh"] {
            q.push(w(n), None);
        }
        let mut order = Vec::new();
        for _ in 0..6 {
            q.bring_forward(4, here);
            order.push(q.pop().unwrap().waiter.0);
        }
        // "ch" passes a and b; "eh" passes them again (their second pass) and d;
        // "fh" would pass a third time: a goes, then b; then fh passes d (its second).
        assert_eq!(order, ["ch", "eh", "a", "b", "fh", "d"]);

        // Beyond the window nothing moves; nothing passes a tenant's turn.
        let mut q = Queue::default();
        for n in ["a", "b", "c", "d", "eh"] {
            q.push(w(n), None);
        }
        q.bring_forward(4, here);
        assert_eq!(q.pop().unwrap().waiter.0, "a");
        let mut q = Queue::default();
        let t: Arc<str> = "42".into();
        q.push(w("a"), None);
        q.push(w("t"), Some((&t, 0)));
        q.push(w("bh"), None);
        q.bring_forward(4, here);
        assert_eq!(names(&mut q, 3), ["a", "t", "bh"]);
        // A closed one at the front is dropped, not passed.
        let mut q = Queue::default();
        let gone = w("gone");
        gone.1.set(true);
        q.push(gone, None);
        q.push(w("bh"), None);
        q.bring_forward(4, here);
        assert_eq!(names(&mut q, 2), ["bh"]);
    }

    #[test]
    fn a_tenant_with_many_waiters_takes_turns_with_the_others() {
        let mut q = Queue::default();
        let heavy: Arc<str> = "heavy".into();
        for _ in 0..500 {
            q.push(w("h"), Some((&heavy, 0)));
        }
        let light: Arc<str> = "light".into();
        q.push(w("l"), Some((&light, 0)));
        q.push(w("x"), None);
        // The heavy tenant queued first: one of its transactions, then the light one,
        // then the one without a tenant; not 500 heavy ones first.
        assert_eq!(names(&mut q, 4), ["h", "l", "x", "h"]);
    }

    #[test]
    fn a_tenant_at_its_limit_is_parked_until_a_connection_comes_back() {
        let mut q = Queue::default();
        let t: Arc<str> = "42".into();
        q.lend(&t, 2);
        q.lend(&t, 2);
        assert!(!q.may_take("42", 2));
        assert!(q.may_take("7", 2));
        assert!(q.push(w("42a"), Some((&t, 2))), "waits for its tenant");
        assert!(!q.has_turns(), "others may take idle connections");
        let other: Arc<str> = "7".into();
        assert!(!q.push(w("7a"), Some((&other, 2))));
        assert_eq!(names(&mut q, 2), ["7a"]);
        // One of 42's comes back: its waiter gets the next turn, counted.
        q.unlend("42");
        let p = q.pop().expect("42's turn");
        assert_eq!((p.waiter.0, p.counted.as_deref()), ("42a", Some("42")));
        assert!(!q.may_take("42", 2));
    }

    #[test]
    fn counts_are_given_back_and_entries_go() {
        let mut q = Queue::default();
        let t: Arc<str> = "42".into();
        q.push(w("a"), Some((&t, 1)));
        let p = q.pop().unwrap();
        assert_eq!(p.counted.as_deref(), Some("42"));
        assert_eq!(q.tenant_entries(), 1);
        q.unlend("42");
        assert_eq!(q.tenant_entries(), 0);
        // No limit: nothing counted, nothing kept.
        q.push(w("b"), Some((&t, 0)));
        assert!(q.pop().unwrap().counted.is_none());
        assert_eq!(q.tenant_entries(), 0);
    }

    #[test]
    fn waiters_that_gave_up_are_skipped_and_swept() {
        let mut q = Queue::default();
        let t: Arc<str> = "42".into();
        q.lend(&t, 1);
        let gone = Rc::new(Cell::new(false));
        for _ in 0..10_000 {
            let x = W("dead", gone.clone(), 0);
            q.push(x, Some((&t, 1)));
            gone.set(true);
        }
        gone.set(true);
        assert!(
            q.tenants["42"].waiting.len() < 64,
            "{}",
            q.tenants["42"].waiting.len()
        );
        assert!(!q.any_open());
        q.push(w("alive"), Some((&t, 1)));
        q.unlend("42");
        assert_eq!(names(&mut q, 2), ["alive"]);
    }

    #[test]
    fn a_raised_limit_applies_to_the_next_claim() {
        let mut q = Queue::default();
        let t: Arc<str> = "42".into();
        q.lend(&t, 1);
        assert!(!q.may_take("42", 1));
        assert!(q.may_take("42", 2));
        assert!(
            !q.push(w("a"), Some((&t, 2))),
            "not parked under the new limit"
        );
        assert_eq!(names(&mut q, 1), ["a"]);
    }

    /// Random operations against a model: counts always match the connections lent, a
    /// tenant is never handed more than its limit, nobody open is left waiting while a
    /// turn could serve them, and no entry outlives its use.
    #[test]
    fn random_operations_keep_the_invariants() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let tenants: Vec<Arc<str>> = (0..5).map(|i| Arc::from(i.to_string())).collect();
        for _round in 0..200 {
            let mut q: Queue<W> = Queue::default();
            // Per tenant: connections lent (the model), and its limit (one per round, as
            // a configuration would give it).
            let mut lent = [0u32; 5];
            let max: Vec<u32> = (0..5).map(|_| rand(4) as u32).collect();
            let mut waiting: Vec<(W, Option<usize>)> = Vec::new();
            for _ in 0..300 {
                match rand(6) {
                    0 | 1 => {
                        let t = rand(6) as usize;
                        let w = w("w");
                        let tenant = (t < 5).then_some(t);
                        let parked = q.push(w.clone(), tenant.map(|t| (&tenants[t], max[t])));
                        if let Some(t) = tenant {
                            assert_eq!(parked, max[t] > 0 && lent[t] >= max[t]);
                        }
                        waiting.push((w, tenant));
                    }
                    2 => match q.pop() {
                        Some(p) => {
                            assert!(!p.waiter.is_closed());
                            let i = waiting
                                .iter()
                                .position(|(w, _)| Rc::ptr_eq(&w.1, &p.waiter.1))
                                .expect("a waiter that was queued");
                            let (_, tenant) = waiting.remove(i);
                            match tenant {
                                Some(t) if max[t] > 0 => {
                                    assert_eq!(p.counted.as_deref(), Some(&*tenants[t]));
                                    lent[t] += 1;
                                    assert!(lent[t] <= max[t], "tenant {t} over its limit");
                                }
                                _ => assert!(p.counted.is_none()),
                            }
                        }
                        None => {
                            // Nobody open can be served: each is of a tenant at its limit.
                            for (w, tenant) in &waiting {
                                if !w.is_closed() {
                                    let t = tenant.expect("a waiter of no tenant is a turn");
                                    assert!(
                                        max[t] > 0 && lent[t] >= max[t],
                                        "tenant {t} left waiting"
                                    );
                                }
                            }
                        }
                    },
                    3 => {
                        let t = rand(5) as usize;
                        if lent[t] > 0 {
                            lent[t] -= 1;
                            q.unlend(&tenants[t]);
                        }
                    }
                    4 => {
                        let t = rand(5) as usize;
                        if max[t] > 0 && q.may_take(&tenants[t], max[t]) {
                            q.lend(&tenants[t], max[t]);
                            lent[t] += 1;
                        }
                        assert!(max[t] == 0 || lent[t] <= max[t]);
                    }
                    _ => {
                        if !waiting.is_empty() {
                            let i = rand(waiting.len() as u64) as usize;
                            waiting[i].0 .1.set(true);
                        }
                    }
                }
                let counted: HashMap<&str, u32> =
                    q.active_by_tenant().map(|(k, n)| (&**k, n)).collect();
                for t in 0..5 {
                    assert_eq!(
                        counted.get(&*tenants[t]).copied().unwrap_or(0),
                        lent[t],
                        "tenant {t}"
                    );
                }
                waiting.retain(|(w, _)| !w.is_closed());
                let busy = (0..5)
                    .filter(|&t| lent[t] > 0 || waiting.iter().any(|(_, x)| *x == Some(t)))
                    .count();
                assert!(q.tenant_entries() <= busy + 5);
            }
            // Everything given back and nobody waiting: nothing kept.
            for (w, _) in &waiting {
                w.1.set(true);
            }
            for t in 0..5 {
                for _ in 0..lent[t] {
                    q.unlend(&tenants[t]);
                }
            }
            while q.pop().is_some() {}
            assert_eq!(q.tenant_entries(), 0);
            assert!(!q.has_turns());
        }
    }
}
