//! Session state in transaction (and statement) mode, against a real PostgreSQL: named
//! protocol-level prepared statements re-prepared on whichever server connection serves
//! the client (process-wide registry, per-server LRU bounded by max_prepared_statements),
//! Describe/Close on the client's view, SQL-level PREPARE/EXECUTE/DEALLOCATE, DISCARD ALL,
//! startup parameters and SET/RESET replayed per server, statement mode, cancel, and
//! pgbench `-M prepared`.
//!
//! Server-side truth (which backend ran what, what it has prepared) is read either through
//! pgtenant inside the same transaction (same backend) or directly on PostgreSQL.

use crate::support;

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::wire::{bes, bind, close, describe, execute, parse, put_cstr, query, sync, tags, Msg};
use support::{connect, pg_bin, PgServer, Pgtenant, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------
// Setup helpers
// ---------------------------------------------------------------------------------------

/// pgtenant in `mode` in front of `pg` (upstream app/secret/app) with extra CLI args.
fn start_mode(pg: &PgServer, mode: &str, pool_size: u32, extra: &[&str]) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    let size = pool_size.to_string();
    let mut args = vec![
        "run",
        "--upstream",
        &upstream,
        "--pool-mode",
        mode,
        "--pool-size",
        &size,
    ];
    args.extend_from_slice(extra);
    Pgtenant::start(&args, &[])
}

/// pgtenant in transaction mode.
fn start(pg: &PgServer, pool_size: u32) -> Pgtenant {
    start_mode(pg, "transaction", pool_size, &[])
}

/// pgtenant in transaction mode with client auth `trust` (for the raw-protocol tests).
fn start_trust(pg: &PgServer, pool_size: u32) -> Pgtenant {
    start_mode(pg, "transaction", pool_size, &["--auth-type", "trust"])
}

/// pgtenant in transaction mode with a TOML file for settings without a flag.
fn start_toml(pg: &PgServer, toml: &str, pool_size: u32) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("session-state-conf");
    let path = dir.config_file(toml);
    let path = path.to_str().expect("utf-8 path").to_string();
    let p = start_mode(pg, "transaction", pool_size, &["--config", &path]);
    (p, dir)
}

fn app_url(pt: &Pgtenant) -> String {
    pt.url("app", "secret", "app")
}

/// Connect through pgtenant with a tokio-postgres config adjusted by `f`.
async fn connect_with(pt: &Pgtenant, f: impl FnOnce(&mut Config)) -> Client {
    let mut cfg: Config = app_url(pt).parse().expect("url");
    f(&mut cfg);
    let (client, conn) = cfg.connect(NoTls).await.expect("connect through pgtenant");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Server connections of pgtenant's pools (user app, database app), read directly on
/// PostgreSQL. The shard-map refresher's own connection (it asks for the Citus catalog)
/// is not a pool connection and is not counted.
async fn pool_backends(pg: &PgServer) -> i64 {
    let admin = pg.admin_client().await;
    admin
        .query_one(
            "select count(*) from pg_stat_activity \
             where usename = 'app' and datname = 'app' and backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %' \
             and query not like '%pg_dist_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Poll [`pool_backends`] until it is `expected` (10 s); the last count.
async fn wait_pool_backends(pg: &PgServer, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = pool_backends(pg).await;
        if n == expected || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The first column of the first row of a simple query, as text.
async fn value(c: &Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("<NULL>").to_string();
        }
    }
    panic!("{sql}: no row");
}

/// The SQLSTATE of a tokio-postgres error (empty when it is not a server error).
fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------
// Raw protocol (async), for messages tokio-postgres does not send on their own
// ---------------------------------------------------------------------------------------

struct Raw {
    s: TcpStream,
}

impl Raw {
    /// Connect and log in (pgtenant with auth trust) as `user` on `db`.
    async fn login(port: u16, user: &str, db: &str) -> Raw {
        Raw::login_with(port, &[("user", user), ("database", db)])
            .await
            .0
    }

    /// Log in with these startup parameters; also returns the greeting's messages.
    async fn login_with(port: u16, params: &[(&str, &str)]) -> (Raw, Vec<Msg>) {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to pgtenant");
        s.set_nodelay(true).unwrap();
        let mut r = Raw { s };
        let mut b = Vec::new();
        b.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in params {
            put_cstr(&mut b, k);
            put_cstr(&mut b, v);
        }
        b.push(0);
        let mut pkt = ((b.len() + 4) as i32).to_be_bytes().to_vec();
        pkt.extend(b);
        r.send(&pkt).await;
        let greeting = r.until_ready().await;
        assert!(
            !greeting.iter().any(|m| m.tag == b'E'),
            "login failed: {greeting:?}"
        );
        (r, greeting)
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write to pgtenant");
    }

    async fn msg(&mut self) -> Msg {
        let read = async {
            let mut head = [0u8; 5];
            self.s.read_exact(&mut head).await?;
            let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
            assert!((4..1 << 24).contains(&len), "bad message length {len}");
            let mut body = vec![0u8; len as usize - 4];
            self.s.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Msg { tag: head[0], body })
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("no message from pgtenant within 30 s")
            .expect("read from pgtenant")
    }

    /// Messages up to and including the next ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.msg().await;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        self.until_ready().await
    }

    /// The single value a one-row simple query returns.
    async fn value(&mut self, sql: &str) -> String {
        let msgs = self.simple(sql).await;
        assert_eq!(tags(&msgs), "TDCZ", "{sql}: {msgs:?}");
        msgs[1].value()
    }

    /// The CommandComplete tag of a simple query that must succeed with no rows.
    async fn command(&mut self, sql: &str) -> String {
        let mut msgs = self.simple(sql).await;
        msgs.retain(|m| m.tag != b'S'); // ParameterStatus after SET
        assert_eq!(tags(&msgs), "CZ", "{sql}: {msgs:?}");
        msgs[0].cstr()
    }

    /// The SQLSTATE of a simple query that must fail.
    async fn error(&mut self, sql: &str) -> String {
        let msgs = self.simple(sql).await;
        assert_eq!(tags(&msgs), "EZ", "{sql} must fail: {msgs:?}");
        msgs[0].sqlstate()
    }
}

// ---------------------------------------------------------------------------------------
// Named protocol-level statements
// ---------------------------------------------------------------------------------------

/// 20 tokio-postgres clients on a pool of 3, each with statements named s0, s1, ... (the
/// same names, different texts in different clients), used across many transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_twenty_clients_pool_of_three() {
    let pg = PgServer::start();
    let pt = start(&pg, 3);
    let url = app_url(&pt);

    // Prepared once before the churn, used after it.
    let early = connect(&url).await;
    let early_stmt = early
        .prepare("select $1::int + $2::int + 1000000")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut c = connect(&url).await;
            let common = c.prepare("select $1::int + $2::int").await.unwrap();
            let own = c
                .prepare(&format!("select $1::int * {}, $2::text", i + 2))
                .await
                .unwrap();
            for n in 0..30i32 {
                let a = i * 1000 + n;
                let r: Result<(), tokio_postgres::Error> = async {
                    match n % 3 {
                        0 => {
                            let row = c.query_one("select $1::int + $2::int", &[&a, &n]).await?;
                            assert_eq!(row.get::<_, i32>(0), a + n, "client {i} unnamed text");
                        }
                        1 => {
                            let tx = c.transaction().await?;
                            let row = tx.query_one(&common, &[&a, &n]).await?;
                            assert_eq!(row.get::<_, i32>(0), a + n, "client {i} common in tx");
                            let row = tx.query_one(&own, &[&a, &format!("t{n}")]).await?;
                            assert_eq!(row.get::<_, i32>(0), a * (i + 2), "client {i} own in tx");
                            assert_eq!(row.get::<_, String>(1), format!("t{n}"));
                            tx.commit().await?;
                        }
                        _ => {
                            let row = c.query_one(&common, &[&a, &n]).await?;
                            assert_eq!(row.get::<_, i32>(0), a + n, "client {i} common");
                            let row = c.query_one(&own, &[&n, &"x"]).await?;
                            assert_eq!(row.get::<_, i32>(0), n * (i + 2), "client {i} own");
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    errors.push(format!("client {i} iteration {n}: {e:?}"));
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.expect("client task panicked"));
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:#?}\n--- pgtenant ---\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        pt.logs()
    );

    // The early statement after the churn, on several backends (it was parsed on one, so
    // the others needed pgtenant to prepare it): two other clients hold two of the three
    // server connections in turn, in alternating order.
    let mut h1 = connect(&url).await;
    let mut h2 = connect(&url).await;
    let mut early = early;
    let mut pids = HashSet::new();
    for round in 0..6i32 {
        let early_first = round % 2 == 1;
        let (t1, t2, et);
        if early_first {
            et = early.transaction().await.unwrap();
            let row = et.query_one(&early_stmt, &[&round, &1i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round + 1 + 1_000_000);
            t1 = h1.transaction().await.unwrap();
            t1.simple_query("select 1").await.unwrap();
            t2 = h2.transaction().await.unwrap();
            t2.simple_query("select 1").await.unwrap();
        } else {
            t1 = h1.transaction().await.unwrap();
            t1.simple_query("select 1").await.unwrap();
            t2 = h2.transaction().await.unwrap();
            t2.simple_query("select 1").await.unwrap();
            et = early.transaction().await.unwrap();
            let row = et.query_one(&early_stmt, &[&round, &1i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round + 1 + 1_000_000);
        }
        let pid: i32 = et
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.insert(pid);
        et.commit().await.unwrap();
        t1.commit().await.unwrap();
        t2.commit().await.unwrap();
    }
    assert!(
        pids.len() >= 2,
        "the early statement ran on only {pids:?}: the test did not move it between backends"
    );
    assert!(pool_backends(&pg).await <= 3);
}

/// Rows of a simple query as text columns.
fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("<NULL>").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// What the backend serving this transaction has prepared: (count, backend pid).
async fn prepared_here(tx: &tokio_postgres::Transaction<'_>) -> (i64, i32) {
    let r = rows(
        tx.simple_query("select count(*), pg_backend_pid() from pg_prepared_statements")
            .await
            .unwrap(),
    );
    (r[0][0].parse().unwrap(), r[0][1].parse().unwrap())
}

/// max_prepared_statements = 2: one client cycles through 5 statements on a pool of one;
/// every answer is right and the server never holds more than 2 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_bounded_by_max_prepared_statements() {
    let pg = PgServer::start();
    let (pt, _dir) = start_toml(&pg, "max_prepared_statements = 2\n", 1);
    let mut c = connect(&app_url(&pt)).await;
    let other = connect(&app_url(&pt)).await;

    let mut stmts = Vec::new();
    for k in 0..5i32 {
        stmts.push(
            c.prepare(&format!("select $1::int + {k}, 'stmt{k}'"))
                .await
                .unwrap(),
        );
    }
    let other_stmt = other.prepare("select $1::int * 3").await.unwrap();

    let mut pids = HashSet::new();
    let mut counts = Vec::new();
    for round in 0..8i32 {
        for (k, s) in stmts.iter().enumerate() {
            let k = k as i32;
            let n = round * 100 + k;
            if (round + k) % 2 == 0 {
                // In a transaction: the count runs on the same backend, right after.
                let tx = c.transaction().await.unwrap();
                let row = tx.query_one(s, &[&n]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), n + k);
                assert_eq!(row.get::<_, String>(1), format!("stmt{k}"));
                let (count, pid) = prepared_here(&tx).await;
                counts.push(count);
                pids.insert(pid);
                tx.commit().await.unwrap();
            } else {
                let row = c.query_one(s, &[&n]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), n + k);
                assert_eq!(row.get::<_, String>(1), format!("stmt{k}"));
            }
            let row = other.query_one(&other_stmt, &[&n]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), n * 3);
        }
    }
    assert_eq!(pids.len(), 1, "pool of one: one backend, saw {pids:?}");
    assert!(
        counts.iter().all(|&n| (1..=2).contains(&n)),
        "statements prepared on the backend: {counts:?}"
    );
    assert!(counts.contains(&2), "the cache never filled: {counts:?}");
}

