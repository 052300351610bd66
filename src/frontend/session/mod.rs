//! The session loop: one task drives the client socket and, while it holds one, a server
//! socket, with a single poll function (read what is there, write once per batch, no
//! hand-off between tasks).
//!
//! In transaction and statement mode a server connection is taken from the pool when the
//! client sends the first message of a transaction and goes back when ReadyForQuery says
//! idle and nothing the client sent is still unanswered (see [`super::pipeline`]), before
//! that ReadyForQuery is written to the client: a client that has its answer finds its
//! connection (and the client's state in the admin console) back in the pool. In
//! session mode the client took it at login (its key is that server's, see `login`) and
//! it stays until the client leaves: it never goes on with another backend behind the pid
//! it was told. A server connection that breaks under its client ends that client, the
//! same way in every mode (see `lost`).
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

use super::listen::Subscriber;
use super::login::{pool_error_frame, Client, SessionServer};
use super::params::{self, ParamMap};
use super::pipeline::{Expect, Pipeline, Req};
use super::prepared::{dml_effects, effect, effects_of, StatementDef};
use super::routing::{
    decide_bind_keyed, decide_simple_keyed, tx_tag, Decision, Reads, RouteReason,
};
use super::FrontendError;
use crate::backend::{server_statement_name, ServerConn};
use crate::config::PoolMode;
use crate::context::Context;
use crate::logging::Escaped;
use crate::net::Frame;
use crate::pool::{Pool, PoolError};
use crate::protocol::extended::{Bind, Parse, Target};
use crate::protocol::{build, decode, sqlstate, ErrorFields};
use crate::router::command::{
    classify, classify_single, custom_setting_names, is_plain_dml, is_reserved_statement_name,
    Command, MAX_CUSTOM_SETTINGS, RESERVED_STATEMENT_PREFIX,
};
use crate::router::TxControl;
use lost::Lost;

mod attach;
mod batched;
mod check;
mod client;
mod forward;
mod holds;
mod homes;
mod limits;
mod lost;
mod park;
mod relay;

pub use park::spawn_sweeper;

/// Stop reading from one side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Stop taking client messages while the server owes this many answers (each is an
/// entry in the pipeline queue; messages pgtenant answers itself add entries without
/// writing to the server, so the write buffer alone does not bound them). Each is small
/// (an answer pgtenant makes shows a client's name cut to 128 bytes, `forward::shown`):
/// a client that queues the most costs a few MiB.
const MAX_OWED: usize = 10_000;

/// The session setting that names a tenant for statements carrying no key.
const SESSION_TENANT_SETTING: &str = "pgtenant.tenant";

/// A server connection lent to this client.
struct Attached {
    server: Box<ServerConn>,
    pool: Arc<Pool>,
    /// What the server still owes, in order.
    pipe: Pipeline,
    /// What this transaction may have done to the session (`prepared::effect` bits): the
    /// session check reads it back when it ends.
    effects: u8,
    /// For the pool's query/transaction time counters (SHOW STATS).
    query_started: Option<Instant>,
    /// When the pool lent the connection, until the first message is forwarded.
    lent: Option<Instant>,
    xact_started: Instant,
    /// Counts this session in `pgtenant_clients{state="active"}` while attached.
    _active: crate::metrics::counters::Active,
    /// The client may have sent a notification in this transaction (NOTIFY, or a
    /// function such as pg_notify) while it listens: its ReadyForQuery waits for the
    /// LISTEN hub's barrier (see `listen`).
    notified: bool,
    /// A server message taken up again after an await (the ReadyForQuery held for the
    /// barrier).
    unread: Option<Frame>,
    /// Blue-green: this transaction's registration with its tenant's gate, until the
    /// connection goes back (a cutover waits for it to end).
    home: Option<crate::bluegreen::Running>,
    /// The tenant's statement_timeout, when it has one (`limits`).
    timer: Option<Box<limits::StatementTimer>>,
    /// The transaction waited this long because its tenant's limits held it (recorded
    /// with its tenant when the transaction ends).
    throttled: Option<Duration>,
}

