//! Isolation between clients in transaction and statement mode, against a real
//! PostgreSQL: with pool_size 1 two clients share one server connection, and nothing of
//! client A's session — role, session authorization, settings however they were made,
//! prepared statements, temp tables, held cursors, session advisory locks — reaches
//! client B, while A keeps its own. Also: the prepared-statement hijack through
//! pgtenant's own statement names, `select 1; deallocate all`, DISCARD ALL, the session
//! check's metric, backpressure on a Sync flood, and clients whose encoding is not UTF-8.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant};

use support::wire::*;
use support::{PgServer, Pgtenant, TempDir};
use tokio_postgres::{Client, SimpleQueryMessage};

const MODES: [&str; 2] = ["transaction", "statement"];

/// Roles, tables and functions the attacks use (created directly on PostgreSQL).
const SETUP: &str = "
CREATE ROLE priv NOLOGIN;
GRANT priv TO app;
ALTER ROLE app NOINHERIT;
CREATE TABLE priv_only(secret text);
INSERT INTO priv_only VALUES ('s3cret');
REVOKE ALL ON priv_only FROM PUBLIC;
GRANT SELECT ON priv_only TO priv;
CREATE TABLE loot(v text);
GRANT ALL ON loot TO app;
CREATE TABLE items(id int primary key, v text);
INSERT INTO items VALUES (1, 'one'), (2, 'two');
GRANT ALL ON items TO app;
CREATE FUNCTION use_tenant(t text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$;
CREATE PROCEDURE tenant_proc(t text) LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.proc', t, false); END $$;
CREATE FUNCTION become_priv() RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN SET ROLE priv; END $$;
CREATE TABLE trig_t(a int);
GRANT ALL ON trig_t TO app;
CREATE FUNCTION trig_set() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.trig', 'fired', false); RETURN NEW; END $$;
CREATE TRIGGER trig_set BEFORE INSERT ON trig_t FOR EACH ROW EXECUTE FUNCTION trig_set();
";

fn server() -> PgServer {
    let pg = PgServer::start();
    let out = pg.psql(&["-v", "ON_ERROR_STOP=1", "-d", "app", "-c", SETUP]);
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg
}

/// pgtenant in `mode` with `pool_size`, the superuser known too (SET SESSION
/// AUTHORIZATION), and `extra` TOML lines.
fn start(pg: &PgServer, mode: &str, pool_size: u32, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("isolation");
    let path = dir.config_file(&format!(
        "upstream = \"{}\"\npool_mode = \"{mode}\"\npool_size = {pool_size}\n\
         admin_users = [\"app\"]\n{extra}\n\
         [users.postgres]\npassword = \"postgres\"\n",
        pg.url("app", "secret", "app")
    ));
    let path = path.to_str().expect("utf-8 path").to_string();
    (Pgtenant::start(&["run", "--config", &path], &[]), dir)
}

async fn client(pt: &Pgtenant) -> Client {
    support::connect(&pt.url("app", "secret", "app")).await
}

/// The first column of the first row (NULL as "<NULL>"), or the error's SQLSTATE as
/// "ERROR <code>".
async fn one(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(msgs) => {
            for m in msgs {
                if let SimpleQueryMessage::Row(r) = m {
                    return r.get(0).unwrap_or("<NULL>").to_string();
                }
            }
            "<no row>".into()
        }
        Err(e) => format!(
            "ERROR {}",
            e.code().map(|c| c.code().to_string()).unwrap_or_default()
        ),
    }
}

/// The backend pid serving `c` now.
async fn pid(c: &Client) -> String {
    one(c, "select pg_backend_pid()").await
}