/// Describe of a statement on a server that lacks it: pgtenant prepares it there first
/// and the client gets the real ParameterDescription and RowDescription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_on_a_server_that_lacks_the_statement() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 2);
    let mut r = Raw::login(pt.port(), "app", "app").await;
    let sql = "select $1::int4 + 1 as a, $2::text as b, now() as c";

    let mut batch = parse("d1", sql, &[]);
    batch.extend(sync());
    r.send(&batch).await;
    assert_eq!(tags(&r.until_ready().await), "1Z");
    let pid_a = r.value("select pg_backend_pid()").await;

    // Another client takes that server (the only idle one) and keeps it.
    let mut holder = connect(&app_url(&pt)).await;
    let tx = holder.transaction().await.unwrap();
    let held = value_tx(&tx, "select pg_backend_pid()").await;
    assert_eq!(
        held, pid_a,
        "the holder must get the idle server connection"
    );

    // Describe now runs on a new server connection.
    let mut batch = describe(b'S', "d1");
    batch.extend(sync());
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "tTZ", "{msgs:?}");
    assert_eq!(msgs[0].param_oids(), vec![23, 25]);
    assert_eq!(
        msgs[1].fields(),
        vec![
            ("a".to_string(), 23),
            ("b".to_string(), 25),
            ("c".to_string(), 1184)
        ]
    );
    let pid_b = r.value("select pg_backend_pid()").await;
    assert_ne!(
        pid_a, pid_b,
        "the Describe must have run on the other server"
    );
    tx.commit().await.unwrap();

    // Describe + Bind + Execute in one batch on whichever server, and the statement's
    // answers.
    let mut batch = describe(b'S', "d1");
    batch.extend(bes("d1", &["41", "x"]));
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "tT2DCZ", "{msgs:?}");
    assert_eq!(msgs[3].value(), "42");

    // tokio-postgres: prepare (Parse + Describe) gives the real types, and again on a
    // server that only has the statement from another client.
    let c = connect(&app_url(&pt)).await;
    let s = c.prepare(sql).await.unwrap();
    assert_eq!(s.params(), &[Type::INT4, Type::TEXT]);
    let cols: Vec<(String, Type)> = s
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("a".to_string(), Type::INT4),
            ("b".to_string(), Type::TEXT),
            ("c".to_string(), Type::TIMESTAMPTZ)
        ]
    );
    let row = c.query_one(&s, &[&1i32, &"y"]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(row.get::<_, String>(1), "y");
    let s2 = c
        .prepare_typed("select $1 + 1", &[Type::INT8])
        .await
        .unwrap();
    assert_eq!(s2.params(), &[Type::INT8]);
    assert_eq!(s2.columns()[0].type_(), &Type::INT8);
}

async fn value_tx(tx: &tokio_postgres::Transaction<'_>, sql: &str) -> String {
    rows(tx.simple_query(sql).await.unwrap())[0][0].clone()
}

/// Close of a named statement, then a new Parse under the same name; a Bind to a closed
/// statement fails as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_parse_the_same_name_again() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 2);
    let mut r = Raw::login(pt.port(), "app", "app").await;

    let mut batch = parse("x", "select 1", &[]);
    batch.extend(bes("x", &[]));
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
    assert_eq!(msgs[2].value(), "1");

    let mut batch = close(b'S', "x");
    batch.extend(sync());
    r.send(&batch).await;
    assert_eq!(tags(&r.until_ready().await), "3Z");

    // Gone for the client.
    r.send(&bes("x", &[])).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "26000");

    // A new statement under the same name, in the same batch as its Close.
    let mut batch = parse("x", "select 2", &[]);
    batch.extend(bes("x", &[]));
    batch.extend(close(b'S', "x"));
    batch.extend(parse("x", "select $1::int * 3", &[]));
    batch.extend(bes("x", &["7"]));
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
    assert_eq!(msgs[2].value(), "2");
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "312DCZ", "{msgs:?}");
    assert_eq!(msgs[3].value(), "21");

    // Closing a statement that does not exist is not an error (as in PostgreSQL).
    let mut batch = close(b'S', "nope");
    batch.extend(sync());
    r.send(&batch).await;
    assert_eq!(tags(&r.until_ready().await), "3Z");

    // tokio-postgres closes a statement when it is dropped; the next prepare of the same
    // text (new name) and other statements keep working, many times over.
    let c = connect(&app_url(&pt)).await;
    let keep = c.prepare("select $1::int - 1").await.unwrap();
    for i in 0..50i32 {
        let s = c.prepare("select $1::int + 100").await.unwrap();
        assert_eq!(
            c.query_one(&s, &[&i]).await.unwrap().get::<_, i32>(0),
            i + 100
        );
        drop(s);
        assert_eq!(
            c.query_one(&keep, &[&i]).await.unwrap().get::<_, i32>(0),
            i - 1
        );
    }
    // The raw client's statement is untouched by all that.
    r.send(&bes("x", &["5"])).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].value(), "15");
}

