//! Startup settings (`options=-c …` and plain startup keys) checked and spelled as a
//! direct connection does (`frontend::startup_check`), against a real PostgreSQL: every
//! case is run directly and through pgtenant and the two must agree.

use crate::support;

use std::time::{Duration, Instant};

use support::wire::Raw;
use support::{PgServer, Pgtenant};
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// pgtenant in transaction mode, trust for clients, `pool_size` server connections,
/// `app` an admin of the console.
fn start(pg: &PgServer, pool_size: u32) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    let size = pool_size.to_string();
    Pgtenant::start(
        &[
            "run",
            "--upstream",
            &upstream,
            "--pool-mode",
            "transaction",
            "--pool-size",
            &size,
            "--auth-type",
            "trust",
            "--admin-users",
            "app",
        ],
        &[],
    )
}

/// The reported settings a driver reads, as ParameterStatus names them.
const REPORTED: [&str; 4] = [
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
];

/// What a direct connection with these `options` says: the reported settings' values
/// (SHOW gives what ParameterStatus reports), or the refusal's (SQLSTATE, message).
async fn direct(pg: &PgServer, options: &str) -> Result<Vec<String>, (String, String)> {
    let mut cfg: Config = pg.url("app", "secret", "app").parse().unwrap();
    cfg.options(options);
    match cfg.connect(NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            let mut out = Vec::new();
            for name in REPORTED {
                let row = c
                    .query_one("select current_setting($1)", &[&name])
                    .await
                    .unwrap();
                out.push(row.get::<_, String>(0));
            }
            Ok(out)
        }
        Err(e) => {
            let db = e.as_db_error().expect("a server's refusal");
            Err((db.code().code().to_string(), db.message().to_string()))
        }
    }
}

/// The same through pgtenant: the greeting's ParameterStatus values, or the refusal.
async fn pooled(port: u16, options: &str) -> Result<Vec<String>, (String, String)> {
    let options = options.to_string();
    tokio::task::spawn_blocking(move || {
        match Raw::try_login(
            port,
            &[("user", "app"), ("database", "app"), ("options", &options)],
        ) {
            Ok(r) => Ok(REPORTED
                .iter()
                .map(|n| r.param(n).unwrap_or("(not reported)").to_string())
                .collect()),
            Err(m) => Err((m.sqlstate(), m.field(b'M').unwrap_or_default())),
        }
    })
    .await
    .unwrap()
}

/// One query's single value, through a logged-in raw client.
fn value(r: &mut Raw, sql: &str) -> String {
    let msgs = r.exchange(&[support::wire::query(sql)]);
    let row = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"));
    row.value()
}

/// Accepted settings are reported as PostgreSQL spells them (psycopg refuses to load a
/// date under a DateStyle `iso`, which is what pgtenant used to report), and refused
/// ones refuse the login with PostgreSQL's SQLSTATE and message. Each case twice: the
/// second login takes the spelling from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_checked_and_spelled_as_postgres_does() {
    let pg = PgServer::start();
    let pt = start(&pg, 2);
    // (options, accepted by PostgreSQL)
    let cases = [
        ("-c datestyle=iso", true),
        ("-c datestyle=german -c timezone=europe/paris", true),
        ("-c DateStyle=sql,dmy -c TimeZone=utc", true),
        (
            "-c intervalstyle=SQL_STANDARD -c standard_conforming_strings=false",
            true,
        ),
        ("-c timezone=+02:30 -c extra_float_digits=3", true),
        ("-c search_path=public -c work_mem=8MB", true),
        ("-c timezone=foo", false),
        ("-c datestyle=foo", false),
        ("-c work_mem=lots", false),
        ("-c no_such_setting=1", false),
        ("-c session_replication_role=replica", false),
        ("-c datestyle=iso -c timezone=nowhere", false),
    ];
    for (options, accepted) in cases {
        let want = direct(&pg, options).await;
        assert_eq!(
            want.is_ok(),
            accepted,
            "{options}: PostgreSQL says {want:?}"
        );
        for round in 0..2 {
            assert_eq!(
                pooled(pt.port(), options).await,
                want,
                "{options} (round {round})"
            );
        }
    }
    // A setting that may only be given at connect: PostgreSQL refuses it for this role
    // (42501); pgtenant, which could never apply it, refuses it whatever the role.
    let got = pooled(pt.port(), "-c log_connections=on").await;
    assert!(
        matches!(&got, Err((code, m)) if code == "55P02" && m.contains("log_connections")),
        "{got:?}"
    );
    assert!(direct(&pg, "-c log_connections=on").await.is_err());

    // The session runs with what it was told; nothing of the checks stays on the pool's
    // connections (a local setting each), seen by a client with no settings.
    let port = pt.port();
    tokio::task::spawn_blocking(move || {
        let mut a = Raw::login(
            port,
            &[
                ("user", "app"),
                ("database", "app"),
                ("options", "-c datestyle=german -c timezone=europe/paris"),
            ],
        );
        assert_eq!(value(&mut a, "show datestyle"), "German, DMY");
        assert_eq!(value(&mut a, "show timezone"), "Europe/Paris");
        for _ in 0..4 {
            let mut b = Raw::connect(port);
            assert_eq!(value(&mut b, "show datestyle"), "ISO, MDY");
            assert_ne!(value(&mut b, "show work_mem"), "8MB");
            assert_ne!(value(&mut b, "show search_path"), "public");
            assert_ne!(value(&mut b, "show timezone"), "Europe/Paris");
        }
    })
    .await
    .unwrap();
}

