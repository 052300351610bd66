//! Parking an idle session: its task ends, its socket waits in the parking lot
//! (`net::park`), and what the session must remember waits beside it.
//!
//! Rules:
//! - Who is asked: twice a second a sweep ([`spawn_sweeper`]) looks at every client the
//!   console's registry says is idle (no transaction, not waiting); one it saw idle at
//!   `park_after` sweeps in a row (2 at first), with nothing sent since, is asked to
//!   park and woken (`ClientRegistry::ask_idle_to_park`). So a client parks after
//!   0.5–1 s without a message, and a busy one never pays for parking. A client that came
//!   back within 2 s of parking, or declined, waits twice as many sweeps next time (up
//!   to 16 s): one with steady gaps of a second or so stops parking and coming back each
//!   time; one that stayed parked a minute starts over (`SessionConsole::set_parked`).
//! - Who parks: only a session with nothing in flight or kept: no server connection (so
//!   not session mode, not pinned), no transaction, nothing held, deferred or buffered
//!   either way, no timer, no LISTEN (its notifications come through a channel), no
//!   message pgtenant answers itself kept on the unnamed statement or portal, not
//!   draining, and a plain TCP or unix socket: not TLS, whose state lives above the
//!   socket. An io_uring stream first takes back its armed receive (if bytes come first,
//!   it does not park). Any other declines, and is asked again later.
//! - What it keeps: the client without its connection (its key, pools, startup settings,
//!   and its registry entry, which holds its names and state), its session identity and
//!   its view (statements, settings), the socket, and the end of the session (`end`,
//!   which also holds the context, and the task tracker's token: shutdown waits for a
//!   parked client as for a running one). No field twice: 168 bytes.
//! - Waking: bytes or a hang-up on the socket, or anyone who wakes the session (KILL,
//!   SUSPEND, RESUME, shutdown: they all wake the waker in the session's console entry,
//!   which is the lot's while it is parked) spawn its task again, on the epoll runtime
//!   or the next io_uring thread, with the same state: the client sees nothing. (RELOAD
//!   wakes nobody: a session looks at the configuration's epoch at its next
//!   transaction, parked or not.) After it put the lot's waker in place, the parking
//!   session looks at its kill flag, the shutdown token and SUSPEND once more, and wakes
//!   itself if one is up.
use std::sync::Arc;

use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::{Session, SessionEnd, View};
use crate::config::PoolMode;
use crate::context::Context;
use crate::frontend::login::{Client, ClientParts};
use crate::net::park::Unpark;
use crate::net::stream::Bare;
use crate::net::Connection;

/// How often the sweep looks for idle clients to park.
pub const PARK_SWEEP: std::time::Duration = std::time::Duration::from_millis(500);

/// Ask idle clients to park, every [`PARK_SWEEP`], until `stop`.
pub fn spawn_sweeper(
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PARK_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // A SUSPEND or a shutdown wakes every session: none is asked meanwhile. The
            // sweep walks every client (milliseconds with 100,000 of them): off the
            // runtime's threads.
            if !ctx.admin.suspend.is_on() && !ctx.shutdown.is_cancelled() {
                let c = ctx.clone();
                let _ =
                    tokio::task::spawn_blocking(move || c.admin.clients.ask_idle_to_park()).await;
            }
        }
    })
}

/// A parked session: what it keeps while its task is gone.
struct Parked<E> {
    sock: Bare,
    max_message: u32,
    client: ClientParts,
    id: u64,
    mode: PoolMode,
    view: View,
    max_prepared: u32,
    end: E,
    /// Shutdown waits for the parked client, and its task is tracked again from it.
    token: TaskTrackerToken,
}

impl Session {
    /// Can this session wait with no task (see the module's rules)?
    pub(super) fn parkable(&self) -> bool {
        self.why_not_park().is_none()
    }

    /// What keeps this session from parking, if anything.
    pub(super) fn why_not_park(&self) -> Option<&'static str> {
        let c = &self.c.conn;
        let reasons = [
            (self.attached.is_some(), "a server connection"),
            (self.pinned, "pinned"),
            (self.client_tx != b'I', "a transaction"),
            (
                !self.held.is_empty() || !self.deferred.is_empty() || self.paused_input,
                "messages held",
            ),
            (
                self.fake_statement.is_some() || self.fake_portal.is_some(),
                "an unnamed statement pgtenant answers",
            ),
            (self.listening.is_some(), "LISTEN"),
            (self.skip_until_sync, "an error before Sync"),
            (self.idle_tx_timer.is_some(), "a timer"),
            (self.draining || self.session_lost, "ending"),
            (
                self.tenant.is_some() || self.claim_tenant.is_some(),
                "a tenant claim",
            ),
            (
                c.pending_output() > 0 || c.buffered_input() > 0 || c.is_eof(),
                "bytes buffered",
            ),
            (!c.stream().can_be_bare(), "TLS"),
        ];
        reasons.into_iter().find(|(no, _)| *no).map(|(_, why)| why)
    }
}