/// Parse of a name the client already uses fails with 42P05, as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_of_an_existing_name_is_refused() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut r = Raw::login(pt.port(), "app", "app").await;
    let mut batch = parse("dup", "select 1", &[]);
    batch.extend(sync());
    r.send(&batch).await;
    assert_eq!(tags(&r.until_ready().await), "1Z");
    let mut batch = parse("dup", "select 2", &[]);
    batch.extend(bes("dup", &[]));
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "42P05");
    // The first definition stands.
    r.send(&bes("dup", &[])).await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].value(), "1");
}

// ---------------------------------------------------------------------------------------
// DEALLOCATE / DISCARD ALL / SQL-level PREPARE
// ---------------------------------------------------------------------------------------

/// DEALLOCATE name, DEALLOCATE ALL and DISCARD ALL answer with their command tags and act
/// on the client's own statements only; other clients' statements keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_act_on_the_client_only() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    let c = connect(&app_url(&pt)).await;
    let c_stmt = c.prepare("select $1::int + 1000").await.unwrap();
    let c_check = |n: i32| {
        let c = &c;
        let c_stmt = &c_stmt;
        async move {
            let row = c.query_one(c_stmt, &[&n]).await.unwrap_or_else(|e| {
                panic!("other client's protocol statement after step {n}: {e:?}")
            });
            assert_eq!(row.get::<_, i32>(0), n + 1000);
        }
    };

    assert_eq!(
        a.command("PREPARE q(int) AS select $1 * 2").await,
        "PREPARE"
    );
    assert_eq!(
        b.command("PREPARE q(int) AS select $1 * 3").await,
        "PREPARE"
    );
    assert_eq!(a.value("EXECUTE q(21)").await, "42");
    assert_eq!(b.value("EXECUTE q(21)").await, "63");
    c_check(1).await;

    // DEALLOCATE name.
    assert_eq!(a.command("DEALLOCATE q").await, "DEALLOCATE");
    assert_eq!(a.error("EXECUTE q(21)").await, "26000");
    assert_eq!(b.value("EXECUTE q(21)").await, "63");
    assert_eq!(a.error("EXECUTE q(21)").await, "26000");
    c_check(2).await;
    // Deallocating what the client does not have fails, as in PostgreSQL.
    assert_eq!(a.error("DEALLOCATE q").await, "26000");

    // DEALLOCATE ALL: SQL-level and protocol-level statements of this client.
    assert_eq!(
        a.command("PREPARE q(int) AS select $1 * 2").await,
        "PREPARE"
    );
    assert_eq!(a.command("PREPARE r AS select 'r'").await, "PREPARE");
    let mut batch = parse("p", "select 'p'", &[]);
    batch.extend(sync());
    a.send(&batch).await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    assert_eq!(a.value("EXECUTE r").await, "r");
    assert_eq!(a.command("DEALLOCATE ALL").await, "DEALLOCATE ALL");
    assert_eq!(a.error("EXECUTE q(21)").await, "26000");
    assert_eq!(a.error("EXECUTE r").await, "26000");
    a.send(&bes("p", &[])).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "26000");
    assert_eq!(b.value("EXECUTE q(21)").await, "63");
    c_check(3).await;

    // DISCARD ALL: statements and settings back to the startup state.
    assert_eq!(
        a.command("PREPARE q(int) AS select $1 * 2").await,
        "PREPARE"
    );
    assert_eq!(a.command("SET application_name = 'changed'").await, "SET");
    assert_eq!(a.value("show application_name").await, "changed");
    assert_eq!(a.command("DISCARD ALL").await, "DISCARD ALL");
    assert_eq!(a.error("EXECUTE q(21)").await, "26000");
    assert_eq!(a.value("show application_name").await, "");
    assert_eq!(b.value("EXECUTE q(21)").await, "63");
    c_check(4).await;
    // DISCARD ALL inside a transaction block is refused, as in PostgreSQL.
    assert_eq!(a.command("BEGIN").await, "BEGIN");
    assert_eq!(a.error("DISCARD ALL").await, "25001");
    assert_eq!(a.command("ROLLBACK").await, "ROLLBACK");

    // Inside a transaction: DEALLOCATE acts at once (it is not transactional in
    // PostgreSQL either) and still only on this client's statements.
    assert_eq!(
        a.command("PREPARE q(int) AS select $1 * 2").await,
        "PREPARE"
    );
    assert_eq!(a.command("BEGIN").await, "BEGIN");
    assert_eq!(a.command("DEALLOCATE q").await, "DEALLOCATE");
    assert_eq!(a.command("DEALLOCATE ALL").await, "DEALLOCATE ALL");
    assert_eq!(a.command("COMMIT").await, "COMMIT");
    assert_eq!(a.error("EXECUTE q(21)").await, "26000");
    assert_eq!(b.value("EXECUTE q(21)").await, "63");
    c_check(5).await;

    // The pool of one served all three clients all along.
    assert_eq!(wait_pool_backends(&pg, 1).await, 1);
}

/// A client cannot EXECUTE a statement another client PREPAREd on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_of_another_clients_statement_fails() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    assert_eq!(a.command("PREPARE secret_q AS select 'a'").await, "PREPARE");
    assert_eq!(b.error("EXECUTE secret_q").await, "26000");
    assert_eq!(a.value("EXECUTE secret_q").await, "a");
    // And after b's failed try, b may PREPARE its own under the same name.
    assert_eq!(b.command("PREPARE secret_q AS select 'b'").await, "PREPARE");
    assert_eq!(b.value("EXECUTE secret_q").await, "b");
    assert_eq!(a.value("EXECUTE secret_q").await, "a");
}

/// SQL-level PREPARE once, EXECUTE in later transactions on other backends: always 42.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_across_backends() {
    let pg = PgServer::start();
    let pt = start(&pg, 2);
    let url = app_url(&pt);
    let mut c = connect(&url).await;
    c.batch_execute("PREPARE q(int) AS select $1*2")
        .await
        .unwrap();
    let prepared_on = value(&c, "select pg_backend_pid()").await;

    // Deterministic: two holders take both servers, the one that holds the server where
    // q was prepared keeps it; EXECUTE must run on the other one.
    let mut h1 = connect(&url).await;
    let mut h2 = connect(&url).await;
    let t1 = h1.transaction().await.unwrap();
    let p1 = value_tx(&t1, "select pg_backend_pid()").await;
    let t2 = h2.transaction().await.unwrap();
    let p2 = value_tx(&t2, "select pg_backend_pid()").await;
    assert_ne!(p1, p2);
    assert!(p1 == prepared_on || p2 == prepared_on);
    let keep = if p1 == prepared_on {
        t2.commit().await.unwrap();
        t1
    } else {
        t1.commit().await.unwrap();
        t2
    };
    let r = rows(
        c.simple_query("EXECUTE q(21); select pg_backend_pid()::text")
            .await
            .unwrap(),
    );
    assert_eq!(r[0][0], "42");
    assert_ne!(r[1][0], prepared_on, "EXECUTE ran where q was prepared");
    keep.commit().await.unwrap();

    // Under load: other clients keep both servers busy while c executes q many times,
    // in and out of transactions.
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let mut busy = Vec::new();
    for i in 0..4i32 {
        let url = url.clone();
        let stop = stop.clone();
        let running = running.clone();
        busy.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let s = c
                .prepare("select $1::int, pg_sleep(0.002)::text")
                .await
                .unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let row = c.query_one(&s, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i);
                if n == 0 {
                    running.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
            n
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "busy clients did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pids = HashSet::new();
    for k in 0..40 {
        let r = if k % 2 == 0 {
            let tx = c.transaction().await.unwrap();
            let r = rows(tx.simple_query("select 1").await.unwrap());
            assert_eq!(r[0][0], "1");
            let r = rows(
                tx.simple_query("EXECUTE q(21); select pg_backend_pid()::text")
                    .await
                    .unwrap(),
            );
            tx.commit().await.unwrap();
            r
        } else {
            rows(
                c.simple_query("EXECUTE q(21); select pg_backend_pid()::text")
                    .await
                    .unwrap(),
            )
        };
        assert_eq!(r[0][0], "42", "EXECUTE q(21) round {k}");
        pids.insert(r[1][0].clone());
    }
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        assert!(t.await.unwrap() > 0);
    }
    assert!(pids.len() <= 2, "pool of two: {pids:?}");
}

