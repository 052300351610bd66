//! The session loop: one task drives the client socket and, while it holds one, a server
//! socket, with a single poll function (read what is there, write once per batch, no
//! hand-off between tasks).
//!
//! In transaction and statement mode a server connection is taken from the pool when the
//! client sends the first message of a transaction and goes back when ReadyForQuery says
//! idle and nothing the client sent is still unanswered (see [`super::pipeline`]). In
//! session mode it stays until the client leaves.
//!
//! In transaction and statement mode the client's session travels with it: its named
//! prepared statements are prepared on whatever server serves it (once per server, LRU
//! bounded), and its settings (startup parameters and SETs) are replayed where the
//! server's differ. pgtenant's own messages are answered out of the client's sight.
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::listen::Subscriber;
use super::login::{pool_error_frame, Client};
use super::params::{self, ParamMap};
use super::pipeline::{Expect, Pipeline, Req};
use super::prepared::{calls_set_config, changes_session, changes_session_of, StatementDef};
use super::routing::{decide_bind_keyed, decide_simple_keyed, tx_tag, Decision, RouteReason};
use super::FrontendError;
use crate::backend::{server_statement_name, ServerConn};
use crate::config::PoolMode;
use crate::context::Context;
use crate::net::Frame;
use crate::pool::{Pool, PoolError};
use crate::protocol::extended::{Bind, Parse, Target};
use crate::protocol::{build, decode, sqlstate, ErrorFields};
use crate::router::command::{
    classify, classify_single, custom_setting_names, is_plain_dml, Command,
};
use crate::router::TxControl;

/// Stop reading from one side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;

/// The read-back query: pg_settings' session entries plus the custom settings by name
/// (empty = unset, left out so a replay RESETs it).
fn session_settings_sql(custom: &std::collections::BTreeSet<String>) -> String {
    if custom.is_empty() {
        return SESSION_SETTINGS_SQL.to_owned();
    }
    let names: Vec<String> = custom
        .iter()
        .map(|n| format!("({})", params::literal(n)))
        .collect();
    format!(
        "{SESSION_SETTINGS_SQL} UNION ALL SELECT n, current_setting(n, true) FROM (VALUES {}) v(n) \
         WHERE coalesce(current_setting(n, true), '') <> ''",
        names.join(", ")
    )
}

/// The session setting that names a tenant for statements carrying no key.
const SESSION_TENANT_SETTING: &str = "pgtenant.tenant";

/// Reads back the settings a client changed (what PostgreSQL itself holds).
const SESSION_SETTINGS_SQL: &str =
    "SELECT lower(name), setting FROM pg_catalog.pg_settings WHERE source = 'session'";

/// A server connection lent to this client.
struct Attached {
    server: Box<ServerConn>,
    pool: Arc<Pool>,
    /// What the server still owes, in order.
    pipe: Pipeline,
    /// The client ran something that may change session settings in this transaction.
    session_changed: bool,
    /// For the pool's query/transaction time counters (SHOW STATS).
    query_started: Option<Instant>,
    /// When the pool lent the connection, until the first message is forwarded.
    lent: Option<Instant>,
    xact_started: Instant,
    /// Counts this session in `pgtenant_clients{state="active"}` while attached.
    _active: crate::metrics::counters::Active,
}

impl Attached {
    /// Idle and owing nothing: safe to give to another client.
    fn is_clean(&self) -> bool {
        self.pipe.is_settled()
            && self.server.tx_status == b'I'
            && self.server.conn.pending_output() == 0
            && self.server.conn.buffered_input() == 0
    }
}

enum Event {
    ClientRead(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ClientWrite(io::Error),
    ServerWrite(io::Error),
    IdleTxTimeout,
    Shutdown,
    /// A NotificationResponse from the LISTEN hub.
    Notification(Frame),
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::ClientRead(_) => "client-read",
            Event::ServerRead(_) => "server-read",
            Event::ClientWrite(_) => "client-write-error",
            Event::ServerWrite(_) => "server-write-error",
            Event::IdleTxTimeout => "idle-tx-timeout",
            Event::Shutdown => "shutdown",
            Event::Notification(_) => "notification",
        }
    }
}

/// A message held while no node is chosen yet.
enum Held {
    /// Transaction control pgtenant already answered; replayed out of sight.
    Answered(Frame),
    /// A Parse waiting for the Bind that tells its tenant.
    Parse(Frame),
}

/// What to do after handling input.
enum Flow {
    Continue,
    Quit,
    /// The transaction is over: give the server back (`on_server_input` stays
    /// synchronous; the caller releases). With the clock read at its ReadyForQuery.
    Release(Option<Instant>),
}

/// A client's statement names. SipHash with fixed keys: the hasher takes no room in every
/// session (a random one would take 16 bytes twice per client), and a client choosing
/// colliding names only slows itself down.
type NameMap<V> =
    HashMap<String, V, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

/// The client's own view of its session (transaction and statement mode). Most clients
/// never prepare by name nor change a setting: the tables are allocated on first use, and
/// an idle client keeps one pointer for them.
#[derive(Default)]
struct View {
    tables: Option<Box<ViewTables>>,
    /// Startup settings overlaid with `session`: what every server it uses must have.
    desired: Arc<ParamMap>,
}

#[derive(Default)]
struct ViewTables {
    /// Its named protocol-level statements.
    statements: NameMap<Arc<StatementDef>>,
    /// Its SQL-level `PREPARE`d statements: name → the PREPARE text.
    sql_prepared: NameMap<Arc<str>>,
    /// Settings it changed since startup, as the server reported them.
    session: ParamMap,
    /// Custom (dotted) settings it set: pg_settings does not list them, so they are read
    /// back by name (bounded: a client naming hundreds of them gets the first 64).
    custom: std::collections::BTreeSet<String>,
}

/// What a view without tables reads.
static NO_TABLES: std::sync::LazyLock<ViewTables> = std::sync::LazyLock::new(ViewTables::default);

impl View {
    fn t(&self) -> &ViewTables {
        self.tables.as_deref().unwrap_or(&NO_TABLES)
    }

    fn t_mut(&mut self) -> &mut ViewTables {
        self.tables.get_or_insert_with(Default::default)
    }

    /// Forget the client's statements and settings (DISCARD ALL) or statements alone.
    fn clear(&mut self, settings_too: bool) {
        if let Some(t) = self.tables.as_mut() {
            t.statements.clear();
            t.sql_prepared.clear();
            if settings_too {
                t.session.clear();
            }
        }
    }
}

struct Session {
    ctx: Arc<Context>,
    c: Client,
    mode: PoolMode,
    attached: Option<Box<Attached>>,
    view: View,
    /// Prepared-statement tracking on (transaction/statement mode, max_prepared_statements > 0).
    track_prepared: bool,
    max_prepared: usize,
    /// The unnamed statement / portal hold a command pgtenant answers itself (DEALLOCATE,
    /// DISCARD ALL sent through the extended protocol, as psycopg does): its tag.
    fake_statement: Option<&'static str>,
    /// Notifications for channels this client LISTENs to (transaction/statement mode).
    listener: Option<Subscriber>,
    /// Messages held until a statement decides the transaction's node: transaction
    /// control pgtenant already answered, and Parses waiting for their Bind.
    held: Vec<Held>,
    /// Client messages that arrived behind a Sync/Query whose ReadyForQuery is still
    /// outstanding while routing is on: the transaction may end there, and then they
    /// start a new one that must be routed on its own (never sent blindly to the node of
    /// the previous transaction).
    deferred: std::collections::VecDeque<Frame>,
    /// Why the current transaction went where it went (and whether to a worker): its
    /// statements are counted under it.
    route: (RouteReason, bool),
    /// A LISTEN waiting to be in effect before the client hears "LISTEN".
    listen_ack: Option<tokio::sync::oneshot::Receiver<()>>,
    fake_portal: Option<&'static str>,
    /// After a refused extended-protocol message, drop messages until Sync.
    skip_until_sync: bool,
    /// Armed while the client sits idle inside a transaction.
    idle_tx_timer: Option<Pin<Box<Sleep>>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `shutdown` was last polled with and `session_signals()` before that
    /// poll: while both are unchanged, `shutdown` is not polled again (see
    /// `poll_shutdown`).
    shutdown_looked: Option<(std::task::Waker, u64)>,
    draining: bool,
    /// Transaction status the client last saw.
    client_tx: u8,
    /// The tenant whose key routed the current transaction (SHOW TENANTS).
    tenant: Option<crate::metrics::tenants::TenantKey>,
}