impl Attached {
    /// Idle and owing nothing: safe to give to another client.
    fn is_clean(&self) -> bool {
        self.pipe.is_settled()
            && !self.pipe.unsynced
            && !self.pipe.lost_track
            && !self.server.prepared.overflowed()
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
    /// A NotificationResponse from the LISTEN hub was queued for the client (the frame
    /// is not carried here: an event is kept across the handlers' awaits).
    Notification,
    /// Notifications meant for the client were lost (`listen` rules): it is told and
    /// ended, between transactions.
    ListenLost,
    /// Blue-green: a tenant transaction has something to send and this instance's lease
    /// is not valid, or its tenant moved (see `homes`).
    LeaseLapsed,
    /// The transaction's tenant has a statement_timeout and the statement ran past it.
    StatementTimeout,
    /// The idle sweep asked the session to park (see `park`).
    Park,
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::ClientRead(_) => "client-read",
            Event::ServerRead(_) => "server-read",
            Event::ClientWrite(_) => "client-write-error",
            Event::ServerWrite(_) => "server-write-error",
            Event::LeaseLapsed => "lease-lapsed",
            Event::StatementTimeout => "statement-timeout",
            Event::IdleTxTimeout => "idle-tx-timeout",
            Event::Shutdown => "shutdown",
            Event::Notification => "notification",
            Event::ListenLost => "listen-lost",
            Event::Park => "park",
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
    /// The client's own notifications must reach it before this ReadyForQuery: wait for
    /// the LISTEN hub's barrier, then relay on.
    NotifyBarrier,
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
    /// Set through [`View::set_desired`].
    desired: Arc<ParamMap>,
    /// The client's text cannot be read by pgtenant's lexers as PostgreSQL reads it
    /// (`standard_conforming_strings = off`, or a client encoding whose multibyte
    /// characters may hold a backslash or quote byte): every statement counts as opaque.
    unreadable: bool,
}

#[derive(Default)]
struct ViewTables {
    /// Its named protocol-level statements.
    statements: NameMap<Arc<StatementDef>>,
    /// Its SQL-level `PREPARE`d statements: name → the PREPARE text.
    sql_prepared: NameMap<Arc<str>>,
    /// Settings it changed since startup, as the server reported them.
    session: ParamMap,
    /// Set by its `DEALLOCATE ALL` / `DISCARD ALL`: its statements from then on get ids
    /// of their own (`StatementRegistry::intern_at`). 0: never.
    epoch: u32,
    /// Custom (dotted) settings it set: pg_settings does not list them, so they are read
    /// back by name (bounded: a client naming hundreds of them gets the first 64).
    custom: std::collections::BTreeSet<String>,
    /// Bytes of names and texts in `statements` and `sql_prepared` (bounded, see
    /// [`MAX_CLIENT_STATEMENT_BYTES`]).
    bytes: usize,
    /// Statements in `statements` that are a LISTEN or UNLISTEN (`StatementDef::hub_tag`):
    /// while there are none, a Bind is not looked at for them.
    hub_statements: u32,
    /// Its unnamed statement: the Parse that made it, as sent to a server (at most
    /// [`UNNAMED_KEPT_MAX`] bytes). A direct connection keeps it until the next Parse of
    /// the unnamed statement, a simple Query or a Close of it, across transactions; a
    /// server connection keeps it only while nothing else ran there, so pgtenant parses
    /// it again before a Bind or Describe of it on a server that lacks it (drivers
    /// without a statement cache, such as asyncpg's `statement_cache_size=0`, Parse and
    /// Describe in one transaction, look up the types, then Bind in another).
    unnamed: Option<Frame>,
    /// Counts the messages that ended its unnamed statement (a simple Query, a Parse or
    /// Close of it), wherever they went: a server marked with an older count holds one
    /// the client has ended (pgtenant answered that Parse itself, a batch ran it on
    /// another connection), not its current one.
    unnamed_gen: u32,
}

/// The largest unnamed statement kept for a client (see `ViewTables::unnamed`); a larger
/// one is not, and a Bind of it on another server connection fails with 26000.
const UNNAMED_KEPT_MAX: usize = 256 * 1024;

/// Prepared statements one client may hold (protocol-level and SQL-level together), and
/// the bytes of their names and texts: pgtenant keeps them for it (in its view, in the
/// process-wide registry) whatever server it uses, so one client must not take the
/// process's memory with them. A Parse or PREPARE beyond fails with 54000.
const MAX_CLIENT_STATEMENTS: usize = 10_000;
const MAX_CLIENT_STATEMENT_BYTES: usize = 16 * 1024 * 1024;

impl ViewTables {
    fn add_statement(&mut self, name: &str, def: Arc<StatementDef>) {
        self.bytes += name.len() + def.query.len();
        self.hub_statements += u32::from(def.hub_tag.is_some());
        if let Some(old) = self.statements.insert(name.to_owned(), def) {
            self.bytes -= name.len() + old.query.len();
            self.hub_statements -= u32::from(old.hub_tag.is_some());
        }
    }

