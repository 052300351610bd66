//! Memory one client can take from everyone, against a real PostgreSQL, measured as
//! pgtenant's resident size (`VmRSS` in `/proc/<pid>/status`):
//!
//! - large messages share one process-wide budget (`max_buffered_message_bytes`): six
//!   clients stalled inside a 60 MiB Query cost one budget, not six; the ones over it get
//!   `FATAL 53200` and the others go on;
//! - prepared statements no client uses any more leave the process-wide registry, and the
//!   memory goes back to the OS;
//! - logins to databases that do not exist leave no pool behind.
//!
//! Each test prints what it measured (`cargo test --test it memory:: -- --nocapture`).

use crate::support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{startup_v3, PgServer, Pgtenant, TempDir};

const MIB: usize = 1024 * 1024;

/// pgtenant in front of `pg`: trust auth (raw sockets log in as `app`), `app` in
/// admin_users, /metrics on a port of its own, plus `extra` TOML lines.
fn start(pg: &PgServer, extra: &str) -> (Pgtenant, TempDir, u16) {
    let dir = TempDir::new("memory-cfg");
    let http = support::free_port();
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"trust\"\npool_size = 4\nadmin_users = [\"app\"]\n{extra}\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start_with_metrics(&cfg, http);
    (p, dir, http)
}

/// pgtenant's resident size in bytes.
fn rss(p: &Pgtenant) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// One value of a gauge without labels from `/metrics`.
async fn metric(http: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", http)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// Wait (up to `timeout`) until `ok(value of the gauge)`; returns the last value.
async fn wait_metric(http: u16, name: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(http, name).await;
        if ok(v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raw protocol messages.
mod raw {
    use super::*;

    pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A Parse of `query` under `name`, no parameter types.
    pub fn parse(name: &str, query: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(name.len() + query.len() + 4);
        for s in [name, query] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &body)
    }

    /// The header of a Query announcing `len` bytes of body, and the first `part` of it.
    pub fn big_query_start(len: usize, part: usize) -> Vec<u8> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((len + 4) as i32).to_be_bytes());
        m.resize(5 + part, b'x');
        m
    }

    /// One message, `None` at end of stream (or a reset).
    pub async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.ok()?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        assert!((4..=MIB as i32).contains(&len), "bad length {len}");
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

    /// Messages until ReadyForQuery (included); panics on EOF or after 30 s.
    pub async fn until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), read_msg(s))
                .await
                .expect("timed out waiting for ReadyForQuery")
                .unwrap_or_else(|| panic!("closed before ReadyForQuery: {:?}", out.last()));
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Every message until pgtenant closes the connection (panics after 10 s).
    pub async fn until_closed(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), read_msg(s)).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return out,
                Err(_) => panic!("connection still open; got {out:?}"),
            }
        }
    }

    /// (severity, code, message) of the ErrorResponses among `msgs`.
    pub fn errors(msgs: &[(u8, Vec<u8>)]) -> Vec<(String, String, String)> {
        msgs.iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| {
                let f = |c| field(b, c).unwrap_or_default();
                (f(b'S'), f(b'C'), f(b'M'))
            })
            .collect()
    }

    /// Log in (trust) and wait for the first ReadyForQuery.
    pub async fn login(port: u16, user: &str, db: &str) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&startup_v3(user, db)).await.unwrap();
        let msgs = until_ready(&mut s).await;
        assert_eq!(msgs[0].0, b'R', "expected AuthenticationOk: {msgs:?}");
        s
    }
}

