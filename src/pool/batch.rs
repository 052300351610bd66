//! Server-side pipelining (`server_pipelining = auto`): while a pool is saturated, the
//! self-contained statements of several waiting clients go back to back on one server
//! connection, in one write, and their answers come back in as few reads.
//!
//! Rules:
//! - Only when the pool is saturated: a batch forms when a connection comes back and
//!   clients wait (`Pool::hand_to_waiter`); a client that finds an idle connection or may
//!   open one never waits behind another's statement.
//! - A unit is one simple Query, or one extended-protocol group of the unnamed statement
//!   ending in Sync, that is its own implicit transaction and changes nothing of the
//!   session (plain DML without session effects, the client idle and unpinned; the
//!   session decides, `frontend::session::batched`), of a client without a tenant claim,
//!   whose settings are exactly the connection's and whose connection needs no take-over.
//!   PostgreSQL runs each such Query as a transaction of its own: an error in one does not
//!   reach the next.
//! - The batch is the waiters in turn order from the front, as long as each is a unit
//!   that fits (no one is overtaken), at most `server_pipeline_depth`.
//! - A unit that may wait ([`Ticket::may_wait`], `router::effects::may_wait`: a write, a
//!   locking clause, a sleep or an advisory lock, anything the scan cannot vouch for as a
//!   plain read) is the last of its batch: nothing is sent behind it. It may wait on
//!   another transaction for as long as that one pleases (one of its own application's,
//!   maybe, waiting in turn for a unit behind it: a deadlock PostgreSQL cannot see), and
//!   nobody must wait behind that while another connection may come free. As the last
//!   unit it holds the connection as it would hold one of its own. A plain read waits
//!   only for a table's ACCESS EXCLUSIVE lock (DDL, LOCK TABLE), which blocks every
//!   connection alike, or for its own work: a slow read still holds the units behind it
//!   (the cost of a batch), and so does what a view, rule or user-defined operator runs
//!   (not visible in the text).
//! - The connection passes the same health check as one lent to a single client
//!   (`Pool::check`: `server_check_query` once idle past `server_check_delay`, or
//!   suspect) before anything is sent; when it fails, it was closed and every client takes
//!   its unit again (`End::NotRun`).
//! - Answers go to their own client only, split at each ReadyForQuery, in order; a client
//!   that does not read holds its batch-mates once it has [`MAIL_MAX`] bytes waiting (as
//!   a server that cannot send holds everything behind it), for [`STALL_MAX`] at most in
//!   all over its answer (the waits add up however often it takes a little): then the
//!   rest of its answer is dropped and its session ends (`08006`), and the batch goes on.
//!   Nobody waiting behind it: it is waited for, as for a client that holds a connection
//!   of its own.
//! - A ParameterStatus in the answers (a trigger, view or operator that calls
//!   `set_config`: no scan of the text sees it) reaches its own client; the statements
//!   after it in the batch run with the changed setting (they were sent already), and
//!   the connection is closed after the batch rather than lent to anyone else.
//! - Cancels: a client's key points at the connection only while its own unit runs (from
//!   the ReadyForQuery of the unit before it to its own), and a cancel sent while its unit
//!   waited in the batch is sent when it starts. PostgreSQL drops a cancel that lands while
//!   the backend reads its next statement, so a cancel aimed at a running unit is sent
//!   again by the key (`frontend::cancel`'s `RESEND_AFTER`) if the same run still goes
//!   on a moment after it was delivered and its client took none since. A cancel can
//!   still land after the unit it was meant for ended, on the next one (PostgreSQL reads
//!   the next statement from its buffer at once): so each unit's answer is held until
//!   its ReadyForQuery (up to [`HOLD_MAX`]; a larger one goes out as it comes), and a
//!   unit that failed with `57014 … due to user request` although its own client sent no
//!   cancel, when another client of the batch aimed one at this connection (took it from
//!   its key while its own unit ran here: a cancel it sends elsewhere afterwards does not
//!   count), is run again,
//!   unseen (its implicit transaction was rolled back), up to [`RUNS_AGAIN_MAX`] times, at
//!   the end of the batch; or, when a unit that may wait is still to come (nothing goes
//!   behind it), its client takes it again like a unit that never ran (`End::NotRun`). A
//!   cancel from outside pgtenant (`pg_cancel_backend`) with no batch-mate's cancel about
//!   is what it seems: its client gets the error. The connection goes back to the pool
//!   only when no cancel aimed at it is on its way (PostgreSQL ignores one that lands
//!   while it is idle).
//! - A server connection that breaks fails the unit running, its client told as when its
//!   own connection breaks (`08006`). The units after it never ran when the server ended
//!   the backend (a FATAL, the end of the stream: a backend reads a statement only after
//!   it answered the one before): their clients take them again on another connection
//!   (`End::NotRun`). After anything else (an I/O error, an answer pgtenant cannot read,
//!   after which it closes the connection while the server may still read on), they fail
//!   as the unit running does. Units not sent yet (a client that gave up first) are not
//!   run.
//! - A waiter that times out before the driver sent its unit is withdrawn (its statement
//!   never runs); once sent, it waits for its answer like the others.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Pool;
use crate::backend::{CancelTarget, ParamMap, ServerConn};
use crate::net::{Frame, FrameError};
use crate::protocol::{decode, ErrorFields};