#[tokio::test(flavor = "multi_thread")]
async fn role_and_session_authorization_stay_with_their_client() {
    let pg = server();
    for mode in MODES {
        let (pt, _d) = start(&pg, mode, 1, "");
        for set_role in [
            "SET ROLE priv",
            "select set_config('role', 'priv', false)",
            "select become_priv()",
            "DO $$ BEGIN EXECUTE 'SET ROLE priv'; END $$",
            // PostgreSQL ends a line comment at \r as well.
            "select 'x';--\rSET ROLE priv",
            "select E'\\''; SET ROLE priv; -- '",
        ] {
            let a = client(&pt).await;
            let b = client(&pt).await;
            let a_pid = pid(&a).await;
            assert!(
                !one(&a, set_role).await.starts_with("ERROR"),
                "{mode}: {set_role}"
            );
            assert_eq!(
                one(&a, "select current_user").await,
                "priv",
                "{mode}: {set_role}"
            );
            // B shares A's server connection and is not priv.
            assert_eq!(pid(&b).await, a_pid, "{mode}: one server connection");
            assert_eq!(
                one(&b, "select current_user").await,
                "app",
                "{mode}: {set_role}"
            );
            assert_eq!(
                one(&b, "select secret from priv_only").await,
                "ERROR 42501",
                "{mode}: B reads priv's table after A's {set_role}"
            );
            // A keeps its role.
            assert_eq!(
                one(&a, "select current_user").await,
                "priv",
                "{mode}: {set_role}"
            );
            assert_eq!(one(&a, "select secret from priv_only").await, "s3cret");
            assert_eq!(one(&a, "RESET ROLE").await, "<no row>");
            assert_eq!(one(&a, "select current_user").await, "app");
        }

        // SET SESSION AUTHORIZATION (a superuser's): B logs in as the superuser too.
        let su = support::connect(&pt.url("postgres", "postgres", "app")).await;
        let su2 = support::connect(&pt.url("postgres", "postgres", "app")).await;
        assert_eq!(
            one(&su, "SET SESSION AUTHORIZATION app").await,
            "<no row>",
            "{mode}"
        );
        assert_eq!(one(&su, "select session_user").await, "app");
        assert_eq!(one(&su2, "select session_user").await, "postgres", "{mode}");
        assert_eq!(one(&su2, "select current_user").await, "postgres", "{mode}");
        assert_eq!(one(&su, "select session_user").await, "app", "{mode}");
        // Identity order: a role under the session authorization travels too.
        assert_eq!(one(&su, "SET ROLE priv").await, "<no row>", "{mode}");
        assert_eq!(one(&su2, "select current_user").await, "postgres", "{mode}");
        assert_eq!(
            one(&su, "select session_user || '/' || current_user").await,
            "app/priv",
            "{mode}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_made_out_of_sight_never_reach_another_client() {
    let pg = server();
    for mode in MODES {
        let (pt, _d) = start(&pg, mode, 1, "");
        let a = client(&pt).await;
        let b = client(&pt).await;
        let t = "select coalesce(current_setting('app.tenant', true), '')";
        // The row-level-security tenant pattern: a function sets the tenant.
        one(&a, "select use_tenant('acme')").await;
        assert_eq!(one(&a, t).await, "acme", "{mode}");
        assert_eq!(one(&b, t).await, "", "{mode}: B runs with A's tenant");
        // A keeps it (its name is learned from the function's body).
        assert_eq!(one(&a, t).await, "acme", "{mode}: A lost its tenant");
        one(&b, "select use_tenant('globex')").await;
        assert_eq!(one(&a, t).await, "acme", "{mode}");
        assert_eq!(one(&b, t).await, "globex", "{mode}");

        // A computed name: never reaches B (RESET ALL before B).
        let x = "select coalesce(current_setting('app.x', true), '')";
        one(&a, "select set_config('app.' || 'x', 'leak', false)").await;
        assert_eq!(one(&b, x).await, "", "{mode}: computed setting name leaked");
        // A procedure and a DO block.
        one(&a, "CALL tenant_proc('p1')").await;
        assert_eq!(
            one(&b, "select coalesce(current_setting('app.proc', true), '')").await,
            "",
            "{mode}: CALL"
        );
        one(
            &a,
            "DO $$ BEGIN PERFORM set_config('statement_timeout', '4242', false); END $$",
        )
        .await;
        assert_eq!(one(&b, "show statement_timeout").await, "0", "{mode}: DO");
        assert_eq!(
            one(&a, "show statement_timeout").await,
            "4242ms",
            "{mode}: DO"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_are_covered_by_session_check_always() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 1, "session_check = \"always\"");
    let a = client(&pt).await;
    let b = client(&pt).await;
    one(&a, "insert into trig_t values (1)").await;
    assert_eq!(
        one(&a, "select coalesce(current_setting('app.trig', true), '')").await,
        "fired"
    );
    assert_eq!(
        one(&b, "select coalesce(current_setting('app.trig', true), '')").await,
        ""
    );
}

/// The server-side name of the statement `text` (pgtenant's `pgt_N`), read through `c`.
async fn server_name_of(c: &Client, text: &str) -> String {
    one(
        c,
        &format!("select name from pg_prepared_statements where statement = '{text}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn another_clients_statements_cannot_be_run_replaced_dropped_or_broken() {
    let pg = server();
    for mode in MODES {
        let (pt, _d) = start(&pg, mode, 1, "");
        let a = client(&pt).await;
        let b = client(&pt).await;
        let text = "select v from items where id = $1";
        let stmt = a.prepare(text).await.unwrap();
        assert_eq!(run(&a, &stmt).await, "one");
        let name = server_name_of(&b, text).await;
        assert!(name.starts_with("pgt_"), "{mode}: {name}");

        // Addressed by name: as if it did not exist.
        for sql in [
            format!("EXECUTE {name}(1)"),
            format!("DEALLOCATE {name}"),
            format!("DEALLOCATE PREPARE \"{name}\""),
            format!("select 1; EXECUTE {name}(1)"),
        ] {
            assert_eq!(one(&b, &sql).await, "ERROR 26000", "{mode}: {sql}");
        }
        assert_eq!(
            one(
                &b,
                &format!("PREPARE {name}(text) AS INSERT INTO loot VALUES ($1)")
            )
            .await,
            "ERROR 42939",
            "{mode}"
        );
        // The hijack through dynamic SQL: drop A's statement and put B's in its place.
        let hijack = format!(
            "DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; \
             EXECUTE 'PREPARE {name}(int) AS INSERT INTO loot VALUES ($1::text) RETURNING ''one''::text'; END $$"
        );
        assert_eq!(
            one(&b, &hijack).await,
            "<no row>",
            "{mode}: the DO block runs"
        );
        let r = tokio::time::timeout(Duration::from_secs(5), a.query(&stmt, &[&1i32])).await;
        if r.is_err() {
            eprintln!("LOGS {}", pt.logs());
            panic!("stuck");
        }
        assert_eq!(
            one(&b, "select count(*) from loot").await,
            "0",
            "{mode}: A's parameter reached B's statement"
        );
        // `select 1; deallocate all` from B breaks nothing of A's.
        assert_eq!(one(&b, "select 1; deallocate all").await, "1", "{mode}");
        assert_eq!(
            run(&a, &stmt).await,
            "one",
            "{mode}: after B's DEALLOCATE ALL"
        );
        assert_eq!(run(&a, &stmt).await, "one", "{mode}");
    }
}

/// A's statement, run by A: the value of item 1.
async fn run(a: &Client, stmt: &tokio_postgres::Statement) -> String {
    let rows = a.query(stmt, &[&1i32]).await.expect("A's statement");
    rows[0].get::<_, String>(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_level_names_of_other_clients_are_refused() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 1, "auth_type = \"trust\"");
    let a = client(&pt).await;
    let text = "select v from items where id = $1";
    let stmt = a.prepare(text).await.unwrap();
    a.query(&stmt, &[&2i32]).await.unwrap();
    let name = server_name_of(&a, text).await;
    let mut raw = Raw::connect(pt.port());
    // Bind to pgtenant's name, and to the unnamed statement another client left.
    let got = raw.exchange(&[bind("", &name, &["2"]), execute(""), sync()]);
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].sqlstate(), "26000");
    let got = raw.exchange(&[bind("", "", &[]), execute(""), sync()]);
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].sqlstate(), "26000");
    let got = raw.exchange(&[describe(b'S', &name), sync()]);
    assert_eq!(tags(&got), "EZ", "{got:?}");
    // The unnamed statement another client left: not described either.
    let got = raw.exchange(&[describe(b'S', ""), sync()]);
    assert_eq!(tags(&got), "EZ", "{got:?}");
    // pgtenant's names through a named Parse, or spelled with U& escapes.
    for sql in [
        format!("DEALLOCATE {name}"),
        format!("PREPARE {name}(int) AS INSERT INTO loot VALUES ($1::text)"),
        "DEALLOCATE U&\"pgt\\005f1\"".to_string(),
    ] {
        let got = raw.exchange(&[parse("mine", &sql, &[]), sync()]);
        assert_eq!(tags(&got), "EZ", "{sql}: {got:?}");
        let got = raw.exchange(&[query(&sql)]);
        assert_eq!(tags(&got), "EZ", "{sql}: {got:?}");
    }
    // A function called by oid (FunctionCall): set_config('role', 'priv', false).
    let got = raw.exchange(&[function_call(2078, &["role", "priv", "false"])]);
    assert_eq!(tags(&got)[..1].to_string(), "V", "{got:?}");
    let b = client(&pt).await;
    assert_eq!(one(&b, "select current_user").await, "app");
    let got = raw.exchange(&[query("select current_user")]);
    assert_eq!(tags(&got), "TDCZ", "{got:?}");
    assert_eq!(got[1].body[6..], b"priv"[..], "the caller keeps its role");
    // Its own unnamed statement works.
    let got = raw.exchange(&[
        parse("", "select 7", &[]),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]);
    assert_eq!(tags(&got), "12DCZ", "{got:?}");
    assert_eq!(a.query(&stmt, &[&2i32]).await.unwrap().len(), 1);
}

/// A reset query other than `DISCARD ALL` (here `DEALLOCATE ALL`, run after every
/// transaction with `server_reset_query_always`, and at the end of a session-mode client)
/// still leaves nothing of the last client's role and settings to the next: pgtenant
/// resets them itself before it forgets what the connection had. Before, it forgot
/// without resetting, and the next client ran as the last one's role with its
/// search_path.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_query_other_than_discard_all_still_resets() {
    let pg = server();
    for (mode, extra) in [
        (
            "transaction",
            "server_reset_query = \"DEALLOCATE ALL\"\nserver_reset_query_always = 1",
        ),
        ("session", "server_reset_query = \"DEALLOCATE ALL\""),
    ] {
        let (pt, _d) = start(&pg, mode, 1, extra);
        let a = client(&pt).await;
        let a_pid = pid(&a).await;
        assert!(!one(&a, "SET search_path = evil, public")
            .await
            .starts_with("ERROR"));
        assert!(!one(&a, "SET ROLE priv").await.starts_with("ERROR"));
        assert_eq!(one(&a, "select current_user").await, "priv");
        if mode == "session" {
            drop(a);
        }
        let b = client(&pt).await;
        assert_eq!(pid(&b).await, a_pid, "{mode}: one server connection");
        assert_eq!(one(&b, "select current_user").await, "app", "{mode}");
        assert_eq!(
            one(&b, "show search_path").await,
            "\"$user\", public",
            "{mode}"
        );
    }
}

