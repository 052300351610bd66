//! The backend pid a client is told, against a real PostgreSQL (issue 12, item 5).
//!
//! In session mode a client's server connection is its own for the whole session, so it
//! gets that server's BackendKeyData: the pid in it is `pg_backend_pid()`, has its row in
//! `pg_stat_activity`, is the sender pid of its notifications and what
//! `pg_terminate_backend()` ends (the client then gets one FATAL, 08006 with the server's
//! text, and is disconnected, never moved to another backend), and the real key cancels
//! through pgtenant. Transaction mode keeps pgtenant's own keys (tests/it/cancel.rs).
//!
//! Raw protocol clients (trust auth on the listener): tokio-postgres does not show the
//! BackendKeyData it received.

use crate::support;

use std::time::{Duration, Instant};

use support::{startup_packet, PgServer, Pgtenant, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// pgtenant in session mode in front of `pg` (trust auth, `pool_size`, extra TOML lines).
fn start_session_mode(pg: &PgServer, pool_size: u32, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("backend-pid-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"trust\"\npool_mode = \"session\"\n\
         pool_size = {pool_size}\n{extra}\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

type Msg = (u8, Vec<u8>);

/// A logged-in raw client and what its greeting said.
struct Raw {
    s: TcpStream,
    pid: i32,
    secret: i32,
    /// ParameterStatus (name, value) pairs of the greeting.
    params: Vec<(String, String)>,
}

impl Raw {
    /// Log in as app to database app with extra startup parameters.
    async fn login(port: u16, extra: &[(&str, &str)]) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut params = vec![("user", "app"), ("database", "app")];
        params.extend_from_slice(extra);
        s.write_all(&startup_packet(196608, &params)).await.unwrap();
        let msgs = until_ready(&mut s).await;
        assert_eq!(msgs[0], (b'R', 0i32.to_be_bytes().to_vec()), "{msgs:?}");
        let key = msgs
            .iter()
            .find(|m| m.0 == b'K')
            .unwrap_or_else(|| panic!("no BackendKeyData: {msgs:?}"));
        let params = msgs
            .iter()
            .filter(|m| m.0 == b'S')
            .map(|m| {
                let mut parts = m.1.split(|&b| b == 0);
                let k = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                let v = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                (k, v)
            })
            .collect();
        Raw {
            s,
            pid: i32::from_be_bytes(key.1[0..4].try_into().unwrap()),
            secret: i32::from_be_bytes(key.1[4..8].try_into().unwrap()),
            params,
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn send_query(&mut self, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.s.write_all(&msg(b'Q', &body)).await.unwrap();
    }

    /// Run a simple query; its messages up to ReadyForQuery.
    async fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send_query(sql).await;
        until_ready(&mut self.s).await
    }

    /// The first column of the first row of `sql`.
    async fn value(&mut self, sql: &str) -> String {
        let msgs = self.query(sql).await;
        first_value(&msgs).unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"))
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One message; `None` at end of stream (or a reset).
async fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await.ok()?;
    let len = i32::from_be_bytes(header[1..5].try_into().unwrap());
    assert!((4..=1 << 20).contains(&len), "bad length {len}");
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await.ok()?;
    Some((header[0], body))
}

/// Messages until ReadyForQuery (included); panics on EOF or after 20 s.
async fn until_ready(s: &mut TcpStream) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), read_msg(s))
            .await
            .unwrap_or_else(|_| panic!("no ReadyForQuery within 20 s: {out:?}"))
            .unwrap_or_else(|| panic!("closed before ReadyForQuery: {out:?}"));
        let done = m.0 == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

/// Every message until the peer closes; panics if it stays open longer than `timeout`.
async fn until_closed(s: &mut TcpStream, timeout: Duration) -> Vec<Msg> {
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

/// A field of an ErrorResponse ('S' severity, 'C' code, 'M' message).
fn field(body: &[u8], code: u8) -> Option<String> {
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

/// The ErrorResponses among `msgs` as (severity, code).
fn errors(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|m| {
            (
                field(&m.1, b'S').unwrap_or_default(),
                field(&m.1, b'C').unwrap_or_default(),
            )
        })
        .collect()
}

fn first_value(msgs: &[Msg]) -> Option<String> {
    let (_, b) = msgs.iter().find(|m| m.0 == b'D')?;
    let len = i32::from_be_bytes(b[2..6].try_into().unwrap());
    (len >= 0).then(|| String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned())
}

/// A NotificationResponse body: (sender pid, channel, payload).
fn notification(body: &[u8]) -> (i32, String, String) {
    let pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let mut parts = body[4..].split(|&b| b == 0);
    let channel = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    let payload = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    (pid, channel, payload)
}

/// Send a CancelRequest to pgtenant and wait until it closes the socket.
async fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut pkt = 16i32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&80877102i32.to_be_bytes());
    pkt.extend_from_slice(&pid.to_be_bytes());
    pkt.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&pkt).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("pgtenant kept the cancel socket open")
        .unwrap_or(0);
    assert_eq!(n, 0, "a cancel request gets no answer, only a close");
}

