//! Pools of server connections, one per (node, database entry, server role), with
//! PgBouncer's limits: pool_size, reserve_pool_size after reserve_pool_timeout,
//! max_db_connections (per entry and node), max_user_connections (per role and node),
//! query_wait_timeout, server_lifetime, server_idle_timeout, server_check_query. A pool's
//! limits are its entry's and role's (`Settings::limits`), read at each use, so RELOAD and
//! SET change them in place; a pool whose entry now leads elsewhere is marked stale
//! (`Pools::retire_changed`) and replaced, never re-pointed.
//!
//! A pool never parses SQL and never holds a connection in an unknown state: the caller
//! says whether a connection is clean when it gives it back, and unclean ones are closed.
//!
//! Pools are created on first use and removed when nothing uses them, so that logins to
//! databases that do not exist (or were dropped, or are no longer used) do not pile up
//! pools ([`Pools::remove_unused`], run by the janitor every second):
//!
//! - a pool is *unused* when only the pool map refers to it (no client session, waiter,
//!   LISTEN hub or connect in progress holds it) and it has no server connection;
//! - an unused pool that has never opened a server connection (a database or user the
//!   server refuses: 3D000, 28P01, …) is removed at the janitor's next pass; one that
//!   has is removed once it has been unused for `pool_idle_timeout` (60 s; 0 keeps
//!   pools for ever). Its `min_pool_size` connections, while open, keep it;
//! - with it go its database's max_db_connections counter when no other pool of that
//!   database is left, and its SHOW STATS rows (totals restart if the pool comes back).
//!   `/metrics` has no per-pool series (its labels are per node), so nothing is left
//!   there; its counters are added to its node's [`Retired`] totals, so that the per-node
//!   counters of `/metrics` and SHOW NODES never go down (one entry per node, not pool).
//!
//! A pool is removed under its map shard's lock, after checking that the map holds the
//! only reference: [`Pools::get`] clones under the same lock, so no one can be handed a
//! pool that is being removed; the next `get` creates a fresh one.
//!
//! Files: `mod.rs` (the key, the pool's state, release and close), `acquire.rs` (getting a
//! connection, waiting), `limits.rs` (limits and the per-node counters, eviction),
//! `open.rs` (opening, connect_query, server checks), `stats.rs` (what SHOW and /metrics
//! read), `pools.rs` (the map of pools), `janitor.rs` (timers, min_pool_size).
mod janitor;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use crate::auth::ServerCredential;
use crate::backend::{self, BackendError, ConnectParams, ServerConn};
use crate::config::Settings;
use crate::metrics::latency::{self, Kind as LatencyKind, Latency};
use crate::metrics::striped::Striped;

pub use janitor::spawn_janitor;

/// ParameterStatus (name, value) pairs as a server reported them.
pub type ParamList = Arc<Vec<(String, String)>>;

/// A server pgtenant pools connections to: the coordinator or a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// Name shown in the admin console and logs: "coordinator", "worker-<group>" (the
    /// shard map's workers), or "host:port" (a `[databases]` entry's own server).
    pub name: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
}

impl Node {
    /// A Citus worker, borrowed per transaction by routing (no client logs in to it).
    pub fn is_worker(&self) -> bool {
        &*self.name != "coordinator" && !self.name.contains(':')
    }