/// Six clients each send a Query header announcing 60 MiB and only 8 KiB of its body,
/// then stall. The first reserves 60 MiB of the 64 MiB budget; the five others get
/// `FATAL 53200 out of memory` and are closed at once, holding nothing. The first then
/// sends 40 MiB more (still not all): pgtenant holds it, and its RSS grows by about that,
/// not by six times 60 MiB. Meanwhile an ordinary client works, and a 2 MiB query fits in
/// what the budget has left; a 5 MiB one does not until the staller leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_messages_share_one_budget() {
    let pg = PgServer::start();
    let (p, _cfg, http) = start(&pg, "");
    let normal = support::connect(&p.url("app", "secret", "app")).await;
    normal.simple_query("SELECT 1").await.unwrap();
    let before = rss(&p);

    let announced = 60 * MIB;
    let mut staller = raw::login(p.port(), "app", "app").await;
    staller
        .write_all(&raw::big_query_start(announced, 8 * 1024))
        .await
        .unwrap();
    let reserved = wait_metric(
        http,
        "pgtenant_buffered_message_bytes",
        Duration::from_secs(10),
        |v| v >= announced as f64,
    )
    .await;
    assert!(reserved >= announced as f64, "reserved {reserved}");

    for i in 1..6 {
        let mut s = raw::login(p.port(), "app", "app").await;
        s.write_all(&raw::big_query_start(announced, 8 * 1024))
            .await
            .unwrap();
        let errors = raw::errors(&raw::until_closed(&mut s).await);
        assert!(
            errors.iter().any(|(sev, code, m)| sev == "FATAL"
                && code == "53200"
                && m.contains("out of memory")),
            "client {i}: expected FATAL 53200, got {errors:?}"
        );
    }

    // The staller sends 40 MiB more of its 60 MiB, and stops again.
    let chunk = vec![b'x'; MIB];
    for _ in 0..40 {
        staller.write_all(&chunk).await.unwrap();
    }
    // pgtenant reads it all (nothing else to wait for: the loopback buffers are small).
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss(&p) < before + 30 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stalled = rss(&p);

    // An ordinary client works meanwhile, a 2 MiB query too (4 MiB of budget are left).
    assert_eq!(
        support::scalar(&normal, "SELECT 40 + 2").await,
        "42",
        "a small query while the budget is full"
    );
    let two = "x".repeat(2 * MIB);
    assert_eq!(
        support::scalar(&normal, &format!("SELECT length('{two}')")).await,
        (2 * MIB).to_string()
    );
    // A 5 MiB one does not fit now.
    let mut s = raw::login(p.port(), "app", "app").await;
    s.write_all(&raw::big_query_start(5 * MIB, 8 * 1024))
        .await
        .unwrap();
    let errors = raw::errors(&raw::until_closed(&mut s).await);
    assert!(
        errors.iter().any(|(_, code, _)| code == "53200"),
        "5 MiB while 60 MiB are held: {errors:?}"
    );

    println!(
        "RSS before {:.1} MiB; one client stalled with 40 MiB of a 60 MiB message and five \
         refused: {:.1} MiB (+{:.1} MiB)",
        mib(before),
        mib(stalled),
        mib(stalled.saturating_sub(before))
    );
    assert!(
        stalled < before + 100 * MIB,
        "RSS grew by {:.1} MiB",
        mib(stalled - before)
    );
    assert!(
        stalled > before + 30 * MIB,
        "the staller's 40 MiB should be resident (RSS +{:.1} MiB): is the test measuring?",
        mib(stalled.saturating_sub(before))
    );

    // The staller leaves: its reservation goes back, a 5 MiB query now works.
    drop(staller);
    let left = wait_metric(
        http,
        "pgtenant_buffered_message_bytes",
        Duration::from_secs(10),
        |v| v == 0.0,
    )
    .await;
    assert_eq!(left, 0.0, "the staller's reservation was not given back");
    let five = "x".repeat(5 * MIB);
    let c = support::connect(&p.url("app", "secret", "app")).await;
    assert_eq!(
        support::scalar(&c, &format!("SELECT length('{five}')")).await,
        (5 * MIB).to_string()
    );
    // A large answer from the server counts while it is relayed, then is given back.
    assert_eq!(
        support::scalar(&c, "SELECT length(repeat('y', 3000000))").await,
        "3000000"
    );
    let big = c.simple_query("SELECT repeat('y', 3000000)").await.unwrap();
    assert!(big.len() >= 2);
    let left = wait_metric(
        http,
        "pgtenant_buffered_message_bytes",
        Duration::from_secs(10),
        |v| v == 0.0,
    )
    .await;
    assert_eq!(left, 0.0, "a relayed large row stayed reserved");
}

