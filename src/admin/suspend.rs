//! SUSPEND / RESUME as PgBouncer: every socket buffer is flushed, then pgtenant reads
//! nothing more from client or server sockets until RESUME; SUSPEND answers once every
//! buffer is empty. The admin console keeps working meanwhile.
//!
//! How the sessions take part, at the cost of one relaxed load per poll while nothing is
//! suspended ([`SuspendState::is_on`]):
//! - The session loop writes out what is queued first, as always; then, while suspended,
//!   it polls no read and no timer: it reports "flushed in this round" ([`SessionSuspend`],
//!   in its `ClientState`) once nothing is left to write, leaves its waker for RESUME, and
//!   returns Pending. A session whose peer does not read stays unflushed, and SUSPEND
//!   waits for it.
//! - A session parked before SUSPEND (idle, or blocked on a full socket) would not look at
//!   the flag until its sockets move: each session leaves its waker in its
//!   [`SessionSuspend`] when it goes to sleep (only when the waker changed), and SUSPEND
//!   wakes every session with it, draining ones (KILL or SHUTDOWN came, the transaction
//!   is finishing) included. Waking moves the session signal count first
//!   (`frontend::signal_sessions`), which makes each woken session register its waker
//!   again.
//! - Shutdown lifts a suspension ([`lift_suspend_at_shutdown`]): sessions finishing their
//!   transaction must read again, or they would stay parked until shutdown_timeout.
//! - A session waiting for a server connection counts as suspended: it reads nothing
//!   while it waits.
//! - New clients log in and are then held, registered but before their session starts,
//!   until RESUME or KILL (`frontend::after_login`): they see a successful connection whose first query waits,
//!   as PgBouncer keeps new connections waiting. They are held after the startup packet
//!   rather than refused at accept so that the admin console (known only from the startup
//!   packet) stays reachable: an operator whose SUSPENDing session died can still RESUME.
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use super::{AdminError, Reply};
use crate::context::Context;
use crate::metrics::counters::ClientStateKind;

#[derive(Default)]
pub struct SuspendState {
    on: AtomicBool,
    /// Incremented by each SUSPEND: sessions report having flushed in round N.
    round: AtomicU64,
    /// Wakes new clients held before their session (RESUME).
    resumed: Notify,
}

impl SuspendState {
    /// The session loop's check: one relaxed load.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Called by a session's poll, after its writes, while suspended. `pending`: bytes it
    /// still has to write (client and server). Returns false if RESUME came meanwhile (poll
    /// on as usual); true: return Pending, RESUME (or the socket being written) wakes it.
    pub fn park(&self, cx: &mut TaskContext<'_>, s: &SessionSuspend, pending: usize) -> bool {
        {
            let mut w = lock(&s.waker);
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // Waker first, flag second: a RESUME in between is seen here or wakes us.
        if !self.on.load(Ordering::SeqCst) {
            return false;
        }
        if pending == 0 {
            s.flushed_round
                .store(self.round.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        true
    }

    /// Start a SUSPEND: its round, or None if one is on already. One compare-and-swap, so
    /// that of two concurrent SUSPENDs exactly one goes on. The round moves first: a
    /// session parking once the flag is up reports this round or a later one (a losing
    /// SUSPEND's increment only makes later reports count for more rounds).
    fn begin(&self) -> Option<u64> {
        let round = self.round.fetch_add(1, Ordering::SeqCst) + 1;
        self.on
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        Some(round)
    }

    /// A new client, logged in and registered (KILL finds it): wait here while suspended,
    /// until RESUME, a KILL, or shutdown (which lifts the suspension).
    pub async fn hold(&self, session: &super::SessionConsole) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.on.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                _ = resumed => {}
                _ = session.killed() => return,
            }
        }
    }
}

/// One session's side of SUSPEND (lives in its `ClientState`, next to what SHOW CLIENTS
/// reads).
#[derive(Debug, Default)]
pub struct SessionSuspend {
    /// The last SUSPEND round in which the session parked with nothing left to write.
    flushed_round: AtomicU64,
    /// Where RESUME wakes it.
    waker: Mutex<Option<Waker>>,
}

impl SessionSuspend {
    /// The session loop keeps its waker here (when it changes), so that SUSPEND can wake
    /// a session parked on its sockets and RESUME one parked by the flag.
    pub fn set_waker(&self, w: &Waker) {
        let mut g = lock(&self.waker);
        if !g.as_ref().is_some_and(|old| old.will_wake(w)) {
            *g = Some(w.clone());
        }
    }

    /// Make the session look at the flag (SUSPEND).
    fn nudge(&self) {
        self.wake();
    }