/// A transaction that turns `standard_conforming_strings` off reads otherwise to the
/// server than to pgtenant's lexers (a backslash escapes a quote): what it does after
/// that is checked whole, so a temp table and an advisory lock hidden in such text pin
/// the client as any would. Before, only its settings were read back, and the next
/// client got the table (shadowing its own) and the lock.
#[tokio::test(flavor = "multi_thread")]
async fn backslash_quotes_hide_nothing_from_the_check() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 1, "query_wait_timeout = 30");
    let a = client(&pt).await;
    for sql in [
        "BEGIN",
        "SET standard_conforming_strings = off",
        r"SELECT 'x\''::text AS note INTO TEMP invoices --'",
        r"SELECT 'x\'', pg_advisory_lock(7), '\''",
        "RESET standard_conforming_strings",
        "COMMIT",
    ] {
        assert!(!one(&a, sql).await.starts_with("ERROR"), "{sql}");
    }
    let b = client(&pt).await;
    let b_task = tokio::spawn(async move {
        let r = one(
            &b,
            "select coalesce(to_regclass('invoices')::text, 'none') || ' ' || \
             (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())",
        )
        .await;
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!b_task.is_finished(), "B got A's table and lock");
    assert_eq!(pt_metric(&pt, "pgtenant_clients_pinned"), Some(1.0));
    assert!(!one(&a, "DROP TABLE invoices").await.starts_with("ERROR"));
    assert_eq!(one(&a, "select pg_advisory_unlock(7)").await, "t");
    let (r, _b) = tokio::time::timeout(Duration::from_secs(10), b_task)
        .await
        .expect("B gets the connection once A's state is gone")
        .unwrap();
    assert_eq!(r, "none 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_tables_cursors_and_locks_pin_their_client() {
    let pg = server();
    for mode in MODES {
        let (pt, _d) = start(&pg, mode, 1, "query_wait_timeout = 30");
        let a = client(&pt).await;
        let a_pid = pid(&a).await;
        for (make, fetch, gone, undo) in [
            (
                "CREATE TEMP TABLE t_a AS SELECT 42 AS v",
                "select v from t_a",
                "select count(*) from pg_class where relname = 't_a'",
                "DROP TABLE t_a",
            ),
            (
                "DECLARE c_a CURSOR WITH HOLD FOR SELECT generate_series(1, 10)",
                "FETCH 1 FROM c_a",
                "select count(*) from pg_cursors",
                "CLOSE c_a",
            ),
            (
                "select pg_advisory_lock(42)",
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
                "select pg_advisory_unlock(42)",
            ),
        ] {
            assert!(!one(&a, make).await.starts_with("ERROR"), "{mode}: {make}");
            assert_eq!(pid(&a).await, a_pid, "{mode}");
            let got = one(&a, fetch).await;
            assert!(!got.starts_with("ERROR") && got != "<no row>", "{mode}: {fetch}: {got}");
            // A is pinned: B waits for the one server connection.
            let b = client(&pt).await;
            let b_task = tokio::spawn(async move {
                let r = one(&b, gone).await;
                (r, b)
            });
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(!b_task.is_finished(), "{mode}: B got A's pinned connection");
            let pinned = pt_metric(&pt, "pgtenant_clients_pinned");
            assert_eq!(pinned, Some(1.0), "{mode}: pinned gauge");
            // A's state is still A's across transactions.
            let got = one(&a, fetch).await;
            assert!(!got.starts_with("ERROR") && got != "<no row>", "{mode}: {fetch} again: {got}");
            assert!(!one(&a, undo).await.starts_with("ERROR"), "{mode}: {undo}");
            let (r, b) = tokio::time::timeout(Duration::from_secs(10), b_task)
                .await
                .expect("B gets the connection once A's state is gone")
                .unwrap();
            assert_eq!(r, "0", "{mode}: B sees A's state ({gone})");
            assert_eq!(pid(&b).await, a_pid);
            assert_eq!(pt_metric(&pt, "pgtenant_clients_pinned"), Some(0.0));
        }

        // DISCARD ALL from a pinned client really discards (temp table, cursor, lock).
        one(&a, "CREATE TEMP TABLE t_b (x int)").await;
        one(&a, "DECLARE c_b CURSOR WITH HOLD FOR SELECT 1").await;
        one(&a, "select pg_advisory_lock(7)").await;
        assert_eq!(one(&a, "DISCARD ALL").await, "<no row>", "{mode}");
        let b = client(&pt).await;
        assert_eq!(pid(&b).await, a_pid, "{mode}: unpinned after DISCARD ALL");
        assert_eq!(
            one(
                &b,
                "select (select count(*) from pg_class where relname = 't_b') + \
                 (select count(*) from pg_cursors) + \
                 (select count(*) from pg_locks where locktype = 'advisory')"
            )
            .await,
            "0",
            "{mode}"
        );
        // A pinned client that leaves takes its state with it.
        one(&a, "CREATE TEMP TABLE t_c (x int)").await;
        drop(a);
        assert_eq!(
            one(&b, "select count(*) from pg_class where relname = 't_c'").await,
            "0",
            "{mode}"
        );
    }
}

/// A gauge from pgtenant's /metrics (its address as the log says it serves it).
fn pt_metric(pt: &Pgtenant, name: &str) -> Option<f64> {
    let logs = pt.logs();
    let addr = logs
        .lines()
        .find_map(|l| l.split("http_listen=").nth(1))?
        .split_whitespace()
        .next()?
        .to_string();
    let mut s = StdTcpStream::connect(addr.as_str()).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_flood_is_answered_with_backpressure() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 1, "auth_type = \"trust\"");
    let rss0 = rss_kib(pt.pid());
    let mut raw = Raw::connect(pt.port());
    raw.s
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // 100 MB of Sync, answers never read: pgtenant stops reading once its answers pile
    // up, and the write blocks.
    let chunk: Vec<u8> = sync().repeat(200_000);
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < 100_000_000 && Instant::now() < deadline {
        match raw.s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(pt.pid()).saturating_sub(rss0);
    assert!(
        sent < 100_000_000,
        "pgtenant read 100 MB of Syncs without their answers being read"
    );
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    // Another client is served meanwhile.
    let c = client(&pt).await;
    assert_eq!(one(&c, "select 1").await, "1");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn latin1_and_sjis_clients_work() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 2, "");
    let dir = TempDir::new("encodings");
    // (client_encoding, the query's bytes, the answer's bytes)
    let cases: [(&str, &[u8], &[u8]); 2] = [
        ("LATIN1", b"select 'caf\xe9' as v;\n", b"caf\xe9"),
        // ソ in Shift-JIS is 0x83 0x5C: its second byte is a backslash.
        ("SJIS", b"select '\x83\x5c' as v;\n", b"\x83\x5c"),
    ];
    for (enc, sql, want) in cases {
        let f = dir.path().join(format!("{enc}.sql"));
        std::fs::write(&f, sql).unwrap();
        for (label, port) in [("direct", pg.port()), ("pgtenant", pt.port())] {
            let out = std::process::Command::new(support::pg_bin("psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &port.to_string(), "-U", "app", "-d", "app", "-f"])
                .arg(&f)
                .env("PGPASSWORD", "secret")
                .env("PGCLIENTENCODING", enc)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{enc} {label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout),
                want,
                "{enc} {label}"
            );
        }
    }
    // Invalid UTF-8 from a UTF-8 client: an error, and the connection stays.
    let (pt, _d2) = start(&pg, "transaction", 2, "auth_type = \"trust\"");
    let mut raw = Raw::connect(pt.port());
    let got = raw.exchange(&[frame(b'Q', b"select '\xff'\0")]);
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].sqlstate(), "22021");
    let got = raw.exchange(&[query("select 1")]);
    assert_eq!(tags(&got), "TDCZ", "{got:?}");
}

