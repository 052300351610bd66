//! Getting a server connection: the fast path (an idle one), opening within the limits,
//! or waiting for a turn (`queue.rs`) with reserve_pool_timeout and query_wait_timeout.
//! A transaction with a tenant claim (`crate::limits`) takes nothing while its tenant
//! holds its `max_active` connections: it waits in its tenant's queue meanwhile.
use super::*;
use crate::limits::Claim;

/// The tenant and limit of a claim, when the pool must count or queue by tenant.
fn tenant_of(claim: &Option<&mut Claim>) -> Option<(Arc<str>, u32)> {
    claim.as_ref().map(|c| (c.tenant.clone(), c.max_active))
}

/// io_uring: how many of the most recently used idle connections are looked at for one
/// watched by the taking thread's ring.
const SAME_THREAD_SCAN: usize = 4;

#[allow(clippy::large_enum_variant)]
pub(super) enum Waited {
    Handoff(Handoff),
    Reserve,
    Retry,
    Timeout,
}

impl Pool {
    /// The fast path of [`Pool::acquire`], without waiting: an idle connection that needs
    /// no check. `None`: take the slow path (it also handles waiters, opening, checks).
    /// `started`: now (the caller reads the clock once and reuses it).
    /// `claim`: the transaction's tenant and its limit, if any is on.
    pub fn try_acquire_idle(
        &self,
        started: Instant,
        claim: Option<&Claim>,
    ) -> Option<Box<ServerConn>> {
        let s = self.settings.load();
        let mut g = self.lock();
        if g.queue.has_turns() {
            return None;
        }
        if let Some(cl) = claim {
            if !g.queue.may_take(&cl.tenant, cl.max_active) {
                return None;
            }
        }
        let mut c = self.pop_usable_idle(&mut g, &s, started)?;
        if super::open::needs_check(&s, &c, started) {
            g.idle.push_back(c);
            return None;
        }
        if let Some(cl) = claim.filter(|cl| cl.max_active > 0) {
            g.queue.lend(&cl.tenant, cl.max_active);
            c.lent_to = Some(cl.tenant.clone());
        }
        drop(g);
        // No wait: recorded as zero rather than paying a second clock read.
        Some(self.assigned_after(c, Duration::ZERO))
    }
    /// The most recently used idle connection that is neither expired nor closed by the
    /// server; the others met on the way are closed.
    pub(super) fn pop_usable_idle(
        &self,
        g: &mut Inner,
        s: &Settings,
        now: Instant,
    ) -> Option<Box<ServerConn>> {
        // io_uring: among the most recently used few, prefer one watched by this thread's
        // ring, so that its answers complete here without waking another thread.
        if let Some(here) = crate::net::uring::this_ring() {
            let n = g.idle.len();
            if let Some(i) = (n.saturating_sub(SAME_THREAD_SCAN)..n)
                .rev()
                .find(|&i| g.idle[i].conn.watched_on() == Some(here))
            {
                if i + 1 != n {
                    g.idle.swap(i, n - 1);
                }
            }
        }
        while let Some(mut c) = g.idle.pop_back() {
            if Self::expired(s, &c, now) || c.conn.is_stale() {
                self.drop_slot(g);
                c.terminate();
                continue;
            }
            return Some(c);
        }
        None
    }
    /// Get a server connection: an idle one, a new one within the limits, or wait for one.
    /// `claim`: the transaction's tenant and its limit (marked `throttled` when it waited
    /// because its tenant was at its limit).
    pub async fn acquire(
        self: &Arc<Self>,
        claim: Option<&mut Claim>,
    ) -> Result<Box<ServerConn>, PoolError> {
        match self.acquire_unit(claim, None).await? {
            Lent::Conn(c) => Ok(c),
            Lent::Batched(_) => unreachable!("no unit, no batch"),
        }
    }

