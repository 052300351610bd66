//! Failure handling against real PostgreSQL: server connections that die (killed backend,
//! restarted server), bad input from clients (garbage, absurd lengths, oversized
//! messages), slow clients, and clients that vanish mid-transaction.
//!
//! The rule under test (DESIGN.md, decision 7): bad input costs one connection, never the
//! process, and a broken server connection is never handed to the next client.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{startup_v3, PgServer, Pgtenant, TempDir};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// pgtenant in front of `pg` with a TOML config: trust auth on the listener (so raw
/// sockets can log in as `trustuser`), `pool_size`, plus `extra` TOML lines.
fn start_pgtenant(pg: &PgServer, pool_size: u32, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("failures-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"trust\"\npool_size = {pool_size}\n{extra}\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

fn app_url(p: &Pgtenant) -> String {
    p.url("app", "secret", "app")
}

/// Assert the pgtenant process is still running.
fn assert_alive(p: &mut Pgtenant) {
    if let Some(status) = p.wait_exit(Duration::ZERO) {
        panic!("pgtenant exited ({status})\n--- logs ---\n{}", p.logs());
    }
}

/// Background clients that keep running queries through pgtenant (each on its own
/// connection, plus a fresh connection every few rounds) and record every error.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (url, stop, ok) = (url.to_string(), stop.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let client = support::connect(&url).await;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        value(&client, &format!("SELECT {i} + {round}")),
                    )
                    .await;
                    match r {
                        Ok(Ok(v)) if v == (i as u64 + round).to_string() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => errors.push(format!("client {i} round {round}: {other:?}")),
                    }
                    if round.is_multiple_of(10) {
                        let r = tokio::time::timeout(Duration::from_secs(10), async {
                            let c = support::try_connect(&url).await?;
                            c.simple_query("SELECT 1").await
                        })
                        .await;
                        match r {
                            Ok(Ok(_)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => errors.push(format!("client {i} new conn: {other:?}")),
                        }
                    }
                }
                errors
            }));
        }
        let load = Load { stop, ok, tasks };
        load.wait_for_more(20).await;
        load
    }

    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Wait until `n` more queries have succeeded (proves the load is running now).
    async fn wait_for_more(&self, n: u64) {
        let target = self.done() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done() < target {
            assert!(
                Instant::now() < deadline,
                "background load made no progress ({} done)",
                self.done()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop and return every error seen.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("load task panicked"));
        }
        errors
    }
}

/// A raw PostgreSQL protocol client, for what tokio-postgres will not send.
mod raw {
    use super::*;

    pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        msg(b'Q', &body)
    }

    /// One message, `None` at end of stream (or a reset).
    pub async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.ok()?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        assert!(
            (4..=64 * 1024 * 1024).contains(&len),
            "bad length {len} from pgtenant"
        );
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    }

    /// A field of an ErrorResponse body ('C' code, 'S' severity, 'M' message).
    pub fn field(body: &[u8], code: u8) -> Option<String> {
        let mut rest = body;
        while let Some((&t, tail)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if t == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// Read messages until ReadyForQuery (included). Panics on EOF or timeout.
    pub async fn until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), read_msg(s))
                .await
                .expect("timed out waiting for ReadyForQuery")
                .unwrap_or_else(|| panic!("connection closed before ReadyForQuery: {out:?}"));
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Log in (trust) and wait for the first ReadyForQuery.
    pub async fn login(port: u16, user: &str, db: &str) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&startup_v3(user, db)).await.unwrap();
        let msgs = until_ready(&mut s).await;
        assert_eq!(msgs[0].0, b'R', "expected AuthenticationOk: {msgs:?}");
        assert_eq!(msgs[0].1, 0i32.to_be_bytes(), "expected AuthenticationOk");
        s
    }

    /// Read every message until pgtenant closes the connection; panics if it stays open
    /// longer than `timeout`.
    pub async fn until_closed(s: &mut TcpStream, timeout: Duration) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, read_msg(s)).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return out,
                Err(_) => panic!("connection still open after {timeout:?}; got {out:?}"),
            }
        }
    }

    /// Read raw bytes until the peer closes (EOF or reset); panics after `timeout`.
    pub async fn bytes_until_closed(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "connection still open after {timeout:?}; got {} bytes",
                    out.len()
                ),
            }
        }
    }

    /// The ErrorResponses among `msgs`, as (severity, code).
    pub fn errors(msgs: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
        msgs.iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| {
                (
                    field(b, b'S').unwrap_or_default(),
                    field(b, b'C').unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The first column of the first DataRow among `msgs`, as text.
    pub fn first_value(msgs: &[(u8, Vec<u8>)]) -> String {
        let (_, b) = msgs
            .iter()
            .find(|(t, _)| *t == b'D')
            .unwrap_or_else(|| panic!("no DataRow in {msgs:?}"));
        let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
        String::from_utf8_lossy(&b[6..6 + len]).into_owned()
    }
}

/// Terminate every backend of user `app` in database `app` (as superuser, directly on
/// PostgreSQL) and wait until they are gone.
async fn kill_app_backends(pg: &PgServer) -> i64 {
    let admin = pg.admin_client().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = 'app' AND datname = 'app' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .len() as i64;
    let left = pg
        .wait_for_backends("app", "app", 0, Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "backends survived pg_terminate_backend");
    killed
}

/// First column of the first row, as text, over the simple protocol. (tokio-postgres'
/// `query*` prepares a named statement in one round trip and runs it in the next; this
/// file tests failures, not prepared statements across transaction-pooled servers.)
async fn value(c: &tokio_postgres::Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    panic!("{sql}: no row");
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    value(c, "SELECT pg_backend_pid()")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Server connections that die
// ---------------------------------------------------------------------------------------

/// A backend terminated while its client is inside a transaction: that client gets one
/// FATAL, 08006 with the server's text, and is disconnected (never the server's 57P01
/// followed by pgtenant's own 08006); the next client gets a fresh server connection
/// (pool_size 1, so the dead connection's slot must have been freed). Every way a server
/// can die, in every mode: tests/it/server_lost.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_inside_a_transaction() {
    let pg = PgServer::start();
    let (mut p, _cfg) = start_pgtenant(&pg, 1, "");
    let admin = pg.admin_client().await;

    // Raw client: see exactly what pgtenant sends.
    let mut s = raw::login(p.port(), "app", "app").await;
    s.write_all(&raw::query("BEGIN; SELECT pg_backend_pid()"))
        .await
        .unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(
        msgs.last().unwrap().1,
        b"T",
        "expected to be in a transaction"
    );
    let dead_pid: i32 = raw::first_value(&msgs).parse().unwrap();

    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&dead_pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let msgs = raw::until_closed(&mut s, Duration::from_secs(10)).await;
    let errors = raw::errors(&msgs);
    assert_eq!(
        errors,
        vec![("FATAL".to_string(), "08006".to_string())],
        "expected one FATAL 08006 from pgtenant, got {msgs:?}"
    );
    assert_eq!(
        raw::field(&msgs.last().unwrap().1, b'M').as_deref(),
        Some("terminating connection due to administrator command"),
        "{msgs:?}"
    );

    // A new client works and is served by a new backend.
    let c = support::connect(&app_url(&p)).await;
    let pid = backend_pid(&c).await;
    assert_ne!(pid, dead_pid, "a dead server connection was handed out");
    drop(c);

    // Same with tokio-postgres: the client in the transaction gets an error, never a
    // silent success, and a new client works.
    let a = support::connect(&app_url(&p)).await;
    a.batch_execute("BEGIN").await.unwrap();
    let pid = backend_pid(&a).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), a.simple_query("SELECT 1"))
        .await
        .expect("client hung after its backend was killed");
    let e = r.expect_err("a query on a killed transaction must fail");
    // The FATAL may reach tokio-postgres before its query (then the query fails as
    // "connection closed", no code); if it answers the query, it is pgtenant's one FATAL.
    if let Some(code) = e.code() {
        assert_eq!(code.code(), "08006", "unexpected error {e:?}");
    }
    let b = support::connect(&app_url(&p)).await;
    assert_eq!(value(&b, "SELECT 41 + 1").await.unwrap(), "42");
    assert_ne!(backend_pid(&b).await, pid);
    assert!(p.logs().contains("server connection lost"), "{}", p.logs());
    assert_alive(&mut p);
}