// ---------------------------------------------------------------------------------------
// Settings travel with the client
// ---------------------------------------------------------------------------------------

/// Two clients on one server connection, one with TimeZone from its startup packet, one
/// with SET: interleaved, each always sees its own; same for search_path and
/// Custom settings (`SET app.tenant = …`, as row-level security setups use) are not in
/// pg_settings: they travel with their client and never leak to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_settings_travel_and_never_leak() {
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let a = connect(&app_url(&pt)).await;
    let b = connect(&app_url(&pt)).await;
    a.batch_execute("SET app.tenant = '5'").await.unwrap();
    a.query_one("select set_config('app.user', $1, false)", &[&"alice"])
        .await
        .unwrap();
    a.batch_execute("select set_config('app.role', 'admin', false)")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(
            value(
                &b,
                "select coalesce(current_setting('app.tenant', true), '')"
            )
            .await,
            ""
        );
        assert_eq!(
            value(&b, "select coalesce(current_setting('app.role', true), '')").await,
            ""
        );
        assert_eq!(value(&a, "select current_setting('app.tenant')").await, "5");
        assert_eq!(
            value(&a, "select current_setting('app.role')").await,
            "admin"
        );
    }
    // A name set through a bound parameter cannot be seen in the SQL text; its value is
    // still never shown to another client as long as the name is literal (app.user here).
    assert_eq!(
        value(&b, "select coalesce(current_setting('app.user', true), '')").await,
        ""
    );
    a.batch_execute("RESET app.tenant").await.unwrap();
    assert_eq!(
        value(
            &a,
            "select coalesce(current_setting('app.tenant', true), '')"
        )
        .await,
        ""
    );
    assert_eq!(
        value(
            &b,
            "select coalesce(current_setting('app.tenant', true), '')"
        )
        .await,
        ""
    );
}

/// application_name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_never_leak_between_clients_on_one_server() {
    let pg = PgServer::start();
    let setup = pg.client("app", "secret", "app").await;
    setup
        .batch_execute(
            "create schema sa; create table sa.t(v text); insert into sa.t values ('from sa');
             create schema sb; create table sb.t(v text); insert into sb.t values ('from sb');",
        )
        .await
        .unwrap();
    drop(setup);
    let pt = start(&pg, 1);

    let a = connect_with(&pt, |c| {
        c.options("-c TimeZone=Asia/Tokyo -c search_path=sa");
        c.application_name("client-a");
    })
    .await;
    let b = connect_with(&pt, |_| {}).await;
    let plain = connect_with(&pt, |_| {}).await;
    let server_tz = value(&plain, "show timezone").await;
    assert_ne!(server_tz, "Asia/Tokyo");
    assert_ne!(server_tz, "America/New_York");

    b.batch_execute(
        "SET TimeZone = 'America/New_York'; SET search_path = sb; \
         SET application_name = 'client-b'",
    )
    .await
    .unwrap();

    // The same statement text for both clients (one server-side statement), planned
    // against different search_paths.
    let sa_stmt = a.prepare("select v from t").await.unwrap();
    let sb_stmt = b.prepare("select v from t").await.unwrap();

    let check = |who: &'static str, c: Client, stmt: tokio_postgres::Statement| async move {
        let (tz, app, table) = match who {
            "a" => ("Asia/Tokyo", "client-a", "from sa"),
            _ => ("America/New_York", "client-b", "from sb"),
        };
        assert_eq!(value(&c, "show timezone").await, tz, "{who}");
        assert_eq!(
            value(&c, "select current_setting('application_name')").await,
            app,
            "{who}"
        );
        assert_eq!(value(&c, "select v from t").await, table, "{who} simple");
        let row = c.query_one(&stmt, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), table, "{who} prepared");
        let offset: String = c
            .query_one(
                "select to_char(timestamptz '2024-01-01 00:00:00+00', 'HH24')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let want = if who == "a" { "09" } else { "19" };
        assert_eq!(offset, want, "{who} timestamptz rendering");
        (c, stmt)
    };

    // Strictly interleaved.
    let (mut a, mut sa_stmt, mut b, mut sb_stmt) = (a, sa_stmt, b, sb_stmt);
    for _ in 0..50 {
        (a, sa_stmt) = check("a", a, sa_stmt).await;
        (b, sb_stmt) = check("b", b, sb_stmt).await;
        assert_eq!(value(&plain, "show timezone").await, server_tz);
        assert_eq!(value(&plain, "show application_name").await, "");
    }
    // Concurrently.
    let ta = tokio::spawn(async move {
        let (mut a, mut s) = (a, sa_stmt);
        for _ in 0..50 {
            (a, s) = check("a", a, s).await;
        }
    });
    let tb = tokio::spawn(async move {
        let (mut b, mut s) = (b, sb_stmt);
        for _ in 0..50 {
            (b, s) = check("b", b, s).await;
        }
    });
    for _ in 0..50 {
        assert_eq!(value(&plain, "show timezone").await, server_tz);
    }
    ta.await.unwrap();
    tb.await.unwrap();
    assert_eq!(wait_pool_backends(&pg, 1).await, 1, "pool of one");
}