/// Bytes of answers a client may leave unread before its batch waits for it.
pub const MAIL_MAX: usize = 256 * 1024;
/// How long in all a batch waits for a client that leaves [`MAIL_MAX`] of its answer
/// unread while other clients' statements wait behind its own on the server connection
/// (the waits of one answer add up, however often the client takes a little of it): then
/// the rest of its answer is dropped and its session ends (`08006`), so that a client
/// that stops reading, or reads slowly, holds its batch-mates this long at most.
pub const STALL_MAX: Duration = Duration::from_secs(5);
/// An answer held for a possible re-run (see the module rules) is delivered once it is
/// this large (it is not run again then).
const HOLD_MAX: usize = 64 * 1024;

/// A `57014` this soon after its unit started, when a batch-mate sent a cancel and its
/// own client did not, is taken for that mate's cancel whatever the server's language.
const STRAY_CANCEL_WINDOW: Duration = Duration::from_millis(500);

/// How many times a statement hit by other clients' cancels is run again before its
/// client is given the cancel (each time takes another client's late cancel).
const RUNS_AGAIN_MAX: u8 = 3;

/// What the driver needs of a unit's client's cancel key (the frontend's `CancelSlot`).
pub trait UnitCancel: Send + Sync {
    /// The client's unit waits in a batch (`None`, `queued`) or runs on the server of
    /// `t`, or is over (`None`, not queued). Never waits: a cancel on its way keeps the
    /// target it took.
    fn point(&self, t: Option<Arc<CancelTarget>>, queued: bool) -> Pointed;
    /// Cancels taken from the key so far (whose was a `57014`).
    fn taken(&self) -> u32;
    /// Send a cancel to the current target from a task of its own. Like every cancel
    /// taken while the key points at a running unit, it is sent again a moment after it
    /// was delivered if that same run still goes on and nothing was taken since
    /// (PostgreSQL drops a cancel that lands while the backend reads the statement).
    fn cancel_now(self: Arc<Self>);
}

/// What [`UnitCancel::point`] found, read under the same lock as the move: cancels are
/// taken only towards the key's target, so those taken between pointing it at a
/// connection and pointing it away were aimed at that connection, and no others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointed {
    /// The client asked for a cancel while its unit waited (send it now).
    pub wanted: bool,
    /// Cancels taken from the key so far, this move included.
    pub taken: u32,
}

const PENDING: u8 = 0;
const SENT: u8 = 1;
const WITHDRAWN: u8 = 2;