/// Ten clients prepare 100,000 distinct named statements between them (protocol-level
/// Parse with a name, answered by pgtenant without a server), then leave. Within a few
/// seconds the registry is empty again (`pgtenant_prepared_statements`) and pgtenant's RSS
/// is back within 20 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_of_clients_that_left_are_given_back() {
    // A client may hold 10,000 (session::MAX_CLIENT_STATEMENTS).
    const CLIENTS: usize = 10;
    const PER_CLIENT: usize = 10_000;
    const BATCH: usize = 1_000;
    let pg = PgServer::start();
    let (p, _cfg, http) = start(&pg, "");
    let warm = support::connect(&p.url("app", "secret", "app")).await;
    warm.simple_query("SELECT 1").await.unwrap();
    let before = rss(&p);

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let port = p.port();
        tasks.push(tokio::spawn(async move {
            let mut s = raw::login(port, "app", "app").await;
            for b in 0..PER_CLIENT / BATCH {
                let mut out = Vec::with_capacity(BATCH * 300);
                for i in 0..BATCH {
                    let n = (c * PER_CLIENT) + b * BATCH + i;
                    out.extend(raw::parse(
                        &format!("s{n}"),
                        &format!(
                            "SELECT {n} AS id, $1::text AS name, 'a statement of some length, \
                             as ORMs write them: with a few columns and a comment' AS pad \
                             /* client {c} batch {b} */"
                        ),
                    ));
                }
                out.extend(raw::msg(b'S', &[]));
                s.write_all(&out).await.unwrap();
                let msgs = raw::until_ready(&mut s).await;
                assert_eq!(
                    msgs.iter().filter(|(t, _)| *t == b'1').count(),
                    BATCH,
                    "ParseComplete per Parse: {:?}",
                    raw::errors(&msgs)
                );
            }
            s
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.unwrap());
    }
    let registered = metric(http, "pgtenant_prepared_statements").await;
    let peak = rss(&p);
    assert_eq!(registered, (CLIENTS * PER_CLIENT) as f64);

    for mut s in sockets {
        s.write_all(&raw::msg(b'X', &[])).await.unwrap();
    }
    let t = Instant::now();
    let left = wait_metric(
        http,
        "pgtenant_prepared_statements",
        Duration::from_secs(20),
        |v| v == 0.0,
    )
    .await;
    assert_eq!(left, 0.0, "statements of clients that left stay registered");
    let swept_after = t.elapsed();
    // malloc_trim runs right after the sweep that freed them (30 s: the whole suite runs
    // beside it, and the sweep and trim wait their turn on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = rss(&p);
    while after >= before + 20 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss(&p);
    }
    println!(
        "RSS before {:.1} MiB, with {registered} statements {:.1} MiB (+{:.1}), after the \
         clients left {:.1} MiB (+{:.1}); registry empty {:.1} s after they left",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(after),
        mib(after.saturating_sub(before)),
        swept_after.as_secs_f64()
    );
    assert!(
        after < before + 20 * MIB,
        "RSS stayed {:.1} MiB above the start",
        mib(after - before)
    );
    // The statement works again for a new client (a new id, prepared on demand).
    let c = support::connect(&p.url("app", "secret", "app")).await;
    let st = c.prepare("SELECT $1::int + 1").await.unwrap();
    let r = c.query_one(&st, &[&41i32]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
}