/// The state of backend `pid` in pg_stat_activity (None: no such backend).
async fn backend_state(admin: &tokio_postgres::Client, pid: i32) -> Option<String> {
    admin
        .query_opt(
            "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Wait until backend `pid` runs a statement (state active); panics after 20 s.
async fn wait_active(admin: &tokio_postgres::Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend_state(admin, pid).await.as_deref() != Some("active") {
        assert!(
            Instant::now() < deadline,
            "backend {pid} never became active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The key's pid is the server's: `pg_backend_pid()`, its pg_stat_activity row (with the
/// client's application_name), and the next client of the same server connection (pool
/// size 1) gets the same pid again (with a secret of its own, which the first client's
/// key does not match), with that server's parameters as they will be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_key_is_the_servers_own() {
    let pg = PgServer::start();
    // No reset query: what pgtenant set for the first client is still on the server
    // when the second one gets it (the greeting must say what the session will see).
    let (p, _cfg) = start_session_mode(&pg, 1, "server_reset_query = \"\"");
    let admin = pg.admin_client().await;

    // A client that leaves right after its greeting, before pgtenant's replay of its
    // startup settings was answered: its server connection is still good and is reused.
    let mut z = Raw::login(p.port(), &[("application_name", "at_once")]).await;
    z.s.write_all(&msg(b'X', &[])).await.unwrap();
    until_closed(&mut z.s, Duration::from_secs(10)).await;

    let mut a = Raw::login(p.port(), &[("application_name", "first_client")]).await;
    assert_eq!(a.pid, z.pid, "the server connection was not reused");
    assert_eq!(a.param("application_name"), Some("first_client"));
    let pid: i32 = a.value("SELECT pg_backend_pid()").await.parse().unwrap();
    assert_eq!(a.pid, pid, "BackendKeyData pid is not pg_backend_pid()");
    let row = admin
        .query_opt(
            "SELECT usename::text, datname::text, application_name FROM pg_stat_activity \
             WHERE pid = $1",
            &[&a.pid],
        )
        .await
        .unwrap()
        .expect("no pg_stat_activity row for the client's pid");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("app".into(), "app".into())
    );
    assert_eq!(row.get::<_, String>(2), "first_client");
    let (first_pid, first_secret) = (a.pid, a.secret);
    a.s.write_all(&msg(b'X', &[])).await.unwrap();
    until_closed(&mut a.s, Duration::from_secs(10)).await;

    // Pool size 1: the next client gets the same server connection, hence the same pid
    // (the first client's key is gone before the connection goes back to the pool), but
    // a secret of its own: the first client's key cancels nothing of the next one's.
    let mut b = Raw::login(p.port(), &[]).await;
    assert_eq!(b.pid, first_pid, "{}", p.logs());
    assert_ne!(
        b.secret, first_secret,
        "the next client got the first one's secret"
    );
    b.send_query("SELECT pg_sleep(1)").await;
    wait_active(&admin, b.pid).await;
    send_cancel(p.port(), first_pid, first_secret).await;
    let msgs = until_ready(&mut b.s).await;
    assert!(
        errors(&msgs).is_empty(),
        "the first client's key cancelled the next client's query: {msgs:?}"
    );
    assert_eq!(
        b.value("SELECT pg_backend_pid()").await,
        first_pid.to_string()
    );
    // The first client's application_name was reset for this one, and the greeting
    // said so.
    let shown = b.value("SHOW application_name").await;
    assert_ne!(shown, "first_client");
    assert_eq!(b.param("application_name"), Some(shown.as_str()));
}

/// A notification's sender pid is the sender's BackendKeyData pid, the listener's own
/// NOTIFY included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_sender_pid_is_the_key_pid() {
    let pg = PgServer::start();
    let (p, _cfg) = start_session_mode(&pg, 2, "");
    let mut a = Raw::login(p.port(), &[]).await;
    let mut b = Raw::login(p.port(), &[]).await;
    assert_ne!(a.pid, b.pid);

    let msgs = a.query("LISTEN pid_chan; NOTIFY pid_chan, 'from a'").await;
    let n = msgs
        .iter()
        .find(|m| m.0 == b'A')
        .unwrap_or_else(|| panic!("no notification: {msgs:?}"));
    assert_eq!(
        notification(&n.1),
        (a.pid, "pid_chan".into(), "from a".into())
    );

    b.query("NOTIFY pid_chan, 'from b'").await;
    let n = tokio::time::timeout(Duration::from_secs(10), read_msg(&mut a.s))
        .await
        .expect("no notification from b within 10 s")
        .expect("a's connection closed");
    assert_eq!(n.0, b'A', "{n:?}");
    assert_eq!(
        notification(&n.1),
        (b.pid, "pid_chan".into(), "from b".into())
    );
}

/// `pg_terminate_backend(pid)` with the pid a client was told ends that client, idle or
/// busy: it gets one FATAL, 08006 with the server's text (its 57P01 in the DETAIL, see
/// tests/it/server_lost.rs), then the connection closes; it is never moved silently to
/// another backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_pid_ends_the_client() {
    let pg = PgServer::start();
    let (p, _cfg) = start_session_mode(&pg, 3, "");
    let admin = pg.admin_client().await;
    let mut killer = Raw::login(p.port(), &[]).await;

    for busy in [false, true] {
        let mut a = Raw::login(p.port(), &[]).await;
        if busy {
            a.send_query("SELECT pg_sleep(30)").await;
            wait_active(&admin, a.pid).await;
        }
        // Another client of the same pooler, by the pid its neighbour was told.
        let sql = format!("SELECT pg_terminate_backend({})", a.pid);
        assert_eq!(killer.value(&sql).await, "t", "busy={busy}");
        let msgs = until_closed(&mut a.s, Duration::from_secs(10)).await;
        assert_eq!(
            errors(&msgs),
            vec![("FATAL".to_string(), "08006".to_string())],
            "busy={busy}: {msgs:?}"
        );
        let fatal = &msgs.iter().find(|m| m.0 == b'E').unwrap().1;
        assert_eq!(
            field(fatal, b'M').as_deref(),
            Some("terminating connection due to administrator command"),
            "busy={busy}"
        );
        assert!(
            field(fatal, b'D').is_some_and(|d| d.contains("SQLSTATE 57P01")),
            "busy={busy}: {msgs:?}"
        );
        assert!(!msgs.iter().any(|m| m.0 == b'Z'), "busy={busy}: {msgs:?}");
    }
    // The pooler goes on: a new client, a new backend.
    let mut c = Raw::login(p.port(), &[]).await;
    assert_eq!(c.value("SELECT pg_backend_pid()").await, c.pid.to_string());
    assert!(p.logs().contains("server connection lost"), "{}", p.logs());
}

/// The real key sent to pgtenant cancels the client's query within a second or two; a
/// wrong secret does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_key_cancels_through_pgtenant() {
    let pg = PgServer::start();
    let (p, _cfg) = start_session_mode(&pg, 2, "");
    let admin = pg.admin_client().await;
    let mut a = Raw::login(p.port(), &[]).await;

    a.send_query("SELECT pg_sleep(10)").await;
    // The statement runs on the backend the key names.
    wait_active(&admin, a.pid).await;
    send_cancel(p.port(), a.pid, a.secret.wrapping_add(1)).await;
    send_cancel(p.port(), a.pid, !a.secret).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backend_state(&admin, a.pid).await.as_deref(),
        Some("active"),
        "a wrong secret cancelled the query"
    );

    let sent = Instant::now();
    send_cancel(p.port(), a.pid, a.secret).await;
    let msgs = until_ready(&mut a.s).await;
    let took = sent.elapsed();
    assert_eq!(
        errors(&msgs),
        vec![("ERROR".to_string(), "57014".to_string())],
        "{msgs:?}"
    );
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    // Same connection, same backend, still usable.
    assert_eq!(a.value("SELECT pg_backend_pid()").await, a.pid.to_string());
}
