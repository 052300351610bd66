//! The session's side of per-tenant limits (`crate::limits`): the transaction's claim,
//! the rate token before it takes a connection, and the statement timer while it runs.
//!
//! Rules:
//! - A claim is made only when a limit is on and the router pinned the transaction to one
//!   tenant (a key or a hint): `claim_tenant` is set when the route is decided and taken
//!   by the next acquire, so a transaction's claim never outlives it.
//! - The rate token is taken before the pool is asked (waiting for a token holds no
//!   server connection); the wait counts as waiting (`pgtenant_clients{state="waiting"}`).
//! - The statement timer runs from a statement's first message to its ReadyForQuery; when
//!   it fires, pgtenant cancels through the client's own cancel slot (`CancelSlot`), so
//!   the cancel can never reach a server connection that went to another client, and the
//!   client gets PostgreSQL's own statement-timeout error, naming the tenant's limit.
use super::*;
use crate::limits::{rate::Token, Claim};

/// A tenant's statement_timeout on the attached connection.
pub(super) struct StatementTimer {
    limit: Duration,
    tenant: Arc<str>,
    /// Made at the first statement, reset for each one after (no allocation per
    /// statement).
    sleep: Option<Pin<Box<Sleep>>>,
    /// A statement runs: the sleep counts.
    armed: bool,
    /// It fired and a cancel went out: the server's "canceling statement due to user
    /// request" that follows is this timeout's.
    fired: bool,
    /// The statement ended before the cancel of its timeout was seen to land: that
    /// cancel may still be on its way, and must not reach the client's next statement
    /// on this connection (see [`Session::settle_timeout_cancel`]).
    stale: bool,
}

impl StatementTimer {
    /// Start the clock of a statement about to be sent.
    pub(super) fn arm(&mut self) {
        let at = tokio::time::Instant::now() + self.limit;
        match self.sleep.as_mut() {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    /// The statement's answer is complete.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
        // Its error, if any, came before the ReadyForQuery that ends the statement; if
        // none came, the cancel may still be travelling.
        self.stale |= self.fired;
        self.fired = false;
    }

    /// A cancel of this timer may still be on its way (the statement ended first).
    pub(super) fn stale(&self) -> bool {
        self.stale
    }

    pub(super) fn poll_fired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        if !self.armed {
            return false;
        }
        let Some(s) = self.sleep.as_mut() else {
            return false;
        };
        if s.as_mut().poll(cx).is_ready() {
            self.armed = false;
            return true;
        }
        false
    }

    /// An ErrorResponse from the server while this timer's cancel was out: PostgreSQL's
    /// statement-timeout error in place of "canceling statement due to user request".
    pub(super) fn rewrite_error(&mut self, body: &[u8]) -> Option<Frame> {
        if !self.fired {
            return None;
        }
        let fields = ErrorFields::parse(body).ok()?;
        if fields.code != sqlstate::QUERY_CANCELED {
            return None;
        }
        self.fired = false;
        Some(build::error_with_detail(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to statement timeout",
            &format!(
                "tenant {}'s statement_timeout ({} ms) set by pgtenant",
                self.tenant,
                self.limit.as_millis()
            ),
        ))
    }
}

/// The tenant to claim for when the route was decided by `reason` with `tenant` (the
/// caller checked that a limit is on).
pub(super) fn limited_tenant(
    reason: RouteReason,
    tenant: &crate::frontend::routing::TenantOf,
) -> Option<Box<(u32, Arc<str>)>> {
    match (reason, tenant) {
        (RouteReason::TenantKey | RouteReason::Hint, Some((colocation, v))) => {
            Some(Box::new((*colocation, Arc::from(v.as_str()))))
        }
        _ => None,
    }
}

impl Session {
    /// The claim of the transaction about to take a connection of `pool` (inlined: with
    /// no limit on it is one test).
    #[inline]
    pub(super) fn take_claim(&mut self, pool: &Pool) -> Option<Box<Claim>> {
        let t = self.claim_tenant.take()?;
        self.make_claim(pool, *t)
    }

    fn make_claim(&self, pool: &Pool, (colocation, tenant): (u32, Arc<str>)) -> Option<Box<Claim>> {
        let s = self.ctx.settings.load();
        let pool_size = pool.limits(&s).pool_size;
        let mut c = self
            .ctx
            .tenant_limits
            .claim(&s, &pool.key.database, pool_size, tenant)?;
        c.colocation = colocation;
        Some(Box::new(c))
    }