    /// Wake the session. The waker stays in place (a session skips registering it again
    /// while its signal count and waker are unchanged, see `frontend::session`, so a
    /// taken waker could be missing at the next nudge); the count moves first so that the
    /// woken session also looks at its kill flag and the shutdown token again.
    pub(crate) fn wake(&self) {
        crate::frontend::signal_sessions();
        self.wake_after_signal();
    }

    /// [`SessionSuspend::wake`] for a caller that moved the signal count itself (once for
    /// every session it wakes: `ClientRegistry::wake_sessions`).
    pub(crate) fn wake_after_signal(&self) {
        // Woken outside the lock: a parked session's waker spawns its task.
        let w = lock(&self.waker).clone();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Sessions that have not reported an empty buffer in `round` (waiting ones excepted).
fn unflushed(ctx: &Context, round: u64) -> usize {
    ctx.admin
        .clients
        .all()
        .iter()
        .filter_map(|c| c.session())
        .filter(|s| {
            s.console.suspend.flushed_round.load(Ordering::SeqCst) < round
                && s.kind() != ClientStateKind::Waiting
        })
        .count()
}

pub async fn suspend(ctx: &Arc<Context>) -> Result<Reply, AdminError> {
    let state = &ctx.admin.suspend;
    if state.is_on() || ctx.admin.pause.all_paused() {
        return Err(AdminError::new("already suspended/paused"));
    }
    if ctx.admin.pause.any_paused() {
        // A client waiting on a paused database sits outside its loop, buffers and all.
        return Err(AdminError::new("cannot suspend with paused databases"));
    }
    if ctx.shutdown.is_cancelled() {
        return Err(AdminError::new("pgtenant is shutting down"));
    }
    let Some(round) = state.begin() else {
        return Err(AdminError::new("already suspended/paused"));
    };
    tracing::info!("SUSPEND from the admin console");
    for c in ctx.admin.clients.all() {
        if let Some(s) = c.session() {
            s.console.suspend.nudge();
        }
    }
    loop {
        if ctx.shutdown.is_cancelled() {
            // Lifted by the shutdown already, unless it started between the check above
            // and `begin` and lifted nothing: lift it here then.
            lift(ctx);
            return Err(AdminError::new("pgtenant is shutting down"));
        }
        if !state.is_on() {
            break; // RESUMEd meanwhile
        }
        // (A RESUME and another SUSPEND between two looks: sessions report the later
        // round, which counts for this one too.)
        if unflushed(ctx, round) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Reply::Tag("SUSPEND"))
}

/// RESUME without a database while suspended: every session reads again, held clients
/// start.
pub fn resume(ctx: &Arc<Context>) -> Result<Reply, AdminError> {
    if !lift(ctx) {
        return Err(AdminError::new("pooler is not paused/suspended"));
    }
    tracing::info!("RESUME from the admin console (suspend)");
    Ok(Reply::Tag("RESUME"))
}

/// Shutdown (SIGTERM, SIGINT, SHUTDOWN) lifts a suspension, after `ctx.shutdown` is
/// cancelled: sessions finishing their transaction must read again to finish it.
pub fn lift_suspend_at_shutdown(ctx: &Context) {
    if lift(ctx) {
        tracing::info!("shutdown lifts SUSPEND");
    }
}

/// Every session reads again, held clients start. False if nothing was suspended.
fn lift(ctx: &Context) -> bool {
    let state = &ctx.admin.suspend;
    if !state.on.swap(false, Ordering::SeqCst) {
        return false;
    }
    ctx.admin.clients.wake_sessions();
    state.resumed.notify_waiters();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_concurrent_suspends_exactly_one_begins() {
        for _ in 0..200 {
            let state = SuspendState::default();
            let barrier = std::sync::Barrier::new(4);
            let won: Vec<Option<u64>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            state.begin()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<u64> = won.into_iter().flatten().collect();
            assert_eq!(winners.len(), 1, "{winners:?}");
            assert!(state.is_on());
            // A session parking now reports a round that counts for the winner's.
            assert!(state.round.load(Ordering::SeqCst) >= winners[0]);
        }
        // Only after the suspension is lifted can the next one begin.
        let state = SuspendState::default();
        let first = state.begin().unwrap();
        assert_eq!(state.begin(), None);
        state.on.store(false, Ordering::SeqCst);
        assert!(state.begin().unwrap() > first);
    }

    #[test]
    fn a_nudge_wakes_the_session_even_once_killed() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let s = SessionSuspend::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let before = crate::frontend::session_signals();
        // A draining session (KILL came) still registers its waker and is still nudged.
        s.set_waker(&Waker::from(count.clone()));
        s.nudge();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(crate::frontend::session_signals() > before);
        // The waker stays registered: the next nudge (or RESUME) finds it too, even if the
        // session has not been polled in between.
        s.nudge();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
