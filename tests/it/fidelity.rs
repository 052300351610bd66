//! "Like a direct connection": behaviours a client can observe, checked against a direct
//! PostgreSQL connection and pgtenant in transaction and session mode in the same test
//! (issue 12: what psycopg's and Django's own suites depend on).
//!
//! - answers pgtenant makes itself wait for the client's Sync or Flush, as PostgreSQL's;
//! - a client's own NOTIFY reaches it before the ReadyForQuery of its transaction;
//! - `client_encoding` is reported in PostgreSQL's canonical spelling, and an unknown one
//!   is refused at login;
//! - `DROP DATABASE` works however it arrives, although pgtenant held idle connections to
//!   that database.
use crate::support;

use std::time::{Duration, Instant};

use support::wire::*;
use support::{PgServer, Pgtenant, TempDir};

/// Where a test talks: a name, a port, and the user a raw (trust) login uses there.
struct Target {
    name: &'static str,
    port: u16,
    user: &'static str,
}

/// pgtenant in `mode` with trust for its clients (its server login is `app`'s).
fn start(pg: &PgServer, mode: &str, pool_size: u32) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("fidelity");
    let path = dir.config_file(&format!(
        "upstream = \"{}\"\npool_mode = \"{mode}\"\npool_size = {pool_size}\n\
         auth_type = \"trust\"\n",
        pg.url("app", "secret", "app")
    ));
    let path = path.to_str().expect("utf-8 path").to_string();
    (Pgtenant::start(&["run", "--config", &path], &[]), dir)
}

/// A direct connection and pgtenant in both modes, each with a pool of one.
fn targets(pg: &PgServer) -> (Vec<Target>, Vec<(Pgtenant, TempDir)>) {
    let tx = start(pg, "transaction", 1);
    let session = start(pg, "session", 2);
    let targets = vec![
        Target {
            name: "direct",
            port: pg.port(),
            user: "trustuser",
        },
        Target {
            name: "transaction",
            port: tx.0.port(),
            user: "app",
        },
        Target {
            name: "session",
            port: session.0.port(),
            user: "app",
        },
    ];
    (targets, vec![tx, session])
}

fn login(t: &Target) -> Raw {
    Raw::login(t.port, &[("user", t.user), ("database", "app")])
}

const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// Item 3: nothing before Sync or Flush
// ---------------------------------------------------------------------------------------