    /// The node of server `host:port`: `coordinator` itself when it is that server, else
    /// one named `host:port` (a `[databases]` entry's own server).
    pub fn server(coordinator: &Node, host: &str, port: u16) -> Node {
        if (&*coordinator.host, coordinator.port) == (host, port) {
            return coordinator.clone();
        }
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Node {
            name: shown.into(),
            host: host.into(),
            port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: Node,
    /// The database as clients name it (the `[databases]` entry's name): SHOW POOLS,
    /// PAUSE, the limits.
    pub database: Arc<str>,
    /// The server's database (the entry's `dbname`; the same name without `[databases]`).
    pub dbname: Arc<str>,
    /// The server role (the entry's forced user, else the client's).
    pub user: Arc<str>,
    /// `user` is the entry's forced role (all its clients share the pool), not the
    /// clients' own: a RELOAD that drops the forced user must move them off it.
    pub forced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("query_wait_timeout: no server connection became free in time")]
    WaitTimeout,
    #[error(transparent)]
    Connect(#[from] BackendError),
    #[error("pgtenant is shutting down")]
    ShuttingDown,
    /// query_wait_timeout while the transaction's tenant held its `max_active`
    /// connections (the client sees the same error as [`PoolError::WaitTimeout`]).
    #[error("query_wait_timeout: tenant {0} held its tenant_max_active connections")]
    TenantWaitTimeout(Arc<str>),
    /// A tenant's `max_tps`: its next token comes after its query_wait_timeout.
    #[error("{0}")]
    TenantRate(String),
}

/// What a waiting client is handed.
// A connection is moved, not copied around: boxing it would add an allocation per hand-off.
#[allow(clippy::large_enum_variant)]
enum Handoff {
    /// A clean, idle connection.
    Conn(Box<ServerConn>),
    /// A slot that was counted for you: open a new connection in it (counted for the
    /// tenant named, if any: the connection carries it).
    Slot(Option<Arc<str>>),
    /// Your unit goes in a batch on a connection of the pool (`batch`): its answer comes
    /// through the ticket.
    Batched(Arc<batch::Ticket>),
}

/// What a client gets from [`Pool::acquire_unit`].
pub enum Lent {
    Conn(Box<ServerConn>),
    /// Its unit went in a batch: read the answer from the ticket.
    Batched(Arc<batch::Ticket>),
}

struct Inner {
    /// Most recently used at the back: acquire takes from the back (warm caches), the
    /// janitor closes from the front (the longest idle).
    idle: VecDeque<Box<ServerConn>>,
    /// Connections that exist or are being opened, idle ones included.
    total: u32,
    /// Clients waiting for a connection, in turn order, and the tenants' counts
    /// (`queue.rs`).
    queue: queue::Queue<Waiter>,
    /// When "pool exhausted" was last logged, and how many times the queue started
    /// since: a busy pool starts a queue thousands of times a second, the log says so
    /// once a minute.
    exhausted_logged: Option<Instant>,
    exhausted_since_log: u64,
    /// Since when the janitor has found the pool unused (see [`Pools::remove_unused`]).
    unused_since: Option<Instant>,
    /// When [`Pool::close_idle_after_loss`] last closed the idle connections.
    idle_suspected: Option<Instant>,
}

/// [`Pool::close_idle_after_loss`] closes the idle connections at most once in this
/// time, however many connections are lost (or a client ends its own backend).
const SUSPECT_IDLE_EVERY: Duration = Duration::from_secs(1);

/// At most one "pool exhausted" message per pool in this time.
const EXHAUSTED_LOG_EVERY: Duration = Duration::from_secs(60);

/// A client in a pool's queue, and since when it has waited (SHOW POOLS' maxwait).
struct Waiter {
    tx: oneshot::Sender<Handoff>,
    since: Instant,
    /// Its statement, when it may go in a batch (`batch`).
    unit: Option<Arc<batch::Ticket>>,
    /// io_uring: the ring of the thread its task runs on (`queue::Queue::bring_forward`).
    home: Option<u32>,
    /// Times a later waiter was served first.
    passed: u8,
}

impl queue::Waits for Waiter {
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
    fn waited(&self) -> Duration {
        self.since.elapsed()
    }
    fn passed(&mut self) -> &mut u8 {
        &mut self.passed
    }
}

/// io_uring: how many turns at the front of the queue are looked at for a waiter of the
/// releasing thread (`queue::Queue::bring_forward`).
const SAME_THREAD_WAITERS: usize = 4;

impl Waiter {
    // The connection is handed back on failure, as oneshot::Sender::send does.
    #[allow(clippy::result_large_err)]
    fn send(self, h: Handoff) -> Result<(), Handoff> {
        self.tx.send(h)
    }
}

pub struct Pool {
    pub key: PoolKey,
    inner: Mutex<Inner>,
    db: Arc<Counter>,
    role: Arc<Counter>,
    settings: Arc<ArcSwap<Settings>>,
    credential: Mutex<Option<Arc<ServerCredential>>>,
    /// The ParameterStatus set of the first server connection (sent to clients at login).
    server_params: Mutex<Option<ParamList>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub stats: PoolStats,
    /// Open server connections of this pool, for SHOW SERVERS (written at connect and
    /// close only, never per statement).
    servers: DashMap<u64, ServerInfo>,
    /// Connections with an id up to this one were marked by RECONNECT: closed when they
    /// come back instead of reused (PgBouncer's close_needed).
    close_needed_upto: AtomicU64,
    /// Its entry changed on reload: new clients get a fresh pool, its own move at their
    /// next transaction.
    stale: std::sync::atomic::AtomicBool,
    /// Itself, for the guards of its connections.
    me: Weak<Pool>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this file; recover the data
        // rather than poisoning every later client.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Remember the credential to open connections with (e.g. SCRAM keys learnt from a
    /// client's login). A newer one replaces an older one.
    /// (The same credential again keeps the copy its clients share, see
    /// [`Pool::share_credential`].)
    pub fn set_credential(&self, cred: Option<ServerCredential>) {
        if let Some(c) = cred {
            let mut g = self.credential.lock().unwrap_or_else(|p| p.into_inner());
            if g.as_deref() != Some(&c) {
                *g = Some(Arc::new(c));
            }
        }
    }

    /// The credential it opens connections with (the latest a client of this user
    /// brought).
    pub fn credential(&self) -> Option<ServerCredential> {
        self.credential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }

    /// `c` as a client keeps it: the pool's own copy when it is the same credential (the
    /// clients of a user hold one copy between them, not one each: memory per idle
    /// client), else a copy of its own.
    pub fn share_credential(&self, c: ServerCredential) -> Arc<ServerCredential> {
        match &*self.credential.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(mine) if **mine == c => mine.clone(),
            _ => Arc::new(c),
        }
    }

    pub fn has_credential(&self) -> bool {
        self.credential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn server_params(&self) -> Option<ParamList> {
        self.server_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// (idle, total) server connections right now.
    pub fn counts(&self) -> (u32, u32) {
        let g = self.lock();
        (g.idle.len() as u32, g.total)
    }

    /// Is this idle connection past its lifetime or idle timeout?
    fn expired(s: &Settings, c: &ServerConn, now: Instant) -> bool {
        (!s.server_lifetime.is_zero() && now.duration_since(c.created) >= s.server_lifetime)
            || (!s.server_idle_timeout.is_zero()
                && now.duration_since(c.last_used) >= s.server_idle_timeout)
    }

    /// Forget a connection slot (the connection is closed or was never opened).
    fn drop_slot(&self, g: &mut Inner) {
        g.total = g.total.saturating_sub(1);
        for c in [&self.db, &self.role] {
            c.count.fetch_sub(1, Ordering::AcqRel);
            c.freed.notify_waiters();
        }
        // A waiter may now open a connection in the freed slot.
        let s = self.settings.load();
        if g.total < self.pool_size(&s) {
            self.grant_slot(g);
        }
    }

    /// Give a waiter the right to open a connection, if anyone's turn waits.
    fn grant_slot(&self, g: &mut Inner) {
        while g.queue.has_turns() {
            if !self.try_count() {
                return;
            }
            let Some(p) = g.queue.pop() else {
                self.uncount();
                return;
            };
            g.total += 1;
            if let Err(Handoff::Slot(t)) = p.waiter.send(Handoff::Slot(p.counted)) {
                g.total -= 1;
                self.uncount();
                if let Some(t) = t {
                    g.queue.unlend(&t);
                }
                continue;
            }
            return;
        }
    }

    /// Take back a count of [`Pool::try_count`] that was not used.
    fn uncount(&self) {
        self.db.count.fetch_sub(1, Ordering::AcqRel);
        self.role.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// The connection is no longer lent: give its tenant's count back.
    fn unlend(&self, g: &mut Inner, c: &mut ServerConn) {
        if let Some(t) = c.lent_to.take() {
            g.queue.unlend(&t);
        }
    }

    /// Open server connections: (info, state, close_needed) each.
    pub fn servers(&self) -> Vec<(ServerInfo, ServerState, bool)> {
        let s = self.settings.load();
        let now = Instant::now();
        let idle: std::collections::HashMap<u64, (ServerState, Instant)> = self
            .lock()
            .idle
            .iter()
            .map(|c| {
                let used = open::needs_check(&s, c, now);
                let st = if used {
                    ServerState::Used
                } else {
                    ServerState::Idle
                };
                (c.id, (st, c.last_used))
            })
            .collect();
        let marked = self.close_needed_upto.load(Ordering::Relaxed);
        let mut v: Vec<_> = self
            .servers
            .iter()
            .map(|e| {
                let mut info = e.value().clone();
                let st = match idle.get(e.key()) {
                    Some(&(st, last_used)) => {
                        info.last_used = Some(last_used);
                        st
                    }
                    None => ServerState::Active,
                };
                (info, st, *e.key() <= marked)
            })
            .collect();
        v.sort_by_key(|(i, _, _)| i.id);
        v
    }

    /// How long the oldest client in this pool's queue has waited (zero when none).
    pub fn max_wait(&self) -> Duration {
        self.lock().queue.max_wait()
    }

    /// Per tenant now: (connections counted for it, transactions waiting). Only tenants
    /// under a limit are counted; waiting ones whenever a limit is on.
    pub fn tenant_load(&self) -> std::collections::HashMap<Arc<str>, (u32, u32)> {
        let g = self.lock();
        let mut m: std::collections::HashMap<Arc<str>, (u32, u32)> = Default::default();
        for (t, n) in g.queue.active_by_tenant() {
            m.entry(t.clone()).or_default().0 += n;
        }
        for (t, n) in g.queue.waiting_by_tenant() {
            m.entry(t.clone()).or_default().1 += n;
        }
        m
    }

    /// RECONNECT: every connection open now is closed instead of reused (idle ones at
    /// once by the caller, lent ones when they come back).
    /// Its database entry changed or went away on reload (`Pools::retire_changed`).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
        self.mark_close_needed();
    }

    pub fn mark_close_needed(&self) {
        let top = self.servers.iter().map(|e| *e.key()).max().unwrap_or(0);
        self.close_needed_upto.fetch_max(top, Ordering::Relaxed);
    }

    /// Marked connections (RECONNECT) still open: WAIT_CLOSE waits for none.
    pub fn close_needed_open(&self) -> usize {
        let marked = self.close_needed_upto.load(Ordering::Relaxed);
        self.servers.iter().filter(|e| *e.key() <= marked).count()
    }

    /// Hand a clean connection to the waiter whose turn it is (counted for its tenant);
    /// the connection back when nobody takes it. `s`: the settings the caller read.
    fn hand_to_waiter(
        &self,
        g: &mut Inner,
        mut c: Box<ServerConn>,
        s: &Settings,
    ) -> Option<Box<ServerConn>> {
        // io_uring: a waiter whose task runs on this thread, if one is near the front,
        // takes the connection without a wake-up of another thread. Not with server
        // pipelining: a batch takes its waiters in turn order (`batch` rules).
        let here = crate::net::uring::this_ring().filter(|_| !s.server_pipelining);
        loop {
            if !g.queue.has_turns() {
                break;
            }
            if here.is_some() {
                g.queue
                    .bring_forward(SAME_THREAD_WAITERS, |w: &Waiter| w.home == here);
            }
            let Some(p) = g.queue.pop() else { break };
            if p.counted.is_none() {
                match self.try_batch(g, c, p.waiter, s) {
                    Ok(()) => return None,
                    Err(back) => c = back,
                }
                continue;
            }
            c.lent_to = p.counted;
            match p.waiter.send(Handoff::Conn(c)) {
                Ok(()) => return None,
                Err(Handoff::Conn(mut back)) => {
                    self.unlend(g, &mut back);
                    c = back;
                }
                Err(_) => return None, // never sent here
            }
        }
        Some(c)
    }

    /// Hand `c` to `head` (a waiter of no tenant), in a batch with the waiters behind it
    /// when its unit and theirs may share it (`batch`). The connection back when nobody
    /// took it.
    fn try_batch(
        &self,
        g: &mut Inner,
        c: Box<ServerConn>,
        head: Waiter,
        s: &Settings,
    ) -> Result<(), Box<ServerConn>> {
        let mut mates: Vec<Waiter> = Vec::new();
        // A unit that may wait (a write, a row lock, a sleep) goes last: nobody waits
        // behind it on the server while another connection may come free (`batch` rules).
        if head
            .unit
            .as_ref()
            .is_some_and(|u| !u.may_wait && batch::fits(&c, u))
        {
            let depth = s.server_pipeline_depth.max(2) as usize;
            while mates.len() + 1 < depth {
                match g
                    .queue
                    .pop_one_if(|w| w.unit.as_ref().is_some_and(|u| batch::fits(&c, u)))
                {
                    Some(w) => {
                        let last = w.unit.as_ref().is_some_and(|u| u.may_wait);
                        mates.push(w);
                        if last {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        if mates.is_empty() {
            return Self::hand_plain(c, head, mates, g);
        }
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return Self::hand_plain(c, head, mates, g);
        };
        let mut units = Vec::with_capacity(mates.len() + 1);
        for w in std::iter::once(head).chain(mates) {
            let Some(t) = w.unit.clone() else { continue };
            if w.send(Handoff::Batched(t.clone())).is_ok() {
                units.push(t);
            }
        }
        if units.is_empty() {
            return Err(c);
        }
        // Active once for the whole batch (until its release); each unit is counted as
        // an assignment when it starts (`batch::start`).
        self.stats.active.add(1);
        rt.spawn(batch::drive(me, c, units));
        Ok(())
    }

    /// No batch: `c` to `head`, and the waiters taken for a batch back to the front of
    /// the queue in their order.
    fn hand_plain(
        c: Box<ServerConn>,
        head: Waiter,
        mates: Vec<Waiter>,
        g: &mut Inner,
    ) -> Result<(), Box<ServerConn>> {
        for w in mates.into_iter().rev() {
            g.queue.push_front_one(w);
        }
        match head.send(Handoff::Conn(c)) {
            Ok(()) => Ok(()),
            Err(Handoff::Conn(back)) => Err(back),
            Err(_) => unreachable!("a connection was sent"),
        }
    }

    /// The transaction a connection was lent for ended but its client keeps it (pinned):
    /// its tenant's count is given back now.
    pub fn end_claim(&self, c: &mut ServerConn) {
        if c.lent_to.is_some() {
            let mut g = self.lock();
            self.unlend(&mut g, c);
            // Its tenant may take a turn again: an idle connection goes to it at once
            // (nothing comes back to the pool to wake it otherwise).
            while g.queue.has_turns() {
                let Some(idle) = g.idle.pop_back() else {
                    break;
                };
                if let Some(back) = self.hand_to_waiter(&mut g, idle, &self.settings.load()) {
                    g.idle.push_back(back);
                    break;
                }
            }
        }
    }

    /// Give a connection back. `clean`: idle, nothing unanswered, safe for the next client.
    pub fn release(&self, c: Box<ServerConn>, clean: bool) {
        self.release_at(c, clean, Instant::now())
    }

    /// [`Pool::release`] with the clock already read (`now`: the time it went idle).
    pub fn release_at(&self, mut c: Box<ServerConn>, clean: bool, now: Instant) {
        self.stats.active.sub(1);
        let s = self.settings.load();
        c.last_used = now;
        let mut g = self.lock();
        self.unlend(&mut g, &mut c);
        let l = self.limits(&s);
        let over_size = g.total > l.pool_size + l.reserve_pool_size
            || (g.total > l.pool_size && !g.queue.any_open());
        if !clean
            // A cancel to it may still land (`CancelTarget::unsettled`): not for the next
            // client's statement.
            || c.cancel.unsettled()
            || c.id <= self.close_needed_upto.load(Ordering::Relaxed)
            || self.is_stale()
            || c.tx_status != b'I'
            || c.conn.buffered_input() > 0
            || c.conn.is_eof()
            || (!s.server_lifetime.is_zero() && now.duration_since(c.created) >= s.server_lifetime)
            || over_size
        {
            self.drop_slot(&mut g);
            drop(g);
            c.terminate();
            return;
        }
        let Some(c) = self.hand_to_waiter(&mut g, c, &s) else {
            return;
        };
        c.conn.watch();
        g.idle.push_back(c);
        drop(g);
        // Clients of another pool of this database or role may be waiting at its limit:
        // they can now close this idle connection and open theirs.
        if l.max_db_connections > 0 {
            self.db.freed.notify_waiters();
        }
        if l.max_user_connections > 0 {
            self.role.freed.notify_waiters();
        }
    }

    /// Close every idle connection of this pool now (lent ones are not touched).
    pub fn close_idle(&self) {
        let idle: Vec<Box<ServerConn>> = {
            let mut g = self.lock();
            // Idle connections are lent to no one.
            let v: Vec<_> = g.idle.drain(..).collect();
            for _ in &v {
                self.drop_slot(&mut g);
            }
            v
        };
        for c in idle {
            c.terminate();
        }
    }

    /// A lent connection of this pool was ended by its server (a shutdown or crash: FATAL
    /// 57P0x, or no word at all) or by the network: the idle ones may share its fate
    /// while their FATAL is still on its way (a loaded server ends its backends one by
    /// one), and lending one would fail one more client. Each is checked with
    /// server_check_query before it is lent (`suspect`); with no check query, they are
    /// closed. At most once a second: `pg_terminate_backend` of one backend says 57P01
    /// too, and a client that ends its own must cost the others no more than that.
    pub fn close_idle_after_loss(&self, now: Instant) {
        let checks = !self.settings.load().server_check_query.is_empty();
        let idle: Vec<Box<ServerConn>> = {
            let mut g = self.lock();
            if g.idle_suspected
                .is_some_and(|t| now.saturating_duration_since(t) < SUSPECT_IDLE_EVERY)
            {
                return;
            }
            g.idle_suspected = Some(now);
            if checks {
                for c in g.idle.iter_mut() {
                    c.suspect = true;
                }
                tracing::info!(pool = %self.name(), idle = g.idle.len(), "a server connection was lost: the pool's idle connections are checked before they are lent");
                return;
            }
            let v: Vec<_> = g.idle.drain(..).collect();
            for _ in &v {
                self.drop_slot(&mut g);
            }
            v
        };
        if !idle.is_empty() {
            tracing::info!(pool = %self.name(), closed = idle.len(), "a server connection was lost: closing the pool's idle connections (no server_check_query)");
        }
        for c in idle {
            c.terminate();
        }
    }

    /// Close a connection that is not coming back (broken, or the client quit mid-way).
    pub fn close(&self, mut c: Box<ServerConn>) {
        {
            let mut g = self.lock();
            self.unlend(&mut g, &mut c);
            self.drop_slot(&mut g);
        }
        c.terminate();
    }

    /// Close a connection that was lent out (counts it as no longer active).
    pub fn discard(&self, c: Box<ServerConn>) {
        self.stats.active.sub(1);
        self.close(c);
    }

    pub fn name(&self) -> String {
        format!(
            "{}@{}/{}",
            self.key.database, self.key.node.name, self.key.user
        )
    }
}

mod pools;
pub use pools::{Pools, Retired};

mod acquire;
pub mod batch;
mod limits;
mod open;
mod queue;
mod stats;

pub use limits::Counter;
pub use stats::{PoolStats, ServerInfo, ServerState};

#[cfg(test)]
mod tests;