/// The session's future. Built in two steps so that it holds the session's state once
/// (an `async fn` would keep its `client` argument beside the `Session` made from it).
/// `end` runs when the session is over, inside the same future (awaiting this future from
/// another one would store it twice).
pub fn run<E>(client: Client, ctx: Arc<Context>, end: E) -> impl Future<Output = ()> + Send
where
    E: FnOnce(Result<(), FrontendError>, &Context) + Send,
{
    let settings = ctx.settings();
    let mode = settings.pool_mode_for(&client.user);
    let max_prepared = settings.max_prepared_statements as usize;
    let desired = client.startup.clone();
    // Polled for KILL and SHUTDOWN (the kill token is a child of the shutdown token).
    let kill = client.kill.clone();
    let mut s = Session {
        ctx,
        mode,
        attached: None,
        view: View {
            desired,
            ..View::default()
        },
        track_prepared: mode != PoolMode::Session && max_prepared > 0,
        max_prepared,
        fake_statement: None,
        listener: None,
        listen_ack: None,
        held: Vec::new(),
        route: (RouteReason::NoRouting, false),
        deferred: std::collections::VecDeque::new(),
        fake_portal: None,
        skip_until_sync: false,
        idle_tx_timer: None,
        shutdown: Box::pin(kill.cancelled_owned()),
        shutdown_looked: None,
        draining: false,
        client_tx: b'I',
        tenant: None,
        c: client,
    };
    drop(settings);
    async move {
        let r = s.run().await;
        Box::pin(s.finish()).await;
        end(r, &s.ctx);
    }
}