/// SET in a rolled-back transaction, SET LOCAL, RESET and RESET ALL behave as on a
/// dedicated connection (startup values are the session defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_rollback_set_local_reset_and_reset_all() {
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let mut a = connect_with(&pt, |c| {
        c.options("-c TimeZone=Asia/Tokyo");
        c.application_name("startup-name");
    })
    .await;
    let other = connect_with(&pt, |_| {}).await;
    let server_tz = value(&other, "show timezone").await;

    assert_eq!(value(&a, "show timezone").await, "Asia/Tokyo");

    // SET in a transaction that is rolled back does not persist.
    let tx = a.transaction().await.unwrap();
    tx.batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    assert_eq!(value_tx(&tx, "show timezone").await, "Europe/Paris");
    tx.rollback().await.unwrap();
    assert_eq!(value(&other, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show timezone").await, "Asia/Tokyo");

    // SET LOCAL ends with its transaction.
    let tx = a.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    assert_eq!(value_tx(&tx, "show timezone").await, "Europe/Paris");
    tx.commit().await.unwrap();
    assert_eq!(value(&other, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show timezone").await, "Asia/Tokyo");

    // SET in a committed transaction persists.
    let tx = a.transaction().await.unwrap();
    tx.batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(value(&other, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show timezone").await, "Europe/Paris");

    // RESET returns to the server's default, and stays there (see
    // `reset_returns_to_the_server_default_consistently`).
    a.batch_execute("RESET TimeZone").await.unwrap();
    assert_eq!(value(&other, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show timezone").await, server_tz);

    // RESET ALL.
    a.batch_execute(
        "SET TimeZone = 'Europe/Paris'; SET application_name = 'changed'; \
         SET search_path = pg_catalog; SET statement_timeout = '17s'",
    )
    .await
    .unwrap();
    assert_eq!(value(&other, "show statement_timeout").await, "0");
    assert_eq!(value(&a, "show statement_timeout").await, "17s");
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(value(&other, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show timezone").await, server_tz);
    assert_eq!(value(&a, "show application_name").await, "");
    assert_eq!(value(&a, "show search_path").await, "\"$user\", public");
    assert_eq!(value(&a, "show statement_timeout").await, "0");
    // SET SESSION is a session SET.
    a.batch_execute("SET SESSION statement_timeout = '18s'")
        .await
        .unwrap();
    assert_eq!(value(&other, "show statement_timeout").await, "0");
    assert_eq!(value(&a, "show statement_timeout").await, "18s");
    // A SET through a prepared statement (extended protocol) also travels.
    let s = a
        .prepare("select set_config('statement_timeout', $1, false)")
        .await
        .unwrap();
    a.query_one(&s, &[&"19s"]).await.unwrap();
    assert_eq!(value(&other, "show statement_timeout").await, "0");
    assert_eq!(value(&a, "show statement_timeout").await, "19s");

    // set_config() from clients with no settings of their own (simple and extended
    // protocol) must not leak to the next client of that server.
    let c = connect_with(&pt, |_| {}).await;
    let d = connect_with(&pt, |_| {}).await;
    let default_work_mem = value(&d, "show work_mem").await;
    c.simple_query("select set_config('statement_timeout', '1234s', false)")
        .await
        .unwrap();
    assert_eq!(value(&d, "show statement_timeout").await, "0");
    assert_eq!(value(&c, "show statement_timeout").await, "1234s");
    c.query("select set_config('work_mem', $1, false)", &[&"7MB"])
        .await
        .unwrap();
    assert_eq!(value(&d, "show work_mem").await, default_work_mem);
    assert_eq!(value(&c, "show work_mem").await, "7MB");
}

/// ParameterStatus: the client sees its own startup values in the greeting and a change
/// only when it makes one; pgtenant's replays for other clients stay out of its sight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_follows_the_client_not_the_server() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let status = |msgs: &[Msg], name: &str| -> Option<String> {
        msgs.iter()
            .rev()
            .find(|m| m.tag == b'S' && m.cstr() == name)
            .map(|m| text(&m.body[name.len() + 1..m.body.len() - 1]))
    };
    let (mut a, greeting) = Raw::login_with(
        pt.port(),
        &[
            ("user", "app"),
            ("database", "app"),
            ("TimeZone", "Asia/Tokyo"),
            ("application_name", "raw-a"),
        ],
    )
    .await;
    assert_eq!(status(&greeting, "TimeZone").as_deref(), Some("Asia/Tokyo"));
    assert_eq!(
        status(&greeting, "application_name").as_deref(),
        Some("raw-a")
    );
    let (mut b, greeting) =
        Raw::login_with(pt.port(), &[("user", "app"), ("database", "app")]).await;
    assert_ne!(status(&greeting, "TimeZone").as_deref(), Some("Asia/Tokyo"));

    for i in 0..10 {
        let msgs = b
            .simple(&format!("SET application_name = 'raw-b-{i}'"))
            .await;
        assert_eq!(tags(&msgs), "CSZ", "{msgs:?}");
        assert_eq!(
            status(&msgs, "application_name"),
            Some(format!("raw-b-{i}"))
        );
        let msgs = a.simple("select current_setting('TimeZone'), 1").await;
        assert_eq!(
            tags(&msgs),
            "TDCZ",
            "no ParameterStatus for a's own: {msgs:?}"
        );
        assert_eq!(msgs[1].value(), "Asia/Tokyo");
        let msgs = b.simple("show application_name").await;
        assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
        assert_eq!(msgs[1].value(), format!("raw-b-{i}"));
    }
}

/// RESET (and RESET ALL) inside the transaction that runs it returns to the startup
/// value, as on a dedicated connection where startup settings are the session defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_server_default_consistently() {
    // A startup setting is replayed on each server with set_config, so PostgreSQL's own
    // reset value there is the server default: RESET gives that (a direct connection
    // would give the startup value; README "Moving from PgBouncer"). What matters is that
    // the client is never told one value and given another: the value it sees right after
    // RESET is the one it keeps in later transactions, on any server connection.
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let a = connect_with(&pt, |c| {
        c.options("-c TimeZone=Asia/Tokyo");
    })
    .await;
    let b = connect(&app_url(&pt)).await;
    let server_default = value(&b, "SHOW TimeZone").await;
    assert_ne!(server_default, "Asia/Tokyo");
    assert_eq!(
        value(&a, "SHOW TimeZone").await,
        "Asia/Tokyo",
        "startup value"
    );
    a.batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    assert_eq!(value(&a, "SHOW TimeZone").await, "Europe/Paris");
    assert_eq!(
        value(&a, "RESET TimeZone; SHOW TimeZone").await,
        server_default
    );
    for _ in 0..5 {
        // Another client takes the only server connection in between.
        assert_eq!(value(&b, "SHOW TimeZone").await, server_default);
        assert_eq!(
            value(&a, "SHOW TimeZone").await,
            server_default,
            "RESET stays reset"
        );
    }
    a.batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    assert_eq!(value(&a, "RESET ALL; SHOW TimeZone").await, server_default);
    assert_eq!(value(&b, "SHOW TimeZone").await, server_default);
    assert_eq!(
        value(&a, "SHOW TimeZone").await,
        server_default,
        "RESET ALL stays reset"
    );
}

// ---------------------------------------------------------------------------------------
// Statement mode, cancel, pgbench
// ---------------------------------------------------------------------------------------

/// Statement mode: named statements work across statements; BEGIN is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_named_statements_and_no_transactions() {
    let pg = PgServer::start();
    let pt = start_mode(&pg, "statement", 1, &[]);
    let a = connect(&app_url(&pt)).await;
    let b = connect(&app_url(&pt)).await;
    let sa = a.prepare("select $1::int + 1").await.unwrap();
    let sb = b.prepare("select $1::int + 2").await.unwrap();
    for i in 0..30i32 {
        assert_eq!(
            a.query_one(&sa, &[&i]).await.unwrap().get::<_, i32>(0),
            i + 1
        );
        assert_eq!(
            b.query_one(&sb, &[&i]).await.unwrap().get::<_, i32>(0),
            i + 2
        );
    }
    b.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(value(&b, "show timezone").await, "Asia/Tokyo");
    assert_ne!(value(&a, "show timezone").await, "Asia/Tokyo");

    let err = a.simple_query("BEGIN").await.expect_err("BEGIN must fail");
    assert_eq!(code(&err), "0A000", "{err:?}");
    let msg = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(msg.contains("statement pooling"), "message: {msg}");
    // The other client is not affected.
    assert_eq!(
        b.query_one(&sb, &[&5i32]).await.unwrap().get::<_, i32>(0),
        7
    );
    assert_eq!(wait_pool_backends(&pg, 1).await, 1);
}

/// Cancel of a bound prepared statement in transaction mode reaches that query only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_prepared_statement_in_transaction_mode() {
    let pg = PgServer::start();
    let pt = start(&pg, 2);
    let a = Arc::new(connect(&app_url(&pt)).await);
    let b = Arc::new(connect(&app_url(&pt)).await);
    let sa = a
        .prepare("select pg_sleep($1::float8)::text /* sa_sleep */, 1")
        .await
        .unwrap();
    let sb = b
        .prepare("select pg_sleep($1::float8)::text /* sb_sleep */, 2")
        .await
        .unwrap();
    let admin = pg.admin_client().await;
    let running = |tag: &'static str| {
        let admin = &admin;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let n: i64 = admin
                    .query_one(
                        "select count(*) from pg_stat_activity \
                         where state = 'active' and query like '%' || $1 || '%' \
                         and pid <> pg_backend_pid()",
                        &[&tag],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "{tag} never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let (b2, sb2) = (b.clone(), sb.clone());
    let qb = tokio::spawn(async move { b2.query_one(&sb2, &[&2.0f64]).await });
    running("sb_sleep").await;
    let (a2, sa2) = (a.clone(), sa.clone());
    let started = Instant::now();
    let qa = tokio::spawn(async move { a2.query_one(&sa2, &[&30.0f64]).await });
    running("sa_sleep").await;
    a.cancel_token().cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), qa)
        .await
        .expect("not cancelled within 10 s")
        .unwrap()
        .expect_err("the cancelled query must fail");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let row = qb
        .await
        .unwrap()
        .expect("the other client's query is not cancelled");
    assert_eq!(row.get::<_, i32>(1), 2);

    // Both statements keep working afterwards.
    assert_eq!(
        a.query_one(&sa, &[&0.0f64]).await.unwrap().get::<_, i32>(1),
        1
    );
    assert_eq!(
        b.query_one(&sb, &[&0.0f64]).await.unwrap().get::<_, i32>(1),
        2
    );
}

fn pgbench(pt: &Pgtenant, args: &[&str]) -> Output {
    Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pt.port().to_string(), "-U", "app"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", "secret")
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench")
}

fn pgbench_ok(pt: &Pgtenant, args: &[&str]) -> String {
    let out = pgbench(pt, args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{stdout}\n{}\n--- pgtenant ---\n{}",
        out.status,
        text(&out.stderr),
        pt.logs()
    );
    stdout
}

/// pgbench -M prepared with 32 clients on a pool of 4: no failed transactions.
#[test]
fn pgbench_prepared_32_clients_pool_of_4() {
    let pg = PgServer::start();
    let pt = start_mode(&pg, "transaction", 4, &[]);
    pgbench_ok(&pt, &["-i", "-s", "1", "-q"]);
    let runs: [&[&str]; 2] = [
        &["-M", "prepared", "-S", "-c", "32", "-j", "2", "-T", "5"],
        // TPC-B with one client per thread (pgbench's synchronous PQprepare blocks its
        // thread, so several clients per thread can deadlock inside pgbench itself).
        &["-M", "prepared", "-c", "4", "-j", "4", "-T", "3"],
    ];
    for args in runs {
        let stdout = pgbench_ok(&pt, args);
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{args:?}:\n{stdout}"
        );
        let processed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
        assert!(
            processed > 100,
            "{args:?}: only {processed} transactions:\n{stdout}"
        );
    }
    let direct = pg.psql_ok(
        "select count(*) from pg_stat_activity where usename = 'app' \
         and backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %' and query not like '%pg_dist_%'",
    );
    let n: i64 = direct.parse().unwrap();
    assert!(n <= 4, "{n} server connections for a pool of 4");
}

/// psycopg runs `DEALLOCATE ALL` after DDL so that statements are planned afresh: a Parse
/// of the same text afterwards must not reuse pgtenant's server-side statement prepared
/// against a type that was dropped (`cache lookup failed for type`).
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_all_after_ddl_prepares_afresh() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut r = Raw::login(pt.port(), "app", "app").await;
    r.command("CREATE TYPE mood AS ENUM ('a', 'b')").await;
    let sql = "select $1::mood = 'a'";
    let run = |name: &str| {
        [
            parse(name, sql, &[]),
            bind("", name, &["a"]),
            execute(""),
            sync(),
        ]
        .concat()
    };
    r.send(&run("s1")).await;
    let got = r.until_ready().await;
    assert_eq!(tags(&got), "12DCZ", "{got:?}");
    for ddl in [
        "DROP TYPE mood",
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "DEALLOCATE ALL",
    ] {
        r.command(ddl).await;
    }
    r.send(&run("s1")).await;
    let got = r.until_ready().await;
    assert_eq!(tags(&got), "12DCZ", "after DEALLOCATE ALL: {got:?}");
    // DISCARD ALL too.
    r.command("DROP TYPE mood").await;
    r.command("CREATE TYPE mood AS ENUM ('a', 'b')").await;
    r.command("DISCARD ALL").await;
    r.send(&run("s1")).await;
    let got = r.until_ready().await;
    assert_eq!(tags(&got), "12DCZ", "after DISCARD ALL: {got:?}");
}

/// A client that left many SQL-level statements on a pooled connection costs the next
/// client of that connection one `DEALLOCATE ALL`, not one round trip per name; the next
/// client may use those names, the first client gets its statements back on demand, and
/// another client's protocol-level statement (pgtenant's own on that server, dropped too)
/// is prepared again where it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_a_client_left_on_a_connection_go_at_once() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    let c = connect(&app_url(&pt)).await;
    let c_stmt = c.prepare("select $1::int + 1000").await.unwrap();
    assert_eq!(
        c.query_one(&c_stmt, &[&1]).await.unwrap().get::<_, i32>(0),
        1001
    );
    for i in 0..50 {
        assert_eq!(
            a.command(&format!("PREPARE p{i} AS select {i}")).await,
            "PREPARE"
        );
    }
    // B takes the connection A's 50 statements are on.
    assert_eq!(b.command("PREPARE p7 AS select 'b'").await, "PREPARE");
    assert_eq!(b.value("EXECUTE p7").await, "b");
    assert_eq!(a.value("EXECUTE p7").await, "7");
    assert_eq!(a.value("EXECUTE p49").await, "49");
    assert_eq!(b.value("EXECUTE p7").await, "b");
    assert_eq!(
        c.query_one(&c_stmt, &[&2]).await.unwrap().get::<_, i32>(0),
        1002
    );
}

