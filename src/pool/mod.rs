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
}

/// What a waiting client is handed.
// A connection is moved, not copied around: boxing it would add an allocation per hand-off.
#[allow(clippy::large_enum_variant)]
enum Handoff {
    /// A clean, idle connection.
    Conn(Box<ServerConn>),
    /// A slot that was counted for you: open a new connection in it.
    Slot,
}

struct Inner {
    /// Most recently used at the back: acquire takes from the back (warm caches), the
    /// janitor closes from the front (the longest idle).
    idle: VecDeque<Box<ServerConn>>,
    /// Connections that exist or are being opened, idle ones included.
    total: u32,
    /// Clients waiting for a connection, in queue order.
    waiters: VecDeque<Waiter>,
    /// When "pool exhausted" was last logged, and how many times the queue started
    /// since: a busy pool starts a queue thousands of times a second, the log says so
    /// once a minute.
    exhausted_logged: Option<Instant>,
    exhausted_since_log: u64,
    /// Since when the janitor has found the pool unused (see [`Pools::remove_unused`]).
    unused_since: Option<Instant>,
}

/// At most one "pool exhausted" message per pool in this time.
const EXHAUSTED_LOG_EVERY: Duration = Duration::from_secs(60);

/// A client in a pool's queue, and since when it has waited (SHOW POOLS' maxwait).
struct Waiter {
    tx: oneshot::Sender<Handoff>,
    since: Instant,
}

impl Waiter {
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    // The connection is handed back on failure, as oneshot::Sender::send does.
    #[allow(clippy::result_large_err)]
    fn send(self, h: Handoff) -> Result<(), Handoff> {
        self.tx.send(h)
    }
}

/// What a server connection is doing, as SHOW SERVERS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Lent to a client.
    Active,
    /// In the pool, ready.
    Idle,
    /// In the pool, idle longer than server_check_delay: server_check_query runs
    /// before it is lent again.
    Used,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Used => "used",
        }
    }
}

/// Counters the admin console and metrics read; plain atomics, no lock.
pub struct PoolStats {
    pub active: Striped,
    pub waiting: AtomicU32,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub assignments: Striped,
    // PgBouncer's SHOW STATS counters (times in microseconds).
    pub xact_count: Striped,
    pub query_count: Striped,
    /// Bytes from clients to servers.
    pub bytes_received: Striped,
    /// Bytes from servers to clients.
    pub bytes_sent: Striped,
    pub xact_time_us: Striped,
    pub query_time_us: Striped,
    pub wait_time_us: Striped,
    pub client_parse_count: Striped,
    pub server_parse_count: Striped,
    pub bind_count: Striped,
    /// Where this pool records its node's latencies (per-thread HdrHistograms keyed by
    /// node and kind, merged for SHOW LATENCY and /metrics).
    pub query_latency: Latency,
    pub xact_latency: Latency,
    pub wait_latency: Latency,
}

impl PoolStats {
    /// Zeroed counters of a pool of the node named `node` (registers the node's latency
    /// histograms: not for the statement path).
    pub fn new(node: &str) -> PoolStats {
        let id = latency::node_id(node);
        PoolStats {
            active: Striped::new(),
            waiting: AtomicU32::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            assignments: Striped::new(),
            xact_count: Striped::new(),
            query_count: Striped::new(),
            bytes_received: Striped::new(),
            bytes_sent: Striped::new(),
            xact_time_us: Striped::new(),
            query_time_us: Striped::new(),
            wait_time_us: Striped::new(),
            client_parse_count: Striped::new(),
            server_parse_count: Striped::new(),
            bind_count: Striped::new(),
            query_latency: Latency::new(id, LatencyKind::Query),
            xact_latency: Latency::new(id, LatencyKind::Transaction),
            wait_latency: Latency::new(id, LatencyKind::Wait),
        }
    }

    /// A query answered (ReadyForQuery) after `d`.
    pub fn add_query(&self, d: Duration) {
        self.query_latency.record(d);
        self.query_count.add(1);
        self.query_time_us.add(d.as_micros() as u64);
    }

