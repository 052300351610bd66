//! auth_query: the secret of a user pgtenant does not know, read from the server, as
//! PgBouncer does with `auth_user`, `auth_query` and `auth_dbname`.
//!
//! Rules:
//! - It serves only users that neither the TOML file nor the auth_file names (those win,
//!   as in PgBouncer), and only when auth_user is set: the caller decides that.
//! - The query runs as auth_user on a connection of pgtenant's own (application_name
//!   `pgtenant auth_query`), with the user name as its one parameter `$1`, sent with the
//!   extended protocol: a name is never read as SQL.
//! - The first row's second column is the secret (`SCRAM-SHA-256$…`, `md5…`, or a plain
//!   password). No row, NULL or an empty secret: the role may not log in (no such role,
//!   NOLOGIN, VALID UNTIL passed, no password), and is refused like a wrong password.
//! - A secret found serves that login only, never a later one: SCRAM shows the client
//!   the salt before the client proves anything, so a secret remembered from before an
//!   `ALTER ROLE … PASSWORD` could only refuse the new password. Every login of such a
//!   user asks the server (one indexed read on a kept connection); logins of one name
//!   at the same moment share one query.
//! - A refusal is remembered for `auth_query_cache_ttl` per name (and per server,
//!   database, auth_user and query), a failure for at most [`FAILURE_TTL`]: a client
//!   retrying a name in a loop costs the server one query per period. At most
//!   [`MAX_REMEMBERED`] names are remembered, the oldest forgotten first. A remembered
//!   refusal is answered after the time a query typically takes, so the delay does not
//!   tell it from a queried one (whose answer would tell whether the role exists).
//! - At most [`LOOKUP_CONNECTIONS`] queries run at once; as many connections are kept
//!   for the next lookups (beyond that the oldest is closed), and one idle for longer
//!   than the caller's idle timeout is closed rather than reused.
//! - A lookup, its wait for a connection included, ends within the caller's timeout. It
//!   runs in a task of its own, so a client that leaves never leaves a connection
//!   half-read. A failure (no connection, auth_user refused, the query failed or did not
//!   return two columns, the timeout) refuses the login like a wrong password, and is
//!   logged as a warning naming the reason, at most once per [`WARN_EVERY`] (with the
//!   number of failures not logged since).
//! - Nothing here logs a secret; user names are logged escaped.

use crate::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::auth::Secret;
use crate::backend::{self, BackendError, ConnectParams, ServerConn};
use crate::logging::Escaped;
use crate::protocol::ErrorFields;

/// Lookups running at once, and lookup connections kept.
pub const LOOKUP_CONNECTIONS: usize = 2;
/// Refused names remembered at most.
pub const MAX_REMEMBERED: usize = 10_000;
/// How long a failed lookup (not a refusal) is remembered at most.
pub const FAILURE_TTL: Duration = Duration::from_secs(1);
/// At most one warning per this period.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// The delay of a remembered refusal never exceeds this.
const MAX_MIMIC: Duration = Duration::from_secs(1);

/// One lookup: whom to ask, and how long to wait and remember.
#[derive(Clone)]
pub struct Lookup {
    /// auth_user's login to the database the query runs in.
    pub params: ConnectParams,
    /// The query; `$1` is the user name.
    pub sql: String,
    /// How long a refusal is remembered (0: not at all).
    pub cache_ttl: Duration,
    /// For the whole lookup, the wait for a connection included.
    pub timeout: Duration,
    /// A kept connection idle for longer is closed rather than reused; 0 = never.
    pub idle_timeout: Duration,
}

impl Lookup {
    /// Where the query runs, as whom, and which query: answers are remembered per scope.
    fn scope(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.connection_scope().hash(&mut h);
        self.sql.hash(&mut h);
        h.finish()
    }

    /// Which kept connections this lookup may use.
    fn connection_scope(&self) -> u64 {
        let p = &self.params;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&p.host, p.port, &p.database, &p.user, p.tls_mode as u8).hash(&mut h);
        h.finish()
    }
}

/// Lookups of secrets with auth_query: in-flight queries, remembered refusals, kept
/// connections. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct AuthQuery(Arc<Inner>);