/// How a unit's answer ended.
#[derive(Debug)]
pub enum End {
    /// Its ReadyForQuery came. `errors`: ErrorResponses in it; `code`: the first one's
    /// SQLSTATE; `took`: from its start on the server to its ReadyForQuery.
    Done {
        errors: u32,
        code: Option<String>,
        took: Duration,
    },
    /// The server connection broke before its ReadyForQuery.
    Lost(LostServer),
    /// It did not run, or nothing of it stays: the server connection ended before this
    /// unit's turn, in a way that shows it never started (the server ended the backend, a
    /// FATAL or the end of the stream, while an earlier unit ran, and a backend reads the
    /// next statement only after it answered the one before); or the connection failed
    /// its health check before anything was sent; or a batch-mate's cancel rolled it back
    /// while a unit that may wait was still to come behind it. The client's session takes
    /// it again, on whatever connection comes free.
    NotRun,
}

/// How the server connection of a batch broke (the session tells its client as when its
/// own connection breaks).
#[derive(Debug, Clone)]
pub enum LostServer {
    /// The server's FATAL.
    Fatal(Frame),
    Closed,
    Io(String),
    Unreadable(String),
    /// Not the server's doing: the client left [`MAIL_MAX`] of its answer unread for
    /// [`STALL_MAX`] in all while its batch-mates waited (the server connection is fine).
    ClientStalled,
}

/// One client's unit in a batch: its statement, and its answer on the way back.
pub struct Ticket {
    /// The unit as the client sent it: a simple Query, or an extended-protocol group of
    /// the unnamed statement and portal ending in Sync.
    pub frames: Vec<Frame>,
    /// The client's settings: the connection must have exactly these.
    pub desired: Arc<ParamMap>,
    pub cancel: Arc<dyn UnitCancel>,
    /// It may wait on another transaction or sleep (a write, a locking clause, a sleep or
    /// advisory lock: `router::effects::may_wait`): nothing goes behind it in a batch.
    pub may_wait: bool,
    since: Instant,
    phase: AtomicU8,
    mail: Mutex<Mail>,
    /// Driver → client: frames or the end arrived.
    ready: Notify,
    /// Client → driver: it took its frames, or left.
    room: Notify,
}

#[derive(Default)]
struct Mail {
    frames: Vec<Frame>,
    bytes: usize,
    end: Option<End>,
    gone: bool,
    /// How long its batch has waited so far for this client to take its answer while
    /// other units waited behind its own (at most [`STALL_MAX`] in all).
    held_mates: Duration,
}

impl Ticket {
    pub fn new(
        frames: Vec<Frame>,
        desired: Arc<ParamMap>,
        cancel: Arc<dyn UnitCancel>,
        may_wait: bool,
    ) -> Arc<Ticket> {
        Arc::new(Ticket {
            frames,
            desired,
            cancel,
            may_wait,
            since: Instant::now(),
            phase: AtomicU8::new(PENDING),
            mail: Mutex::new(Mail::default()),
            ready: Notify::new(),
            room: Notify::new(),
        })
    }

    /// The same unit as a new ticket, for another wait in the queue (a ticket that left the
    /// queue may still be in a batch about to skip it).
    pub fn renewed(&self) -> Arc<Ticket> {
        Ticket::new(
            self.frames.clone(),
            self.desired.clone(),
            self.cancel.clone(),
            self.may_wait,
        )
    }