    /// `max_tps`: wait for the tenant's token, or refuse when it would come after the
    /// transaction's query_wait_timeout.
    pub(super) async fn take_token(&self, claim: &mut Claim, pool: &Pool) -> Result<(), PoolError> {
        if claim.max_tps <= 0.0 {
            return Ok(());
        }
        let s = self.ctx.settings.load();
        let max_wait = (!s.query_wait_timeout.is_zero()).then_some(s.query_wait_timeout);
        let now = Instant::now();
        let counts = &self.ctx.tenant_limits.counts;
        match self
            .ctx
            .tenant_limits
            .rate
            .take(&claim.tenant, claim.max_tps, now, max_wait)
        {
            Token::After(d) if d.is_zero() => Ok(()),
            Token::After(d) => {
                counts.throttled_rate.fetch_add(1, Ordering::Relaxed);
                claim.rate_throttled = true;
                claim.waited += d;
                let _waiting =
                    crate::metrics::counters::Waiting::enter_for(Some(self.c.state_ref()));
                tokio::time::sleep(d).await;
                Ok(())
            }
            Token::TooLate(d) => {
                let n = counts.rate_refused.fetch_add(1, Ordering::Relaxed);
                self.refused_by_limit(claim, pool, Duration::ZERO);
                // A tenant far over its rate is refused thousands of times a second: the
                // log says so once a minute (the counts are in /metrics).
                if log_now(&RATE_LOGGED) {
                    tracing::info!(tenant = %Escaped(&claim.tenant), max_tps = claim.max_tps, refused_since_start = n + 1, "tenant over its rate limit; transaction refused");
                }
                Err(PoolError::TenantRate(format!(
                    "tenant {} is over its rate limit (max_tps = {}): its next transaction may start in {} ms, after query_wait_timeout",
                    claim.tenant,
                    claim.max_tps,
                    d.as_millis()
                )))
            }
        }
    }

    /// After the pool lent a connection for `claim`: count a wait its tenant's limit
    /// caused, and start the statement timer when the tenant has one.
    #[inline]
    pub(super) fn claimed(&mut self, claim: Option<Box<Claim>>) {
        if let Some(c) = claim {
            self.claimed_slow(&c);
        }
    }

    fn claimed_slow(&mut self, claim: &Claim) {
        if claim.throttled {
            self.ctx
                .tenant_limits
                .counts
                .throttled_active
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(a) = self.attached.as_mut() {
            if claim.throttled || claim.rate_throttled {
                a.throttled = Some(claim.waited);
            }
            a.timer = (!claim.statement_timeout.is_zero()).then(|| {
                Box::new(StatementTimer {
                    limit: claim.statement_timeout,
                    tenant: claim.tenant.clone(),
                    sleep: None,
                    armed: false,
                    fired: false,
                    stale: false,
                })
            });
        }
    }

    /// The transaction's tenant limit refused it (`query_wait_timeout` in the tenant's
    /// queue, or its rate): count it for the tenant, as a throttled transaction.
    pub(super) fn refused_by_limit(&self, claim: &Claim, pool: &Pool, waited: Duration) {
        let k = self
            .ctx
            .tenants
            .key(claim.colocation, &claim.tenant, pool.key.node.name.clone());
        self.ctx.tenants.throttled(&k, waited);
    }

    /// Before the client's next message goes to a connection whose last statement ended
    /// while its timeout's cancel was out: wait until that cancel has reached the server
    /// (the backend, idle then, ignores it), so that it cannot cancel the next statement.
    pub(super) async fn settle_timeout_cancel(&mut self) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let Some(t) = a.timer.as_mut().filter(|t| t.stale) else {
            return;
        };
        t.stale = false;
        // Setting the same target waits for every cancel in flight to be delivered.
        let target = a.server.cancel.clone();
        self.set_cancel_target(Some(target)).await;
    }

    /// The tenant's statement_timeout passed: cancel the statement.
    pub(super) fn statement_timed_out(&mut self) -> Flow {
        let Some(t) = self.attached.as_mut().and_then(|a| a.timer.as_mut()) else {
            return Flow::Continue;
        };
        if self.c.key.slot.cancel_detached() {
            t.fired = true;
            self.ctx
                .tenant_limits
                .counts
                .statement_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(tenant = %Escaped(&t.tenant), limit_ms = t.limit.as_millis() as u64, "tenant statement_timeout: cancelling the statement");
        }
        Flow::Continue
    }
}

use std::sync::atomic::{AtomicU64, Ordering};

/// When the last rate refusal was logged (seconds since the process's first log of it).
static RATE_LOGGED: AtomicU64 = AtomicU64::new(u64::MAX);

/// At most one message a minute per kind.
fn log_now(last: &AtomicU64) -> bool {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs();
    let prev = last.load(Ordering::Relaxed);
    (prev == u64::MAX || now >= prev + 60)
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