/// Every server connection killed while idle in the pool: pgtenant notices before it
/// hands one out, so existing and new clients see no error at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_killed_while_idle_in_the_pool() {
    let pg = PgServer::start();
    let (mut p, _cfg) = start_pgtenant(&pg, 2, "");
    let url = app_url(&p);
    let c1 = support::connect(&url).await;
    let c2 = support::connect(&url).await;
    // Two server connections in the pool: both clients inside a transaction at once.
    c1.batch_execute("BEGIN").await.unwrap();
    c2.batch_execute("BEGIN").await.unwrap();
    let pids = [backend_pid(&c1).await, backend_pid(&c2).await];
    assert_ne!(pids[0], pids[1]);
    c1.batch_execute("COMMIT").await.unwrap();
    c2.batch_execute("COMMIT").await.unwrap();

    for round in 0..3 {
        let killed = kill_app_backends(&pg).await;
        assert!(killed >= 1, "round {round}: nothing to kill");
        // Existing clients: the very next statement works.
        for c in [&c1, &c2] {
            let pid =
                tokio::time::timeout(Duration::from_secs(10), value(c, "SELECT pg_backend_pid()"))
                    .await
                    .expect("query hung")
                    .unwrap_or_else(|e| {
                        panic!(
                    "round {round}: query after idle backends were killed failed: {e:?}\n{}",
                    p.logs()
                )
                    });
            let pid: i32 = pid.parse().unwrap();
            assert!(!pids.contains(&pid));
        }
        // A new client too.
        let c3 = support::connect(&url).await;
        c3.simple_query("SELECT 1").await.unwrap();
    }
    assert_alive(&mut p);
}

/// PostgreSQL restarted between queries: clients keep their pgtenant connections and
/// their next queries work; while it is down a query fails with an error but the client
/// stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_between_queries() {
    let mut pg = PgServer::start();
    let (mut p, _cfg) = start_pgtenant(&pg, 3, "server_connect_timeout = 5");
    let url = app_url(&p);
    let a = support::connect(&url).await;
    let b = support::connect(&url).await;
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();

    pg.stop();
    pg.start_again();
    for c in [&a, &b] {
        let row = tokio::time::timeout(Duration::from_secs(20), value(c, "SELECT 6 * 7"))
            .await
            .expect("query hung after restart")
            .unwrap_or_else(|e| panic!("query after restart failed: {e:?}\n{}", p.logs()));
        assert_eq!(row, "42");
    }
    let c = support::connect(&url).await;
    c.simple_query("SELECT 1").await.unwrap();

    // While the server is down: an error for the query, the client stays connected.
    pg.stop();
    let r = tokio::time::timeout(Duration::from_secs(20), a.simple_query("SELECT 1"))
        .await
        .expect("query hung while the server was down");
    let e = r.expect_err("a query with the server down must fail");
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("08006"),
        "unexpected error {e:?}"
    );
    assert!(
        !a.is_closed(),
        "client was disconnected by a failed connect"
    );
    pg.start_again();
    assert_eq!(value(&a, "SELECT 1 + 1").await.unwrap(), "2");
    assert_alive(&mut p);
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Garbage at startup: each bad connection is closed, and meanwhile other clients run
/// queries without a single error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_input_costs_only_its_connection() {
    let pg = PgServer::start();
    let (mut p, _cfg) = start_pgtenant(&pg, 4, "");
    let load = Load::start(&app_url(&p), 3).await;
    let port = p.port();

    let mut truncated = startup_v3("app", "app");
    truncated.truncate(12);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // (what, bytes, then close our write side)
        ("random bytes", garbage(0x9e3779b97f4a7c15, 4096), true),
        (
            "random bytes, high first byte",
            {
                let mut g = garbage(42, 65536);
                g[0] = 0xde;
                g
            },
            false,
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            false,
        ),
        (
            "absurd length",
            {
                let mut v = 0x7fff_ffffi32.to_be_bytes().to_vec();
                v.extend_from_slice(&196608i32.to_be_bytes());
                v
            },
            false,
        ),
        ("negative length", (-8i32).to_be_bytes().to_vec(), false),
        ("length below 4", vec![0, 0, 0, 2, 0, 0, 0, 0], false),
        ("length 4 (empty body)", vec![0, 0, 0, 4], false),
        ("truncated startup packet then close", truncated, true),
        (
            "unsupported protocol version",
            {
                let mut v = 8i32.to_be_bytes().to_vec();
                v.extend_from_slice(&0x0002_0000i32.to_be_bytes());
                v
            },
            false,
        ),
        (
            "startup without user",
            {
                let body = [&196608i32.to_be_bytes()[..], b"database\0app\0\0"].concat();
                [&((body.len() + 4) as i32).to_be_bytes()[..], &body].concat()
            },
            false,
        ),
    ];
    for (what, bytes, close_write) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // pgtenant may close while we are still writing: a failed write is fine.
        let _ = s.write_all(&bytes).await;
        if close_write {
            let _ = s.shutdown().await;
        }
        let got = raw::bytes_until_closed(&mut s, Duration::from_secs(10)).await;
        // Whatever pgtenant says before closing is at most an ErrorResponse.
        assert!(
            got.is_empty() || got[0] == b'E',
            "{what}: unexpected answer {got:?}"
        );
        load.wait_for_more(5).await;
        assert_alive(&mut p);
    }

    let errors = load.stop().await;
    assert!(errors.is_empty(), "other clients saw errors: {errors:#?}");
    // And the pooler still takes new clients.
    let c = support::connect(&app_url(&p)).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_alive(&mut p);
}