/// An application_name that is not plain ASCII, or too long, is reported as the server
/// keeps it (PostgreSQL 15 replaces each byte outside printable ASCII by `?` and cuts at
/// 63 bytes); a plain one as it is. A cut one comes with the server's notice ("identifier
/// … will be truncated", 42622) before ReadyForQuery, as on a direct connection (a
/// driver's test suite checks it), at every login, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_is_reported_as_the_server_keeps_it() {
    let pg = PgServer::start();
    let pt = start(&pg, 2);
    for name in [
        "psql".to_string(),
        format!("héllo-{}", "x".repeat(80)),
        "tab\there".to_string(),
        "x".repeat(63),
        "y".repeat(70),
        "y".repeat(70),
    ] {
        let mut cfg: Config = pg.url("app", "secret", "app").parse().unwrap();
        cfg.application_name(&name);
        let (c, mut conn) = cfg.connect(NoTls).await.unwrap();
        // The notices the direct connection raised (its login's: `show` raises none), as
        // (SQLSTATE, message), once the client is dropped and the connection ends.
        let direct_notices = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let AsyncMessage::Notice(n) = m {
                    seen.push((n.code().code().to_string(), n.message().to_string()));
                }
            }
            seen
        });
        let want: String = c
            .query_one("show application_name", &[])
            .await
            .unwrap()
            .get(0);
        drop(c);
        let want_notices = direct_notices.await.unwrap();
        let port = pt.port();
        let n = name.clone();
        let (got, got_notices) = tokio::task::spawn_blocking(move || {
            let r = Raw::login(
                port,
                &[
                    ("user", "app"),
                    ("database", "app"),
                    ("application_name", &n),
                ],
            );
            let notices: Vec<(String, String)> = r
                .notices
                .iter()
                .map(|m| {
                    (
                        m.field(b'C').unwrap_or_default(),
                        m.field(b'M').unwrap_or_default(),
                    )
                })
                .collect();
            (r.param("application_name").map(str::to_string), notices)
        })
        .await
        .unwrap();
        assert_eq!(got.as_deref(), Some(want.as_str()), "{name:?}");
        assert_eq!(got_notices, want_notices, "{name:?}");
        if name.len() > 63 {
            assert_eq!(got_notices.len(), 1, "{name:?}: {got_notices:?}");
            assert_eq!(got_notices[0].0, "42622");
        } else {
            assert!(got_notices.is_empty(), "{name:?}: {got_notices:?}");
        }
    }
}

/// A pair seen once is spelled from the cache: its next login needs no server
/// connection, while a new pair waits for one (here held in a transaction by another
/// client), and gets it when that client commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_setting_logs_in_without_a_server_and_a_new_one_waits_for_one() {
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let port = pt.port();
    tokio::task::spawn_blocking(move || {
        let login = move |tz: &str| {
            Raw::login(
                port,
                &[("user", "app"), ("database", "app"), ("TimeZone", tz)],
            )
        };
        drop(login("Asia/Tokyo"));
        let mut holder = Raw::connect(port);
        holder.exchange(&[support::wire::query("begin; select 1")]);
        let t0 = Instant::now();
        let known = login("Asia/Tokyo");
        assert_eq!(known.param("TimeZone"), Some("Asia/Tokyo"));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let r = login("america/new_york");
            (t.elapsed(), r.param("TimeZone").map(str::to_string))
        });
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            !waiter.is_finished(),
            "a new pair was checked without a server"
        );
        holder.exchange(&[support::wire::query("commit")]);
        let (waited, tz) = waiter.join().unwrap();
        // It waited for the commit (its clock starts a moment after the sleep does).
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert_eq!(tz.as_deref(), Some("America/New_York"));
    })
    .await
    .unwrap();
}

/// While the database is paused no login touches a server connection: a new setting is
/// taken as written (PAUSE must not wait for a login's check, nor the login for RESUME);
/// once resumed, the same login is checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_database_takes_logins_unchecked() {
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let port = pt.port();
    tokio::task::spawn_blocking(move || {
        let mut admin = Raw::login(port, &[("user", "app"), ("database", "pgtenant")]);
        let answer = admin.exchange(&[support::wire::query("PAUSE app")]);
        assert!(answer.iter().all(|m| m.tag != b'E'), "{answer:?}");
        let tz = [
            ("user", "app"),
            ("database", "app"),
            ("TimeZone", "pacific/auckland"),
        ];
        let t0 = Instant::now();
        let r = Raw::login(port, &tz);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(r.param("TimeZone"), Some("pacific/auckland"));
        let answer = admin.exchange(&[support::wire::query("RESUME app")]);
        assert!(answer.iter().all(|m| m.tag != b'E'), "{answer:?}");
        let r = Raw::login(port, &tz);
        assert_eq!(r.param("TimeZone"), Some("Pacific/Auckland"));
    })
    .await
    .unwrap();
}

/// The check runs with no other client's message level in force: a server connection
/// another client left at `client_min_messages = warning` does not hide the truncation
/// notice from the next login (nor get its pair cached without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_message_level_does_not_hide_the_login_notice() {
    let pg = PgServer::start();
    let pt = start(&pg, 1);
    let port = pt.port();
    tokio::task::spawn_blocking(move || {
        let mut other = Raw::connect(port);
        other.exchange(&[support::wire::query("set client_min_messages = warning")]);
        other.exchange(&[support::wire::query("select 1")]);
        for _ in 0..2 {
            let name = "z".repeat(70);
            let r = Raw::login(
                port,
                &[
                    ("user", "app"),
                    ("database", "app"),
                    ("application_name", &name),
                ],
            );
            let codes: Vec<String> = r
                .notices
                .iter()
                .map(|m| m.field(b'C').unwrap_or_default())
                .collect();
            assert_eq!(codes, ["42622"]);
            other.exchange(&[support::wire::query("select 1")]);
        }
    })
    .await
    .unwrap();
}