    fn remove_statement(&mut self, name: &str) -> bool {
        match self.statements.remove(name) {
            Some(old) => {
                self.bytes -= name.len() + old.query.len();
                self.hub_statements -= u32::from(old.hub_tag.is_some());
                true
            }
            None => false,
        }
    }

    fn add_sql(&mut self, name: String, text: Arc<str>) {
        self.bytes += name.len() + text.len();
        let n = name.len();
        if let Some(old) = self.sql_prepared.insert(name, text) {
            self.bytes -= n + old.len();
        }
    }

    fn remove_sql(&mut self, name: &str) -> bool {
        match self.sql_prepared.remove(name) {
            Some(old) => {
                self.bytes -= name.len() + old.len();
                true
            }
            None => false,
        }
    }

    /// Room for one more statement of `name` and `text`? (One it holds already under
    /// that name is replaced, or refused as a duplicate, elsewhere.)
    fn room_for(&self, name: &str, text: &str) -> Result<(), forward::Refusal> {
        self.room_for_beside(name, text, (0, 0))
    }

    /// [`Self::room_for`], with `pending` (count, bytes) more on their way: SQL-level
    /// PREPAREs sent and not answered yet (`Pipeline::prepares`).
    fn room_for_beside(
        &self,
        name: &str,
        text: &str,
        pending: (usize, usize),
    ) -> Result<(), forward::Refusal> {
        let count = self.statements.len() + self.sql_prepared.len() + pending.0;
        if count >= MAX_CLIENT_STATEMENTS
            || self.bytes + pending.1 + name.len() + text.len() > MAX_CLIENT_STATEMENT_BYTES
        {
            return Err(forward::Refusal::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "too many prepared statements: pgtenant keeps at most {MAX_CLIENT_STATEMENTS} per client, {} MiB of their text (this client holds {count}); close or deallocate some",
                    MAX_CLIENT_STATEMENT_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// What a view without tables reads.
static NO_TABLES: std::sync::LazyLock<ViewTables> = std::sync::LazyLock::new(ViewTables::default);

impl View {
    fn set_desired(&mut self, d: Arc<ParamMap>) {
        let scs_off = d
            .get("standard_conforming_strings")
            .is_some_and(|v| v.eq_ignore_ascii_case("off"));
        // Encodings whose second bytes can be ASCII (PostgreSQL's client-only ones).
        let unsafe_enc = d
            .get("client_encoding")
            .and_then(|e| crate::protocol::encodings::canonical(e))
            .is_some_and(crate::protocol::encodings::is_client_only);
        self.unreadable = scs_off || unsafe_enc;
        self.desired = d;
    }

    fn t(&self) -> &ViewTables {
        self.tables.as_deref().unwrap_or(&NO_TABLES)
    }

    fn t_mut(&mut self) -> &mut ViewTables {
        self.tables.get_or_insert_with(Default::default)
    }

    /// A message that ends the client's unnamed statement came (`ViewTables::unnamed`):
    /// the kept one goes and the count moves. Without tables the client never had one
    /// marked on a server, unless this is a Parse of it (`by_parse`), which makes them.
    fn end_unnamed(&mut self, by_parse: bool) {
        let t = if by_parse {
            Some(self.t_mut())
        } else {
            self.tables.as_deref_mut()
        };
        if let Some(t) = t {
            t.unnamed = None;
            t.unnamed_gen = t.unnamed_gen.wrapping_add(1);
        }
    }

    /// Forget the client's statements and settings (DISCARD ALL) or statements alone.
    fn clear(&mut self, settings_too: bool) {
        if let Some(t) = self.tables.as_mut() {
            t.statements.clear();
            t.sql_prepared.clear();
            t.bytes = 0;
            t.hub_statements = 0;
            if settings_too {
                t.session.clear();
            }
        }
    }
}

struct Session {
    ctx: Arc<Context>,
    c: Client,
    /// Unique in the process: whose state a server connection holds (`ServerConn`'s
    /// `dirty_by`, `sql_owner`).
    id: u64,
    /// Pinned to its server connection: it holds state there that cannot travel (temp
    /// tables, held cursors, session advisory locks, …; see `check`). The connection
    /// stays attached between transactions until a check finds none.
    pinned: bool,
    mode: PoolMode,
    attached: AttachedSlot,
    view: View,
    /// Prepared-statement tracking on (transaction/statement mode, max_prepared_statements > 0).
    track_prepared: bool,
    max_prepared: usize,
    /// The unnamed statement / portal hold a command pgtenant answers itself (DEALLOCATE,
    /// DISCARD ALL sent through the extended protocol, as psycopg does): its tag.
    fake_statement: Option<&'static str>,
    /// Its LISTENs (transaction/statement mode). Boxed: most clients never listen.
    listening: Option<Box<Listening>>,
    /// Messages held until a statement decides the transaction's node: transaction
    /// control pgtenant already answered, and Parses waiting for their Bind.
    held: Vec<Held>,
    /// Client messages that arrived behind a Sync/Query whose ReadyForQuery is still
    /// outstanding while routing is on: the transaction may end there, and then they
    /// start a new one that must be routed on its own (never sent blindly to the node of
    /// the previous transaction).
    deferred: std::collections::VecDeque<Frame>,
    /// Client messages wait in the read buffer: the client does not read its answers
    /// (its write buffer is over HIGH_WATER) or the server owes MAX_OWED answers. Taken
    /// up again once that is no longer so (`input_blocked`).
    paused_input: bool,
    /// Why the current transaction went where it went (and whether to a worker): its
    /// statements are counted under it.
    route: (RouteReason, bool),
    /// A portal bound to a statement pgtenant answers itself (`fake_extended`): its name
    /// and command tag. Boxed: rare, and a session stays small.
    fake_portal: Option<Box<(Box<str>, &'static str)>>,
    /// After a refused extended-protocol message, drop messages until Sync.
    skip_until_sync: bool,
    /// Armed while the client sits idle inside a transaction.
    idle_tx_timer: Option<Pin<Box<Sleep>>>,
    /// The waker the kill flag and the shutdown token were last looked at with, and
    /// `session_signals()` before that look: while both are unchanged, they are not
    /// looked at again (see `poll_shutdown`).
    shutdown_looked: Option<(std::task::Waker, u64)>,
    draining: bool,
    /// The session check failed: the client's session state is lost with its server
    /// connection, it was sent a FATAL and the session ends.
    session_lost: bool,
    /// Transaction status the client last saw.
    client_tx: u8,
    /// The tenant whose key routed the current transaction (SHOW TENANTS). Boxed: set
    /// for a routed transaction and taken at its end, so an idle session keeps 8 bytes.
    tenant: Option<Box<crate::metrics::tenants::TenantKey>>,
    /// The tenant the next connection is claimed for (`limits`): set when a route is
    /// decided while a tenant limit is on, taken by the acquire that follows. Boxed: an
    /// idle session keeps 8 bytes for it.
    claim_tenant: Option<Box<(u32, Arc<str>)>>,
}

/// A new session identity (what `ServerConn::dirty_by`, `sql_owner` and `unnamed_owner`
/// name): unique in the process.
fn next_session_id() -> u64 {
    static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A client that LISTENs (transaction and statement mode, see `listen`).
struct Listening {
    /// Its subscription to the listening connection of the pool it first listened
    /// through (its home pool then); its channels, its notifications.
    sub: Subscriber,
    /// A LISTEN waiting to be in effect before the client hears "LISTEN": its channel.
    ack: Option<(String, crate::frontend::listen::ListenAck)>,
    /// Where that LISTEN's answer is (`Session::await_listen`).
    answer: ListenAnswer,
    /// The server refused a LISTEN sent with the extended protocol: the Execute of it
    /// fails with this, as on a direct connection.
    refused: Option<crate::frontend::listen::ListenRefused>,
    /// A LISTEN answered inside a transaction block was then refused or not confirmed:
    /// the client is ended with this between transactions (`listen` rules).
    fatal: Option<crate::frontend::listen::ListenRefused>,
}

impl Listening {
    /// Were notifications meant for the client lost, or is a LISTEN it was told of not in
    /// effect? Then the client is ended (`listen` rules).
    fn is_lost(&self) -> bool {
        self.fatal.is_some() || self.sub.lost().is_some()
    }

    /// The error the client is ended with when [`Listening::is_lost`].
    fn lost_error(&self) -> Option<crate::frontend::listen::ListenRefused> {
        self.fatal
            .clone()
            .or_else(|| self.sub.lost().map(|why| why.refusal()))
    }
}

/// Where the answer to a LISTEN waiting for the listening connection is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListenAnswer {
    /// Queued already (inside a transaction, among the server's answers): a refusal can
    /// only be logged.
    Queued,
    /// A simple query of an idle client: CommandComplete (or the refusal) and
    /// ReadyForQuery are queued once the answer is known.
    Simple,
    /// Parse of the extended protocol: its Execute says (`Listening::refused`).
    Extended,
}

/// The session's future. Built in two steps so that it holds the session's state once
/// (an `async fn` would keep its `client` argument beside the `Session` made from it).
/// `own`: the server connection a session-mode client took at login; the session starts
/// attached to it.
/// `end` runs when the session is over, inside the same future (awaiting this future from
/// another one would store it twice).
/// `tracker`: the tasks shutdown waits for (a parked session keeps a token of it).
pub fn run<E: SessionEnd>(
    client: Client,
    own: Option<SessionServer>,
    ctx: Arc<Context>,
    tracker: tokio_util::task::TaskTracker,
    end: E,
) -> impl Future<Output = ()> + Send {
    let settings = ctx.settings();
    let mode = settings.pool_mode_of(&client.pool.key.database, &client.pool.key.user);
    let max_prepared = settings.max_prepared_statements as usize;
    drop(settings);
    let mut view = View::default();
    view.set_desired(client.startup.clone());
    let mut s = Session::new(ctx, client, next_session_id(), mode, view, max_prepared);
    if let Some(own) = own {
        s.install_at_login(own.take());
    }
    park::drive(s, end, tracker)
}

/// What the caller runs when a session is over (its registry entry and slot given back,
/// its log line), and the context it keeps for that (a parked session keeps no copy).
pub trait SessionEnd: Send + 'static {
    fn ctx(&self) -> &Arc<Context>;
    /// The session of the client of `entry` is over (`r`: how).
    fn end(self, r: Result<(), FrontendError>, entry: &crate::admin::ClientInfo);
}

/// How the session loop ended.
enum Ended {
    /// The client left, or its session is over.
    Closed,
    /// Asked to park (see `park`): the caller parks it if it still can.
    Park,
}

/// The session's server connection, when one is lent to it.
///
/// A session dropped before `finish` gave its server connection back (its task panicked,
/// or the runtime dropped it): the connection is closed through its pool, whose count of
/// open and lent connections then stays true. Without this a panic in one client's
/// session would keep a pool slot forever, and `pool_size` of them would starve every
/// client of the pool. (On this field rather than on `Session`, which a parked session
/// takes apart, see `park`.)
#[derive(Default)]
struct AttachedSlot(Option<Box<Attached>>);

impl std::ops::Deref for AttachedSlot {
    type Target = Option<Box<Attached>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for AttachedSlot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for AttachedSlot {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.pool.discard(a.server);
        }
    }
}

impl Session {
    /// A session between transactions, with nothing in flight (a new one, or one taken
    /// back from the parking lot).
    fn new(
        ctx: Arc<Context>,
        c: Client,
        id: u64,
        mode: PoolMode,
        view: View,
        max_prepared: usize,
    ) -> Session {
        Session {
            id,
            pinned: false,
            ctx,
            mode,
            attached: AttachedSlot::default(),
            view,
            track_prepared: mode != PoolMode::Session && max_prepared > 0,
            max_prepared,
            fake_statement: None,
            listening: None,
            held: Vec::new(),
            route: (RouteReason::NoRouting, false),
            deferred: std::collections::VecDeque::new(),
            paused_input: false,
            fake_portal: None,
            skip_until_sync: false,
            idle_tx_timer: None,
            shutdown_looked: None,
            draining: false,
            session_lost: false,
            client_tx: b'I',
            tenant: None,
            claim_tenant: None,
            c,
        }
    }

    async fn run(&mut self) -> Result<Ended, FrontendError> {
        loop {
            let ev = poll_fn(|cx| self.poll_event(cx)).await;
            // A transaction ended: its answer is written as soon as the connection is
            // back and the client's state published, not at the next poll.
            let mut answer_now = false;
            tracing::trace!(event = ev.name(), "session event");
            let flow = match ev {
                Event::Park if self.parkable() => return Ok(Ended::Park),
                Event::Park => {
                    tracing::debug!(why = self.why_not_park(), "client not parked");
                    self.c.state().console.decline_park();
                    Flow::Continue
                }
                Event::ClientRead(Ok(0)) => Flow::Quit,
                // Handlers are boxed per event: an idle client's task then holds only the
                // session's state, not the state of every await the handlers might reach
                // (memory per idle client; one short-lived allocation per event).
                Event::ClientRead(Ok(_)) => Box::pin(self.on_client_input()).await?,
                Event::ClientRead(Err(e)) | Event::ClientWrite(e) => return Err(e.into()),
                Event::ServerRead(Ok(0)) => self.server_lost(Lost::Closed),
                Event::ServerRead(Err(e)) => self.server_lost(Lost::Io(&e)),
                Event::ServerWrite(e) => self.server_write_failed(e),
                Event::ServerRead(Ok(_)) => {
                    let mut flow = self.on_server_input();
                    while let Flow::NotifyBarrier = flow {
                        Box::pin(self.notify_barrier()).await;
                        flow = self.on_server_input();
                    }
                    if let Flow::Release(now) = flow {
                        // The connection goes back before the answer goes out: once a
                        // client has its ReadyForQuery, its connection is in the pool (the
                        // next transaction of any client finds it idle) and SHOW CLIENTS
                        // no longer counts it active, as with PgBouncer's one thread.
                        if !self.try_release(now) {
                            Box::pin(self.release(now)).await;
                        }
                        answer_now = true;
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
                    // KILL or SHUTDOWN: finish the transaction (the flag and token are not
                    // looked at again; SUSPEND still wakes the session through its waker).
                    self.draining = true;
                    Flow::Continue
                }
                Event::LeaseLapsed => Box::pin(self.lease_lapsed()).await,
                Event::StatementTimeout => self.statement_timed_out(),
                Event::Notification => Flow::Continue,
                Event::ListenLost => {
                    if let Some(r) = self.listening.as_ref().and_then(|l| l.lost_error()) {
                        tracing::warn!(user = %Escaped(&self.c.user), code = %r.code, message = %Escaped(&r.message), "client ended: notifications meant for it were lost");
                        self.c.conn.queue(&build::fatal(&r.code, &r.message));
                    }
                    Flow::Quit
                }
            };
            // SHOW CLIENTS / SERVERS: the server lent now, the statements prepared.
            let link = self.attached.as_ref().map_or(0, |a| a.server.id);
            let prepared = self.view.t().statements.len();
            self.c.state().console.publish(link, prepared);
            if answer_now {
                // Not an await: the session's future keeps nothing more for it.
                self.c.conn.write_now();
            }
            if let Flow::Quit = flow {
                return Ok(Ended::Closed);
            }
            if self.session_lost {
                return Ok(Ended::Closed);
            }
            if self.draining && self.attached.as_ref().is_none_or(|a| a.is_clean()) {
                self.c.conn.queue(&build::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgtenant is shutting down",
                ));
                return Ok(Ended::Closed);
            }
        }
    }

    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        // Writes first: whatever was queued by the last batch goes out in one call.
        if let Some(a) = self.attached.as_mut() {
            if a.server.conn.pending_output() > 0 {
                if a.home.as_ref().is_some_and(|r| !r.may_write()) {
                    return Poll::Ready(Event::LeaseLapsed);
                }
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
        if self.paused_input && !self.input_blocked() {
            // The client read its answers: take up the messages it sent meanwhile.
            self.paused_input = false;
            return Poll::Ready(Event::ClientRead(Ok(1)));
        }
        if self.attached.is_none() && self.c.conn.pending_output() == 0 && !self.paused_input {
            // Idle between transactions: no buffer is kept for a client that sends nothing,
            // nor the room a burst of held or deferred messages once took.
            self.c.conn.release_buffers();
            if self.deferred.is_empty() && self.deferred.capacity() > 8 {
                self.deferred = Default::default();
            }
            if self.held.is_empty() && self.held.capacity() > 8 {
                self.held = Vec::new();
            }
        }
        let server_out = self
            .attached
            .as_ref()
            .map_or(0, |a| a.server.conn.pending_output());
        // SUSPEND (admin::suspend): once what is queued went out above, read nothing.
        let suspend = &self.ctx.admin.suspend;
        if suspend.is_on() {
            let pending = self.c.conn.pending_output() + server_out;
            if suspend.park(cx, &self.c.state().console.suspend, pending) {
                return self.poll_shutdown(cx);
            }
        }
        if server_out < HIGH_WATER && self.deferred.is_empty() && !self.paused_input {
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
        if let Some(t) = self.attached.as_mut().and_then(|a| a.timer.as_mut()) {
            if t.poll_fired(cx) {
                return Poll::Ready(Event::StatementTimeout);
            }
        }
        // Notifications go out between answers, never inside one.
        let between = self.attached.as_ref().is_none_or(|a| a.pipe.is_settled());
        if between && self.c.conn.pending_output() < HIGH_WATER {
            if let Some(l) = self.listening.as_mut() {
                if let Poll::Ready(f) = l.sub.poll_next(cx) {
                    if l.sub.wants(&f) {
                        self.c.conn.queue(&f);
                    }
                    // Every one queued by now goes with it, in one write: a direct
                    // connection's backend sends those of one transaction together, and
                    // a client that stops after the first read has them all (psycopg's
                    // `notifies(stop_after=…)`).
                    while self.c.conn.pending_output() < HIGH_WATER {
                        let Some(f) = l.sub.try_next() else { break };
                        if l.sub.wants(&f) {
                            self.c.conn.queue(&f);
                        }
                    }
                    return Poll::Ready(Event::Notification);
                }
                // Lost notifications end the client once every queued one went out and
                // it is between transactions (a pinned client's connection idle too).
                let idle = self
                    .attached
                    .as_ref()
                    .is_none_or(|a| a.server.tx_status == b'I');
                if idle && l.is_lost() && l.sub.drained() {
                    return Poll::Ready(Event::ListenLost);
                }
            }
        }
        self.poll_shutdown(cx)
    }

    /// Must the client's next messages wait (see `paused_input`)?
    fn input_blocked(&self) -> bool {
        self.c.conn.pending_output() >= HIGH_WATER
            || self
                .attached
                .as_ref()
                .is_some_and(|a| a.pipe.q.len() >= MAX_OWED)
    }

    /// KILL (the console state's flag) or SHUTDOWN (the context's token). Looked at only
    /// when nothing else is ready (the task is about to sleep): its waker is registered
    /// then in its console state, where KILL, SUSPEND, RESUME and shutdown wake it, and a
    /// busy session does not pay the locks per turn (a flooding client still reaches it,
    /// since tokio's cooperative budget makes its reads return Pending in time).
    /// The look takes two mutexes (the waker slot, the token), so it is skipped while the
    /// session signal count has not moved since the last one and the waker is the same:
    /// the registration from that look still stands, and whoever kills, shuts down or
    /// wakes sessions moves the count first.
    fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        let signals = super::session_signals();
        if let Some((w, seen)) = &self.shutdown_looked {
            if *seen == signals && w.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        // Where SUSPEND and RESUME wake this session (admin::suspend).
        self.c.state().console.suspend.set_waker(cx.waker());
        // KILL sets its flag and SHUTDOWN cancels the context's token, each before it
        // wakes the session (server.rs wakes every session at shutdown).
        if !self.draining
            && (self.c.state().console.is_killed() || self.ctx.shutdown.is_cancelled())
        {
            return Poll::Ready(Event::Shutdown);
        }
        if self.c.state().console.park_asked() {
            return Poll::Ready(Event::Park);
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
}