/// pgtenant keeps a client's prepared statements for it whatever server it uses, so one
/// client cannot hold unbounded many: 10,000 (protocol and SQL level together) or 16 MiB
/// of their text; beyond, Parse and PREPARE fail with 54000 (inside a transaction the
/// server raises it, so the transaction fails), and closing one makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_prepared_statements_are_bounded() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut batch = Vec::new();
    for i in 0..9_999 {
        batch.extend(parse(&format!("s{i}"), &format!("select {i}"), &[]));
    }
    batch.extend(sync());
    a.send(&batch).await;
    let msgs = a.until_ready().await;
    assert_eq!(msgs.iter().filter(|m| m.tag == b'1').count(), 9_999);
    assert_eq!(a.command("PREPARE q AS select 'q'").await, "PREPARE");
    // Full: a Parse, a PREPARE (outside and inside a transaction) are refused.
    a.send(&[parse("one_more", "select 1", &[]), sync()].concat())
        .await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "54000");
    assert_eq!(a.error("PREPARE r AS select 'r'").await, "54000");
    a.simple("BEGIN").await;
    assert_eq!(a.error("PREPARE r AS select 'r'").await, "54000");
    assert_eq!(a.error("select 1").await, "25P02");
    a.simple("ROLLBACK").await;
    // What it holds still works; closing one makes room.
    assert_eq!(a.value("EXECUTE q").await, "q");
    a.send(&bes("s42", &[])).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].value(), "42");
    a.send(&[close(b'S', "s0"), sync()].concat()).await;
    a.until_ready().await;
    a.send(&[parse("one_more", "select 1", &[]), sync()].concat())
        .await;
    assert_eq!(tags(&a.until_ready().await), "1Z");

    // Bytes: a client with one statement of 17 MiB of text is over 16 MiB.
    let mut b = Raw::login(pt.port(), "app", "app").await;
    let big = format!("select 1 /* {} */", "x".repeat(17 << 20));
    b.send(&[parse("big", &big, &[]), sync()].concat()).await;
    let msgs = b.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(msgs[0].sqlstate(), "54000");
    assert_eq!(b.value("select 'still here'").await, "still here");

    // SQL-level PREPAREs pipelined in one write count while they are on their way: 20
    // of 1 MiB each, and only what fits in 16 MiB is kept.
    let mut c = Raw::login(pt.port(), "app", "app").await;
    let text = format!("select 1 /* {} */", "x".repeat(1 << 20));
    let mut batch = Vec::new();
    for i in 0..20 {
        batch.extend(query(&format!("PREPARE p{i} AS {text}")));
    }
    c.send(&batch).await;
    let mut kept = 0;
    let mut refused = 0;
    for _ in 0..20 {
        let msgs = c.until_ready().await;
        match msgs[0].tag {
            b'C' => kept += 1,
            _ => {
                assert_eq!(msgs[0].sqlstate(), "54000", "{msgs:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((kept, refused), (15, 5));
    assert_eq!(c.value("EXECUTE p14").await, "1");
}

/// A client that sends more messages than pgtenant lets it owe (10,000 answers) in one go,
/// with its Sync at the end, gets every answer: once pgtenant stops reading it, the
/// answers pgtenant makes itself go out, and the server is asked (Flush) for the ones it
/// holds back until a Sync, so the pipeline drains and the client is read again. Before,
/// such a session stopped for good (nothing to read from the server, the client unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_past_the_owed_limit_drains() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    a.simple("BEGIN").await;
    // Closes pgtenant answers itself (a server is attached: inside the transaction).
    let mut batch = Vec::new();
    for i in 0..20_000 {
        batch.extend(close(b'S', &format!("nothing_{i}")));
    }
    batch.extend(sync());
    a.send(&batch).await;
    let msgs = tokio::time::timeout(Duration::from_secs(30), a.until_ready())
        .await
        .expect("all the answers within 30 s");
    assert_eq!(msgs.iter().filter(|m| m.tag == b'3').count(), 20_000);
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
    // A real statement at the head, whose answer the server keeps until it is asked.
    let mut batch = [parse("", "select 7", &[]), bind("", "", &[]), execute("")].concat();
    for i in 0..20_000 {
        batch.extend(close(b'S', &format!("nothing_{i}")));
    }
    batch.extend(sync());
    a.send(&batch).await;
    let msgs = tokio::time::timeout(Duration::from_secs(30), a.until_ready())
        .await
        .expect("all the answers within 30 s");
    assert_eq!(tags(&msgs[..4]), "12DC", "{:?}", &msgs[..4]);
    assert_eq!(msgs.iter().filter(|m| m.tag == b'3').count(), 20_000);
    assert_eq!(a.value("select 'after'").await, "after");
    a.simple("COMMIT").await;
}

/// Errors pgtenant makes itself for the extended protocol (a statement name that exists,
/// one that does not) fail the server's transaction too, as on a direct connection: the
/// client gets the error in its place, ReadyForQuery says `E` inside a transaction block,
/// the next statement gets 25P02, and outside a block the batch's implicit transaction
/// is rolled back (an INSERT earlier in it does not stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgtenants_own_extended_errors_fail_the_transaction() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let admin = pg
        .client(support::SUPERUSER, support::SUPERUSER_PASSWORD, "app")
        .await;
    admin
        .batch_execute("create table ext_err (x int); grant all on ext_err to public")
        .await
        .unwrap();
    let mut a = Raw::login(pt.port(), "app", "app").await;
    a.simple("BEGIN").await;
    a.send(&[bind("", "nope", &[]), sync()].concat()).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "26000");
    assert_eq!(msgs[1].body, b"E", "the transaction failed");
    assert_eq!(a.error("select 1").await, "25P02");
    a.simple("ROLLBACK").await;

    a.send(&[parse("dup", "select 1", &[]), sync()].concat())
        .await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    a.simple("BEGIN").await;
    a.send(
        &[
            parse("dup", "select 2", &[]),
            describe(b'S', "nothing"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "42P05");
    assert_eq!(msgs[1].body, b"E");
    a.simple("ROLLBACK").await;

    // Outside a block: the batch's INSERT goes with the error.
    let batch = [
        parse("", "insert into ext_err values (1)", &[]),
        bind("", "", &[]),
        execute(""),
        bind("", "nope", &[]),
        sync(),
    ]
    .concat();
    a.send(&batch).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "12CEZ", "{msgs:?}");
    assert_eq!(msgs[3].sqlstate(), "26000");
    let n: i64 = admin
        .query_one("select count(*) from ext_err", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the batch's implicit transaction was not rolled back");
    // The client's statements still work afterwards.
    a.send(&bes("dup", &[])).await;
    assert_eq!(tags(&a.until_ready().await), "2DCZ");
}

/// A client that seeds random() (setseed, SET seed) cannot tell what the next client of
/// its server connection will draw: that one gets a seed of pgtenant's own (RESET ALL
/// does not reset the seed). Before, it drew exactly what the seed gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_set_by_one_client_does_not_reach_the_next() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let admin = pg
        .client(support::SUPERUSER, support::SUPERUSER_PASSWORD, "app")
        .await;
    let drawn = |msgs: Vec<SimpleQueryMessage>| rows(msgs).pop().unwrap()[0].clone();
    let seeded = drawn(
        admin
            .simple_query("select setseed(0.42); select random()::text")
            .await
            .unwrap(),
    );
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    for seed in ["select setseed(0.42)", "SET seed = 0.42"] {
        a.simple(seed).await;
        assert_ne!(
            b.value("select random()::text").await,
            seeded,
            "after {seed}"
        );
    }
}

/// DISCARD ALL (answered by pgtenant for a client that holds no server connection) leaves
/// nothing of the session, as on a direct connection: its LISTENs end, and a setting made
/// under a name pgtenant cannot read back (a computed set_config name) is gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_leaves_nothing_of_the_session() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    assert_eq!(a.command("LISTEN ch").await, "LISTEN");
    a.simple("select set_config('app.' || 'u', 'user1', false)")
        .await;
    let seen = setting_or_none("app.u");
    assert_eq!(a.value(&seen).await, "user1");
    assert_eq!(a.command("DISCARD ALL").await, "DISCARD ALL");
    assert_eq!(a.value(&seen).await, "none");
    hears_nothing_on(&mut a, &pt, "ch", "after DISCARD ALL").await;
}