/// 3,000 logins to databases that do not exist (each refused by the server with 3D000)
/// leave no pool behind: SHOW POOLS lists only the real one again within the janitor's
/// period, and RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_to_missing_databases_leave_no_pools() {
    const LOGINS: usize = 3_000;
    const AT_ONCE: usize = 16;
    let pg = PgServer::start();
    let (p, _cfg, http) = start(&pg, "max_client_conn = 200");
    let real = support::connect(&p.url("app", "secret", "app")).await;
    real.simple_query("SELECT 1").await.unwrap();
    let before = rss(&p);

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..AT_ONCE {
        let port = p.port();
        tasks.push(tokio::spawn(async move {
            for i in (w..LOGINS).step_by(AT_ONCE) {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                // trustuser: the server refuses the database without a SCRAM exchange
                // first (4096 PBKDF2 rounds each side, slow in a debug build).
                s.write_all(&startup_v3("trustuser", &format!("missing_{i}")))
                    .await
                    .unwrap();
                let errors = raw::errors(&raw::until_closed(&mut s).await);
                assert!(
                    errors.iter().any(|(_, code, _)| code == "3D000"),
                    "login {i}: {errors:?}"
                );
            }
        }));
    }
    let mut max_pools = 0.0f64;
    while tasks.iter().any(|t| !t.is_finished()) {
        max_pools = max_pools.max(metric(http, "pgtenant_pools").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = t.elapsed();
    let during = rss(&p);

    // The janitor runs every second: give it a few.
    let pools = wait_metric(http, "pgtenant_pools", Duration::from_secs(10), |v| {
        v <= 1.0
    })
    .await;
    assert_eq!(pools, 1.0, "pools of missing databases are still there");
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let listed: Vec<String> = admin
        .simple_query("SHOW POOLS")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("database").map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(listed, vec!["app".to_string()], "SHOW POOLS");
    let lists = admin.simple_query("SHOW LISTS").await.unwrap();
    let pools_listed = lists.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get("list") == Some("pools") => {
            r.get("items").map(str::to_string)
        }
        _ => None,
    });
    assert_eq!(pools_listed.as_deref(), Some("1"), "SHOW LISTS pools");
    // The node's counters keep what the removed pools counted (they never go down).
    let failures = metric(
        http,
        "pgtenant_server_connect_failures_total{node=\"coordinator\"}",
    )
    .await;
    assert!(failures >= LOGINS as f64, "connect failures: {failures}");

    // Memory given back after the burst (pools removed, then malloc_trim): wait up to
    // 6 s for it.
    let given_back = Instant::now();
    let deadline = given_back + Duration::from_secs(6);
    let mut after = rss(&p);
    while after >= before + 16 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss(&p);
    }
    println!(
        "{LOGINS} logins to missing databases in {:.1} s; at most {max_pools} pools at once; \
         RSS before {:.1} MiB, right after {:.1} MiB (+{:.1}), {:.1} s later {:.1} MiB (+{:.1})",
        took.as_secs_f64(),
        mib(before),
        mib(during),
        mib(during.saturating_sub(before)),
        given_back.elapsed().as_secs_f64(),
        mib(after),
        mib(after.saturating_sub(before))
    );
    assert!(
        max_pools < (LOGINS / 4) as f64,
        "up to {max_pools} pools lived at once: they are not removed as they fail"
    );
    assert!(
        after < before + 16 * MIB,
        "RSS stayed {:.1} MiB above the start",
        mib(after - before)
    );
    // The real pool still works.
    real.simple_query("SELECT 1").await.unwrap();
}

/// With routing on, a Parse waits in pgtenant for its Bind (whose values tell the tenant).
/// A client that sends Parse after Parse and never a Bind does not make pgtenant keep
/// them: past 64 held messages (or 1 MiB) the transaction goes to the coordinator, where
/// they run as they come. 20 MB of Parses leave pgtenant's RSS within a few MiB, and the
/// client gets every ParseComplete at its Sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parses_held_for_a_route_are_bounded() {
    use support::citus::{CitusCluster, CitusOptions};
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 10,
        ..CitusOptions::default()
    });
    let p = cluster.start_pgtenant(&["--auth-type", "trust"]);
    let mut s = raw::login(p.port(), "app", "app").await;
    let before = rss(&p);
    let parse = raw::parse("", &format!("select 1 /* {} */", "x".repeat(2000)));
    let n = 10_000;
    let all: Vec<u8> = parse
        .iter()
        .copied()
        .cycle()
        .take(parse.len() * n)
        .collect();
    s.write_all(&all).await.unwrap();
    // pgtenant reads it all (it sends nothing back before the Sync).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss(&p).saturating_sub(before);
    s.write_all(&raw::msg(b'S', &[])).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    let completes = msgs.iter().filter(|(t, _)| *t == b'1').count();
    eprintln!(
        "{} MiB of Parses without a Bind: RSS grew {:.1} MiB",
        all.len() / MIB,
        mib(grown)
    );
    assert_eq!(completes, n, "every Parse answered at the Sync");
    assert!(
        grown < 8 * MIB,
        "held Parses kept in pgtenant: RSS grew {:.1} MiB",
        mib(grown)
    );
}

