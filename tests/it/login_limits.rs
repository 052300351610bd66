//! Connections that have not logged in yet, against a real PostgreSQL: they count against
//! `max_startup_clients`, not `max_client_conn`; they are closed after
//! `client_login_timeout`; and the admin console stays reachable when logged-in clients
//! fill `max_client_conn`.
//!
//! Silent sockets are plain `std::net::TcpStream`s that connect and send nothing.

use crate::support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{try_connect, PgServer, Pgtenant, TempDir};

/// Generous: the machine has 2 cores and other suites run at the same time.
const TIMEOUT: Duration = Duration::from_secs(30);

/// pgtenant with `extra` TOML lines and `app` as an admin console user.
fn start(pg: &PgServer, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("login-limits");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nadmin_users = [\"app\"]\n{extra}\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

fn silent_socket(p: &Pgtenant) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", p.port())).expect("connect to pgtenant");
    s.set_nonblocking(true).unwrap();
    s
}

/// True once pgtenant has closed the socket (EOF or reset); never blocks.
fn is_closed(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Wait until at least `n` of `socks` are closed; return how many are.
async fn wait_closed(socks: &[TcpStream], n: usize) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let closed = socks.iter().filter(|s| is_closed(s)).count();
        if closed >= n || Instant::now() > deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of database app that logs in and runs a query.
async fn app_client(p: &Pgtenant) -> tokio_postgres::Client {
    let c = tokio::time::timeout(TIMEOUT, try_connect(&p.url("app", "secret", "app")))
        .await
        .expect("login timed out")
        .unwrap_or_else(|e| panic!("login failed: {e:?}\n--- logs ---\n{}", p.logs()));
    let rows = c.simple_query("SELECT 1").await.expect("query");
    assert!(!rows.is_empty());
    c
}

/// The admin console (database pgtenant): SHOW LISTS as a map.
async fn console(p: &Pgtenant) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    tokio::time::timeout(TIMEOUT, try_connect(&p.url("app", "secret", "pgtenant")))
        .await
        .expect("admin login timed out")
}

async fn lists(c: &tokio_postgres::Client) -> std::collections::HashMap<String, u64> {
    c.simple_query("SHOW LISTS")
        .await
        .expect("SHOW LISTS")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or("").to_string(),
                r.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
            )),
            _ => None,
        })
        .collect()
}

/// (a) 60 sockets that never log in, with max_startup_clients 50 and max_client_conn
/// 10: they take no max_client_conn slot, the 10 that waited longest are closed, and a
/// real client and the admin console log in and query (the client pushing out one more),
/// as do 8 more clients up to max_client_conn.
/// The closes are logged once a second at most, not once per connection.
#[tokio::test]
async fn silent_sockets_do_not_lock_out_clients_or_the_console() {
    let pg = PgServer::start();
    let (p, _dir) = start(
        &pg,
        "max_startup_clients = 50\nmax_client_conn = 10\nclient_login_timeout = 60\n",
    );
    // The harness's readiness probe (a connect, then a close) must be gone first, or it
    // could be one of the connections counted as waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let socks: Vec<TcpStream> = (0..60).map(|_| silent_socket(&p)).collect();
    assert_eq!(
        wait_closed(&socks, 10).await,
        10,
        "beyond max_startup_clients exactly the surplus is closed"
    );

    let client = app_client(&p).await;
    let admin = console(&p)
        .await
        .unwrap_or_else(|e| panic!("admin console refused: {e:?}\n{}", p.logs()));
    // The client pushed out one more silent socket while it logged in (51 waiting), then
    // left the waiting ones: the console found a place (50) without pushing any out.
    assert_eq!(wait_closed(&socks, 11).await, 11);
    let deadline = Instant::now() + TIMEOUT;
    let l = loop {
        let l = lists(&admin).await;
        if l["login_clients"] == 49 || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(l["used_clients"], 2, "the client and the console: {l:?}");
    assert_eq!(l["login_clients"], 49, "the silent sockets left: {l:?}");
    assert_eq!(socks.iter().filter(|s| is_closed(s)).count(), 11);
    // max_client_conn (10) still has room for 8 more real clients.
    let mut more = Vec::new();
    for _ in 0..8 {
        more.push(app_client(&p).await);
    }
    assert!(client.simple_query("SELECT 2").await.is_ok());

    let logs = p.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("max_startup_clients reached"))
        .count();
    let secs = t0.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=secs).contains(&lines),
        "{lines} log lines about max_startup_clients in {secs} s\n{logs}"
    );
    drop(socks);
}

/// (b) client_login_timeout = 1: a socket that says nothing, and one that stops in the
/// middle of SCRAM, are closed after about a second; a logged-in client that stays idle
/// longer is not.
#[tokio::test]
async fn a_login_that_takes_too_long_is_closed() {
    let pg = PgServer::start();
    let (p, _dir) = start(&pg, "client_login_timeout = 1\n");
    let idle = app_client(&p).await;

    let t0 = Instant::now();
    let silent = silent_socket(&p);
    // This one gets as far as the SCRAM challenge, then says nothing more.
    let mut stalled = silent_socket(&p);
    std::io::Write::write_all(&mut stalled, &support::startup_v3("app", "app"))
        .expect("send startup");
    let socks = [silent, stalled];
    assert_eq!(wait_closed(&socks, 2).await, 2);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, expected about 1 s"
    );
    drop(socks);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        idle.simple_query("SELECT 1").await.is_ok(),
        "the timeout must not apply after login"
    );
    let logs = p.logs();
    assert!(logs.contains("client login timed out"), "{logs}");
}

/// (c) With max_client_conn filled by logged-in clients a further client gets FATAL
/// 53300, while the admin console still logs in, within a reserve of 5 (like
/// PostgreSQL's reserved connections: the console counts against max_client_conn too, and
/// may go 5 beyond it).
#[tokio::test]
async fn the_admin_console_has_a_reserve_beyond_max_client_conn() {
    let pg = PgServer::start();
    let (p, _dir) = start(&pg, "max_client_conn = 3\n");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(app_client(&p).await);
    }
    let err = match try_connect(&p.url("app", "secret", "app")).await {
        Ok(_) => panic!("a 4th client was accepted with max_client_conn 3"),
        Err(e) => e,
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert_eq!(
        db.message(),
        "no more connections allowed (max_client_conn)"
    );

    let mut consoles = Vec::new();
    for i in 0..5 {
        let c = console(&p)
            .await
            .unwrap_or_else(|e| panic!("admin console {i} refused: {e:?}"));
        let l = lists(&c).await;
        assert_eq!(l["used_clients"], 3 + i + 1, "{l:?}");
        consoles.push(c);
    }
    let err = match console(&p).await {
        Ok(_) => panic!("a 6th admin console connection went beyond the reserve"),
        Err(e) => e,
    };
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("53300"));

    // Admin console users use the ordinary slots first: with them gone and one client
    // gone, a client gets the slot back.
    drop(consoles);
    clients.pop();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match try_connect(&p.url("app", "secret", "app")).await {
            Ok(c) => {
                assert!(c.simple_query("SELECT 1").await.is_ok());
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot after a client left: {e}"),
        }
    }
}
