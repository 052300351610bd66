//! Cancel requests through pgtenant (transaction mode) against a real PostgreSQL: psql's
//! Ctrl-C, tokio-postgres' cancel token, cancels that must never reach another client's
//! query, and made-up keys that must do nothing.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{connect, pg_bin, startup_v3, PgServer, Pgtenant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// pgtenant in transaction mode in front of `pg` (upstream app/secret/app).
fn pgtenant(pg: &PgServer, pool_size: u32, extra: &[&str]) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    let size = pool_size.to_string();
    let mut args = vec![
        "run",
        "--upstream",
        &upstream,
        "--pool-mode",
        "transaction",
        "--pool-size",
        &size,
    ];
    args.extend_from_slice(extra);
    Pgtenant::start(&args, &[])
}

/// Poll the server until a backend runs a statement containing `marker`.
async fn wait_until_running(pg: &PgServer, marker: &str) {
    let admin = pg.admin_client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity \
                 where state = 'active' and query like '%' || $1 || '%' \
                 and pid <> pg_backend_pid()",
                &[&marker],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "statement with {marker:?} never started on the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn psql_ctrl_c_cancels_the_query() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let mut child = Command::new(pg_bin("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &pt.port().to_string()])
        .args(["-U", "app", "-d", "app", "-c"])
        .arg("select pg_sleep(30) /* psql_ctrl_c */")
        .env("PGPASSWORD", "secret")
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    wait_until_running(&pg, "psql_ctrl_c").await;
    // The query runs; give psql a moment as a user would, then Ctrl-C.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("psql still running 15 s after SIGINT\n{}", pt.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql stderr: {stderr}"
    );
    assert!(!status.success(), "psql exits with an error status");
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");

    // The server connection is usable again.
    let c = connect(&pt.url("app", "secret", "app")).await;
    let n: i32 = c.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_cancel_token() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let c = Arc::new(connect(&pt.url("app", "secret", "app")).await);

    let runner = c.clone();
    let started = Instant::now();
    let q = tokio::spawn(async move {
        runner
            .query("select pg_sleep(30) /* tp_cancel */", &[])
            .await
    });
    wait_until_running(&pg, "tp_cancel").await;
    c.cancel_token().cancel_query(NoTls).await.unwrap();

    let r = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("query not cancelled within 10 s")
        .unwrap();
    let err = r.expect_err("cancelled query must fail");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "canceling statement due to user request"
    );
    assert!(started.elapsed() < Duration::from_secs(25));

    // The same client runs another query afterwards, and it is not cancelled.
    let row = c
        .query_one("select pg_sleep(0.3)::text, 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), 7);

    // A cancel while the client is idle: tokio-postgres's cancel_query returns once it
    // has sent the request, without waiting for the far end to act on it, so it may
    // still land on the next statement, as with PostgreSQL (seen once on a loaded
    // machine). Either way the client goes on; that a cancel acted on while idle does
    // nothing to the next statement is checked with a raw cancel that waits for the
    // close (`cancel_with_wrong_key_does_nothing`).
    c.cancel_token().cancel_query(NoTls).await.unwrap();
    match c.query_one("select pg_sleep(0.3)::text, 8", &[]).await {
        Ok(row) => assert_eq!(row.get::<_, i32>(1), 8),
        Err(e) => assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}"),
    }
    let row = c.query_one("select 9", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 9);

    // Cancel inside a transaction, in the simple protocol.
    c.batch_execute("begin").await.unwrap();
    let runner = c.clone();
    let q = tokio::spawn(async move {
        runner
            .simple_query("select pg_sleep(30) /* tp_cancel_tx */")
            .await
    });
    wait_until_running(&pg, "tp_cancel_tx").await;
    c.cancel_token().cancel_query(NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("query in a transaction not cancelled within 10 s")
        .unwrap();
    assert_eq!(
        r.unwrap_err().code(),
        Some(&SqlState::QUERY_CANCELED),
        "in a transaction"
    );
    c.batch_execute("rollback").await.unwrap();
    let n: i32 = c.query_one("select 9", &[]).await.unwrap().get(0);
    assert_eq!(n, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_never_reaches_another_client() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 1, &[]);
    let url = pt.url("app", "secret", "app");
    let a = connect(&url).await;
    let b = connect(&url).await;
    let done = Arc::new(AtomicBool::new(false));
    let cancels = Arc::new(AtomicU32::new(0));

    // A: fast queries, each followed by a cancel with A's key. A's query has finished,
    // so the only server connection may already be lent to B when the cancel arrives.
    let a_task = {
        let done = done.clone();
        let cancels = cancels.clone();
        tokio::spawn(async move {
            let token = a.cancel_token();
            let mut own_cancelled = 0u32;
            let mut ok = 0u32;
            while !done.load(Ordering::Relaxed) {
                match a.query_one("select 1", &[]).await {
                    Ok(_) => ok += 1,
                    // A cancel for A may land on A's own next query (as with PostgreSQL).
                    Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => own_cancelled += 1,
                    Err(e) => panic!("client A: {e:?}"),
                }
                token.cancel_query(NoTls).await.unwrap();
                cancels.fetch_add(1, Ordering::Relaxed);
            }
            (ok, own_cancelled)
        })
    };

    // B: 20 × pg_sleep(0.2); none may be cancelled.
    let mut b_errors = Vec::new();
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            b.query_one("select pg_sleep(0.2)::text, $1::int", &[&i]),
        )
        .await
        .expect("client B's query hung");
        match r {
            Ok(row) => assert_eq!(row.get::<_, i32>(1), i),
            Err(e) => b_errors.push(format!("{e:?}")),
        }
    }
    done.store(true, Ordering::Relaxed);
    let (a_ok, a_cancelled) = a_task.await.unwrap();
    assert!(
        b_errors.is_empty(),
        "client B's queries failed ({} of 20): {b_errors:?}",
        b_errors.len()
    );
    assert!(
        cancels.load(Ordering::Relaxed) >= 10,
        "only {} cancels sent",
        cancels.load(Ordering::Relaxed)
    );
    assert!(a_ok > 0, "client A never ran ({a_cancelled} cancelled)");
}

fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("read message header");
    let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("read message body");
    (head[0], body)
}

fn read_until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(s);
        let done = m.0 == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

fn query_msg(sql: &str) -> Vec<u8> {
    let mut v = vec![b'Q'];
    v.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    v.extend_from_slice(sql.as_bytes());
    v.push(0);
    v
}

/// Send a raw CancelRequest to 127.0.0.1:port and wait for the far end to close.
fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pkt = 16i32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&80877102i32.to_be_bytes());
    pkt.extend_from_slice(&pid.to_be_bytes());
    pkt.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&pkt).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a cancel request gets no answer, only a close");
}

#[test]
fn cancel_with_wrong_key_does_nothing() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &["--auth-type", "trust"]);
    let mut s = TcpStream::connect(("127.0.0.1", pt.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&startup_v3("app", "app")).unwrap();
    let greeting = read_until_ready(&mut s);
    let key = greeting
        .iter()
        .find(|m| m.0 == b'K')
        .map(|m| {
            (
                i32::from_be_bytes(m.1[0..4].try_into().unwrap()),
                i32::from_be_bytes(m.1[4..8].try_into().unwrap()),
            )
        })
        .expect("BackendKeyData");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    s.write_all(&query_msg("select pg_sleep(2) /* wrong_key */, 'finished'"))
        .unwrap();
    let started = Instant::now();
    rt.block_on(wait_until_running(&pg, "wrong_key"));
    // Right pid, wrong secret; made-up pids; the real server's pid with a made-up secret.
    let real_pid: i32 = rt.block_on(async {
        let admin = pg.admin_client().await;
        admin
            .query_one(
                "select pid from pg_stat_activity where query like '%wrong_key%' \
                 and state = 'active' and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    send_cancel(pt.port(), key.0, key.1.wrapping_add(1));
    send_cancel(pt.port(), key.0, !key.1);
    send_cancel(pt.port(), key.0.wrapping_add(1), key.1);
    send_cancel(pt.port(), 12345, 67890);
    send_cancel(pt.port(), real_pid, key.1);
    send_cancel(pt.port(), real_pid, 0);

    let msgs = read_until_ready(&mut s);
    let tags: String = msgs.iter().map(|m| m.0 as char).collect();
    assert_eq!(tags, "TDCZ", "query must complete normally: {msgs:?}");
    assert!(String::from_utf8_lossy(&msgs[1].1).contains("finished"));
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // Control: the right key does cancel.
    s.write_all(&query_msg("select pg_sleep(30) /* right_key */"))
        .unwrap();
    rt.block_on(wait_until_running(&pg, "right_key"));
    send_cancel(pt.port(), key.0, key.1);
    let msgs = read_until_ready(&mut s);
    let err = msgs.iter().find(|m| m.0 == b'E').expect("an ErrorResponse");
    assert!(
        String::from_utf8_lossy(&err.1).contains("C57014"),
        "{:?}",
        String::from_utf8_lossy(&err.1)
    );
    s.write_all(&query_msg("select 'alive'")).unwrap();
    let msgs = read_until_ready(&mut s);
    assert_eq!(msgs.iter().map(|m| m.0 as char).collect::<String>(), "TDCZ");

    // The right key while the client is idle, acted on (pgtenant closed the cancel
    // connection): the next statements run to their end, as on PostgreSQL.
    for i in 0..3 {
        send_cancel(pt.port(), key.0, key.1);
        s.write_all(&query_msg(&format!("select pg_sleep(0.2), 'idle_{i}'")))
            .unwrap();
        let msgs = read_until_ready(&mut s);
        let tags: String = msgs.iter().map(|m| m.0 as char).collect();
        assert_eq!(
            tags, "TDCZ",
            "a cancel while idle hit the next statement: {msgs:?}"
        );
        assert!(String::from_utf8_lossy(&msgs[1].1).contains(&format!("idle_{i}")));
    }
}