/// Answers pgtenant makes itself wait in the client's pipeline behind the server's (here
/// behind a 2 s statement): a client cannot make them large. 100 Binds of a 1 MiB
/// statement name the client never prepared each queue a 26000 error; its text shows the
/// name cut to 128 bytes, so the 100 MiB sent leave pgtenant's RSS within a few MiB (the
/// whole names would be 100 MiB), and every error still reaches the client, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_pgtenant_queues_are_small_whatever_the_client_names() {
    let pg = PgServer::start();
    let (p, _cfg, _http) = start(&pg, "");
    let mut s = raw::login(p.port(), "app", "app").await;
    let before = rss(&p);
    let mut q = b"select pg_sleep(2)".to_vec();
    q.push(0);
    s.write_all(&raw::msg(b'Q', &q)).await.unwrap();
    let n = 100;
    let name = "n".repeat(MIB);
    let mut bind = name.as_bytes().to_vec();
    bind.extend_from_slice(b"\0"); // portal ""
    bind.splice(0..0, [0u8]); // portal "" first, then the statement name
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, no result formats
    let pair = [raw::msg(b'B', &bind), raw::msg(b'S', &[])].concat();
    for _ in 0..n {
        s.write_all(&pair).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let grown = rss(&p).saturating_sub(before);
    eprintln!(
        "{n} Binds of a 1 MiB unknown name behind a running statement: RSS grew {:.1} MiB",
        mib(grown)
    );
    let mut errors = 0;
    let mut readies = 0;
    while readies < n + 1 {
        let m = tokio::time::timeout(Duration::from_secs(30), raw::read_msg(&mut s))
            .await
            .expect("answers within 30 s")
            .expect("connection open");
        match m.0 {
            b'E' => {
                let text = String::from_utf8_lossy(&m.1).into_owned();
                assert!(text.contains("26000"), "{text}");
                assert!(
                    text.contains(&format!("\"{}…\"", "n".repeat(128))),
                    "the name cut"
                );
                assert!(m.1.len() < 1024, "error of {} bytes", m.1.len());
                errors += 1;
            }
            b'Z' => readies += 1,
            _ => {}
        }
    }
    assert_eq!(errors, n);
    assert!(
        grown < 24 * MIB,
        "answers queued behind the statement hold the names: RSS grew {:.1} MiB",
        mib(grown)
    );
}

/// When held messages are full (a held BEGIN and 63 SAVEPOINTs), the next message takes
/// the transaction to the coordinator with everything held, whatever that message is:
/// an extended-protocol INSERT that comes then runs inside the client's transaction, and
/// its ROLLBACK undoes it (before, a Parse went on alone and the INSERT was committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hold_takes_the_transaction_along() {
    use support::citus::{CitusCluster, CitusOptions};
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 10,
        ..CitusOptions::default()
    });
    let admin = cluster
        .coordinator
        .client(support::SUPERUSER, support::SUPERUSER_PASSWORD, "app")
        .await;
    admin
        .batch_execute("create table held_t (x int); grant all on held_t to public")
        .await
        .unwrap();
    let p = cluster.start_pgtenant(&["--auth-type", "trust"]);
    let mut s = raw::login(p.port(), "app", "app").await;
    let simple = |sql: &str| {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        raw::msg(b'Q', &q)
    };
    let mut batch = simple("BEGIN");
    for i in 0..63 {
        batch.extend(simple(&format!("SAVEPOINT s{i}")));
    }
    s.write_all(&batch).await.unwrap();
    for _ in 0..64 {
        let msgs = raw::until_ready(&mut s).await;
        assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
    }
    let mut bind = b"\0\0\0\0\0\x01".to_vec();
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.push(b'7');
    bind.extend_from_slice(&[0, 0]);
    let batch = [
        raw::parse("", "insert into held_t values ($1::int)"),
        raw::msg(b'B', &bind),
        raw::msg(b'E', b"\0\0\0\0\0"),
        raw::msg(b'S', &[]),
    ]
    .concat();
    s.write_all(&batch).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
    assert_eq!(msgs.last().unwrap().1, b"T", "still in the transaction");
    s.write_all(&simple("ROLLBACK")).await.unwrap();
    raw::until_ready(&mut s).await;
    let n: i64 = admin
        .query_one("select count(*) from held_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the INSERT ran outside the client's transaction");
}