struct Inner {
    state: Mutex<State>,
    /// Hashes the names (random keys).
    names: std::collections::hash_map::RandomState,
    slots: Semaphore,
    idle: Mutex<VecDeque<Idle>>,
    /// Mean duration of a query (exponentially weighted), in microseconds; 0 = none yet.
    typical_us: AtomicU64,
    /// When the last warning was logged.
    warned: Mutex<Option<Instant>>,
    /// Failures since then that were not logged.
    unlogged: AtomicU64,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            state: Mutex::default(),
            names: Default::default(),
            slots: Semaphore::new(LOOKUP_CONNECTIONS),
            idle: Mutex::default(),
            typical_us: AtomicU64::new(0),
            warned: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }
}

/// A lookup connection waiting for the next lookup.
struct Idle {
    scope: u64,
    database: String,
    conn: ServerConn,
    since: Instant,
}

/// A name in a scope, hashed with this process's random keys: a fixed size whatever the
/// name's length (startup packets allow 10 kB), and no collision an outsider could
/// compute to get another user's name remembered as refused.
type Key = u64;

/// What a lookup tells its waiters.
#[derive(Clone)]
enum Answer {
    Waiting,
    Found(Secret),
    Refused,
}

#[derive(Default)]
struct State {
    /// Names refused (or whose lookup failed) lately, and until when.
    remembered: HashMap<Key, Instant>,
    /// The same, in the order remembered; a name remembered again is listed again and
    /// its older record skipped.
    order: VecDeque<(Key, Instant)>,
    /// Lookups running, by name: a login of the same name waits for that answer.
    inflight: HashMap<Key, watch::Receiver<Answer>>,
}

impl State {
    /// Remember `key` until `until`; forget expired names and, beyond `cap`, the oldest.
    fn remember(&mut self, key: Key, until: Instant, now: Instant, cap: usize) {
        self.remembered.insert(key, until);
        self.order.push_back((key, until));
        loop {
            let over = self.remembered.len() > cap || self.order.len() > 2 * cap;
            match self.order.front() {
                Some((_, u)) if over || *u <= now => {}
                _ => break,
            }
            let Some((k, u)) = self.order.pop_front() else {
                break;
            };
            if self.remembered.get(&k) == Some(&u) {
                self.remembered.remove(&k);
            }
        }
    }

    /// Is `key` remembered as refused at `now`? Forgets it if it has expired.
    fn is_refused(&mut self, key: &Key, now: Instant) -> bool {
        match self.remembered.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.remembered.remove(key);
                false
            }
            None => false,
        }
    }
}

/// Why a lookup gave no answer (for the log; never shown to the client).
enum Failure {
    /// Every login that waited for it has gone (its client closed the connection) before
    /// it had a lookup slot: it is not run. Not logged, not remembered.
    Abandoned,
    Connect(BackendError),
    Broken(BackendError),
    Query(ErrorFields),
    Columns(usize),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Abandoned => write!(f, "every login waiting for it has gone"),
            Failure::Connect(e) => write!(f, "cannot log in to the server as auth_user: {e}"),
            Failure::Broken(e) => write!(f, "the lookup connection failed: {e}"),
            Failure::Query(e) if e.code == "42501" => write!(
                f,
                "auth_query failed: {} {} (auth_user may not read what auth_query reads: \
                 pg_authid is readable by superusers only; use a superuser, or a \
                 SECURITY DEFINER function in auth_query)",
                e.code, e.message
            ),
            Failure::Query(e) => write!(f, "auth_query failed: {} {}", e.code, e.message),
            Failure::Columns(n) => write!(
                f,
                "auth_query returned {n} column(s); it must return the user name and the password"
            ),
            Failure::Timeout(d) => write!(
                f,
                "no answer within {:.1} s (waiting for a lookup connection, logging in as \
                 auth_user, or running auth_query)",
                d.as_secs_f64()
            ),
        }
    }
}