    /// A client message forwarded to a server (bytes, Parse and Bind counts).
    pub fn client_message(&self, tag: u8, len: usize) {
        self.bytes_received.add(len as u64);
        match tag {
            b'P' => {
                self.client_parse_count.add(1);
            }
            b'B' => {
                self.bind_count.add(1);
            }
            _ => {}
        }
    }

    /// A transaction ended (ReadyForQuery idle) after `d`.
    pub fn add_xact(&self, d: Duration) {
        self.xact_latency.record(d);
        self.xact_count.add(1);
        self.xact_time_us.add(d.as_micros() as u64);
    }
}

/// A server connection as the admin console sees it (SHOW SERVERS).
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub id: u64,
    pub created: std::time::SystemTime,
    pub remote_pid: i32,
    pub local_addr: Option<std::net::SocketAddr>,
    pub tls: bool,
    /// Statements prepared on it (its PreparedCache's count, shared).
    pub prepared: Arc<AtomicU32>,
    /// When it last went back to the pool, if it is in the pool now (set by
    /// [`Pool::servers`]).
    pub last_used: Option<Instant>,
}

/// Removes a connection from its pool's registry when the connection is dropped.
struct ServerGuard {
    pool: Weak<Pool>,
    id: u64,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pool.upgrade() {
            p.servers.remove(&self.id);
        }
    }
}

/// Server connections of one database entry (max_db_connections) or one server role
/// (max_user_connections) on one node.
pub struct Counter {
    pub count: AtomicU32,
    /// Woken when a connection it counts closes (or goes idle).
    pub freed: Notify,
    /// Every pool it counts, so that a pool at the limit can close an idle connection of
    /// another one (PgBouncer's evict_connection).
    pools: Mutex<Vec<Weak<Pool>>>,
}

pub struct Pool {
    pub key: PoolKey,
    inner: Mutex<Inner>,
    db: Arc<Counter>,
    role: Arc<Counter>,
    settings: Arc<ArcSwap<Settings>>,
    credential: Mutex<Option<ServerCredential>>,
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

    /// This pool's limits under settings `s` (its entry's, its role's, the global ones).
    pub fn limits(&self, s: &Settings) -> crate::config::Limits {
        s.limits(&self.key.database, &self.key.user)
    }

    fn pool_size(&self, s: &Settings) -> u32 {
        self.limits(s).pool_size
    }

    /// Remember the credential to open connections with (e.g. SCRAM keys learnt from a
    /// client's login). A newer one replaces an older one.
    pub fn set_credential(&self, cred: Option<ServerCredential>) {
        if cred.is_some() {
            *self.credential.lock().unwrap_or_else(|p| p.into_inner()) = cred;
        }
    }