/// The session's future: the loop, then either its end, or parking (the task ends, and
/// the lot spawns this again when the client comes back).
///
/// Not an `async fn`: that would keep its arguments and the session moved out of them
/// twice in the future, the task of every running client (see
/// `frontend::size_tests`).
#[allow(clippy::manual_async_fn)]
pub(super) fn drive<E>(
    mut s: Session,
    end: E,
    tracker: TaskTracker,
) -> impl std::future::Future<Output = ()> + Send
where
    E: SessionEnd,
{
    async move {
        let r = loop {
            match s.run().await {
                // `run` asked `parkable` already.
                Ok(super::Ended::Park) => {
                    let lot = crate::net::park::lot().filter(|_| crate::runtime::runs_anywhere());
                    if let Some(lot) = lot {
                        let stream = s.c.conn.stream();
                        if std::future::poll_fn(|cx| stream.poll_let_go(cx)).await {
                            return park(lot, s, end, tracker);
                        }
                    }
                    s.c.state().console.decline_park();
                }
                Ok(super::Ended::Closed) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        Box::pin(s.finish()).await;
        end.end(r, &s.c.entry);
    }
}

/// Park `s` (parkable, its stream let go) in `lot`.
fn park<E>(lot: &'static crate::net::park::Lot, s: Session, end: E, tracker: TaskTracker)
where
    E: SessionEnd,
{
    let Session {
        ctx,
        c,
        id,
        mode,
        view,
        max_prepared,
        ..
    } = s;
    let (conn, client) = c.into_parts();
    let max_message = conn.max_message() as u32;
    let Ok(stream) = conn.into_stream() else {
        unreachable!("parkable() checked the buffers")
    };
    let sock = match stream.into_bare() {
        Ok(b) => b,
        Err(e) => return end.end(Err(e.into()), client.entry()),
    };
    let entry = client.entry().clone();
    let state = &entry.state;
    let p = Parked {
        sock,
        max_message,
        client,
        id,
        mode,
        view,
        max_prepared: max_prepared as u32,
        end,
        token: tracker.token(),
    };
    drop(tracker);
    state.console.set_parked(true);
    let (ticket, waker) = lot.reserve(Box::new(p));
    // Where KILL, SUSPEND and shutdown wake the session from now on; then the socket is
    // watched; then a wake-up that came before the waker was in place is made up for.
    state.console.suspend.set_waker(&waker);
    lot.watch(ticket);
    if state.console.is_killed() || ctx.shutdown.is_cancelled() || ctx.admin.suspend.is_on() {
        waker.wake();
    }
}

impl<E> Unpark for Parked<E>
where
    E: SessionEnd,
{
    fn fd(&self) -> std::os::fd::RawFd {
        self.sock.fd()
    }

    fn unpark(self: Box<Self>) {
        let p = *self;
        let tracker = p.token.task_tracker().clone();
        crate::runtime::spawn_client_anywhere(tracker.track_future(resume(p)));
    }
}

/// Take the parked session up again: its socket back on this thread's engine, then its
/// task.
async fn resume<E>(p: Parked<E>)
where
    E: SessionEnd,
{
    let Parked {
        sock,
        max_message,
        client,
        id,
        mode,
        view,
        max_prepared,
        end,
        token,
    } = p;
    let ctx = end.ctx().clone();
    let tracker = token.task_tracker().clone();
    drop(token);
    client.state().console.set_parked(false);
    let stream = match sock.into_stream() {
        Ok(s) => s,
        Err(e) => {
            let entry = client.entry().clone();
            drop(client);
            return end.end(Err(e.into()), &entry);
        }
    };
    let conn = Connection::new(stream, max_message as usize);
    let c = Client::from_parts(conn, client);
    let s = Session::new(ctx, c, id, mode, view, max_prepared as usize);
    // A task of its own, as at login (on this thread: under io_uring, its ring's), so
    // that it is no larger than a new client's; this one ends here.
    tracker.spawn(drive(s, end, tracker.clone()));
}