/// A query that reads custom setting `name`, 'none' when it is not set (or empty, as a
/// name once set stays defined on a server).
fn setting_or_none(name: &str) -> String {
    format!("select coalesce(nullif(current_setting('{name}', true), ''), 'none')")
}

/// Another client NOTIFYs `channel`: `a` gets no notification of it.
async fn hears_nothing_on(a: &mut Raw, pt: &Pgtenant, channel: &str, why: &str) {
    let c = connect(&app_url(pt)).await;
    c.batch_execute(&format!("NOTIFY {channel}, 'x'"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = a.simple("select 1").await;
    assert!(
        msgs.iter().all(|m| m.tag != b'A'),
        "a notification {why}: {msgs:?}"
    );
}

/// A client's SQL-level statement deallocated by dynamic SQL (out of pgtenant's sight)
/// costs the next client of the connection nothing: before, its take-over tried to
/// DEALLOCATE the name again and its first query failed ("could not be given this
/// session's settings"). The client itself still has its statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_deallocated_behind_pgtenants_back_harms_nobody() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    assert_eq!(a.command("PREPARE s1 AS select 41 + 1").await, "PREPARE");
    assert_eq!(
        a.command("DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; END $$")
            .await,
        "DO"
    );
    assert_eq!(b.value("select 'b'").await, "b");
    assert_eq!(a.value("EXECUTE s1").await, "42");
    assert_eq!(b.value("select 'b again'").await, "b again");
}

/// Custom settings whose names the session cannot read back as the server spells them
/// (split by a newline or a comment around the dot, a byte over 0x7F kept as it is, a
/// computed or E'' name in set_config, a 65th name) never reach the next client of the
/// server connection: it is cleared first. Before, the next client read them (with a row
/// security policy on `current_setting('app.tenant')`, another tenant's rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_setting_names_never_reach_the_next_client() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    for (set, name) in [
        ("SET app\n.tenant = 'acme'", "app.tenant"),
        ("SET app/**/.y = 'acme'", "app.y"),
        ("SET app.Ä = 'acme'", "app.Ä"),
        ("select set_config(E'app.e', 'acme', false)", "app.e"),
        ("select set_config('app.' || 'c', 'acme', false)", "app.c"),
    ] {
        a.simple(set).await;
        assert_eq!(a.value(&setting_or_none(name)).await, "acme", "{set}");
        assert_eq!(b.value(&setting_or_none(name)).await, "none", "after {set}");
    }
    // The 65th name a client sets.
    for i in 0..64 {
        a.simple(&format!("SET app.s{i} = 'x'")).await;
    }
    a.simple("SET app.overflow = 'acme'").await;
    assert_eq!(b.value(&setting_or_none("app.overflow")).await, "none");
}