/// Bad messages after login (length < 4, negative, larger than max_message_size, unknown
/// type): the client gets FATAL and is closed; everyone else is unaffected; with
/// pool_size 1 for the bad clients' pool, slots are never leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login_cost_only_their_connection() {
    let pg = PgServer::start();
    // pool_size 1: a leaked or poisoned server connection would block the next client.
    let (mut p, _cfg) = start_pgtenant(&pg, 1, "max_message_size = 1048576");
    let load = Load::start(&app_url(&p), 3).await;
    let port = p.port();

    let big_header = {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&(2 * 1024 * 1024i32).to_be_bytes());
        m.extend_from_slice(&[b'x'; 100]);
        m
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length 2", vec![b'Q', 0, 0, 0, 2], "08P01"),
        ("length 0", vec![b'Q', 0, 0, 0, 0], "08P01"),
        ("negative length", vec![b'Q', 0x80, 0, 0, 0], "08P01"),
        ("2 MiB Query over a 1 MiB limit", big_header, "08P01"),
        (
            "2 MiB Sync over a 1 MiB limit",
            {
                let mut m = vec![b'S'];
                m.extend_from_slice(&(2 * 1024 * 1024i32).to_be_bytes());
                m
            },
            "08P01",
        ),
    ];
    for (what, bytes, code) in cases {
        let mut s = raw::login(port, "trustuser", "app").await;
        s.write_all(&bytes).await.unwrap();
        let msgs = raw::until_closed(&mut s, Duration::from_secs(10)).await;
        let errors = raw::errors(&msgs);
        assert!(
            errors.iter().any(|(sev, c)| sev == "FATAL" && c == code),
            "{what}: expected FATAL {code}, got {errors:?}"
        );
        load.wait_for_more(5).await;
        assert_alive(&mut p);
    }

    // A message type PostgreSQL does not know: forwarded, the server refuses it and
    // closes; the client is told and disconnected, the pool recovers.
    let mut s = raw::login(port, "trustuser", "app").await;
    s.write_all(&raw::msg(b'z', b"hello")).await.unwrap();
    let msgs = raw::until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        raw::errors(&msgs).iter().any(|(sev, _)| sev == "FATAL"),
        "unknown message type: {msgs:?}"
    );

    // A well-formed query still works on a new connection of the same pool (size 1).
    let mut s = raw::login(port, "trustuser", "app").await;
    s.write_all(&raw::query("SELECT current_user"))
        .await
        .unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(raw::first_value(&msgs), "trustuser");

    // tokio-postgres: just under the limit works, over it costs that connection only.
    let c = support::connect(&p.url("trustuser", "", "app")).await;
    let half = "x".repeat(512 * 1024);
    let len = value(&c, &format!("SELECT length('{half}')"))
        .await
        .unwrap();
    assert_eq!(len, (512 * 1024).to_string());
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.simple_query(&format!("SELECT length('{huge}')")),
    )
    .await
    .expect("oversized query hung");
    let e = r.expect_err("a query over max_message_size must fail");
    if let Some(code) = e.code() {
        assert_eq!(code.code(), "08P01", "{e:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.is_closed() {
        assert!(
            Instant::now() < deadline,
            "oversized client not disconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let errors = load.stop().await;
    assert!(errors.is_empty(), "other clients saw errors: {errors:#?}");
    let c = support::connect(&p.url("trustuser", "", "app")).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_alive(&mut p);
    assert!(
        !p.logs().contains("panicked"),
        "pgtenant panicked:\n{}",
        p.logs()
    );
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

/// Clients that connect and say nothing, and one that sends its startup packet a byte
/// every 100 ms, hold up nobody; the slow one still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_block_others() {
    let pg = PgServer::start();
    let (mut p, _cfg) = start_pgtenant(&pg, 4, "");
    let port = p.port();

    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let drip = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for b in startup_v3("trustuser", "app") {
            s.write_all(&[b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let msgs = raw::until_ready(&mut s).await;
        s.write_all(&raw::query("SELECT 'slow but fine'"))
            .await
            .unwrap();
        let msgs2 = raw::until_ready(&mut s).await;
        (msgs, raw::first_value(&msgs2))
    });

    // While those sit there: fresh clients connect and query quickly, again and again.
    let url = app_url(&p);
    let mut rounds = 0;
    while !drip.is_finished() {
        let t = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(5), support::connect(&url))
            .await
            .expect("connect blocked by slow clients");
        let row = tokio::time::timeout(Duration::from_secs(5), value(&c, "SELECT 1"))
            .await
            .expect("query blocked by slow clients")
            .unwrap();
        assert_eq!(row, "1");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "connect + query took {:?}",
            t.elapsed()
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (login, value) = drip.await.unwrap();
    assert_eq!(login[0].0, b'R');
    assert_eq!(value, "slow but fine");
    assert!(
        rounds >= 10,
        "only {rounds} rounds while the slow client dripped"
    );

    // The silent ones are still open (not pgtenant's business to kill them this soon)
    // and cost nothing: close them.
    drop(silent);
    let c = support::connect(&url).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_alive(&mut p);
}

// ---------------------------------------------------------------------------------------
// Clients that vanish mid-transaction
// ---------------------------------------------------------------------------------------

/// A client that leaves inside a transaction (tokio-postgres dropped, or the socket
/// simply closed): its insert is rolled back and the only server connection (pool_size
/// 1) is not handed to the next client in a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_transaction_rolls_back() {
    let pg = PgServer::start();
    let direct = pg.client("app", "secret", "app").await;
    direct
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let (mut p, _cfg) = start_pgtenant(&pg, 1, "");
    let url = app_url(&p);

    // 1. tokio-postgres client dropped after BEGIN + INSERT.
    let a = support::connect(&url).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(a);

    let b = support::connect(&url).await;
    let row = tokio::time::timeout(Duration::from_secs(10), value(&b, "SELECT count(*) FROM t"))
        .await
        .expect("next client blocked: server connection not returned")
        .unwrap();
    assert_eq!(row, "0", "the dropped client's insert is visible");
    // b is not inside someone else's transaction.
    let fresh = value(&b, "SELECT now() = statement_timestamp()")
        .await
        .unwrap();
    assert_eq!(fresh, "t", "next client ran inside an old transaction");

    // 2. A raw socket closed without Terminate.
    let mut s = raw::login(p.port(), "app", "app").await;
    s.write_all(&raw::query("BEGIN; INSERT INTO t VALUES (2)"))
        .await
        .unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(msgs.last().unwrap().1, b"T");
    drop(s);

    let row = tokio::time::timeout(Duration::from_secs(10), value(&b, "SELECT count(*) FROM t"))
        .await
        .expect("next query blocked: server connection not returned")
        .unwrap();
    assert_eq!(row, "0");
    b.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();

    // Directly on PostgreSQL: only the committed row, and no session left in a
    // transaction.
    let rows = direct
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![3]);
    let n = pg
        .wait_none_idle_in_transaction("app", Duration::from_secs(10))
        .await;
    assert_eq!(n, 0, "{n} sessions left idle in transaction");
    assert_alive(&mut p);
}
