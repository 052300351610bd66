//! auth_query (issue 14, point 3): users pgtenant does not know are looked up on the
//! server as `auth_user`, against a real PostgreSQL, with tokio-postgres and psql.
//!
//! Roles made, re-passworded, disabled or dropped after pgtenant started are honoured
//! (SCRAM and md5); every refusal is PostgreSQL's wrong-password answer; refusals are
//! remembered for `auth_query_cache_ttl`, secrets never; and the bad cases end promptly
//! with that answer and a log line: an auth_user that may not read pg_authid, a server
//! that refuses connections, one that accepts and never answers. psycopg's own
//! test_change_password scenario runs in tests/it/django.rs.

use crate::support;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{free_port, pg_bin, wait_for_port, PgServer, Pgtenant, Signal, TempDir};
use tokio_postgres::error::SqlState;

/// Generous: the machine has 2 cores and other suites run at the same time.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn url(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
}

/// Log in with tokio-postgres and return `current_user` (after a query with a parameter).
async fn login(port: u16, user: &str, password: &str, db: &str) -> String {
    try_login(port, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("login as {user} failed: {e:?}"))
}

async fn try_login(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<String, tokio_postgres::Error> {
    let (client, conn) = tokio::time::timeout(
        TIMEOUT,
        tokio_postgres::connect(&url(port, user, password, db), tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("login as {user} hung"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
        .await?;
    assert_eq!(row.get::<_, i32>(1), 42);
    Ok(row.get(0))
}

/// Log in, retrying while refused; panics unless it succeeds within `bound` (a refusal
/// remembered for auth_query_cache_ttl may stand until then).
async fn login_within(port: u16, user: &str, password: &str, db: &str, bound: Duration) {
    let t0 = Instant::now();
    loop {
        match try_login(port, user, password, db).await {
            Ok(who) => {
                assert_eq!(who, user);
                return;
            }
            Err(e) => assert!(
                t0.elapsed() < bound,
                "{user} still refused after {:?}: {e:?}",
                t0.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The login is refused exactly as PostgreSQL refuses a wrong password.
async fn assert_refused(port: u16, user: &str, password: &str, db: &str) {
    let e = try_login(port, user, password, db)
        .await
        .err()
        .unwrap_or_else(|| panic!("login as {user} with {password:?} succeeded"));
    let db_err = e
        .as_db_error()
        .unwrap_or_else(|| panic!("login as {user}: not a server error: {e:?}"));
    assert_eq!(db_err.code(), &SqlState::INVALID_PASSWORD, "{user}: {e:?}");
    assert_eq!(
        db_err.message(),
        format!("password authentication failed for user \"{user}\""),
        "{user}"
    );
}

/// pgtenant with this config; the TempDir holds the file (rewrite it, then SIGHUP).
fn start(toml: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("auth-query");
    let path = dir.config_file(toml);
    let p = Pgtenant::start(&["run", "--config", path.to_str().unwrap()], &[]);
    (p, dir)
}

/// A config with the upstream `app` and auth_user `postgres` (the superuser, whose
/// password pgtenant knows); `top` holds more top-level keys and `tables` more tables.
fn config(pg: &PgServer, top: &str, tables: &str) -> String {
    format!(
        "upstream = \"{}\"\nauth_user = \"postgres\"\n{top}\n\
         [users.postgres]\npassword = \"postgres\"\n{tables}\n",
        pg.url("app", "secret", "app")
    )
}

/// Log in with psql; Ok(current_user) or Err(stderr).
fn psql_login(port: u16, user: &str, password: &str, db: &str) -> Result<String, String> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", db, "-c", "select current_user"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// ---------------------------------------------------------------------------------------
// Roles made after start
// ---------------------------------------------------------------------------------------

/// A role created after pgtenant started logs in: with SCRAM (the secret's own salt,
/// ClientKey passed through to the server, also for a second server connection), and
/// with md5 on an md5 listener when its password is stored as md5 (which, as for users
/// of the auth_file, the SCRAM listener refuses). A name refused before the role existed
/// logs in once the refusal's auth_query_cache_ttl has passed.
#[tokio::test]
async fn roles_created_after_start_log_in() {
    let pg = PgServer::builder()
        .hba("host all late_md5 127.0.0.1/32 md5")
        .start();
    let md5_port = free_port();
    let (p, _dir) = start(&config(
        &pg,
        "auth_query_cache_ttl = 1",
        &format!("[[listener]]\nlisten = \"127.0.0.1:{md5_port}\"\nauth_type = \"md5\"\n"),
    ));
    assert!(wait_for_port(md5_port, Duration::from_secs(10)));

    // Refused while the role does not exist; remembered for a second.
    assert_refused(p.port(), "late_scram", "pw1", "app").await;
    pg.psql_ok("CREATE ROLE late_scram LOGIN PASSWORD 'pw1'");
    login_within(p.port(), "late_scram", "pw1", "app", Duration::from_secs(4)).await;
    assert_eq!(
        login(p.port(), "late_scram", "pw1", "app").await,
        "late_scram"
    );
    assert_eq!(
        psql_login(p.port(), "late_scram", "pw1", "app").as_deref(),
        Ok("late_scram")
    );
    assert_refused(p.port(), "late_scram", "pw2", "app").await;
    // A transaction held open keeps its server connection: the next client needs a
    // second server login, with the ClientKey passed through.
    let (holder, conn) = tokio_postgres::connect(
        &url(p.port(), "late_scram", "pw1", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(
        login(p.port(), "late_scram", "pw1", "app").await,
        "late_scram"
    );
    assert!(pg.count_backends("late_scram", "app").await >= 2);
    holder.batch_execute("COMMIT").await.unwrap();

    // A role whose password is stored as md5.
    pg.psql_ok("SET password_encryption = 'md5'; CREATE ROLE late_md5 LOGIN PASSWORD 'md5pw'");
    assert!(pg
        .psql_ok("SELECT rolpassword FROM pg_authid WHERE rolname = 'late_md5'")
        .starts_with("md5"));
    assert_eq!(
        login(md5_port, "late_md5", "md5pw", "app").await,
        "late_md5"
    );
    assert_eq!(
        psql_login(md5_port, "late_md5", "md5pw", "app").as_deref(),
        Ok("late_md5")
    );
    assert_refused(md5_port, "late_md5", "md5px", "app").await;
    assert_refused(p.port(), "late_md5", "md5pw", "app").await;
    // A SCRAM role on the md5 listener is asked for SCRAM (as PgBouncer does).
    assert_eq!(
        login(md5_port, "late_scram", "pw1", "app").await,
        "late_scram"
    );

    let logs = p.logs();
    assert!(
        !logs.contains("pw1") && !logs.contains("md5pw"),
        "a password in pgtenant's logs"
    );
}

// ---------------------------------------------------------------------------------------
// Changed, disabled and dropped roles
// ---------------------------------------------------------------------------------------

/// What the server says now counts: after `ALTER ROLE … PASSWORD` the old password is
/// refused and the new one works (at once: a found secret is never reused, see
/// frontend::auth_query), a dropped role, a NOLOGIN role and one whose VALID UNTIL has passed are
/// refused with the wrong-password answer at once, and a role allowed to log in again
/// logs in once the refusal's auth_query_cache_ttl (1 s here) has passed. A user the
/// config knows is never looked up.
#[tokio::test]
async fn changed_disabled_and_dropped_roles() {
    let pg = PgServer::start();
    let (p, _dir) = start(&config(&pg, "auth_query_cache_ttl = 1", ""));
    let bound = Duration::from_secs(4);
    let port = p.port();

    pg.psql_ok("CREATE ROLE churn LOGIN PASSWORD 'old'");
    assert_eq!(login(port, "churn", "old", "app").await, "churn");
    pg.psql_ok("ALTER ROLE churn PASSWORD 'new'");
    assert_refused(port, "churn", "old", "app").await;
    // The new secret's keys log pgtenant in to the server: hold one server connection
    // so that the next login needs a new one.
    let (holder, conn) =
        tokio_postgres::connect(&url(port, "churn", "new", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(login(port, "churn", "new", "app").await, "churn");
    holder.batch_execute("COMMIT").await.unwrap();
    drop(holder);

    // Disabled, then enabled again.
    pg.psql_ok("ALTER ROLE churn NOLOGIN");
    assert_refused(port, "churn", "new", "app").await;
    pg.psql_ok("ALTER ROLE churn LOGIN");
    login_within(port, "churn", "new", "app", bound).await;
    // Expired, then valid again.
    pg.psql_ok("ALTER ROLE churn VALID UNTIL '2000-01-01'");
    assert_refused(port, "churn", "new", "app").await;
    pg.psql_ok("ALTER ROLE churn VALID UNTIL 'infinity'");
    login_within(port, "churn", "new", "app", bound).await;
    // Dropped.
    pg.psql_ok("DROP ROLE churn");
    assert_refused(port, "churn", "new", "app").await;

    // Made unable to log in from the start.
    pg.psql_ok("CREATE ROLE nologin NOLOGIN PASSWORD 'pw'");
    assert_refused(port, "nologin", "pw", "app").await;
    pg.psql_ok("CREATE ROLE expired LOGIN PASSWORD 'pw' VALID UNTIL '2000-01-01'");
    assert_refused(port, "expired", "pw", "app").await;
    pg.psql_ok("CREATE ROLE nopassword LOGIN");
    assert_refused(port, "nopassword", "x", "app").await;

    // The config wins over the server, as in PgBouncer: app's password on the server
    // changes, pgtenant still checks app against its own.
    pg.psql_ok("ALTER ROLE app PASSWORD 'changed'");
    assert_refused(port, "app", "changed", "app").await;
    pg.psql_ok("ALTER ROLE app PASSWORD 'secret'");
    assert_eq!(login(port, "app", "secret", "app").await, "app");
}

// ---------------------------------------------------------------------------------------
// What is remembered
// ---------------------------------------------------------------------------------------

/// How many times the server ran auth_query for `user` (log_statement = 'all' logs the
/// parameter of each execution).
fn queries_for(pg: &PgServer, user: &str) -> usize {
    pg.log()
        .matches(&format!("parameters: $1 = '{user}'"))
        .count()
}

/// A refused name is asked once per auth_query_cache_ttl however often it is tried (a
/// client retrying in a loop does not hammer the server); a role that exists is asked at
/// every login (its secret may have changed); logins of one name at the same moment
/// share queries.
#[tokio::test]
async fn refusals_are_remembered_secrets_are_not() {
    let pg = PgServer::builder().conf("log_statement = 'all'").start();
    let ttl = Duration::from_secs(3);
    let (p, _dir) = start(&config(&pg, "auth_query_cache_ttl = 3", ""));
    let port = p.port();

    // Tries for two thirds of the ttl (at least three): one query.
    let t0 = Instant::now();
    assert_refused(port, "ghost", "x", "app").await;
    // The refusal is remembered from some time between t0 and now.
    let remembered = Instant::now();
    let mut tries = 1;
    while tries < 3 || t0.elapsed() < ttl * 2 / 3 {
        assert_refused(port, "ghost", "x", "app").await;
        tries += 1;
    }
    if t0.elapsed() < ttl {
        assert_eq!(queries_for(&pg, "ghost"), 1, "{tries} tries");
    }
    tokio::time::sleep(
        (remembered + ttl + Duration::from_millis(100)).saturating_duration_since(Instant::now()),
    )
    .await;
    let before = queries_for(&pg, "ghost");
    assert_refused(port, "ghost", "x", "app").await;
    assert_eq!(
        queries_for(&pg, "ghost"),
        before + 1,
        "the refusal outlived its ttl"
    );

    pg.psql_ok("CREATE ROLE real LOGIN PASSWORD 'pw'");
    for _ in 0..3 {
        assert_eq!(login(port, "real", "pw", "app").await, "real");
    }
    assert_refused(port, "real", "wrong", "app").await;
    assert_eq!(queries_for(&pg, "real"), 4);

    // Twenty logins at once: all in, and no more queries than logins.
    let logins: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { login(port, "real", "pw", "app").await }))
        .collect();
    for l in logins {
        assert_eq!(l.await.unwrap(), "real");
    }
    let n = queries_for(&pg, "real") - 4;
    assert!((1..=20).contains(&n), "{n} queries for 20 logins");
    eprintln!("20 simultaneous logins: {n} queries");
    // The lookups ran on pgtenant's own connections, at most two of them.
    let lookups: i64 = pg
        .psql_ok(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtenant auth_query'",
        )
        .parse()
        .unwrap();
    assert!((1..=2).contains(&lookups), "{lookups} lookup connections");
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/// auth_user is a plain role, which may not read pg_authid: the login gets the
/// wrong-password answer at once, and the log says why. A SECURITY DEFINER function
/// (PgBouncer's documented way) put into auth_query with a reload fixes it.
#[tokio::test]
async fn auth_user_without_rights() {
    let pg = PgServer::start();
    pg.psql_ok("CREATE ROLE lookup LOGIN PASSWORD 'lookpw'");
    pg.psql_ok("CREATE ROLE victim LOGIN PASSWORD 'pw'");
    let toml = |query: &str| {
        format!(
            "upstream = \"{}\"\nauth_user = \"lookup\"\n{query}\n\
             [users.lookup]\npassword = \"lookpw\"\n",
            pg.url("app", "secret", "app")
        )
    };
    let (p, dir) = start(&toml(""));
    let port = p.port();

    let t0 = Instant::now();
    assert_refused(port, "victim", "pw", "app").await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("auth_query lookup failed"))
        .unwrap_or_else(|| panic!("no warning in the logs:\n{logs}"));
    for want in [
        "WARN",
        "victim",
        "lookup",
        "permission denied for table pg_authid",
        "superuser",
        "SECURITY DEFINER",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    // More tries: the same answer, and not one warning each.
    for _ in 0..5 {
        assert_refused(port, "victim", "pw", "app").await;
    }
    let warnings = p.logs().matches("auth_query lookup failed").count();
    assert_eq!(warnings, 1, "{}", p.logs());

    // PgBouncer's recipe: a function owned by a superuser, executable by auth_user.
    let out = pg.psql(&[
        "-d",
        "app",
        "-c",
        "CREATE FUNCTION public.user_lookup(i_username text, OUT uname name, OUT phash text) \
         RETURNS record AS $$ SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
         ELSE rolpassword END FROM pg_authid WHERE rolname = i_username AND rolcanlogin $$ \
         LANGUAGE sql SECURITY DEFINER; \
         REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; \
         GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO lookup;",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.config_file(&toml(
        "auth_query = \"SELECT uname, phash FROM public.user_lookup($1)\"",
    ));
    p.signal(Signal::Hup);
    p.wait_for_log("configuration reloaded", TIMEOUT);
    assert_eq!(login(port, "victim", "pw", "app").await, "victim");
    // The function returns a row of NULLs for an unknown name: refused.
    assert_refused(port, "nobody", "pw", "app").await;
}

/// An auth_query whose answer is larger than any user's row (here 200,000 rows, as a
/// wrong query or a hostile server would send) fails the lookup with a warning that
/// says why; pgtenant keeps at most 1 MiB of it, and logins of other users work.
#[tokio::test]
async fn an_oversized_auth_query_answer_is_refused() {
    let pg = PgServer::start();
    pg.psql_ok("CREATE ROLE victim LOGIN PASSWORD 'pw'");
    let (p, _dir) = start(&config(
        &pg,
        "auth_query = \"SELECT usename, passwd FROM pg_shadow, generate_series(1,          CASE WHEN $1 = 'victim' THEN 200000 ELSE 1 END) WHERE usename = $1\"",
        "",
    ));
    let port = p.port();
    let Err(e) = try_login(port, "victim", "pw", "app").await else {
        panic!("a login whose lookup answer is too large is refused");
    };
    assert!(e.as_db_error().is_some(), "{e:?}");
    p.wait_for_log("over 1048576 bytes", TIMEOUT);
    // The lookup connection stays usable for the next user.
    pg.psql_ok("CREATE ROLE other LOGIN PASSWORD 'opw'");
    assert_eq!(login(port, "other", "opw", "app").await, "other");
}

/// A peer that sends startup packets with ever new user names and closes at once does
/// not delay other logins: a lookup whose logins have all gone gives up its turn. Here
/// each lookup of an unknown name takes 0.3 s and two run at once, so 40 such names
/// queued 6 s of lookups ahead of the real user (whose login then timed out).
#[tokio::test]
async fn lookups_nobody_waits_for_give_up_their_turn() {
    use std::io::Write;
    let pg = PgServer::start();
    pg.psql_ok("CREATE ROLE victim LOGIN PASSWORD 'pw'");
    let (p, _dir) = start(&config(
        &pg,
        "auth_query = \"SELECT r.usename, r.passwd FROM (SELECT $1::text AS n,          pg_sleep(CASE WHEN $1 = 'victim' THEN 0 ELSE 0.3 END) AS z) q          LEFT JOIN pg_shadow r ON r.usename = q.n\"",
        "",
    ));
    let port = p.port();
    login(port, "victim", "pw", "app").await;
    for i in 0..40 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", format!("flood_{i}")), ("database", "app".into())] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        s.write_all(&pkt).unwrap();
        drop(s);
    }
    // Let pgtenant read every startup packet and queue its lookup.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The refused name stays remembered; a new role is looked up behind the flood.
    pg.psql_ok("CREATE ROLE late LOGIN PASSWORD 'lpw'");
    let t0 = Instant::now();
    assert_eq!(login(port, "late", "lpw", "app").await, "late");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "a login behind 40 abandoned lookups took {took:?}"
    );
}

/// A TCP server that accepts and never answers; counts the connections open at once.
struct Deaf {
    port: u16,
    max_open: Arc<AtomicUsize>,
}

fn deaf_server() -> Deaf {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let max_open = Arc::new(AtomicUsize::new(0));
    let max = max_open.clone();
    std::thread::spawn(move || {
        let mut open: Vec<std::net::TcpStream> = Vec::new();
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_nonblocking(true).unwrap();
            open.push(s);
            // Count those still open a moment later: a connection pgtenant closed just
            // before it opened this one may not have delivered its end of stream yet
            // on a loaded machine. A lookup that holds its connection stays for 1 s.
            std::thread::sleep(Duration::from_millis(50));
            open.retain_mut(|c| {
                let mut buf = [0u8; 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(_) => return false,
                    }
                }
            });
            max.fetch_max(open.len(), Ordering::SeqCst);
        }
    });
    Deaf { port, max_open }
}

/// A server that refuses connections, and one that accepts and never answers: every
/// login of an unknown user gets the wrong-password answer within the lookup's bound
/// (half of client_login_timeout, at most server_connect_timeout: 1 s here), never a
/// hang or a closed socket (which client_login_timeout, 6 s, would give), and lookups
/// never hold more than two connections at once.
#[tokio::test]
async fn unreachable_server() {
    // Nothing listens on this port.
    let closed = free_port();
    let toml = |port: u16| {
        format!(
            "upstream = \"postgres://app:secret@127.0.0.1:{port}/app\"\n\
             auth_user = \"app\"\nrouting = \"off\"\n\
             client_login_timeout = 6\nserver_connect_timeout = 1\n"
        )
    };
    let (p, _dir) = start(&toml(closed));
    let t0 = Instant::now();
    assert_refused(p.port(), "someone", "pw", "app").await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    p.wait_for_log("auth_query lookup failed", TIMEOUT);
    assert!(
        p.logs()
            .contains("cannot log in to the server as auth_user"),
        "{}",
        p.logs()
    );

    let deaf = deaf_server();
    let (p, _dir2) = start(&toml(deaf.port));
    let port = p.port();
    let t0 = Instant::now();
    assert_refused(port, "alone", "pw", "app").await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    // Ten at once (each one's 28P01 proves its lookup ended before its login timeout).
    let logins: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(
                async move { assert_refused(port, &format!("user{i}"), "pw", "app").await },
            )
        })
        .collect();
    for l in logins {
        l.await.unwrap();
    }
    p.wait_for_log("auth_query lookup failed", TIMEOUT);
    let max = deaf.max_open.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} lookup connections at once");
}

/// `DROP DATABASE` through pgtenant of a database where a lookup connection waits for
/// the next lookup: that connection is closed first, as the pools' are.
#[tokio::test]
async fn drop_database_closes_lookup_connections() {
    let pg = PgServer::start();
    let (p, _dir) = start(&config(&pg, "", ""));
    pg.psql_ok("CREATE ROLE dropper LOGIN PASSWORD 'pw'");
    pg.psql_ok("CREATE DATABASE scratch");
    assert_eq!(login(p.port(), "dropper", "pw", "scratch").await, "dropper");
    let n: i64 = pg
        .psql_ok(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'pgtenant auth_query' AND datname = 'scratch'",
        )
        .parse()
        .unwrap();
    assert_eq!(n, 1, "no lookup connection kept in scratch");
    let (admin, conn) = tokio_postgres::connect(
        &url(p.port(), "postgres", "postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("DROP DATABASE scratch")
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE: {e:?}"));
}

/// auth_user must have a password pgtenant can log in with; otherwise pgtenant does not
/// start, and says why.
#[test]
fn auth_user_needs_a_usable_password() {
    let dir = TempDir::new("auth-query-config");
    for (extra, why) in [
        ("auth_user = \"nobody\"\n", "'nobody' has no password"),
        (
            "auth_user = \"verifier\"\n[users.verifier]\npassword = \"SCRAM-SHA-256$4096:c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
            "'verifier' has only a SCRAM-SHA-256 secret",
        ),
    ] {
        let path = dir.config_file(&format!(
            "upstream = \"postgres://app:secret@127.0.0.1:1/app\"\n{extra}"
        ));
        let (status, out) = support::pgtenant_run(
            &["run", "--config", path.to_str().unwrap()],
            &[],
            TIMEOUT,
        );
        assert!(!status.success(), "started:\n{out}");
        assert!(out.contains("auth_user: ") && out.contains(why), "{out}");
    }
}

/// `auth_user` of a `[databases]` entry: unknown roles are looked up for that entry's
/// clients only (in the entry's own database), and refused for an entry without one when
/// no global auth_user is set.
#[tokio::test]
async fn auth_user_per_database_entry() {
    let pg = PgServer::start();
    pg.psql_ok("CREATE ROLE per_entry LOGIN PASSWORD 'pe1'");
    let (p, _dir) = start(&format!(
        "upstream = \"{}\"\n\
         [users.postgres]\npassword = \"postgres\"\n\
         [databases.app]\nauth_user = \"postgres\"\n\
         [databases.closed]\ndbname = \"app\"\n",
        pg.url("app", "secret", "app")
    ));
    assert_eq!(
        login(p.port(), "per_entry", "pe1", "app").await,
        "per_entry"
    );
    assert_refused(p.port(), "per_entry", "wrong", "app").await;
    assert_refused(p.port(), "per_entry", "pe1", "closed").await;
}