    fn mail(&self) -> MutexGuard<'_, Mail> {
        self.mail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver is about to send it; false when its client withdrew first.
    fn claim(&self) -> bool {
        self.phase
            .compare_exchange(PENDING, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The client gives up waiting (query_wait_timeout): true when its statement was not
    /// sent and never will be; false when it was (its answer comes).
    pub fn withdraw(&self) -> bool {
        self.phase
            .compare_exchange(PENDING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.phase.load(Ordering::Acquire) == WITHDRAWN
    }

    /// Wait for more of the answer: appends its frames to `out`; the end once it came
    /// (everything before it is in `out` then).
    pub async fn next(&self, out: &mut Vec<Frame>) -> Option<End> {
        loop {
            {
                let mut m = self.mail();
                if !m.frames.is_empty() || m.end.is_some() {
                    out.append(&mut m.frames);
                    m.bytes = 0;
                    let end = m.end.take();
                    drop(m);
                    self.room.notify_one();
                    return end;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The client will not read its answer (it left, or its session ended): what comes
    /// is dropped and its batch never waits for it.
    pub fn leave(&self) {
        self.withdraw();
        let mut m = self.mail();
        m.gone = true;
        m.frames.clear();
        m.bytes = 0;
        drop(m);
        self.room.notify_one();
    }

    /// Hand frames to the client, waiting while it has [`MAIL_MAX`] unread. When
    /// `others_wait` (other units of the batch come after it), these waits add up, over
    /// its whole answer, to [`STALL_MAX`] at most: then the client is cut off (see
    /// [`Ticket::cut`]). A total, not a bound per wait: a client that reads slowly (a
    /// little now and then) holds its batch-mates no longer than one that stops reading.
    async fn deliver(&self, frames: &mut Vec<Frame>, others_wait: bool) {
        loop {
            let left = {
                let mut m = self.mail();
                if m.gone {
                    frames.clear();
                    return;
                }
                if m.bytes < MAIL_MAX {
                    m.bytes += frames.iter().map(Frame::len).sum::<usize>();
                    m.frames.append(frames);
                    drop(m);
                    self.ready.notify_one();
                    return;
                }
                STALL_MAX.saturating_sub(m.held_mates)
            };
            if !others_wait {
                self.room.notified().await;
                continue;
            }
            let since = Instant::now();
            let timed_out = left.is_zero()
                || tokio::time::timeout(left, self.room.notified())
                    .await
                    .is_err();
            self.mail().held_mates += since.elapsed();
            if timed_out && self.cut() {
                frames.clear();
                return;
            }
        }
    }

    /// The client left [`MAIL_MAX`] of its answer unread for [`STALL_MAX`] in all while
    /// its batch-mates waited: the rest of its answer is dropped and its session ends (as
    /// when its server connection breaks). False when it made room after all.
    fn cut(&self) -> bool {
        let mut m = self.mail();
        if m.gone || m.bytes < MAIL_MAX {
            return false;
        }
        m.gone = true;
        m.frames.clear();
        m.bytes = 0;
        m.end = Some(End::Lost(LostServer::ClientStalled));
        drop(m);
        tracing::warn!(
            "a client left its batched answer unread while its batch-mates waited; its session ends"
        );
        self.ready.notify_one();
        true
    }

    fn finish(&self, end: End) {
        let mut m = self.mail();
        if !m.gone {
            m.end = Some(end);
        }
        drop(m);
        self.ready.notify_one();
    }
}

/// Can `c` take this unit as it is (no settings to replay, nothing of another client's to
/// clear first)?
pub(super) fn fits(c: &ServerConn, t: &Ticket) -> bool {
    c.dirty_by == 0
        && c.prepared.sql.is_empty()
        && (Arc::ptr_eq(&c.applied, &t.desired) || *c.applied == *t.desired)
}

/// A unit on the server, in the driver.
struct Running {
    ticket: Arc<Ticket>,
    /// When it started on the server (the ReadyForQuery of the one before).
    started: Option<Instant>,
    /// Cancels taken from its client's key when it started.
    taken_at_start: u32,
    /// Nothing of its answer went to its client yet: it is held until its ReadyForQuery
    /// (or until it is [`HOLD_MAX`] large), so that it can be run again unseen.
    holding: bool,
    held: Vec<Frame>,
    held_bytes: usize,
    errors: u32,
    code: Option<String>,
    /// Its first error was a cancel "due to user request" (not a statement timeout).
    user_cancel: bool,
    /// Times it was run again (at most [`RUNS_AGAIN_MAX`]).
    run_again: u8,
    /// A message of its answer was too large to take (over `max_message_size`, or the
    /// large-message budget full): it was dropped, the rest of its answer is dropped as it
    /// comes, and at its ReadyForQuery its client's session ends as without a batch;
    /// the batch goes on.
    failed: Option<LostServer>,
    /// Its client's place in the batch's [`Clients`].
    client: usize,
}

/// A unit's client in a batch, and the cancels it aimed at this batch's connection: a
/// client's key points at the connection only while its own unit runs, so those are the
/// cancels taken from its key in those spans (a cancel it sends elsewhere later, once its
/// unit is over, cannot land here and does not count).
struct Client {
    cancel: Arc<dyn UnitCancel>,
    /// Taken in its spans that ended.
    here: u32,
    /// While its unit runs: the key's count when it started.
    since: Option<u32>,
}

type Clients = Vec<Client>;

impl Client {
    /// Its unit starts on the connection: cancels taken from here on are aimed at it.
    fn runs(&mut self, p: Pointed) {
        self.since = Some(p.taken);
    }
    /// Its unit is over: `p` from pointing its key away.
    fn over(&mut self, p: Pointed) {
        if let Some(s) = self.since.take() {
            self.here = self.here.wrapping_add(p.taken.wrapping_sub(s));
        }
    }
    fn aimed_here(&self) -> bool {
        self.here > 0 || self.since.is_some_and(|s| self.cancel.taken() != s)
    }
}

/// Did a client of the batch other than `me` aim a cancel at this connection (one that
/// may have landed on another unit than its own)?
fn mates_cancelled(clients: &Clients, me: usize) -> bool {
    clients
        .iter()
        .enumerate()
        .any(|(i, c)| i != me && c.aimed_here())
}

impl Running {
    fn new(ticket: Arc<Ticket>, client: usize) -> Running {
        Running {
            ticket,
            client,
            started: None,
            taken_at_start: 0,
            holding: true,
            held: Vec::new(),
            held_bytes: 0,
            errors: 0,
            code: None,
            user_cancel: false,
            run_again: 0,
            failed: None,
        }
    }
}

/// Send `units` on `conn` back to back and give each client its answer; then give the
/// connection back (where it may start the next batch).
pub(super) async fn drive(pool: Arc<Pool>, conn: Box<ServerConn>, units: Vec<Arc<Ticket>>) {
    // The same health check as a connection lent to one client (`Pool::check`:
    // server_check_query when it sat idle past server_check_delay, or is suspect).
    let Some(mut conn) = pool.check(conn).await else {
        // It failed and was closed: nothing was sent, each client takes its unit again.
        pool.stats.active.sub(1);
        for t in units {
            if t.claim() {
                t.finish(End::NotRun);
            }
        }
        return;
    };
    let mut q: VecDeque<Running> = VecDeque::with_capacity(units.len());
    // Every unit's client: whose cancels may land on a batch-mate.
    let mut clients: Clients = Vec::with_capacity(units.len());
    for t in units {
        if t.claim() {
            t.cancel.point(None, true);
            for f in &t.frames {
                pool.stats.client_message(f.tag(), f.len());
                conn.conn.queue(f);
            }
            clients.push(Client {
                cancel: t.cancel.clone(),
                here: 0,
                since: None,
            });
            q.push_back(Running::new(t, clients.len() - 1));
        }
    }
    if q.is_empty() {
        pool.release(conn, true);
        return;
    }
    crate::metrics::counters::PIPELINE_BATCHES.add(1);
    crate::metrics::counters::PIPELINED_STATEMENTS.add(q.len() as u64);
    let mut reported = false;
    let lost = run(&pool, &mut conn, &mut q, &mut clients, &mut reported).await;
    for r in &q {
        r.ticket.cancel.point(None, false);
    }
    match lost {
        None => {
            // No cancel of this batch may land on the next client's statement: none aimed
            // at this connection is on its way (no key points here any more, so no new
            // one can be taken).
            let deadline = Instant::now() + Duration::from_secs(10);
            while conn.cancel.in_flight() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let clean = !conn.cancel.in_flight();
            // The unnamed statement there is the last unit's client's, whom no session
            // knows to be on this connection: nobody may Bind it without a Parse.
            conn.unnamed_owner = 0;
            if reported {
                // A statement changed a reported setting behind pgtenant's back (a
                // trigger, a view, an operator calling set_config): nobody knows what
                // else it changed, and no later client may find it there.
                tracing::info!(pool = %pool.name(), server = conn.id, "a batched statement changed a setting; closing its server connection");
            }
            pool.release(conn, clean && !reported);
        }
        Some(why) => {
            tracing::warn!(pool = %pool.name(), server = conn.id, units = q.len(), reason = ?why, "server connection lost under a batch");
            // The backend is gone: nothing after the unit it ran was read.
            let ended = matches!(why, LostServer::Fatal(_) | LostServer::Closed);
            let mut left = q.len();
            let mut first = true;
            for mut r in q.drain(..) {
                left -= 1;
                let not_run = ended && !first && r.started.is_none();
                first = false;
                if not_run {
                    r.ticket.finish(End::NotRun);
                    continue;
                }
                if !r.held.is_empty() {
                    r.ticket.deliver(&mut r.held, left > 0).await;
                }
                r.ticket.finish(End::Lost(why.clone()));
            }
            pool.discard(conn);
        }
    }
}

/// Read the answers of the units in `q` until every one has ended; on a broken
/// connection, why (the units left in `q` are the ones it fails). `reported`: a
/// ParameterStatus came (a setting of the session changed).
async fn run(
    pool: &Pool,
    conn: &mut ServerConn,
    q: &mut VecDeque<Running>,
    clients: &mut Clients,
    reported: &mut bool,
) -> Option<LostServer> {
    if let Err(e) = conn.conn.flush().await {
        return Some(LostServer::Io(e.to_string()));
    }
    let batch_started = Instant::now();
    start(
        pool,
        q.front_mut().expect("a unit"),
        clients,
        conn,
        batch_started,
    );
    loop {
        let f = match conn.conn.try_frame() {
            Ok(Some(f)) => f,
            Ok(None) => {
                // Everything read so far goes out before the next read.
                let others_wait = q.len() > 1;
                for r in q.iter_mut().filter(|r| !r.holding && !r.held.is_empty()) {
                    r.held_bytes = 0;
                    r.ticket.deliver(&mut r.held, others_wait).await;
                }
                if conn.conn.pending_output() > 0 {
                    if let Err(e) = conn.conn.flush().await {
                        return Some(LostServer::Io(e.to_string()));
                    }
                }
                match conn.conn.fill().await {
                    Ok(0) => return Some(LostServer::Closed),
                    Ok(_) => continue,
                    Err(e) => return Some(LostServer::Io(e.to_string())),
                }
            }
            Err(e @ (FrameError::TooLarge { .. } | FrameError::OutOfMemory { .. })) => {
                // Only the unit running is hit: without a batch its client's session
                // would end, and so it does, not its batch-mates'.
                if let Err(io) = conn.conn.skip_frame().await {
                    return Some(LostServer::Io(io.to_string()));
                }
                let r = q.front_mut().expect("a unit runs while answers come");
                tracing::warn!(server = conn.id, error = %e, "a batched statement's answer holds a message pgtenant does not take; its client's session ends");
                r.failed = Some(LostServer::Unreadable(format!(
                    "server sent a message pgtenant does not take: {e}"
                )));
                r.held.clear();
                r.held_bytes = 0;
                continue;
            }
            Err(e) => {
                return Some(LostServer::Unreadable(format!(
                    "server sent a bad message: {e}"
                )))
            }
        };
        pool.stats.bytes_sent.add(f.len() as u64);
        let others_wait = q.len() > 1;
        let r = q.front_mut().expect("a unit runs while answers come");
        let tag = f.tag();
        if r.failed.is_some() && tag != b'Z' {
            // The rest of a failed unit's answer goes nowhere.
            continue;
        }
        match tag {
            b'E' => {
                crate::metrics::counters::SERVER_ERRORS.count_body(f.body());
                if decode::is_fatal(f.body()) {
                    return Some(LostServer::Fatal(f));
                }
                r.errors += 1;
                if r.code.is_none() {
                    if let Ok(e) = ErrorFields::parse(f.body()) {
                        // A cancel, not a statement timeout (the same SQLSTATE): the
                        // English text says so, and on a server that speaks another
                        // language (lc_messages) a cancel that came soon after the
                        // unit started is taken for one (a stray cancel lands within
                        // its delivery time; a statement_timeout that short is rare, and
                        // the unit then fails after its re-runs all the same).
                        let soon = r.started.is_some_and(|s| s.elapsed() < STRAY_CANCEL_WINDOW);
                        r.user_cancel = e.code == crate::protocol::sqlstate::QUERY_CANCELED
                            && (e.message.contains("user request") || soon);
                        r.code = Some(e.code);
                    }
                }
            }
            b'S' => {
                conn.note_parameter(f.body());
                *reported = true;
            }
            _ => {}
        }
        if r.failed.is_none() {
            r.held_bytes += f.len();
            r.held.push(f.clone());
        }
        if r.holding && r.held_bytes > HOLD_MAX {
            // Too large to hold: it goes out as it comes, and is not run again.
            r.holding = false;
            r.held_bytes = 0;
            r.ticket.deliver(&mut r.held, others_wait).await;
        }
        if tag != b'Z' {
            continue;
        }
        let status = match decode::ready_status(f.body()) {
            Ok(s) => s,
            Err(e) => return Some(LostServer::Unreadable(e.to_string())),
        };
        let now = Instant::now();
        let mut r = q.pop_front().expect("the unit that ended");
        let p = r.ticket.cancel.point(None, false);
        clients[r.client].over(p);
        let own_cancel = p.taken != r.taken_at_start;
        // Only a batch-mate's cancel can be the cause of running it again: one from
        // outside pgtenant (pg_cancel_backend from another session, a watchdog) is as
        // meant for this statement as without pipelining.
        let mates_cancel = !own_cancel && mates_cancelled(clients, r.client);
        let rerun = r.holding && r.user_cancel && mates_cancel;
        if let Some(why) = r.failed.take() {
            // Its client is told at its end, as without a batch; the next unit starts.
            r.ticket.finish(End::Lost(why));
        } else if rerun && q.iter().any(|o| o.ticket.may_wait) {
            // Run again, but not here: behind it would be a unit that may wait as long
            // as it pleases (`may_wait` units go last). Its transaction was rolled back:
            // its client takes it again like a unit that never ran, on whatever
            // connection comes free.
            tracing::debug!(
                server = conn.id,
                "a batch-mate's cancel hit a unit; its client takes it again"
            );
            crate::metrics::counters::PIPELINE_RERUNS.add(1);
            r.ticket.finish(End::NotRun);
        } else if rerun && r.run_again < RUNS_AGAIN_MAX {
            // Another client's cancel landed here (one sent as the statement before it
            // ended): its transaction was rolled back; run it again at the end of the
            // batch, its client none the wiser.
            tracing::debug!(
                server = conn.id,
                "a batch-mate's cancel hit a unit; running it again"
            );
            crate::metrics::counters::PIPELINE_RERUNS.add(1);
            r.held.clear();
            r.held_bytes = 0;
            r.errors = 0;
            r.code = None;
            r.user_cancel = false;
            r.run_again += 1;
            r.holding = true;
            r.started = None;
            for f in &r.ticket.frames {
                conn.conn.queue(f);
            }
            r.ticket.cancel.point(None, true);
            q.push_back(r);
        } else {
            if r.user_cancel && mates_cancel {
                tracing::warn!(
                    server = conn.id,
                    run_again = r.run_again,
                    held = r.holding,
                    "a batched statement was cancelled although its client sent no cancel"
                );
            }
            let took = r
                .started
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            pool.stats.add_query(took);
            pool.stats.add_xact(took);
            if !r.held.is_empty() {
                r.ticket.deliver(&mut r.held, !q.is_empty()).await;
            }
            r.ticket.finish(End::Done {
                errors: r.errors,
                code: r.code.take(),
                took,
            });
        }
        if status != b'I' {
            // A unit never leaves a transaction open; if one did, nobody can tell what the
            // next would run in.
            return Some(LostServer::Unreadable(
                "a pipelined statement left a transaction open".into(),
            ));
        }
        match q.front_mut() {
            Some(next) => start(pool, next, clients, conn, now),
            None => return None,
        }
    }
}

/// `r` starts on the server now: its client's cancels reach it from here.
fn start(pool: &Pool, r: &mut Running, clients: &mut Clients, conn: &ServerConn, now: Instant) {
    r.started = Some(now);
    let p = r.ticket.cancel.point(Some(conn.cancel.clone()), false);
    r.taken_at_start = p.taken;
    clients[r.client].runs(p);
    if p.wanted {
        // Sent again by the key if this run still goes on a moment after it landed.
        r.ticket.cancel.clone().cancel_now();
    }
    if r.run_again == 0 {
        // SHOW STATS: each unit is an assignment that waited until it started.
        let waited = now.saturating_duration_since(r.ticket.since);
        pool.stats.assignments.add(1);
        pool.stats.wait_time_us.add(waited.as_micros() as u64);
        pool.stats.wait_latency.record(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as the frontend's `CancelSlot` keeps it: a cancel is taken only towards its
    /// target.
    #[derive(Default)]
    struct Key(Mutex<(Option<Arc<CancelTarget>>, u32)>);

    impl Key {
        /// The client asks for a cancel: taken when there is a target.
        fn ask(&self) -> bool {
            let mut g = self.0.lock().unwrap();
            if g.0.is_some() {
                g.1 += 1;
            }
            g.0.is_some()
        }
        /// Its session points it at a connection of its own.
        fn set(&self, t: Option<Arc<CancelTarget>>) {
            self.0.lock().unwrap().0 = t;
        }
    }

    impl UnitCancel for Key {
        fn point(&self, t: Option<Arc<CancelTarget>>, _queued: bool) -> Pointed {
            let mut g = self.0.lock().unwrap();
            g.0 = t;
            Pointed {
                wanted: false,
                taken: g.1,
            }
        }
        fn taken(&self) -> u32 {
            self.0.lock().unwrap().1
        }
        fn cancel_now(self: Arc<Self>) {
            self.ask();
        }
    }

    fn target(pid: i32) -> Arc<CancelTarget> {
        Arc::new(CancelTarget::new("127.0.0.1".into(), 1, pid, 7))
    }

    fn client(k: &Arc<Key>) -> Client {
        Client {
            cancel: k.clone(),
            here: 0,
            since: None,
        }
    }

    /// Only a cancel a batch-mate aimed at this connection (while its own unit ran here)
    /// counts: one it sends to its next connection once its unit is over does not make a
    /// later unit's `57014` a mate's (and run it again behind an outside canceller's back).
    #[test]
    fn only_cancels_aimed_at_the_batch_connection_count_as_a_mates() {
        let here = target(10);
        let (a, b) = (Arc::new(Key::default()), Arc::new(Key::default()));
        let mut clients: Clients = vec![client(&a), client(&b)];
        // a's unit runs here and ends without a cancel.
        clients[0].runs(a.point(Some(here.clone()), false));
        clients[0].over(a.point(None, false));
        assert!(!a.ask(), "nothing of a's runs: nothing to take");
        // a's session goes on on another connection, and cancels there.
        a.set(Some(target(11)));
        assert!(a.ask());
        // b's unit runs here: a's cancel elsewhere is not a mate's.
        clients[1].runs(b.point(Some(here.clone()), false));
        assert!(
            !mates_cancelled(&clients, 1),
            "a's cancel elsewhere counted"
        );
        // b cancels its own unit: a mate's cancel for the others, not for b.
        assert!(b.ask());
        assert!(mates_cancelled(&clients, 0));
        assert!(!mates_cancelled(&clients, 1));
        clients[1].over(b.point(None, false));
        // Still, once b's unit is over (it may land late, on the next unit).
        assert!(mates_cancelled(&clients, 0));
        assert!(!mates_cancelled(&clients, 1));
    }
}