impl AuthQuery {
    /// The secret of `user`, or None: no such role, it may not log in, or the lookup
    /// failed (logged). Never waits longer than `l.timeout` (plus, for a remembered
    /// refusal, the typical duration of a query).
    pub async fn lookup(&self, user: &str, l: Lookup) -> Option<Secret> {
        let key: Key = self.0.names.hash_one((l.scope(), user));
        let timeout = l.timeout;
        let rx = {
            let mut st = lock(&self.0.state);
            let now = Instant::now();
            if st.is_refused(&key, now) {
                None
            } else if let Some(rx) = st.inflight.get(&key) {
                Some(rx.clone())
            } else {
                let (tx, rx) = watch::channel(Answer::Waiting);
                st.inflight.insert(key, rx.clone());
                let flight = Flight {
                    inner: self.0.clone(),
                    key,
                    rx: rx.clone(),
                };
                tokio::spawn(run(flight, user.to_owned(), l, tx));
                Some(rx)
            }
        };
        let Some(mut rx) = rx else {
            // Remembered as refused: answered after the time a query takes.
            tokio::time::sleep(self.0.typical()).await;
            return None;
        };
        let answer =
            tokio::time::timeout(timeout, rx.wait_for(|a| !matches!(a, Answer::Waiting))).await;
        match answer {
            Ok(Ok(a)) => match &*a {
                Answer::Found(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Close the kept connections to `database` (before a `DROP DATABASE`, which they
    /// would make fail).
    pub fn close_database(&self, database: &str) {
        let mut idle = lock(&self.0.idle);
        let (gone, keep): (VecDeque<Idle>, VecDeque<Idle>) =
            idle.drain(..).partition(|i| i.database == database);
        *idle = keep;
        drop(idle);
        for i in gone {
            i.conn.terminate();
        }
    }

    /// Close every kept connection.
    pub fn close_all(&self) {
        let gone: Vec<Idle> = lock(&self.0.idle).drain(..).collect();
        for i in gone {
            i.conn.terminate();
        }
    }
}

/// A running lookup's place in `inflight`, taken out when it ends (even by a panic).
struct Flight {
    inner: Arc<Inner>,
    key: Key,
    rx: watch::Receiver<Answer>,
}

impl Flight {
    /// Take this lookup out of `inflight`, remembering a refusal until `until`, in one
    /// step: a login arriving now either sees the refusal or starts a new lookup.
    fn finish(&self, until: Option<Instant>) {
        let mut st = lock(&self.inner.state);
        if st
            .inflight
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            st.inflight.remove(&self.key);
        }
        if let Some(until) = until {
            st.remember(self.key, until, Instant::now(), MAX_REMEMBERED);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// One lookup, in a task of its own; its answer goes to every login waiting for it.
async fn run(flight: Flight, user: String, l: Lookup, tx: watch::Sender<Answer>) {
    let inner = flight.inner.clone();
    let deadline = tokio::time::Instant::now() + l.timeout;
    let answer =
        match tokio::time::timeout_at(deadline, fetch(&inner, &user, &l, deadline, &tx)).await {
            Ok(Ok(Some(secret))) => Ok(secret),
            Ok(Ok(None)) => Err(None),
            Ok(Err(why)) => Err(Some(why)),
            Err(_) => Err(Some(Failure::Timeout(l.timeout))),
        };
    let now = Instant::now();
    let answer = match answer {
        Ok(secret) => {
            flight.finish(None);
            Answer::Found(secret)
        }
        Err(None) => {
            flight.finish((!l.cache_ttl.is_zero()).then(|| now + l.cache_ttl));
            Answer::Refused
        }
        Err(Some(Failure::Abandoned)) => {
            flight.finish(None);
            Answer::Refused
        }
        Err(Some(why)) => {
            inner.warn(&user, &l, &why);
            let ttl = l.cache_ttl.min(FAILURE_TTL);
            flight.finish((!ttl.is_zero()).then(|| now + ttl));
            Answer::Refused
        }
    };
    let _ = tx.send(answer);
}

/// Take a lookup slot and a connection, run the query.
async fn fetch(
    inner: &Inner,
    user: &str,
    l: &Lookup,
    deadline: tokio::time::Instant,
    tx: &watch::Sender<Answer>,
) -> Result<Option<Secret>, Failure> {
    // The semaphore is never closed.
    let _slot = inner.slots.acquire().await.ok();
    if tokio::time::Instant::now() >= deadline {
        // Out of time while waiting for the slot: no connection for nothing.
        return Err(Failure::Timeout(l.timeout));
    }
    // Receivers: the `inflight` entry's and the `Flight`'s, then one per waiting login
    // (a login drops its own when its client closes the connection). A peer that sends
    // startup packets with ever new names and closes at once queues lookups nobody waits
    // for: they give their slot up at once, and the logins behind them are not delayed.
    if tx.receiver_count() <= 2 {
        return Err(Failure::Abandoned);
    }
    let scope = l.connection_scope();
    let (mut conn, reused) = match inner.take_idle(scope, l.idle_timeout) {
        Some(c) => (c, true),
        None => (connect(l).await?, false),
    };
    let started = Instant::now();
    let mut rows = conn.query_params_within(&l.sql, &[user], MAX_ANSWER).await;
    if reused
        && matches!(&rows, Err(e) if !matches!(e, BackendError::Server(_) | BackendError::TooLarge(_)))
    {
        // The server closed the kept connection (a restart, a terminate): once more on
        // a new one.
        conn = connect(l).await?;
        rows = conn.query_params_within(&l.sql, &[user], MAX_ANSWER).await;
    }
    match rows {
        Ok(rows) => {
            inner.note_duration(started.elapsed());
            inner.keep(scope, &l.params.database, conn);
            secret_of(rows)
        }
        Err(BackendError::Server(e)) => {
            if conn.tx_status == b'I' {
                inner.keep(scope, &l.params.database, conn);
            }
            Err(Failure::Query(e))
        }
        Err(e) => Err(Failure::Broken(e)),
    }
}

/// The most an auth_query answer may hold (one user's row is a few hundred bytes): more
/// fails the lookup, and pgtenant does not keep it.
const MAX_ANSWER: usize = 1024 * 1024;

async fn connect(l: &Lookup) -> Result<ServerConn, Failure> {
    backend::connect(&l.params).await.map_err(Failure::Connect)
}

/// The secret in the first row's second column; None when there is no row, or no
/// (non-empty) secret in it.
fn secret_of(rows: Vec<Vec<Option<String>>>) -> Result<Option<Secret>, Failure> {
    match rows.into_iter().next() {
        None => Ok(None),
        Some(row) if row.len() < 2 => Err(Failure::Columns(row.len())),
        Some(mut row) => Ok(row
            .swap_remove(1)
            .filter(|s| !s.is_empty())
            .map(|s| Secret::parse(&s))),
    }
}

impl Inner {
    /// A kept connection for `scope`, if one is alive and was not idle too long.
    fn take_idle(&self, scope: u64, idle_timeout: Duration) -> Option<ServerConn> {
        let mut idle = lock(&self.idle);
        while let Some(pos) = idle.iter().position(|i| i.scope == scope) {
            let Some(mut i) = idle.remove(pos) else {
                break;
            };
            let too_old = !idle_timeout.is_zero() && i.since.elapsed() > idle_timeout;
            if too_old || i.conn.conn.is_stale() {
                i.conn.terminate();
                continue;
            }
            return Some(i.conn);
        }
        None
    }

    /// Keep a connection for the next lookup; beyond LOOKUP_CONNECTIONS the oldest goes.
    fn keep(&self, scope: u64, database: &str, conn: ServerConn) {
        let mut idle = lock(&self.idle);
        idle.push_back(Idle {
            scope,
            database: database.to_owned(),
            conn,
            since: Instant::now(),
        });
        while idle.len() > LOOKUP_CONNECTIONS {
            if let Some(old) = idle.pop_front() {
                old.conn.terminate();
            }
        }
    }

    fn note_duration(&self, d: Duration) {
        let x = d.as_micros().min(u64::MAX as u128) as u64;
        let old = self.typical_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            x.max(1)
        } else {
            old - old / 8 + x / 8
        };
        self.typical_us.store(new.max(1), Ordering::Relaxed);
    }

    /// How long a query typically takes (a remembered refusal waits as long).
    fn typical(&self) -> Duration {
        Duration::from_micros(self.typical_us.load(Ordering::Relaxed)).min(MAX_MIMIC)
    }

    /// Log a failure, at most once per WARN_EVERY.
    fn warn(&self, user: &str, l: &Lookup, why: &Failure) {
        let now = Instant::now();
        let mut last = lock(&self.warned);
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(user = %Escaped(user), error = %why, "auth_query lookup failed");
            return;
        }
        *last = Some(now);
        drop(last);
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            user = %Escaped(user),
            auth_user = %Escaped(&l.params.user),
            database = %Escaped(&l.params.database),
            error = %why,
            failures_not_logged = unlogged,
            "auth_query lookup failed; the login is refused as for a wrong password"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> Key {
        n as Key
    }

    #[test]
    fn remembered_names_expire_and_are_bounded() {
        let mut st = State::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        for n in 0..10 {
            st.remember(key(n), later, now, 4);
        }
        assert_eq!(st.remembered.len(), 4);
        assert!(st.order.len() <= 8);
        // The newest are kept, the oldest forgotten.
        assert!(st.is_refused(&key(9), now));
        assert!(!st.is_refused(&key(0), now));
        // Expired: forgotten when asked, and swept when another name is remembered.
        assert!(!st.is_refused(&key(9), later));
        st.remember(key(20), later + Duration::from_secs(5), later, 4);
        assert_eq!(st.remembered.len(), 1, "expired names swept");
        assert!(st.is_refused(&key(20), later));
    }

    #[test]
    fn remembering_a_name_again_keeps_its_newest_expiry() {
        let mut st = State::default();
        let now = Instant::now();
        st.remember(key(1), now + Duration::from_secs(1), now, 10);
        let t2 = now + Duration::from_secs(2);
        st.remember(key(1), t2 + Duration::from_secs(5), t2, 10);
        // The first record reached its end; the second still holds.
        assert!(st.is_refused(&key(1), t2));
        assert_eq!(st.remembered.len(), 1);
    }

    #[test]
    fn the_secret_is_the_second_column_of_the_first_row() {
        let row = |pw: Option<&str>| vec![Some("alice".to_string()), pw.map(str::to_string)];
        assert!(matches!(secret_of(vec![]), Ok(None)));
        assert!(matches!(secret_of(vec![row(None)]), Ok(None)));
        assert!(matches!(secret_of(vec![row(Some(""))]), Ok(None)));
        assert!(matches!(
            secret_of(vec![row(Some("md5ab7ae2e7a10f2bcc2bb2a0fd7c9cb5e0"))]),
            Ok(Some(Secret::Md5(_)))
        ));
        assert!(matches!(
            secret_of(vec![row(Some("pw")), row(None)]),
            Ok(Some(Secret::Plain(_)))
        ));
        assert!(matches!(
            secret_of(vec![vec![Some("alice".into())]]),
            Err(Failure::Columns(1))
        ));
    }

    #[test]
    fn failures_name_their_cause() {
        let denied = Failure::Query(ErrorFields {
            severity: "ERROR".into(),
            code: "42501".into(),
            message: "permission denied for table pg_authid".into(),
            ..Default::default()
        });
        let text = denied.to_string();
        assert!(
            text.contains("permission denied for table pg_authid"),
            "{text}"
        );
        assert!(text.contains("superuser"), "{text}");
        let t = Failure::Timeout(Duration::from_millis(1500)).to_string();
        assert!(t.contains("1.5 s"), "{t}");
    }

    #[test]
    fn typical_duration_follows_queries_and_is_capped() {
        let inner = Inner::default();
        assert_eq!(inner.typical(), Duration::ZERO);
        inner.note_duration(Duration::from_millis(8));
        assert_eq!(inner.typical(), Duration::from_millis(8));
        for _ in 0..100 {
            inner.note_duration(Duration::from_millis(1));
        }
        assert!(inner.typical() < Duration::from_millis(2));
        inner.note_duration(Duration::from_secs(3600));
        assert!(inner.typical() <= MAX_MIMIC);
    }
}