impl Session {
    async fn run(&mut self) -> Result<(), FrontendError> {
        loop {
            let ev = poll_fn(|cx| self.poll_event(cx)).await;
            tracing::trace!(event = ev.name(), "session event");
            let flow = match ev {
                Event::ClientRead(Ok(0)) => Flow::Quit,
                // Handlers are boxed per event: an idle client's task then holds only the
                // session's state, not the state of every await the handlers might reach
                // (memory per idle client; one short-lived allocation per event).
                Event::ClientRead(Ok(_)) => Box::pin(self.on_client_input()).await?,
                Event::ClientRead(Err(e)) | Event::ClientWrite(e) => return Err(e.into()),
                Event::ServerRead(Ok(0)) => {
                    self.server_lost("server closed the connection unexpectedly")
                }
                Event::ServerRead(Err(e)) | Event::ServerWrite(e) => {
                    self.server_lost(&format!("server connection failed: {e}"))
                }
                Event::ServerRead(Ok(_)) => {
                    let mut flow = self.on_server_input();
                    if let Flow::Release(now) = flow {
                        if !self.try_release(now) {
                            Box::pin(self.release(now)).await;
                        }
                        flow = Flow::Continue;
                    }
                    match flow {
                        Flow::Continue
                            if !self.deferred.is_empty() && !self.must_wait_for_sync_point() =>
                        {
                            Box::pin(self.on_client_input()).await?
                        }
                        flow => flow,
                    }
                }
                Event::IdleTxTimeout => {
                    self.c.conn.queue(&build::fatal(
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "idle transaction timeout",
                    ));
                    if self.attached.is_some() {
                        self.set_cancel_target(None).await;
                    }
                    if let Some(a) = self.attached.take() {
                        a.pool.discard(a.server);
                    }
                    Flow::Quit
                }
                Event::Shutdown => {
                    // KILL or SHUTDOWN: finish the transaction (the token is not polled
                    // again; SUSPEND still wakes the session through its waker).
                    self.draining = true;
                    Flow::Continue
                }
                Event::Notification(f) => {
                    self.c.conn.queue(&f);
                    Flow::Continue
                }
            };
            // SHOW CLIENTS / SERVERS: the server lent now, the statements prepared.
            let link = self.attached.as_ref().map_or(0, |a| a.server.id);
            let prepared = self.view.t().statements.len();
            self.c.state.console.publish(link, prepared);
            if let Flow::Quit = flow {
                return Ok(());
            }
            if self.draining && self.attached.as_ref().is_none_or(|a| a.is_clean()) {
                self.c.conn.queue(&build::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgtenant is shutting down",
                ));
                return Ok(());
            }
        }
    }

    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        // Writes first: whatever was queued by the last batch goes out in one call.
        if let Some(a) = self.attached.as_mut() {
            if a.server.conn.pending_output() > 0 {
                if let Poll::Ready(Err(e)) = a.server.conn.poll_write_out(cx) {
                    return Poll::Ready(Event::ServerWrite(e));
                }
            }
        }
        if self.c.conn.pending_output() > 0 {
            if let Poll::Ready(Err(e)) = self.c.conn.poll_write_out(cx) {
                return Poll::Ready(Event::ClientWrite(e));
            }
        }
        if self.attached.is_none() && self.c.conn.pending_output() == 0 {
            // Idle between transactions: no buffer is kept for a client that sends nothing.
            self.c.conn.release_buffers();
        }
        let server_out = self
            .attached
            .as_ref()
            .map_or(0, |a| a.server.conn.pending_output());
        // SUSPEND (admin::suspend): once what is queued went out above, read nothing.
        let suspend = &self.ctx.admin.suspend;
        if suspend.is_on() {
            let pending = self.c.conn.pending_output() + server_out;
            if suspend.park(cx, &self.c.state.console.suspend, pending) {
                return self.poll_shutdown(cx);
            }
        }
        if server_out < HIGH_WATER && self.deferred.is_empty() {
            if let Poll::Ready(r) = self.c.conn.poll_fill(cx) {
                return Poll::Ready(Event::ClientRead(r));
            }
        }
        if self.c.conn.pending_output() < HIGH_WATER {
            if let Some(a) = self.attached.as_mut() {
                if let Poll::Ready(r) = a.server.conn.poll_fill(cx) {
                    return Poll::Ready(Event::ServerRead(r));
                }
            }
        }
        if let Some(t) = self.idle_tx_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::IdleTxTimeout);
            }
        }
        // Notifications go out between answers, never inside one.
        let between = self.attached.as_ref().is_none_or(|a| a.pipe.is_settled());
        if between && self.c.conn.pending_output() < HIGH_WATER {
            if let Some(l) = self.listener.as_mut() {
                if let Poll::Ready(Some(f)) = l.rx.poll_recv(cx) {
                    return Poll::Ready(Event::Notification(f));
                }
            }
        }
        self.poll_shutdown(cx)
    }

    /// KILL or SHUTDOWN (the kill token). Looked at only when nothing else is ready (the
    /// task is about to sleep): its waker is registered then (with the token, and for
    /// SUSPEND/RESUME), and a busy session does not pay the lock round trips per turn (a
    /// flooding client still reaches it, since tokio's cooperative budget makes its reads
    /// return Pending in time).
    /// Polling the token costs two mutex round trips, so the look is skipped while the
    /// session signal count has not moved since the last one and the waker is the same:
    /// the registrations from that look still stand, and whoever cancels a token or wakes
    /// sessions (SUSPEND, RESUME) moves the count first.
    fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        let signals = super::session_signals();
        if let Some((w, seen)) = &self.shutdown_looked {
            if *seen == signals && w.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        // Where SUSPEND and RESUME wake this session (admin::suspend).
        self.c.state.console.suspend.set_waker(cx.waker());
        if !self.draining && self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
        match &mut self.shutdown_looked {
            Some((w, seen)) => {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
                *seen = signals;
            }
            None => self.shutdown_looked = Some((cx.waker().clone(), signals)),
        }
        Poll::Pending
    }

    // ---------------------------------------------------------------------------------
    // Client → server
    // ---------------------------------------------------------------------------------

    /// Handle every complete frame the client has sent.
    async fn on_client_input(&mut self) -> Result<Flow, FrontendError> {
        self.idle_tx_timer = None;
        self.c.state.console.requested();
        loop {
            let next = match self.deferred.pop_front() {
                Some(f) => Ok(Some(f)),
                None => self.c.conn.try_frame(),
            };
            let f = match next {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.listen_ack.is_some() {
                        self.await_listen().await;
                    }
                    // Answers pgtenant makes itself that nothing precedes go out now (a
                    // Parse the server already has, followed by a Flush, waits for nothing).
                    if let Some(a) = self.attached.as_mut() {
                        emit_synthetic(a, &mut self.c.conn);
                    }
                    return Ok(Flow::Continue);
                }
                Err(e) => {
                    tracing::warn!(user = %self.c.user, error = %e, "bad message from client");
                    self.c
                        .conn
                        .queue(&build::fatal(e.sqlstate(), &e.to_string()));
                    return Ok(Flow::Quit);
                }
            };
            if self.skip_until_sync {
                if f.tag() != b'S' {
                    continue;
                }
                self.skip_until_sync = false;
                if self.attached.is_none() {
                    self.c.conn.queue(&build::ready_for_query(self.client_tx));
                    continue;
                }
                // Earlier messages of the batch are on the server: its ReadyForQuery
                // answers this Sync, in order.
            }
            if self.listen_ack.is_some() {
                self.await_listen().await;
            }
            if f.tag() == b'X' {
                return Ok(Flow::Quit);
            }
            if self.must_wait_for_sync_point() {
                // The transaction may end at a Sync/Query already sent: what follows must
                // be routed afresh once ReadyForQuery tells (see `deferred`).
                self.deferred.push_front(f);
                return Ok(Flow::Continue);
            }
            if self.attached.is_none() {
                // With no server attached, nothing is in flight: a Flush has nothing to
                // flush, and CopyData/CopyDone/CopyFail are leftovers of a COPY the server
                // already failed and answered (PostgreSQL drops them too).
                let holding_parse = self.held.iter().any(|h| matches!(h, Held::Parse(_)));
                if matches!(f.tag(), b'd' | b'c' | b'f') || (f.tag() == b'H' && !holding_parse) {
                    continue;
                }
                if self.answer_without_server(&f)? {
                    continue;
                }
                if let Some(frames) = self.fake_extended(&f)? {
                    for fr in &frames {
                        self.c.conn.queue(fr);
                    }
                    continue;
                }
                match self.route_first(f).await {
                    Some(f) => {
                        // Attached: forward what was held (BEGIN and friends hidden, Parses
                        // as the client sent them), then this message.
                        // Only a statement that runs opens the held transaction on the
                        // server; a prepare-only batch (Parse/Describe/Sync, as
                        // tokio-postgres and JDBC send before the Bind) is a side trip that
                        // leaves it held.
                        let runs = matches!(f.tag(), b'Q' | b'B' | b'F');
                        let held: Vec<Held> = if runs {
                            std::mem::take(&mut self.held)
                        } else {
                            let (parses, rest) = std::mem::take(&mut self.held)
                                .into_iter()
                                .partition(|h| matches!(h, Held::Parse(_)));
                            self.held = rest;
                            parses
                        };
                        for h in held {
                            match h {
                                Held::Answered(q) => {
                                    if let Some(a) = self.attached.as_mut() {
                                        a.server.conn.queue(&q);
                                        a.pipe.push(Expect::Hidden {
                                            req: Req::Query { prepare: None },
                                            show_errors: true,
                                        });
                                    }
                                }
                                Held::Parse(p) => {
                                    if let Err(e) = self.forward_real(p) {
                                        self.c.conn.queue(&build::fatal(
                                            sqlstate::PROTOCOL_VIOLATION,
                                            &e.to_string(),
                                        ));
                                        return Ok(Flow::Quit);
                                    }
                                }
                            }
                        }
                        if self.attached.is_none() {
                            continue;
                        }
                        if let Err(e) = self.forward_real(f) {
                            tracing::warn!(user = %self.c.user, error = %e, "bad message from client");
                            self.c
                                .conn
                                .queue(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
                            return Ok(Flow::Quit);
                        }
                        continue;
                    }
                    None => {
                        if self.skip_until_sync {
                            // The batch was refused: its held Parses go with it.
                            self.held.retain(|h| !matches!(h, Held::Parse(_)));
                        }
                        continue;
                    }
                }
            }
            tracing::trace!(tag = %(f.tag() as char), attached = self.attached.is_some(), "client message");
            if let Err(e) = self.forward(f) {
                tracing::warn!(user = %self.c.user, error = %e, "bad message from client");
                self.c
                    .conn
                    .queue(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
                return Ok(Flow::Quit);
            }
        }
    }

    /// Routing is on and the attached server still owes a ReadyForQuery for a Sync, Query
    /// or FunctionCall: the client's next message may belong to another transaction.
    fn must_wait_for_sync_point(&self) -> bool {
        let Some(a) = self.attached.as_ref() else {
            return false;
        };
        // The pipeline first: it is short, and usually holds no such request.
        self.mode != PoolMode::Session
            && a.pipe.q.iter().any(|e| {
                matches!(
                    e,
                    Expect::Forward(Req::Sync | Req::Query { .. } | Req::FunctionCall)
                )
            })
            && self.ctx.shard_map.current.load().is_some()
    }

    /// A LISTEN is answered only once the listening connection listens: a NOTIFY the
    /// client (or anyone it tells) sends next must reach it.
    async fn await_listen(&mut self) {
        if let Some(ack) = self.listen_ack.take() {
            if tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .is_err()
            {
                tracing::warn!(user = %self.c.user, "LISTEN not confirmed by the listening connection within 10 s");
            }
        }
    }

    /// Messages pgtenant answers itself when no server is attached: closing a client's
    /// statement, DEALLOCATE, DISCARD ALL, and a Sync right after them.
    fn answer_without_server(&mut self, f: &Frame) -> Result<bool, FrontendError> {
        if self.mode == PoolMode::Session {
            return Ok(false);
        }
        match f.tag() {
            b'C' if self.track_prepared => {
                let t = Target::decode(f.body())?;
                if t.kind == b'S' && !t.name.is_empty() {
                    self.view.t_mut().statements.remove(t.name);
                    self.c.conn.queue(&Frame::new(b'3', &[]));
                    return Ok(true);
                }
            }
            // The unnamed statement (an empty name: the body starts with its NUL) goes to
            // the server; no need to decode it here.
            b'P' if self.track_prepared && f.body().first() != Some(&0) => {
                // A named statement is only recorded (as PgBouncer does): it is prepared
                // on a server when a Bind or Describe needs it there. Taking a server just
                // to answer Parse+Sync (PQprepare) would also deadlock clients that prepare
                // synchronously while another of their connections holds the last server
                // connection in a transaction (pgbench -M prepared -j < -c).
                let p = Parse::decode(f.body())?;
                if p.name.is_empty() {
                    return Ok(false);
                }
                if self.view.t().statements.contains_key(p.name)
                    || self.view.t().sql_prepared.contains_key(p.name)
                {
                    let msg = format!("prepared statement \"{}\" already exists", p.name);
                    self.c.conn.queue(&build::error("42P05", &msg));
                    self.skip_until_sync = true;
                    return Ok(true);
                }
                let key = f.body().get(p.name.len() + 1..).unwrap_or_default();
                let def = self.ctx.statements.intern(&p, key);
                self.view.t_mut().statements.insert(p.name.to_owned(), def);
                self.c.conn.queue(&Frame::new(b'1', &[]));
                return Ok(true);
            }
            b'S' if !self.held.iter().any(|h| matches!(h, Held::Parse(_))) => {
                // Nothing is in flight and no server holds state for this client.
                self.c.conn.queue(&build::ready_for_query(self.client_tx));
                return Ok(true);
            }
            b'Q' if self.client_tx == b'I' => {
                let sql = decode::query_text(f.body())?;
                if let Some(tag) = self.client_view_command(sql) {
                    self.c.conn.queue(&build::command_complete(tag));
                    self.c.conn.queue(&build::ready_for_query(b'I'));
                    return Ok(true);
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// DEALLOCATE / DISCARD ALL sent through the extended protocol with the unnamed
    /// statement act on the client's view too: pgtenant answers Parse, Bind, Describe and
    /// Execute of it itself (the Sync still goes to the server, if one is attached).
    /// Returns the answers for `f`, or None when `f` is not part of such a command.
    fn fake_extended(&mut self, f: &Frame) -> Result<Option<Vec<Frame>>, FrontendError> {
        if self.mode == PoolMode::Session {
            return Ok(None);
        }
        match f.tag() {
            b'P' => {
                let p = Parse::decode(f.body())?;
                if !p.name.is_empty() {
                    return Ok(None);
                }
                self.fake_statement = None;
                let is_view_command = matches!(
                    classify_single(p.query),
                    Some(
                        Command::Deallocate { .. }
                            | Command::DiscardAll
                            | Command::Listen { .. }
                            | Command::Unlisten { .. }
                    )
                );
                if is_view_command {
                    if let Some(tag) = self.client_view_command(p.query) {
                        self.fake_statement = Some(tag);
                        return Ok(Some(vec![Frame::new(b'1', &[])]));
                    }
                }
                Ok(None)
            }
            b'B' => {
                let b = Bind::decode(f.body())?;
                if !b.portal.is_empty() {
                    return Ok(None);
                }
                self.fake_portal = None;
                match self.fake_statement.filter(|_| b.statement.is_empty()) {
                    Some(tag) => {
                        self.fake_portal = Some(tag);
                        Ok(Some(vec![Frame::new(b'2', &[])]))
                    }
                    None => Ok(None),
                }
            }
            b'D' => {
                let t = Target::decode(f.body())?;
                let real = !t.name.is_empty()
                    || match t.kind {
                        b'S' => self.fake_statement.is_none(),
                        _ => self.fake_portal.is_none(),
                    };
                if real {
                    return Ok(None);
                }
                let mut v = Vec::new();
                if t.kind == b'S' {
                    v.push(Frame::new(b't', &0i16.to_be_bytes()));
                }
                v.push(Frame::new(b'n', &[]));
                Ok(Some(v))
            }
            b'E' => {
                let mut r = crate::protocol::Reader::new(f.body(), "Execute");
                let portal = r.cstr()?;
                match self.fake_portal.filter(|_| portal.is_empty()) {
                    Some(tag) => Ok(Some(vec![build::command_complete(tag)])),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// DEALLOCATE / DISCARD ALL act on the client's view only. Returns the command tag to
    /// answer with, or None when `sql` is not such a command.
    fn client_view_command(&mut self, sql: &str) -> Option<&'static str> {
        self.view_command(classify_single(sql)?)
    }

    /// [`Session::client_view_command`] for a statement already classified.
    fn view_command(&mut self, cmd: Command) -> Option<&'static str> {
        match cmd {
            Command::Listen { channel } if self.mode != PoolMode::Session => {
                let hub = &self.ctx.listens;
                let sub = self.listener.get_or_insert_with(|| hub.subscriber());
                self.listen_ack = Some(hub.listen(&self.c.pool, sub, channel));
                return Some("LISTEN");
            }
            Command::Unlisten { channel } if self.mode != PoolMode::Session => {
                if let Some(sub) = self.listener.as_ref() {
                    self.ctx.listens.unlisten(&self.c.pool, sub, channel);
                }
                return Some("UNLISTEN");
            }
            _ if !self.track_prepared => return None,
            _ => {}
        }
        match cmd {
            Command::Deallocate { name: Some(n) } => {
                let had = self.view.t_mut().sql_prepared.remove(&n).is_some()
                    | self.view.t_mut().statements.remove(&n).is_some();
                // Not the client's: the server answers (26000), as PostgreSQL would.
                had.then_some("DEALLOCATE")
            }
            Command::Deallocate { name: None } => {
                self.view.clear(false);
                Some("DEALLOCATE ALL")
            }
            Command::DiscardAll if self.client_tx == b'I' => {
                self.view.clear(true);
                self.view.desired = self.c.startup.clone();
                Some("DISCARD ALL")
            }
            _ => None,
        }
    }

    /// Send one client message to the attached server, rewriting statement names and
    /// recording what the server owes.
    fn forward(&mut self, f: Frame) -> Result<(), FrontendError> {
        if let Some(frames) = self.fake_extended(&f)? {
            if let Some(a) = self.attached.as_mut() {
                a.pipe.push(Expect::Synthetic(frames));
            }
            return Ok(());
        }
        self.forward_real(f)
    }

    /// [`Session::forward`] for a message `fake_extended` already declined (the first
    /// message of a transaction and the Parses held for it).
    fn forward_real(&mut self, f: Frame) -> Result<(), FrontendError> {
        let track = self.track_prepared;
        let cap = self.max_prepared;
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        a.pool.stats.client_message(f.tag(), f.len());
        if a.query_started.is_none() {
            // The first message after attaching starts its clocks when the pool lent the
            // connection (a moment ago): one clock read less per transaction.
            let now = a.lent.take().unwrap_or_else(Instant::now);
            a.query_started = Some(now);
            if a.server.tx_status == b'I' {
                a.xact_started = now;
            }
        }
        match f.tag() {
            b'P' => {
                let p = Parse::decode(f.body())?;
                if !track || p.name.is_empty() {
                    // Plain DML (most of it) is no DROP DATABASE and changes settings only
                    // through set_config: one scan instead of three.
                    let plain = is_plain_dml(p.query);
                    let changes = if plain {
                        calls_set_config(p.query)
                    } else {
                        changes_session(p.query)
                    };
                    if changes {
                        a.session_changed = true;
                        self.view
                            .t_mut()
                            .custom
                            .extend(custom_setting_names(p.query));
                    }
                    if !plain {
                        if let Some(Command::DropDatabase { name }) = classify_single(p.query) {
                            self.ctx.pools.close_idle_database(&name);
                        }
                    }
                    a.server.conn.queue(&f);
                    a.pool.stats.server_parse_count.add(1);
                    a.pipe.push(Expect::Forward(Req::Parse { stmt: None }));
                    return Ok(());
                }
                if self.view.t().statements.contains_key(p.name)
                    || self.view.t().sql_prepared.contains_key(p.name)
                {
                    // As PostgreSQL: refused, and the rest of the batch up to Sync skipped.
                    let msg = format!("prepared statement \"{}\" already exists", p.name);
                    a.pipe
                        .push(Expect::Synthetic(vec![build::error("42P05", &msg)]));
                    self.skip_until_sync = true;
                    return Ok(());
                }
                let key = f.body().get(p.name.len() + 1..).unwrap_or_default();
                let def = self.ctx.statements.intern(&p, key);
                a.session_changed |= def.changes_session;
                if def.changes_session {
                    self.view
                        .t_mut()
                        .custom
                        .extend(custom_setting_names(&def.query));
                }
                self.view
                    .t_mut()
                    .statements
                    .insert(p.name.to_owned(), def.clone());
                if a.server.prepared.touch(def.id) {
                    a.pipe.push(Expect::Synthetic(vec![Frame::new(b'1', &[])]));
                } else {
                    prepare_on(a, &def, cap, true);
                }
            }
            b'B' => {
                let b = Bind::decode(f.body())?;
                match self
                    .view
                    .t()
                    .statements
                    .get(b.statement)
                    .filter(|_| track && !b.statement.is_empty())
                    .cloned()
                {
                    Some(def) => {
                        a.session_changed |= def.changes_session;
                        if def.changes_session {
                            self.view
                                .t_mut()
                                .custom
                                .extend(custom_setting_names(&def.query));
                        }
                        if !a.server.prepared.touch(def.id) {
                            prepare_on(a, &def, cap, false);
                        }
                        a.server.conn.queue(&b.encode_as(&def.server_name));
                    }
                    None => a.server.conn.queue(&f),
                }
                a.pipe.push(Expect::Forward(Req::Bind));
            }
            b'D' => {
                let t = Target::decode(f.body())?;
                match self
                    .view
                    .t()
                    .statements
                    .get(t.name)
                    .filter(|_| track && t.kind == b'S' && !t.name.is_empty())
                {
                    Some(def) => {
                        if !a.server.prepared.touch(def.id) {
                            prepare_on(a, def, cap, false);
                        }
                        a.server
                            .conn
                            .queue(&Target::encode(b'D', b'S', &def.server_name));
                    }
                    None => a.server.conn.queue(&f),
                }
                a.pipe.push(Expect::Forward(Req::Describe));
            }
            b'C' => {
                let t = Target::decode(f.body())?;
                if track && t.kind == b'S' && !t.name.is_empty() {
                    // The client's view only; the server keeps the statement for others.
                    self.view.t_mut().statements.remove(t.name);
                    a.pipe.push(Expect::Synthetic(vec![Frame::new(b'3', &[])]));
                } else {
                    a.server.conn.queue(&f);
                    a.pipe.push(Expect::Forward(Req::Close { evicted: None }));
                }
            }
            b'E' => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::Execute));
            }
            b'S' => {
                a.server.conn.queue(&f);
                if !a.pipe.copy_in {
                    a.pipe.push(Expect::Forward(Req::Sync));
                }
            }
            b'c' | b'f' => {
                a.server.conn.queue(&f);
                a.pipe.client_copy_end();
            }
            b'F' => {
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::FunctionCall));
            }
            b'Q' => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                let sql = decode::query_text(f.body())?;
                if track {
                    return self.forward_query(&f, sql);
                }
                if self.mode == PoolMode::Session {
                    a.server.conn.queue(&f);
                    a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
                    return Ok(());
                }
                if let Some(tag) = self.client_view_command(sql) {
                    if let Some(a) = self.attached.as_mut() {
                        a.pipe.push(Expect::SyntheticCommand(tag));
                    }
                    return Ok(());
                }
                let Some(a) = self.attached.as_mut() else {
                    return Ok(());
                };
                if changes_session(sql) {
                    a.session_changed = true;
                    self.view.t_mut().custom.extend(custom_setting_names(sql));
                }
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            }
            _ => a.server.conn.queue(&f),
        }
        Ok(())
    }

    /// A simple query in transaction/statement mode with statement tracking: SQL-level
    /// PREPARE/EXECUTE travel with the client; DEALLOCATE/DISCARD ALL act on its view.
    fn forward_query(&mut self, f: &Frame, sql: &str) -> Result<(), FrontendError> {
        if is_plain_dml(sql) {
            // Most of the traffic: no command of the client's view, nothing prepared.
            let Some(a) = self.attached.as_mut() else {
                return Ok(());
            };
            if calls_set_config(sql) {
                a.session_changed = true;
                self.view.t_mut().custom.extend(custom_setting_names(sql));
            }
            a.server.conn.queue(f);
            a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            return Ok(());
        }
        let cmds = classify(sql);
        if let [Command::DropDatabase { name }] = &cmds[..] {
            // Our idle connections to it would make the server wait and refuse.
            self.ctx.pools.close_idle_database(name);
        }
        if let [cmd] = &cmds[..] {
            if let Some(tag) = self.view_command(cmd.clone()) {
                if let Some(a) = self.attached.as_mut() {
                    a.pipe.push(Expect::SyntheticCommand(tag));
                }
                return Ok(());
            }
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut prepare = None;
        if changes_session_of(sql, &cmds) {
            a.session_changed = true;
            self.view.t_mut().custom.extend(custom_setting_names(sql));
        }
        for c in &cmds {
            match c {
                Command::SessionChange | Command::DiscardAll => a.session_changed = true,
                Command::Prepare { name } if cmds.len() == 1 => {
                    // Another client's statement of that name may be on this server.
                    if a.server.prepared.sql.remove(name).is_some() {
                        hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                    }
                    prepare = Some((name.clone(), Arc::<str>::from(sql)));
                }
                Command::Execute { name } => {
                    if let Some(text) = self.view.t().sql_prepared.get(name) {
                        if a.server.prepared.sql.get(name) != Some(text) {
                            if a.server.prepared.sql.remove(name).is_some() {
                                hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                            }
                            a.server.prepared.sql.insert(name.clone(), text.clone());
                            a.server.conn.queue(&build::query(text));
                            a.pipe.push(Expect::Hidden {
                                req: Req::Query { prepare: None },
                                show_errors: true,
                            });
                        }
                    } else if a.server.prepared.sql.remove(name).is_some() {
                        // Another client's (or one this client deallocated): not its own.
                        hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                    }
                }
                // Not in the client's view (else answered above): the server must not
                // drop another client's statement of that name, and must answer 26000.
                Command::Deallocate { name: Some(name) }
                    if a.server.prepared.sql.contains_key(name) =>
                {
                    a.server.prepared.sql.remove(name);
                    hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                }
                _ => {}
            }
        }
        a.server.conn.queue(f);
        a.pipe.push(Expect::Forward(Req::Query { prepare }));
        Ok(())
    }

    /// The first message with no server attached: decide the node (tenant routing in
    /// transaction/statement mode once a shard map is loaded; the coordinator otherwise)
    /// and attach. Returns the message back when a server is attached and it must be
    /// forwarded; None when it was held, answered, or refused.
    async fn route_first(&mut self, f: Frame) -> Option<Frame> {
        let pause = &self.ctx.admin.pause;
        if pause.is_paused(&self.c.pool.key.database) {
            // PAUSE: the new transaction waits for RESUME (or for its end: KILL, SHUTDOWN).
            Box::pin(async {
                tokio::select! {
                    _ = pause.wait(&self.c.pool.key.database) => {}
                    _ = self.c.kill.cancelled() => {}
                    _ = self.ctx.shutdown.cancelled() => {}
                }
            })
            .await;
        }
        let map = match self.mode {
            PoolMode::Session => None,
            _ => self.ctx.shard_map.get(),
        };
        let Some(map) = map else {
            self.ctx.routes.count(RouteReason::NoRouting, false);
            self.route = (RouteReason::NoRouting, false);
            let pool = self.c.pool.clone();
            return self.attach(&f, pool).await.then_some(f);
        };
        let planner = self.ctx.router.planner();
        let health = &self.ctx.node_health;
        let local_refs =
            self.ctx.settings.load().reference_reads == crate::config::ReferenceReads::LocalWorker;
        // `SET pgtenant.tenant = '42'`: a session-wide hint for statements without a key,
        // given to the planner as the sqlcommenter comment it already understands.
        let session_hint = self
            .view
            .desired
            .get(SESSION_TENANT_SETTING)
            .filter(|v| !v.is_empty())
            .map(|v| {
                format!(
                    " /* tenant_id='{}' */",
                    v.replace('\\', "\\\\")
                        .replace('\'', "\\'")
                        .replace("*/", "")
                )
            });
        let mut tenant = None;
        let decision = match f.tag() {
            b'Q' => match decode::query_text(f.body()) {
                Ok(sql) => match keep_tenant(
                    &mut tenant,
                    decide_simple_keyed(
                        planner,
                        &map,
                        health,
                        &hinted(sql, session_hint.as_deref()),
                        local_refs,
                    ),
                ) {
                    Decision::Hold(t) => {
                        let tag = tx_tag(t, sql);
                        if self.hold_transaction_control(t, tag, &f) {
                            return None;
                        }
                        Decision::Coordinator(RouteReason::TransactionControl)
                    }
                    d => d,
                },
                Err(_) => Decision::Coordinator(RouteReason::NoKey),
            },
            b'P' => {
                // The node depends on the Bind's values: hold the Parse until then.
                self.held.push(Held::Parse(f));
                return None;
            }
            b'B' => match Bind::decode(f.body()) {
                Ok(b) => match self.statement_text(b.statement) {
                    Some(sql) => match keep_tenant(
                        &mut tenant,
                        decide_bind_keyed(
                            planner,
                            &map,
                            health,
                            &hinted(&sql, session_hint.as_deref()),
                            &b,
                            local_refs,
                        ),
                    ) {
                        Decision::Hold(t) => {
                            let tag = tx_tag(t, &sql);
                            let unnamed = b.statement.is_empty();
                            if b.portal.is_empty()
                                && self.hold_extended_transaction_control(t, tag, &sql, unnamed)
                            {
                                return None;
                            }
                            Decision::Coordinator(RouteReason::TransactionControl)
                        }
                        d => d,
                    },
                    None => Decision::Coordinator(RouteReason::NoKey),
                },
                Err(_) => Decision::Coordinator(RouteReason::NoKey),
            },
            _ => Decision::Coordinator(RouteReason::NoKey),
        };
        let (pool, reason) = match decision {
            Decision::Node(node) if node != self.c.pool.key.node => {
                let key = crate::pool::PoolKey {
                    node,
                    database: self.c.pool.key.database.clone(),
                    user: self.c.pool.key.user.clone(),
                };
                (self.ctx.pools.get(&key), RouteReason::TenantKey)
            }
            Decision::Node(_) => (self.c.pool.clone(), RouteReason::TenantKey),
            Decision::Coordinator(r) => (self.c.pool.clone(), r),
            Decision::Anywhere => (self.c.pool.clone(), RouteReason::Anywhere),
            Decision::Hold(_) => (self.c.pool.clone(), RouteReason::TransactionControl),
        };
        let to_worker = !Arc::ptr_eq(&pool, &self.c.pool);
        if to_worker && !self.attach_quiet(pool.clone()).await {
            // The worker is unreachable: mark it down and let the coordinator serve.
            self.ctx
                .node_health
                .mark_down(&pool.key.node, self.ctx.settings.load().worker_retry_delay);
            self.ctx.routes.count(RouteReason::WorkerDown, false);
            self.route = (RouteReason::WorkerDown, false);
            let coord = self.c.pool.clone();
            return self.attach(&f, coord).await.then_some(f);
        }
        self.ctx.routes.count(reason, to_worker);
        self.route = (reason, to_worker);
        self.tenant = None;
        if let (RouteReason::TenantKey, Some((colocation, value))) = (reason, tenant) {
            let k = self
                .ctx
                .tenants
                .key(colocation, &value, pool.key.node.name.clone());
            self.tenant = Some(k);
        }
        if to_worker {
            self.ctx.node_health.mark_up(&pool.key.node);
            return Some(f);
        }
        self.attach(&f, pool).await.then_some(f)
    }

    /// BEGIN (and, inside a held BEGIN, SET LOCAL / SAVEPOINT / RELEASE / ROLLBACK TO,
    /// COMMIT / ROLLBACK) before any statement decided the node: answered by pgtenant.
    /// Returns false when it must go to a server instead.
    fn hold_transaction_control(&mut self, t: TxControl, tag: &'static str, f: &Frame) -> bool {
        if self.mode != PoolMode::Transaction {
            return false;
        }
        let in_held_tx = self.held.iter().any(|h| matches!(h, Held::Answered(_)));
        match t {
            TxControl::Begin if !in_held_tx && self.client_tx == b'I' && self.held.is_empty() => {
                self.held.push(Held::Answered(f.clone()));
                self.client_tx = b'T';
            }
            TxControl::SetLocal
            | TxControl::Savepoint
            | TxControl::Release
            | TxControl::RollbackTo
                if in_held_tx =>
            {
                self.held.push(Held::Answered(f.clone()));
            }
            TxControl::Commit | TxControl::Rollback if in_held_tx => {
                // Nothing ran: there is nothing to commit or roll back anywhere.
                self.held.retain(|h| !matches!(h, Held::Answered(_)));
                self.client_tx = b'I';
            }
            _ => return false,
        }
        self.c.conn.queue(&build::command_complete(tag));
        self.c.conn.queue(&build::ready_for_query(self.client_tx));
        true
    }

    /// BEGIN & co. sent with the extended protocol (JDBC, tokio-postgres `execute`):
    /// answered by pgtenant like the simple-protocol ones: ParseComplete for the held
    /// unnamed Parse, BindComplete now, CommandComplete at Execute (through the fake
    /// portal), ReadyForQuery at Sync.
    fn hold_extended_transaction_control(
        &mut self,
        t: TxControl,
        tag: &'static str,
        sql: &str,
        unnamed: bool,
    ) -> bool {
        if self.mode != PoolMode::Transaction {
            return false;
        }
        let in_held_tx = self.held.iter().any(|h| matches!(h, Held::Answered(_)));
        let held_parses = self
            .held
            .iter()
            .filter(|h| matches!(h, Held::Parse(_)))
            .count();
        // Only the simple shape: at most the unnamed Parse of this very statement held.
        if held_parses > usize::from(unnamed) {
            return false;
        }
        match t {
            TxControl::Begin if !in_held_tx && self.client_tx == b'I' => {
                self.client_tx = b'T';
                self.held.retain(|h| !matches!(h, Held::Parse(_)));
                self.held.push(Held::Answered(build::query(sql)));
            }
            TxControl::SetLocal
            | TxControl::Savepoint
            | TxControl::Release
            | TxControl::RollbackTo
                if in_held_tx =>
            {
                self.held.retain(|h| !matches!(h, Held::Parse(_)));
                self.held.push(Held::Answered(build::query(sql)));
            }
            TxControl::Commit | TxControl::Rollback if in_held_tx => {
                self.held.clear();
                self.client_tx = b'I';
            }
            _ => return false,
        }
        if held_parses > 0 {
            self.c.conn.queue(&Frame::new(b'1', &[]));
        }
        self.c.conn.queue(&Frame::new(b'2', &[]));
        self.fake_statement = None;
        self.fake_portal = Some(tag);
        true
    }

    /// The text of the statement a Bind names: a held Parse, or the client's view.
    fn statement_text(&self, name: &str) -> Option<Arc<str>> {
        for h in self.held.iter().rev() {
            if let Held::Parse(p) = h {
                if let Ok(parse) = Parse::decode(p.body()) {
                    if parse.name == name {
                        return Some(parse.query.into());
                    }
                }
            }
        }
        if name.is_empty() {
            return None;
        }
        self.view.t().statements.get(name).map(|d| d.query.clone())
    }

    /// Attach to a worker pool without telling the client about a failure (the caller
    /// falls back to the coordinator).
    async fn attach_quiet(&mut self, pool: Arc<Pool>) -> bool {
        if !pool.has_credential() {
            // A pool on another node logs in as this client's user, with its secret
            // (which its coordinator pool keeps: not a copy in every session).
            pool.set_credential(self.c.pool.credential());
        }
        match self.acquire(&pool).await {
            Ok((server, lent)) => {
                self.install(server, pool, lent).await;
                true
            }
            Err(e) => {
                tracing::warn!(user = %self.c.user, pool = %pool.name(), error = %e, "worker connection failed");
                false
            }
        }
    }

    /// Point the client's cancel key at its server (or at nothing). Waits only while a
    /// cancel is on its way (boxed then: the session's future stays small).
    async fn set_cancel_target(&self, t: Option<Arc<crate::backend::CancelTarget>>) {
        if let Err(t) = self.c.key.slot.try_set(t) {
            Box::pin(self.c.key.slot.set(t)).await;
        }
    }

    /// A server connection from `pool`, counted as waiting meanwhile.
    /// With the time it was lent (the transaction's clock starts there).
    async fn acquire(&self, pool: &Arc<Pool>) -> Result<(Box<ServerConn>, Instant), PoolError> {
        let now = Instant::now();
        if let Some(c) = pool.try_acquire_idle(now) {
            return Ok((c, now));
        }
        let _waiting = crate::metrics::counters::Waiting::enter_for(Some(&self.c.state));
        // Boxed: the slow path (waiting, connecting) stays out of every session's future,
        // which an idle client keeps for as long as it is connected.
        let c = Box::pin(pool.acquire()).await?;
        Ok((c, Instant::now()))
    }

    /// Make `server` this client's: cancel target, settings replay.
    /// `lent`: when the pool lent it; the first message forwarded (at once) starts the
    /// query and transaction clocks there.
    async fn install(&mut self, server: Box<ServerConn>, pool: Arc<Pool>, lent: Instant) {
        self.set_cancel_target(Some(server.cancel.clone())).await;
        let mut a = Attached {
            server,
            pool,
            pipe: Pipeline::new(),
            session_changed: false,
            query_started: None,
            lent: Some(lent),
            // Set by the transaction's first message (`forward`); a placeholder until then.
            xact_started: lent,
            _active: crate::metrics::counters::Active::enter_for(Some(&self.c.state)),
        };
        if !Arc::ptr_eq(&a.server.applied, &self.view.desired) {
            for sql in params::replay(&a.server.applied, &self.view.desired) {
                hidden_query(&mut a, &sql);
            }
            a.server.applied = self.view.desired.clone();
        }
        self.attached = Some(Box::new(a));
    }

    /// Get a server connection for the transaction `first` starts and bring its session
    /// settings in line with the client's. On failure the client gets an error for this
    /// request and keeps its connection.
    async fn attach(&mut self, first: &Frame, pool: Arc<Pool>) -> bool {
        match self.acquire(&pool).await {
            Ok((server, lent)) => {
                self.install(server, pool, lent).await;
                true
            }
            Err(e) => {
                match &e {
                    PoolError::WaitTimeout => {
                        tracing::warn!(user = %self.c.user, pool = %pool.name(), "query_wait_timeout: pool exhausted")
                    }
                    e => {
                        tracing::warn!(user = %self.c.user, pool = %pool.name(), error = %e, "no server connection")
                    }
                }
                let fatal = pool_error_frame(&e);
                // Same code and text, but ERROR: the client may retry on this connection.
                let fields = ErrorFields::parse(fatal.body()).unwrap_or_default();
                self.c
                    .conn
                    .queue(&build::error(&fields.code, &fields.message));
                match first.tag() {
                    b'Q' | b'F' | b'S' => {
                        self.c.conn.queue(&build::ready_for_query(self.client_tx))
                    }
                    _ => self.skip_until_sync = true,
                }
                false
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Server → client
    // ---------------------------------------------------------------------------------

    /// Relay every complete frame the server has sent; give the server back when done.
    fn on_server_input(&mut self) -> Flow {
        loop {
            let Some(a) = self.attached.as_mut() else {
                return Flow::Continue;
            };
            emit_synthetic(a, &mut self.c.conn);
            let f = match a.server.conn.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Flow::Continue,
                Err(e) => return self.server_lost(&format!("server sent a bad message: {e}")),
            };
            a.pool.stats.bytes_sent.add(f.len() as u64);
            let (hidden, show_errors) = match a.pipe.q.front() {
                Some(Expect::Hidden { show_errors, .. }) => (true, *show_errors),
                _ => (false, true),
            };
            let tag = f.tag();
            tracing::trace!(server = a.server.id, tag = %(tag as char), head = ?a.pipe.q.front(), queued = a.pipe.q.len(), "server message");
            match tag {
                b'E' => {
                    if a.pool.key.node != self.c.pool.key.node {
                        // On a worker, a missing relation or an internal error can mean the
                        // shard moved away: check the map now rather than at the next tick.
                        let code = ErrorFields::parse(f.body())
                            .map(|e| e.code)
                            .unwrap_or_default();
                        if matches!(code.as_str(), "42P01" | "XX000" | "55000") {
                            self.ctx.shard_map.request_refresh();
                        }
                    }
                    if !hidden {
                        if let Some(k) = &self.tenant {
                            self.ctx.tenants.error(k);
                        }
                    }
                    if !hidden || show_errors {
                        crate::metrics::counters::SERVER_ERRORS.count_body(f.body());
                        self.c.conn.queue(&f);
                    } else {
                        let e = ErrorFields::parse(f.body()).unwrap_or_default();
                        tracing::warn!(user = %self.c.user, code = %e.code, message = %e.message, "server refused a setting pgtenant replayed");
                    }
                    match a.pipe.q.front().and_then(Expect::req).cloned() {
                        Some(r) if r.is_extended() => {
                            a.pipe.q.pop_front();
                            undo_prepared(a, Expect::Forward(r));
                            for e in a.pipe.drop_until_sync() {
                                undo_prepared(a, e);
                            }
                        }
                        Some(Req::Query { .. }) => {
                            // The query is answered by ReadyForQuery; remember it failed.
                            if let Some(
                                Expect::Forward(Req::Query { prepare })
                                | Expect::Hidden {
                                    req: Req::Query { prepare },
                                    ..
                                },
                            ) = a.pipe.q.front_mut()
                            {
                                *prepare = None;
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                b'Z' => {
                    let Ok(st) = decode::ready_status(f.body()) else {
                        return self.server_lost("server sent a malformed ReadyForQuery");
                    };
                    a.server.tx_status = st;
                    // Inside a transaction pgtenant holds (BEGIN answered, no node yet), a
                    // side trip's ReadyForQuery must still say "in transaction".
                    let holding_tx = self.held.iter().any(|h| matches!(h, Held::Answered(_)));
                    let client_st = if holding_tx && st == b'I' { b'T' } else { st };
                    match a.pipe.q.pop_front() {
                        Some(Expect::Forward(Req::Query {
                            prepare: Some((name, text)),
                        })) => {
                            a.server.prepared.sql.insert(name.clone(), text.clone());
                            self.view.t_mut().sql_prepared.insert(name, text);
                        }
                        Some(Expect::Forward(_) | Expect::Hidden { .. }) | None => {}
                        Some(other) => {
                            tracing::error!(?other, "ReadyForQuery out of order");
                            return self.server_lost("pgtenant lost track of the server's answers");
                        }
                    }
                    if hidden {
                        continue;
                    }
                    // Read once: the latencies and the release below share it.
                    let now = a.query_started.take().map(|t| (t, Instant::now()));
                    if let Some((t, at)) = now {
                        a.pool.stats.add_query(at.saturating_duration_since(t));
                        if st == b'I' {
                            let xact = at.saturating_duration_since(a.xact_started);
                            a.pool.stats.add_xact(xact);
                            if let Some(k) = self.tenant.take() {
                                self.ctx.tenants.transaction(&k, xact);
                            }
                        }
                    }
                    self.client_tx = client_st;
                    if self.mode == PoolMode::Statement && st != b'I' {
                        // As PgBouncer: the error takes the place of the ReadyForQuery,
                        // so the client sees it as the answer to its BEGIN.
                        self.c.conn.queue(&build::fatal(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "transaction blocks not allowed in statement pooling mode",
                        ));
                        return Flow::Quit;
                    }
                    if client_st == st {
                        self.c.conn.queue(&f);
                    } else {
                        self.c.conn.queue(&build::ready_for_query(client_st));
                    }
                    let Some(a) = self.attached.as_mut() else {
                        return Flow::Continue;
                    };
                    emit_synthetic(a, &mut self.c.conn);
                    if a.pipe.is_settled() {
                        if st != b'I' {
                            self.arm_idle_tx_timer();
                        } else if self.mode != PoolMode::Session {
                            return Flow::Release(now.map(|(_, at)| at));
                        }
                    }
                    continue;
                }
                b'S' => {
                    a.server.note_parameter(f.body());
                    if !hidden {
                        // The client changed a reported setting, however it did it.
                        a.session_changed = true;
                        self.c.conn.queue(&f);
                    }
                    continue;
                }
                b'G' => a.pipe.copy_in_started(),
                b'A' => {
                    // Notifications are the client's even in the middle of our own work.
                    self.c.conn.queue(&f);
                    continue;
                }
                _ => {}
            }
            if !hidden {
                self.c.conn.queue(&f);
            }
            // Terminal answers pop their request.
            if let Some(r) = a.pipe.q.front().and_then(Expect::req) {
                let describe_statement_part = tag == b't';
                if !describe_statement_part && r.ends_with(tag) {
                    a.pipe.q.pop_front();
                }
            }
        }
    }

    fn arm_idle_tx_timer(&mut self) {
        let t = self.ctx.settings.load().idle_transaction_timeout;
        if !t.is_zero() {
            self.idle_tx_timer = Some(Box::pin(tokio::time::sleep(t)));
        }
    }

    /// Give the server connection back to its pool (it is clean), synchronously when
    /// nothing must be waited for: no settings to read back, no reset query, no cancel on
    /// its way. False: nothing was done, [`Session::release`] must run.
    fn try_release(&mut self, now: Option<Instant>) -> bool {
        let Some(a) = self.attached.as_ref() else {
            return true;
        };
        if self.release_runs_queries(a) || self.c.key.slot.try_set(None).is_err() {
            return false;
        }
        if let Some(a) = self.attached.take() {
            give_back(*a, now);
        }
        true
    }

    /// [`Session::try_release`], waiting for a cancel on its way and, if the client
    /// changed settings in this transaction, reading them back first: that is its new
    /// session. `now`: the clock read at the ReadyForQuery, if it was.
    async fn release(&mut self, now: Option<Instant>) {
        let Some(a) = self.attached.take() else {
            return;
        };
        self.set_cancel_target(None).await;
        if self.release_runs_queries(&a) {
            // Boxed: a session's future stays small for the common case.
            let s = self.ctx.settings.load_full();
            Box::pin(self.release_slow(*a, s)).await;
            return;
        }
        give_back(*a, now);
    }

    /// Must the connection run queries before it goes back (settings to read back, or
    /// server_reset_query_always)?
    fn release_runs_queries(&self, a: &Attached) -> bool {
        a.session_changed || self.ctx.settings.load().server_reset_query_always
    }

    /// Release after a transaction that changed settings (read them back) or with
    /// server_reset_query_always (run the reset query).
    async fn release_slow(&mut self, mut a: Attached, s: Arc<crate::config::Settings>) {
        // The client already has its answer queued; let it go out first.
        let _ = self.c.conn.flush().await;
        if a.session_changed {
            while self.view.t().custom.len() > 64 {
                self.view.t_mut().custom.pop_last();
            }
            let sql = session_settings_sql(&self.view.t().custom);
            match a.server.query_pairs(&sql).await {
                Ok(rows) => {
                    // What the server holds now is the client's session, exactly: a
                    // startup setting the client RESET is gone from it (the client saw
                    // the server's default), and later servers must agree with that
                    // rather than silently bring the startup value back.
                    let now: Arc<ParamMap> = Arc::new(rows.into_iter().collect());
                    self.view.t_mut().session = (*now).clone();
                    self.view.desired = now.clone();
                    a.server.applied = now;
                }
                Err(e) => {
                    tracing::warn!(user = %self.c.user, error = %e, "reading back session settings failed; closing the server connection");
                    a.pool.discard(a.server);
                    return;
                }
            }
        }
        if s.server_reset_query_always && !s.server_reset_query.is_empty() {
            if a.server.run_internal(&s.server_reset_query).await.is_err() {
                a.pool.discard(a.server);
                return;
            }
            a.server.forget_session_state();
        }
        give_back(a, None);
    }

    /// The server connection broke: the client gets 08006 and is disconnected (its
    /// transaction is gone); the next client gets a fresh server connection.
    fn server_lost(&mut self, why: &str) -> Flow {
        // A late cancel must not reach the closed backend's pid (PostgreSQL may give it
        // to another backend). If one is on its way, it already has its target.
        let _ = self.c.key.slot.try_set(None);
        if let Some(a) = self.attached.take() {
            tracing::warn!(user = %self.c.user, pool = %a.pool.name(), server = a.server.id, reason = why, "server connection lost");
            a.pool.discard(a.server);
        }
        self.c
            .conn
            .queue(&build::fatal(sqlstate::CONNECTION_FAILURE, why));
        Flow::Quit
    }

    /// The client is leaving: return or close its server, flush what is queued.
    async fn finish(&mut self) {
        if let Some(sub) = self.listener.take() {
            self.ctx.listens.unlisten(&self.c.pool, &sub, None);
        }
        if let Some(mut a) = self.attached.take() {
            self.set_cancel_target(None).await;
            let s = self.ctx.settings();
            let mut clean = a.is_clean();
            let reset = &s.server_reset_query;
            if clean
                && !reset.is_empty()
                && (self.mode == PoolMode::Session || s.server_reset_query_always)
            {
                let r = tokio::time::timeout(Duration::from_secs(10), a.server.run_internal(reset))
                    .await;
                clean = matches!(r, Ok(Ok(())));
                a.server.forget_session_state();
            }
            if clean {
                a.pool.release(a.server, true);
            } else {
                a.pool.discard(a.server);
            }
        }
        if self.c.conn.pending_output() > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.c.conn.flush()).await;
        }
    }
}

/// Back to its pool, closed there if not clean. `now`: when it went idle, if known.
fn give_back(a: Attached, now: Option<Instant>) {
    let clean = a.is_clean();
    a.pool
        .release_at(a.server, clean, now.unwrap_or_else(Instant::now));
}

/// Send a Parse for `def` to the server (closing the least recently used statement first
/// when the server's cache is full). `visible`: the client sent this Parse itself.
fn prepare_on(a: &mut Attached, def: &StatementDef, cap: usize, visible: bool) {
    if let Some(victim) = a.server.prepared.insert(def.id, cap) {
        a.server
            .conn
            .queue(&Target::encode(b'C', b'S', &server_statement_name(victim)));
        a.pipe.push(Expect::Hidden {
            req: Req::Close {
                evicted: Some(victim),
            },
            show_errors: false,
        });
    }
    a.server.conn.queue(&def.parse);
    a.pool.stats.server_parse_count.add(1);
    let req = Req::Parse { stmt: Some(def.id) };
    a.pipe.push(if visible {
        Expect::Forward(req)
    } else {
        Expect::Hidden {
            req,
            show_errors: true,
        }
    });
}

/// A query of pgtenant's own (setting replay, DEALLOCATE of another client's statement)
/// whose failure is only logged.
fn hidden_query(a: &mut Attached, sql: &str) {
    a.server.conn.queue(&build::query(sql));
    a.pipe.push(Expect::Hidden {
        req: Req::Query { prepare: None },
        show_errors: false,
    });
}

/// An extended-protocol request the server skipped (or that failed): undo what it would
/// have changed in the server's statement cache.
fn undo_prepared(a: &mut Attached, e: Expect) {
    match e.req() {
        Some(Req::Parse { stmt: Some(id) }) => a.server.prepared.remove(*id),
        Some(Req::Close { evicted: Some(id) }) => {
            // The Close never ran: the statement is still there.
            let _ = a.server.prepared.insert(*id, usize::MAX);
        }
        _ => {}
    }
}

/// Hand the client the answers pgtenant makes itself that are now at the head.
fn emit_synthetic(a: &mut Attached, client: &mut crate::net::Connection) {
    a.pipe.skip_markers();
    loop {
        match a.pipe.q.front() {
            Some(Expect::Synthetic(_)) => {
                if let Some(Expect::Synthetic(frames)) = a.pipe.q.pop_front() {
                    for f in &frames {
                        client.queue(f);
                    }
                }
            }
            Some(Expect::SyntheticCommand(tag)) => {
                client.queue(&build::command_complete(tag));
                client.queue(&build::ready_for_query(a.server.tx_status));
                a.pipe.q.pop_front();
            }
            _ => return,
        }
        a.pipe.skip_markers();
    }
}

/// `sql` with the session's tenant hint appended, if there is one.
fn hinted<'a>(sql: &'a str, hint: Option<&str>) -> std::borrow::Cow<'a, str> {
    match hint {
        Some(h) => std::borrow::Cow::Owned(format!("{sql}{h}")),
        None => std::borrow::Cow::Borrowed(sql),
    }
}

/// Keep the tenant of a routing decision aside; return the decision.
fn keep_tenant(
    slot: &mut super::routing::TenantOf,
    (d, t): (Decision, super::routing::TenantOf),
) -> Decision {
    *slot = t;
    d
}