#[test]
fn answers_wait_for_the_clients_sync_or_flush() {
    let pg = PgServer::start();
    let (targets, _pt) = targets(&pg);
    for t in &targets {
        let n = t.name;
        let mut a = login(t);
        // A new named statement (pgtenant records it and answers itself).
        a.send(&[parse("s1", "select 1", &[])]);
        assert!(a.nothing_within(QUIET), "{n}: ParseComplete before Flush");
        a.send(&[flush()]);
        assert_eq!(tags(&[a.read_msg()]), "1", "{n}");
        a.send(&[bind("", "s1", &[]), execute("")]);
        assert!(a.nothing_within(QUIET), "{n}: answers before Sync");
        assert_eq!(tags(&a.exchange(&[sync()])), "2DCZ", "{n}");

        // The same text under another name in another client: the server already has
        // it (pgtenant answers from its cache, with or without a server attached).
        drop(a);
        let mut b = login(t);
        b.send(&[parse("s2", "select 1", &[])]);
        assert!(
            b.nothing_within(QUIET),
            "{n}: ParseComplete (idle) before Sync"
        );
        assert_eq!(tags(&b.exchange(&[sync()])), "1Z", "{n}");
        assert_eq!(tags(&b.exchange(&[query("begin")])), "CZ", "{n}");
        assert_eq!(tags(&b.exchange(&[query("select 2")])), "TDCZ", "{n}");
        b.send(&[parse("s3", "select 1", &[])]);
        assert!(
            b.nothing_within(QUIET),
            "{n}: ParseComplete (attached) before Flush"
        );
        b.send(&[flush()]);
        assert_eq!(tags(&[b.read_msg()]), "1", "{n}");
        b.send(&[close(b'S', "s3")]);
        assert!(b.nothing_within(QUIET), "{n}: CloseComplete before Sync");
        assert_eq!(tags(&b.exchange(&[sync()])), "3Z", "{n}");
        assert_eq!(tags(&b.exchange(&[query("commit")])), "CZ", "{n}");

        // BEGIN through the extended protocol (pgtenant answers it while it holds it).
        b.send(&[parse("", "begin", &[]), bind("", "", &[]), execute("")]);
        assert!(b.nothing_within(QUIET), "{n}: BEGIN answered before Sync");
        assert_eq!(tags(&b.exchange(&[sync()])), "12CZ", "{n}");
        let last = b.exchange(&[query("commit")]);
        assert_eq!(tags(&last), "CZ", "{n}");
        assert_eq!(last[1].body, b"I", "{n}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 4: a client's own NOTIFY
// ---------------------------------------------------------------------------------------

#[test]
fn own_notifications_arrive_before_ready_for_query() {
    let pg = PgServer::start();
    let (targets, _pt) = targets(&pg);
    for t in &targets {
        let n = t.name;
        let mut a = login(t);
        assert_eq!(tags(&a.exchange(&[query("listen ch")])), "CZ", "{n}");
        for i in 0..20 {
            let got = a.exchange(&[query(&format!("notify ch, 'n{i}'"))]);
            assert_eq!(tags(&got), "CAZ", "{n} round {i}: {got:?}");
            assert_eq!(got[1].notification().2, format!("n{i}"), "{n}");
            let got = a.exchange(&[query("select pg_notify('ch', 'f')")]);
            assert_eq!(tags(&got), "TDCAZ", "{n} round {i}: {got:?}");
            assert_eq!(tags(&a.exchange(&[query("begin")])), "CZ", "{n}");
            assert_eq!(tags(&a.exchange(&[query("notify ch, 'tx'")])), "CZ", "{n}");
            let got = a.exchange(&[query("commit")]);
            assert_eq!(tags(&got), "CAZ", "{n} round {i}: {got:?}");
            // Extended protocol, as drivers send it.
            let got = a.exchange(&[
                parse("", "select pg_notify('ch', $1)", &[]),
                bind("", "", &["x"]),
                execute(""),
                sync(),
            ]);
            assert_eq!(tags(&got), "12DCAZ", "{n} round {i}: {got:?}");
            // A rolled-back notification is never delivered.
            assert_eq!(tags(&a.exchange(&[query("begin")])), "CZ", "{n}");
            assert_eq!(tags(&a.exchange(&[query("notify ch, 'no'")])), "CZ", "{n}");
            assert_eq!(tags(&a.exchange(&[query("rollback")])), "CZ", "{n}");
        }
        // Another client's notification still arrives on its own, between answers.
        let mut b = login(t);
        assert_eq!(
            tags(&b.exchange(&[query("notify ch, 'other'")])),
            "CZ",
            "{n}"
        );
        let m = a.read_msg();
        assert_eq!(m.notification().2, "other", "{n}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 6: client_encoding as PostgreSQL spells it
// ---------------------------------------------------------------------------------------

#[test]
fn client_encoding_is_reported_in_postgresql_spelling() {
    let pg = PgServer::start();
    let (targets, _pt) = targets(&pg);
    let names = [
        "euc-jp",
        "EUC_JP",
        "iso-8859-1",
        "Latin1",
        "iso_8859_5",
        "ISO-8859-15",
        "win1252",
        "Windows-1251",
        "utf-8",
        "unicode",
        "UNICODE",
        "Unicode",
        "sql_ascii",
        "koi8",
        "KOI8-U",
        "alt",
        "tcvn5712",
        "euc_jis_2004",
        "Shift_JIS",
        "mskanji",
        "win950",
        "gb18030",
    ];
    for name in names {
        let params = |t: &Target| {
            vec![
                ("user", t.user),
                ("database", "app"),
                ("client_encoding", name),
            ]
        };
        let direct = Raw::login(targets[0].port, &params(&targets[0]));
        let want = direct.param("client_encoding").unwrap().to_string();
        for t in &targets[1..] {
            let mut r = Raw::login(t.port, &params(t));
            assert_eq!(
                r.param("client_encoding"),
                Some(want.as_str()),
                "{}: {name}",
                t.name
            );
            // The server serving it has the same setting.
            let got = r.exchange(&[query("show client_encoding")]);
            assert_eq!(tags(&got), "TDCZ", "{}: {name}: {got:?}", t.name);
            assert_eq!(got[1].value(), want, "{}: {name}", t.name);
        }
    }
    // An encoding PostgreSQL does not know: the login is refused as it refuses it.
    for t in &targets {
        let params = [
            ("user", t.user),
            ("database", "app"),
            ("client_encoding", "klingon"),
        ];
        let e = Raw::try_login(t.port, &params).err().expect("refused");
        assert_eq!(e.sqlstate(), "22023", "{}", t.name);
        assert_eq!(e.field(b'S').as_deref(), Some("FATAL"), "{}", t.name);
        assert_eq!(
            e.field(b'M').as_deref(),
            Some("invalid value for parameter \"client_encoding\": \"klingon\""),
            "{}",
            t.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// Item 7: DROP DATABASE with idle connections in the pool
// ---------------------------------------------------------------------------------------

/// Backends connected to `db` (pgtenant's idle server connections among them).
fn backends_on(pg: &PgServer, db: &str) -> i64 {
    pg.psql_ok(&format!(
        "select count(*) from pg_stat_activity where datname = '{db}'"
    ))
    .parse()
    .unwrap()
}

#[test]
fn drop_database_works_with_idle_connections_in_the_pool() {
    let pg = PgServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for mode in ["session", "transaction"] {
        let (pt, _d) = start(&pg, mode, 2);
        let ways = [
            ("simple", "DROP DATABASE {db}"),
            ("extended", "DROP DATABASE {db}"),
            (
                "commented",
                "/* cleanup */ DROP DATABASE IF EXISTS \"{db}\" ;",
            ),
        ];
        for (way, sql) in ways {
            let db = format!("dropme_{mode}_{way}");
            pg.psql_ok(&format!("CREATE DATABASE {db} OWNER app"));
            rt.block_on(async {
                // A client of that database leaves an idle server connection behind.
                let c = support::connect(&pt.url("app", "", &db)).await;
                c.simple_query("select 1").await.unwrap();
                drop(c);
                let t0 = Instant::now();
                while backends_on(&pg, &db) == 0 && t0.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert_eq!(backends_on(&pg, &db), 1, "{mode}/{way}: pooled connection");
                let c = support::connect(&pt.url("app", "", "app")).await;
                let sql = sql.replace("{db}", &db);
                let r = match way {
                    "extended" => c.execute(sql.as_str(), &[]).await.map(drop),
                    _ => c.simple_query(&sql).await.map(drop),
                };
                r.unwrap_or_else(|e| panic!("{mode}/{way}: {sql}: {e:?}"));
            });
            assert_eq!(
                pg.psql_ok(&format!(
                    "select count(*) from pg_database where datname = '{db}'"
                )),
                "0",
                "{mode}/{way}"
            );
        }
    }
}