    /// [`Pool::acquire`] for a transaction that is one unit a batch may take (`batch`):
    /// if it waits, it may be served in a batch instead of being lent a connection.
    pub async fn acquire_unit(
        self: &Arc<Self>,
        mut claim: Option<&mut Claim>,
        mut unit: Option<Arc<batch::Ticket>>,
    ) -> Result<Lent, PoolError> {
        let s = self.settings();
        let started = Instant::now();
        let deadline = (!s.query_wait_timeout.is_zero()).then(|| started + s.query_wait_timeout);
        let mut allow_reserve = false;
        loop {
            #[allow(clippy::large_enum_variant)]
            enum Next {
                Got(Box<ServerConn>),
                Open(Option<Arc<str>>),
                Wait(oneshot::Receiver<Handoff>),
            }
            // Registered before anything is checked, so a connection of this database
            // or role freed (or idled in another pool) from here on wakes the wait below.
            let db_freed = self.db.freed.notified();
            let role_freed = self.role.freed.notified();
            let next = {
                let s = self.settings.load();
                let l = self.limits(&s);
                let mut g = self.lock();
                let tenant = tenant_of(&claim);
                let may = tenant
                    .as_ref()
                    .is_none_or(|(t, max)| g.queue.may_take(t, *max));
                let got = if may {
                    self.pop_usable_idle(&mut g, &s, Instant::now())
                } else {
                    None
                };
                let limit = l.pool_size
                    + if allow_reserve {
                        l.reserve_pool_size
                    } else {
                        0
                    };
                let counted = match (got.is_some(), may && g.total < limit) {
                    (false, true) => Some(self.try_count_which()),
                    _ => None,
                };
                // Counted for its tenant from here (given back on every way out).
                let lent = tenant
                    .as_ref()
                    .filter(|(_, max)| {
                        *max > 0 && (got.is_some() || matches!(counted, Some(Ok(()))))
                    })
                    .map(|(t, max)| {
                        g.queue.lend(t, *max);
                        t.clone()
                    });
                if let Some(mut c) = got {
                    c.lent_to = lent;
                    Next::Got(c)
                } else if let Some(Ok(())) = counted {
                    g.total += 1;
                    Next::Open(lent)
                } else if matches!(counted, Some(Err(full)) if self.evict_idle_elsewhere(full)) {
                    // max_db_connections or max_user_connections was reached with idle
                    // connections in another pool of this database or role: one was
                    // closed, try again.
                    continue;
                } else {
                    let (tx, rx) = oneshot::channel();
                    // A tenant at its limit waits for itself, not for the pool.
                    if may && !g.queue.any_open() {
                        g.exhausted_since_log += 1;
                        if g.exhausted_logged.is_none_or(|t| {
                            started.saturating_duration_since(t) >= EXHAUSTED_LOG_EVERY
                        }) {
                            tracing::info!(pool = %self.name(), total = g.total, queues_since_last_message = g.exhausted_since_log, "pool exhausted: clients are waiting for a server connection");
                            g.exhausted_logged = Some(started);
                            g.exhausted_since_log = 0;
                        }
                    }
                    let parked = g.queue.push(
                        Waiter {
                            tx,
                            since: started,
                            unit: unit.clone(),
                            home: crate::net::uring::this_ring(),
                            passed: 0,
                        },
                        tenant.as_ref().map(|(t, max)| (t, *max)),
                    );
                    if parked {
                        if let Some(c) = claim.as_deref_mut() {
                            c.throttled = true;
                        }
                    }
                    Next::Wait(rx)
                }
            };
            match next {
                Next::Got(c) => match self.check(c).await {
                    Some(c) => return Ok(Lent::Conn(self.assigned(c, started))),
                    None => continue,
                },
                Next::Open(lent) => {
                    return Box::pin(self.open(lent))
                        .await
                        .map(|c| Lent::Conn(self.assigned(c, started)))
                }
                Next::Wait(rx) => {
                    self.stats.waiting.fetch_add(1, Ordering::Relaxed);
                    // Not boxed: the session boxes this whole future already.
                    let r = self
                        .wait(
                            rx,
                            [db_freed, role_freed],
                            &s,
                            started,
                            deadline,
                            allow_reserve,
                        )
                        .await;
                    self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                    match r {
                        Waited::Handoff(Handoff::Conn(c)) => match self.check(c).await {
                            Some(c) => return Ok(Lent::Conn(self.assigned(c, started))),
                            None => continue,
                        },
                        Waited::Handoff(Handoff::Slot(lent)) => {
                            return Box::pin(self.open(lent))
                                .await
                                .map(|c| Lent::Conn(self.assigned(c, started)))
                        }
                        Waited::Handoff(Handoff::Batched(t)) => return Ok(Lent::Batched(t)),
                        Waited::Reserve => {
                            allow_reserve = true;
                            unit = unit.map(|t| t.renewed());
                        }
                        // A ticket withdrawn from the queue is not queued again.
                        Waited::Retry => unit = unit.map(|t| t.renewed()),
                        Waited::Timeout => {
                            self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                            // Whose limit held it: the pool's, or its tenant's.
                            return Err(match claim.as_deref().filter(|c| c.throttled) {
                                Some(c) => PoolError::TenantWaitTimeout(c.tenant.clone()),
                                None => PoolError::WaitTimeout,
                            });
                        }
                    }
                }
            }
        }
    }
    pub(super) async fn wait(
        &self,
        mut rx: oneshot::Receiver<Handoff>,
        freed: [tokio::sync::futures::Notified<'_>; 2],
        s: &Settings,
        started: Instant,
        deadline: Option<Instant>,
        allow_reserve: bool,
    ) -> Waited {
        let l = self.limits(s);
        let reserve_at =
            (!allow_reserve && l.reserve_pool_size > 0).then(|| started + s.reserve_pool_timeout);
        let [db_freed, role_freed] = freed;
        tokio::pin!(db_freed);
        tokio::pin!(role_freed);
        let db_limited = l.max_db_connections > 0;
        let role_limited = l.max_user_connections > 0;
        // Timers are made when first polled: a disabled branch costs nothing.
        async fn sleep_until(at: Option<Instant>) {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            biased;
            r = &mut rx => match r {
                Ok(h) => Waited::Handoff(h),
                Err(_) => Waited::Retry,
            },
            _ = sleep_until(reserve_at), if reserve_at.is_some() => {
                self.reclaim(rx).map_or(Waited::Reserve, |t| Waited::Handoff(Handoff::Batched(t)))
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                self.reclaim(rx).map_or(Waited::Timeout, |t| Waited::Handoff(Handoff::Batched(t)))
            }
            _ = &mut db_freed, if db_limited => {
                self.reclaim(rx).map_or(Waited::Retry, |t| Waited::Handoff(Handoff::Batched(t)))
            }
            _ = &mut role_freed, if role_limited => {
                self.reclaim(rx).map_or(Waited::Retry, |t| Waited::Handoff(Handoff::Batched(t)))
            }
        }
    }
    /// A waiter gives up: whatever was sent to it in the meantime is not lost. A unit a
    /// batch already sent comes back (its answer is on the way: the waiter takes it).
    pub(super) fn reclaim(&self, mut rx: oneshot::Receiver<Handoff>) -> Option<Arc<batch::Ticket>> {
        rx.close();
        match rx.try_recv() {
            Ok(Handoff::Batched(t)) => return (!t.withdraw()).then_some(t),
            Ok(Handoff::Conn(c)) => self.release(c, true),
            Ok(Handoff::Slot(lent)) => {
                let mut g = self.lock();
                if let Some(t) = lent {
                    g.queue.unlend(&t);
                }
                self.drop_slot(&mut g);
            }
            Err(_) => {}
        }
        None
    }
    pub(super) fn assigned(&self, c: Box<ServerConn>, started: Instant) -> Box<ServerConn> {
        self.assigned_after(c, started.elapsed())
    }
    /// `waited`: how long the client waited (zero on the fast path, which does not wait).
    pub(super) fn assigned_after(&self, c: Box<ServerConn>, waited: Duration) -> Box<ServerConn> {
        self.stats.active.add(1);
        self.stats.assignments.add(1);
        self.stats.wait_time_us.add(waited.as_micros() as u64);
        self.stats.wait_latency.record(waited);
        c
    }
}