    /// The credential it opens connections with (the latest a client of this user
    /// brought).
    pub fn credential(&self) -> Option<ServerCredential> {
        self.credential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    fn connect_params(&self, s: &Settings) -> ConnectParams {
        ConnectParams {
            host: self.key.node.host.to_string(),
            port: self.key.node.port,
            user: self.key.user.to_string(),
            database: self.key.dbname.to_string(),
            credential: self
                .credential
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            tls_mode: s.server_tls,
            tls: self.tls.clone(),
            connect_timeout: s.server_connect_timeout,
            max_message: s.max_message_size as usize,
            startup: s
                .database_entry(&self.key.database)
                .map(|e| e.startup.clone())
                .unwrap_or_default(),
            keepalive: (!s.tcp_keepalive.is_zero()).then_some(s.tcp_keepalive),
        }
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

    /// Give a waiter the right to open a connection, if anyone waits.
    fn grant_slot(&self, g: &mut Inner) {
        while let Some(w) = g.waiters.pop_front() {
            if w.is_closed() {
                continue;
            }
            if !self.try_count() {
                g.waiters.push_front(w);
                return;
            }
            g.total += 1;
            if let Err(Handoff::Slot) = w.send(Handoff::Slot) {
                g.total -= 1;
                self.db.count.fetch_sub(1, Ordering::AcqRel);
                self.role.count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            return;
        }
    }

    /// Count one more connection of this database entry and this role, if both limits
    /// allow it.
    fn try_count(&self) -> bool {
        self.try_count_which().is_ok()
    }

    /// [`Pool::try_count`], saying which limit is full.
    fn try_count_which(&self) -> Result<(), Full> {
        let l = self.limits(&self.settings.load());
        if !Self::try_count_one(&self.db, l.max_db_connections) {
            return Err(Full::Database);
        }
        if !Self::try_count_one(&self.role, l.max_user_connections) {
            self.db.count.fetch_sub(1, Ordering::AcqRel);
            // Someone may have seen the database full while this count stood.
            self.db.freed.notify_waiters();
            return Err(Full::Role);
        }
        Ok(())
    }

    fn try_count_one(c: &Counter, max: u32) -> bool {
        if max == 0 {
            c.count.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        c.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// The fast path of [`Pool::acquire`], without waiting: an idle connection that needs
    /// no check. `None`: take the slow path (it also handles waiters, opening, checks).
    /// `started`: now (the caller reads the clock once and reuses it).
    pub fn try_acquire_idle(&self, started: Instant) -> Option<Box<ServerConn>> {
        let s = self.settings.load();
        let mut g = self.lock();
        if !g.waiters.is_empty() {
            return None;
        }
        let c = self.pop_usable_idle(&mut g, &s, started)?;
        if !s.server_check_query.is_empty()
            && started.saturating_duration_since(c.last_used) >= s.server_check_delay
        {
            g.idle.push_back(c);
            return None;
        }
        drop(g);
        // No wait: recorded as zero rather than paying a second clock read.
        Some(self.assigned_after(c, Duration::ZERO))
    }

    /// The most recently used idle connection that is neither expired nor closed by the
    /// server; the others met on the way are closed.
    fn pop_usable_idle(
        &self,
        g: &mut Inner,
        s: &Settings,
        now: Instant,
    ) -> Option<Box<ServerConn>> {
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
    pub async fn acquire(self: &Arc<Self>) -> Result<Box<ServerConn>, PoolError> {
        let s = self.settings();
        let started = Instant::now();
        let deadline = (!s.query_wait_timeout.is_zero()).then(|| started + s.query_wait_timeout);
        let mut allow_reserve = false;
        loop {
            #[allow(clippy::large_enum_variant)]
            enum Next {
                Got(Box<ServerConn>),
                Open,
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
                let got = self.pop_usable_idle(&mut g, &s, Instant::now());
                let limit = l.pool_size
                    + if allow_reserve {
                        l.reserve_pool_size
                    } else {
                        0
                    };
                let counted = match (got.is_some(), g.total < limit) {
                    (false, true) => Some(self.try_count_which()),
                    _ => None,
                };
                if let Some(c) = got {
                    Next::Got(c)
                } else if let Some(Ok(())) = counted {
                    g.total += 1;
                    Next::Open
                } else if matches!(counted, Some(Err(full)) if self.evict_idle_elsewhere(full)) {
                    // max_db_connections or max_user_connections was reached with idle
                    // connections in another pool of this database or role: one was
                    // closed, try again.
                    continue;
                } else {
                    let (tx, rx) = oneshot::channel();
                    if g.waiters.iter().all(|w| w.is_closed()) {
                        g.exhausted_since_log += 1;
                        if g.exhausted_logged.is_none_or(|t| {
                            started.saturating_duration_since(t) >= EXHAUSTED_LOG_EVERY
                        }) {
                            tracing::info!(pool = %self.name(), total = g.total, queues_since_last_message = g.exhausted_since_log, "pool exhausted: clients are waiting for a server connection");
                            g.exhausted_logged = Some(started);
                            g.exhausted_since_log = 0;
                        }
                    }
                    g.waiters.push_back(Waiter { tx, since: started });
                    Next::Wait(rx)
                }
            };
            match next {
                Next::Got(c) => match self.check(c).await {
                    Some(c) => return Ok(self.assigned(c, started)),
                    None => continue,
                },
                Next::Open => {
                    return Box::pin(self.open())
                        .await
                        .map(|c| self.assigned(c, started))
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
                            Some(c) => return Ok(self.assigned(c, started)),
                            None => continue,
                        },
                        Waited::Handoff(Handoff::Slot) => {
                            return Box::pin(self.open())
                                .await
                                .map(|c| self.assigned(c, started))
                        }
                        Waited::Reserve => allow_reserve = true,
                        Waited::Retry => {}
                        Waited::Timeout => {
                            self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                            return Err(PoolError::WaitTimeout);
                        }
                    }
                }
            }
        }
    }

    async fn wait(
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
                self.reclaim(rx);
                Waited::Reserve
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                self.reclaim(rx);
                Waited::Timeout
            }
            _ = &mut db_freed, if db_limited => {
                self.reclaim(rx);
                Waited::Retry
            }
            _ = &mut role_freed, if role_limited => {
                self.reclaim(rx);
                Waited::Retry
            }
        }
    }

    /// A waiter gives up: whatever was sent to it in the meantime is not lost.
    fn reclaim(&self, mut rx: oneshot::Receiver<Handoff>) {
        rx.close();
        match rx.try_recv() {
            Ok(Handoff::Conn(c)) => self.release(c, true),
            Ok(Handoff::Slot) => {
                let mut g = self.lock();
                self.drop_slot(&mut g);
            }
            Err(_) => {}
        }
    }

    /// Close one idle connection of another pool of the same database or role (the
    /// longest idle one first in each pool). Called with this pool's lock held: it only
    /// try-locks the others, so two pools evicting for each other cannot deadlock.
    /// Only pools of the limit that is `full` count: closing another role's idle
    /// connection frees nothing for a role at max_user_connections.
    fn evict_idle_elsewhere(&self, full: Full) -> bool {
        let counter = match full {
            Full::Database => &self.db,
            Full::Role => &self.role,
        };
        let pools: Vec<Arc<Pool>> = counter
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for p in pools {
            if std::ptr::eq(Arc::as_ptr(&p), self) {
                continue;
            }
            let Ok(mut g) = p.inner.try_lock() else {
                continue;
            };
            if let Some(c) = g.idle.pop_front() {
                p.drop_slot(&mut g);
                drop(g);
                tracing::debug!(pool = %p.name(), server = c.id, for_pool = %self.name(), "closing idle server connection: max_db_connections or max_user_connections reached");
                c.terminate();
                return true;
            }
        }
        false
    }

    fn assigned(&self, c: Box<ServerConn>, started: Instant) -> Box<ServerConn> {
        self.assigned_after(c, started.elapsed())
    }

    /// `waited`: how long the client waited (zero on the fast path, which does not wait).
    fn assigned_after(&self, c: Box<ServerConn>, waited: Duration) -> Box<ServerConn> {
        self.stats.active.add(1);
        self.stats.assignments.add(1);
        self.stats.wait_time_us.add(waited.as_micros() as u64);
        self.stats.wait_latency.record(waited);
        c
    }

    /// Open server connections: (info, state, close_needed) each.
    pub fn servers(&self) -> Vec<(ServerInfo, ServerState, bool)> {
        let s = self.settings.load();
        let checks = !s.server_check_query.is_empty();
        let idle: std::collections::HashMap<u64, (ServerState, Instant)> = self
            .lock()
            .idle
            .iter()
            .map(|c| {
                let used = checks && c.last_used.elapsed() >= s.server_check_delay;
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
        let g = self.lock();
        g.waiters
            .iter()
            .filter(|w| !w.is_closed())
            .map(|w| w.since.elapsed())
            .max()
            .unwrap_or_default()
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

    /// Open a connection outside the pool's count, for a job of pgtenant's own that
    /// holds it for long (the LISTEN connection of this database and user, the shard-map
    /// reader).
    /// `purpose` becomes its application_name ("pgtenant <purpose>"), so operators (and
    /// tests) can tell it from client traffic in pg_stat_activity.
    pub async fn open_dedicated(&self, purpose: &str) -> Result<ServerConn, BackendError> {
        let s = self.settings();
        let mut p = self.connect_params(&s);
        p.startup
            .push(("application_name".into(), format!("pgtenant {purpose}")));
        backend::connect(&p).await
    }

    /// Open a connection in a slot already counted.
    async fn open(&self) -> Result<Box<ServerConn>, PoolError> {
        let s = self.settings();
        let params = self.connect_params(&s);
        let connected = match backend::connect(&params).await {
            Ok(c) => self.connect_query(c, &s).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(mut c) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.servers.insert(
                    c.id,
                    ServerInfo {
                        id: c.id,
                        created: std::time::SystemTime::now(),
                        remote_pid: c.cancel.pid,
                        local_addr: c.conn.stream().local_addr(),
                        tls: c.conn.stream().is_tls(),
                        prepared: c.prepared.shared_count(),
                        last_used: None,
                    },
                );
                c.guard = Some(Box::new(ServerGuard {
                    pool: self.me.clone(),
                    id: c.id,
                }));
                let mut sp = self.server_params.lock().unwrap_or_else(|p| p.into_inner());
                if sp.is_none() {
                    *sp = Some(Arc::new(c.params.clone()));
                }
                tracing::debug!(pool = %self.name(), server = c.id, "server connection opened");
                Ok(Box::new(c))
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %self.name(), error = %e, "server connection failed");
                let mut g = self.lock();
                self.drop_slot(&mut g);
                Err(e.into())
            }
        }
    }

    /// Its database entry's connect_query, if any (run again after pgtenant resets a
    /// connection's settings, so that the entry's starting point survives).
    pub fn connect_query_sql(&self) -> Option<String> {
        self.settings
            .load()
            .database_entry(&self.key.database)
            .and_then(|e| e.connect_query.clone())
    }

    /// Run the connect_query again on a connection whose settings were just reset.
    /// False: the connection broke (close it).
    pub async fn rerun_connect_query(&self, c: &mut ServerConn) -> bool {
        let Some(q) = self.connect_query_sql() else {
            return true;
        };
        match c.run_internal(&q).await {
            Ok(()) => true,
            Err(BackendError::Server(_)) => c.tx_status == b'I',
            Err(_) => false,
        }
    }

    /// The entry's connect_query, once on a new connection before anyone uses it (what
    /// it sets is the connection's starting point; see README "Databases" for what a
    /// client's RESET does to it). An error of the query is logged and ignored, as in
    /// PgBouncer; a broken connection is closed.
    async fn connect_query(
        &self,
        mut c: ServerConn,
        s: &Settings,
    ) -> Result<ServerConn, BackendError> {
        let Some(q) = s
            .database_entry(&self.key.database)
            .and_then(|e| e.connect_query.as_deref())
        else {
            return Ok(c);
        };
        match c.run_internal(q).await {
            Ok(()) => Ok(c),
            // As PgBouncer: an error of the query itself is logged and otherwise ignored
            // (the connection answered, is idle, and is used).
            Err(BackendError::Server(e)) if c.tx_status == b'I' => {
                tracing::warn!(pool = %self.name(), code = %e.code, error = %e.message, "connect_query failed; the connection is used anyway");
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(pool = %self.name(), error = %e, "connect_query failed; closing the new server connection");
                c.terminate();
                Err(e)
            }
        }
    }

    /// Run server_check_query on a connection that sat idle longer than
    /// server_check_delay. None: it failed and was closed.
    async fn check(&self, c: Box<ServerConn>) -> Option<Box<ServerConn>> {
        let s = self.settings.load();
        if s.server_check_query.is_empty() || c.last_used.elapsed() < s.server_check_delay {
            return Some(c);
        }
        let q = s.server_check_query.clone();
        drop(s);
        Box::pin(self.run_check(c, q)).await
    }

    async fn run_check(&self, mut c: Box<ServerConn>, q: String) -> Option<Box<ServerConn>> {
        match c.run_internal(&q).await {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::info!(pool = %self.name(), server = c.id, error = %e, "server check failed; closing");
                self.close(c);
                None
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
        let l = self.limits(&s);
        let over_size = g.total > l.pool_size + l.reserve_pool_size
            || (g.total > l.pool_size && g.waiters.iter().all(|w| w.is_closed()));
        if !clean
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
        while let Some(w) = g.waiters.pop_front() {
            match w.send(Handoff::Conn(c)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => c = back,
                Err(Handoff::Slot) => return, // never sent here
            }
        }
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

    /// Close a connection that is not coming back (broken, or the client quit mid-way).
    pub fn close(&self, c: Box<ServerConn>) {
        {
            let mut g = self.lock();
            self.drop_slot(&mut g);
        }
        c.terminate();
    }

    /// Close a connection that was lent out (counts it as no longer active).
    pub fn discard(&self, c: Box<ServerConn>) {
        self.stats.active.sub(1);
        self.close(c);
    }

    /// After a reload: let waiters use slots a larger pool_size opened up.
    pub fn regrant(&self) {
        let s = self.settings.load();
        let mut g = self.lock();
        while g.total < self.pool_size(&s) && g.waiters.iter().any(|w| !w.is_closed()) {
            let before = g.total;
            self.grant_slot(&mut g);
            if g.total == before {
                break;
            }
        }
    }

    pub fn name(&self) -> String {
        format!(
            "{}@{}/{}",
            self.key.database, self.key.node.name, self.key.user
        )
    }
}

/// Which limit stopped a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Database,
    Role,
}

#[allow(clippy::large_enum_variant)]
enum Waited {
    Handoff(Handoff),
    Reserve,
    Retry,
    Timeout,
}

mod pools;
pub use pools::{Pools, Retired};

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Arc<Pools> {
        let s = crate::config::load(
            None,
            &crate::config::Overrides {
                upstream: Some("postgres://app:secret@127.0.0.1:1/app".into()),
                ..Default::default()
            },
        )
        .unwrap();
        Pools::new(Arc::new(ArcSwap::from_pointee(s)), None)
    }

    fn key(db: &str) -> PoolKey {
        PoolKey {
            node: Node {
                name: "coordinator".into(),
                host: "127.0.0.1".into(),
                port: 1,
            },
            database: db.into(),
            dbname: db.into(),
            user: "app".into(),
            forced: false,
        }
    }

    #[test]
    fn unused_pools_are_removed() {
        let pools = pools();
        let idle = Duration::from_secs(60);
        let t0 = Instant::now();

        // Never connected (a database the server refused): removed at the first pass
        // that finds it unused, with its database counter.
        drop(pools.get(&key("nope")));
        assert_eq!((pools.len(), pools.dbs.len()), (1, 1));
        assert_eq!(pools.remove_unused(idle, t0), 1);
        assert_eq!((pools.len(), pools.dbs.len()), (0, 0));

        // Held by someone (a client session): kept, however long.
        let held = pools.get(&key("held"));
        assert_eq!(pools.remove_unused(idle, t0 + idle * 10), 0);
        assert_eq!(pools.len(), 1);
        drop(held);

        // Connected once: kept until it has been unused for `idle`.
        let used = pools.get(&key("used"));
        used.stats.connects.store(1, Ordering::Relaxed);
        let other = pools.get(&key("used2"));
        other.stats.connects.store(1, Ordering::Relaxed);
        drop(used);
        assert_eq!(
            pools.remove_unused(idle, t0),
            1,
            "'held' goes (never connected)"
        );
        assert_eq!(pools.remove_unused(idle, t0 + idle / 2), 0);
        // 'used2' is held meanwhile: its clock starts only once it is let go.
        assert_eq!(pools.remove_unused(idle, t0 + idle), 1, "'used' goes");
        let again = pools.get(&key("used2"));
        assert!(Arc::ptr_eq(&again, &other));
        drop((other, again));
        assert_eq!(pools.remove_unused(idle, t0 + idle * 2), 0);
        assert_eq!(pools.remove_unused(idle, t0 + idle * 3), 1);
        assert!(pools.is_empty() && pools.dbs.is_empty());

        // pool_idle_timeout = 0: pools are kept.
        drop(pools.get(&key("kept")));
        assert_eq!(pools.remove_unused(Duration::ZERO, t0), 0);
        assert_eq!(pools.len(), 1);

        // A fresh pool after removal, sharing nothing with the old one; the node's
        // counters keep what the removed pools counted.
        let a = pools.get(&key("again"));
        a.stats.connects.store(5, Ordering::Relaxed);
        a.stats.query_count.add(7);
        drop(a);
        assert_eq!(pools.remove_unused(idle, t0), 1, "'kept' goes");
        assert_eq!(pools.remove_unused(idle, t0 + idle), 1);
        assert_eq!(
            pools
                .get(&key("again"))
                .stats
                .connects
                .load(Ordering::Relaxed),
            0
        );
        let retired = pools.retired();
        assert_eq!(retired.len(), 1, "one entry per node");
        assert_eq!(&*retired[0].0, "coordinator");
        assert_eq!(
            (retired[0].1.connects, retired[0].1.queries),
            (1 + 1 + 5, 7)
        );
    }
}