/// Not isolation but the same tracker (issue 12, item 1): when the server's error
/// arrives before the client has sent the rest of its pipeline and its Sync, what comes
/// after is skipped by the server and owed nothing; the Sync gets its ReadyForQuery.
/// The client's writes are split at every message boundary, with a pause between.
#[test]
fn an_error_before_the_rest_of_the_pipeline_does_not_hang() {
    let pg = server();
    let (pt, _d) = start(&pg, "transaction", 1, "auth_type = \"trust\"");
    let mut raw = Raw::connect(pt.port());
    let text = "select v from items where id = $1";
    // A statement of the client's, prepared on the server.
    let got = raw.exchange(&[
        parse("good", text, &[]),
        bind("", "good", &["1"]),
        execute(""),
        sync(),
    ]);
    assert_eq!(tags(&got), "12DCZ", "{got:?}");
    let batches: Vec<Vec<Vec<u8>>> = vec![
        vec![
            parse("", "insert into nosuchtable values ($1)", &[]),
            bind("", "", &["1"]),
            execute(""),
            parse("", "insert into nosuchtable values ($1)", &[]),
            bind("", "", &["2"]),
            execute(""),
            sync(),
        ],
        // After the error: a Close pgtenant answers itself, a Bind of a statement the
        // server has: PostgreSQL skips both and answers only the Sync.
        vec![
            parse("", "select * from nosuchtable", &[]),
            describe(b'S', ""),
            bind("", "good", &["1"]),
            execute(""),
            close(b'S', "good"),
            sync(),
        ],
    ];
    for (i, batch) in batches.iter().enumerate() {
        for m in batch {
            raw.s.write_all(m).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let got = raw.read_until_ready();
        assert_eq!(tags(&got), "EZ", "batch {i}: {got:?}");
    }
    // Nothing owed is left behind: later answers are the later requests'.
    for _ in 0..4 {
        let got = raw.exchange(&[query("select 1")]);
        assert_eq!(tags(&got), "TDCZ", "{got:?}");
    }
    // The server connection went back to the pool: another client gets it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = client(&pt).await;
        assert_eq!(one(&b, "select 2").await, "2");
    });
}