/// A failed transaction runs nothing but its end: DEALLOCATE, LISTEN and UNLISTEN there
/// (which pgtenant otherwise answers itself, as commands of the client's view) get
/// 25P02 from the server as on a direct connection, and change nothing: the statement
/// stays, no channel is listened to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_commands_in_a_failed_transaction_are_refused() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    assert_eq!(a.command("PREPARE q AS select 42").await, "PREPARE");
    a.send(&[parse("p", "select 'p'", &[]), sync()].concat())
        .await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    a.simple("BEGIN").await;
    assert_eq!(a.error("select 1/0").await, "22012");
    for sql in [
        "DEALLOCATE q",
        "DEALLOCATE p",
        "DEALLOCATE ALL",
        "LISTEN ch",
        "UNLISTEN *",
    ] {
        assert_eq!(a.error(sql).await, "25P02", "{sql}");
    }
    // The same through the extended protocol's unnamed statement.
    a.send(
        &[
            parse("", "DEALLOCATE ALL", &[]),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate(), "25P02");
    assert_eq!(a.command("ROLLBACK").await, "ROLLBACK");
    assert_eq!(a.value("EXECUTE q").await, "42");
    a.send(&bes("p", &[])).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    // Nothing listens: a NOTIFY on the channel reaches nobody.
    hears_nothing_on(
        &mut a,
        &pt,
        "ch",
        "after a LISTEN refused in a failed transaction",
    )
    .await;
}

/// A statement pgtenant prepares on a server connection for a client's Bind is skipped
/// when an earlier message of that batch fails; a batch the client pipelined behind it
/// (after its Sync) still finds the statement, as on a direct connection where the
/// client's own Parse ran long before. The fuzzer's session target found pgtenant sending
/// that later Bind to a statement the server never made ("pgt_1 does not exist").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_in_a_failed_batch_is_there_for_the_next() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 2);
    let mut r = Raw::login(pt.port(), "app", "app").await;
    r.send(&[parse("s2", "select 42", &[]), sync()].concat())
        .await;
    assert_eq!(tags(&r.until_ready().await), "1Z");
    let pid_a = r.value("select pg_backend_pid()").await;

    // Another client takes that server connection and keeps it: the next batches run on
    // one that lacks s2.
    let mut holder = connect(&app_url(&pt)).await;
    let tx = holder.transaction().await.unwrap();
    assert_eq!(value_tx(&tx, "select pg_backend_pid()").await, pid_a);

    for round in 0..3 {
        // Batch 1 fails before its Bind of s2 (so the server skips the Parse pgtenant puts
        // before that Bind); batches 2 and 3 use s2, sent in the same write, before any
        // answer.
        let mut batch = [
            parse("", "select 1 / (0 * random())::int", &[]),
            bind("", "", &[]),
            execute(""),
            bind("", "s2", &[]),
            execute(""),
            sync(),
        ]
        .concat();
        batch.extend(bes("s2", &[]));
        batch.extend([describe(b'S', "s2"), bes("s2", &[])].concat());
        r.send(&batch).await;
        let first = r.until_ready().await;
        assert_eq!(tags(&first), "12EZ", "round {round}: {first:?}");
        assert_eq!(first[2].sqlstate(), "22012");
        let second = r.until_ready().await;
        assert_eq!(tags(&second), "2DCZ", "round {round}: {second:?}");
        assert_eq!(second[1].value(), "42");
        let third = r.until_ready().await;
        assert_eq!(tags(&third), "tT2DCZ", "round {round}: {third:?}");
        assert_eq!(third[3].value(), "42");
    }
    assert_ne!(r.value("select pg_backend_pid()").await, pid_a);
    tx.commit().await.unwrap();
    // And on each connection in turn (the first has had s2 all along), while another
    // client holds the other one.
    for _ in 0..2 {
        let mut other = connect(&app_url(&pt)).await;
        let tx = other.transaction().await.unwrap();
        let held = value_tx(&tx, "select pg_backend_pid()").await;
        r.send(&bes("s2", &[])).await;
        let msgs = r.until_ready().await;
        assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
        assert_ne!(r.value("select pg_backend_pid()").await, held);
        tx.commit().await.unwrap();
    }
}

/// A client's settings are kept by pgtenant and replayed on each server connection it
/// takes next, so their size is bounded (1 MiB read back by the session check): a 100 KB
/// custom setting travels (and reaches no other client), a 2 MB one ends the client's
/// session with FATAL 54000 once its transaction is answered, and the server connection
/// that holds it is closed, never lent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_settings_are_bounded() {
    let pg = PgServer::start();
    let pt = start_trust(&pg, 1);
    let mut a = Raw::login(pt.port(), "app", "app").await;
    let mut b = Raw::login(pt.port(), "app", "app").await;
    assert_eq!(
        a.value("select length(set_config('my.mid', repeat('m', 100000), false))")
            .await,
        "100000"
    );
    // b takes the only server connection in between: it sees nothing of a's (a name
    // once set stays defined on a server, empty, as after RESET: PostgreSQL keeps it).
    assert_eq!(b.value(&setting_or_none("my.mid")).await, "none");
    assert_eq!(
        a.value("select length(current_setting('my.mid'))").await,
        "100000"
    );
    let pid = a.value("select pg_backend_pid()").await;

    // Over the bound: the transaction's answer, then the session ends.
    a.send(&query(
        "select length(set_config('my.big', repeat('b', 2000000), false))",
    ))
    .await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    let fatal = a.msg().await;
    assert_eq!(fatal.tag, b'E', "{fatal:?}");
    assert_eq!(fatal.sqlstate(), "54000", "{fatal:?}");
    assert_eq!(fatal.field(b'S').as_deref(), Some("FATAL"));
    // The server connection that held it is gone; b gets a new one, clean.
    assert_eq!(
        b.value("select coalesce(current_setting('my.big', true), 'none')")
            .await,
        "none"
    );
    assert_ne!(b.value("select pg_backend_pid()").await, pid);
    assert!(
        pt.logs().contains("larger than pgtenant keeps"),
        "the log says why"
    );

    // The same when the client's statement_timeout (1 ms) may cancel the check first:
    // the check runs again with it off, and over the bound it is 54000 all the same.
    let mut c = Raw::login(pt.port(), "app", "app").await;
    c.send(&query(
        "select length(set_config('my.big', repeat('b', 3000000), false)); \
         set statement_timeout = 1",
    ))
    .await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "TDCCZ", "{msgs:?}");
    let fatal = c.msg().await;
    assert_eq!(fatal.tag, b'E', "{fatal:?}");
    assert_eq!(fatal.sqlstate(), "54000", "{fatal:?}");
}

/// A client that pipelines batches of a statement its server connection lacks gets one
/// Parse on that connection, not one per batch: pgtenant's Parse is the first message of
/// the first batch, nothing before it can make the server skip it, so the batches behind
/// it rely on it (a Parse behind something that may fail is prepared again in later
/// batches, see `a_statement_prepared_in_a_failed_batch_is_there_for_the_next`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_of_a_statement_get_one_parse() {
    let pg = PgServer::start();
    let (pt, _dir) = start_toml(
        &pg,
        "auth_type = \"trust\"\nadmin_users = [\"app\"]\nstats_period = 1\n",
        2,
    );
    // SHOW STATS_TOTALS is brought up to date once a stats period.
    let parses = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut admin = Raw::login(pt.port(), "app", "pgbouncer").await;
        let msgs = admin.simple("SHOW STATS_TOTALS").await;
        let row = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| {
                let mut cols = Vec::new();
                let mut at = 2;
                for _ in 0..i16::from_be_bytes([m.body[0], m.body[1]]) {
                    let len = i32::from_be_bytes(m.body[at..at + 4].try_into().unwrap());
                    at += 4;
                    cols.push(text(&m.body[at..at + len.max(0) as usize]));
                    at += len.max(0) as usize;
                }
                cols
            })
            .find(|c| c[0] == "app")
            .expect("a row for database app");
        // database, server_assignment_count, xact_count, query_count, bytes_received,
        // bytes_sent, xact_time, query_time, wait_time, client_parse_count,
        // server_parse_count, bind_count
        row[10].parse::<i64>().unwrap()
    };
    let mut r = Raw::login(pt.port(), "app", "app").await;
    // Recorded only: no server connection has it yet.
    r.send(&[parse("s2", "select 42", &[]), sync()].concat())
        .await;
    assert_eq!(tags(&r.until_ready().await), "1Z");
    let before = parses().await;
    let mut batch = Vec::new();
    for _ in 0..8 {
        batch.extend(bes("s2", &[]));
    }
    r.send(&batch).await;
    for _ in 0..8 {
        let msgs = r.until_ready().await;
        assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    }
    assert_eq!(parses().await - before, 1, "one Parse for eight batches");
}