/// A client's own tiny statement_timeout must not make the session check fail (it ran
/// under that timeout and was cancelled): the setting stays the client's, in every
/// transaction, and never reaches the other client of the same server connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_statement_timeout_is_kept_and_stays_with_its_client() {
    let pg = server();
    for mode in MODES {
        let (pt, _d) = start(&pg, mode, 1, "");
        let a = client(&pt).await;
        let b = client(&pt).await;
        let mut seen = 0;
        for i in 0..15 {
            // Even a SET or SHOW may run over 1 ms on a busy machine (as it would on a
            // direct connection): such a statement is retried.
            while a.simple_query("SET statement_timeout = 1").await.is_err() {}
            match one(&a, "SHOW statement_timeout").await.as_str() {
                "1ms" => seen += 1,
                "ERROR 57014" => {}
                other => panic!("{mode} round {i}: {other}"),
            }
            assert_eq!(
                one(&b, "SHOW statement_timeout").await,
                "0",
                "{mode} round {i}\n{}",
                pt.logs()
            );
            while a.simple_query("RESET statement_timeout").await.is_err() {}
            assert_eq!(
                one(&a, "SHOW statement_timeout").await,
                "0",
                "{mode} round {i}"
            );
        }
        assert!(seen > 0, "{mode}: the client never saw its own setting");
        assert!(
            !pt.logs().contains("the session check failed"),
            "{mode}: {}",
            pt.logs()
        );
    }
}
