//! Server-side pipelining under attack, against a real PostgreSQL: clients that do not
//! read, clients that leave, wait timeouts racing batch formation, the admin console in
//! the middle of a batch, statements that change the session behind pgtenant's back,
//! notices and notifications, cancels that come from elsewhere, and hundreds of waiters.
//! Whatever one client does, every other client gets exactly its own answer, in bounded
//! time, and nothing of one client's session reaches another.
use crate::pipelining::{client, hold_pool, metric, rows, start, until_waiting};
use crate::support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn console(p: &Pgtenant) -> Client {
    support::connect(&p.url("app", "secret", "pgtenant")).await
}

/// The rows of a console SHOW as column → value maps.
async fn show(admin: &Client, what: &str) -> Vec<HashMap<String, String>> {
    admin
        .simple_query(what)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// SHOW POOLS of database `app`: (cl_waiting, sv_active). (cl_active counts idle
/// clients too, as PgBouncer's does.)
async fn app_pool(admin: &Client) -> (u64, u64) {
    let rows = show(admin, "SHOW POOLS").await;
    let r = rows
        .iter()
        .find(|r| r["database"] == "app")
        .expect("a pool of app");
    let n = |k: &str| r[k].parse::<u64>().unwrap();
    (n("cl_waiting"), n("sv_active"))
}

/// Wait until nothing is active or waiting in pgtenant (SHOW POOLS, /metrics); panics
/// naming `after` otherwise.
async fn settles(p: &Pgtenant, http: u16, admin: &Client, after: &str) {
    let t = Instant::now();
    loop {
        let pool = app_pool(admin).await;
        let active = metric(http, "pgtenant_clients{state=\"active\"}").await;
        let waiting = metric(http, "pgtenant_clients{state=\"waiting\"}").await;
        if pool == (0, 0) && (active, waiting) == (0, 0) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "after {after}: SHOW POOLS (cl_waiting, sv_active) = {pool:?}, \
             clients active {active}, waiting {waiting}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client on the wire (trust login), for what a driver would not do: send a query and
/// not read, or leave half-way (and to find it in SHOW CLIENTS by its port).
struct Raw {
    s: TcpStream,
}

impl Raw {
    async fn login(p: &Pgtenant) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
        // The settings tokio-postgres logs in with: the same as its clients', so that
        // they share batches.
        let startup = support::startup_packet(
            196608,
            &[
                ("user", "app"),
                ("database", "app"),
                ("client_encoding", "UTF8"),
            ],
        );
        s.write_all(&startup).await.unwrap();
        let mut r = Raw { s };
        while r.msg().await.0 != b'Z' {}
        r
    }

    async fn query(&mut self, sql: &str) {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        self.s.write_all(&m).await.unwrap();
    }

    async fn msg(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 5];
        self.s.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).await.unwrap();
        (h[0], body)
    }
}

/// pgtenant's resident memory (kB).
fn rss_kb(p: &Pgtenant) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A statement with an answer of about 40 MB: far more than pgtenant buffers for one
/// client (256 KiB waiting for it in the batch, 256 KiB in its write buffer) and the
/// socket buffers.
const HUGE: &str = "select repeat('x', 1000) from generate_series(1, 40000)";

/// About 0.2 s of a backend's CPU (`pipelining::work`).
const WORK_200MS: u64 = 2_000_000;

type Answer = tokio::task::JoinHandle<(u32, Result<Vec<Vec<String>>, tokio_postgres::Error>)>;

/// Queue `n` tokio-postgres clients behind the held pool, each running `select <k>,
/// pg_backend_pid(), <work(n)>` once (a plain read: `pg_sleep` may only go last in a
/// batch); `before` clients wait already. Their answers: (k, result).
async fn mates(p: &Pgtenant, http: u16, n: u32, before: u64, work: u64) -> Vec<Answer> {
    let mut v = Vec::new();
    for k in 0..n {
        let c = client(p).await;
        v.push(tokio::spawn(async move {
            let sql = format!(
                "select {k}, pg_backend_pid(), {}",
                crate::pipelining::work(work)
            );
            (k, rows(&c, &sql).await)
        }));
        until_waiting(http, before + u64::from(k) + 1).await;
    }
    v
}

/// Every mate's own answer (within 20 s); the server pids that ran them.
async fn answered(p: &Pgtenant, mates: Vec<Answer>) -> Vec<String> {
    let mut pids = Vec::new();
    for m in mates {
        let (k, r) = tokio::time::timeout(Duration::from_secs(20), m)
            .await
            .unwrap_or_else(|_| panic!("a batch-mate waited for ever\n{}", p.logs()))
            .unwrap();
        let r = r.unwrap_or_else(|e| panic!("mate {k}: {e:?}"));
        assert_eq!(r[0][0], k.to_string(), "another's answer");
        pids.push(r[0][1].clone());
    }
    pids
}

/// With the pool's one connection held: a client whose statement has a huge answer
/// (`HUGE`), first in line, and three batch-mates behind it, which form one batch with it
/// once the connection is released (`release`).
async fn huge_first_in_a_batch(
    p: &Pgtenant,
    http: u16,
) -> (Vec<tokio::sync::oneshot::Sender<()>>, Raw, Vec<Answer>) {
    let release = hold_pool(p, 1).await;
    let mut first = Raw::login(p).await;
    first.query(HUGE).await;
    until_waiting(http, 1).await;
    let mates = mates(p, http, 3, 1, 1).await;
    (release, first, mates)
}

/// The pool is whole again after a client lost its session in a batch: a new client is
/// served, and the pool's counts settle.
async fn whole_again(p: &Pgtenant, http: u16, after: &str) {
    let c = client(p).await;
    assert_eq!(
        rows(&c, "select 7").await.unwrap(),
        vec![vec!["7".to_string()]]
    );
    let admin = console(p).await;
    settles(p, http, &admin, after).await;
}

/// A client that sends a statement with a huge answer and never reads it, first in a
/// batch: its batch-mates behind it on the server connection still get their answers in
/// bounded time, pgtenant's memory stays bounded, and the client that did not read loses
/// its session (it would otherwise hold its batch-mates for as long as it pleases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mate_that_never_reads_holds_the_others_only_for_a_bounded_time() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let (release, mut stalled, mates) = huge_first_in_a_batch(&p, http).await;
    let rss_before = rss_kb(&p);
    let started = Instant::now();
    for r in release {
        r.send(()).unwrap();
    }
    answered(&p, mates).await;
    let took = started.elapsed();
    eprintln!("batch-mates of a client that did not read served in {took:?}");
    let grew = rss_kb(&p).saturating_sub(rss_before);
    assert!(
        grew < 20 * 1024,
        "pgtenant grew by {grew} kB holding an answer nobody reads"
    );
    // The client that did not read: what it gets once it reads is part of its answer, then
    // the end of its session (08006), never another client's rows.
    let mut rows_seen = 0u64;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.msg()).await {
            Ok((b'D', body)) => {
                assert!(body.ends_with(&[b'x'; 1000]), "a row of its own");
                rows_seen += 1;
            }
            Ok((b'E', body)) => break body,
            Ok((b'Z', _)) => panic!("its whole answer came after all: {rows_seen} rows"),
            Ok(_) => {}
            Err(_) => panic!("its session neither ended nor answered"),
        }
    };
    let text = String::from_utf8_lossy(&end).to_string();
    assert!(text.contains("08006"), "{text}");
    assert!(rows_seen < 40000, "{rows_seen}");
    whole_again(&p, http, "a client that did not read").await;
}

/// A client that reads its huge answer slowly (a few KiB now and then: it always makes a
/// little room, so no single wait is long), first in a batch: its batch-mates still get
/// their answers within `STALL_MAX` (5 s) and a little, not after the time its whole answer
/// takes at that rate (40 MB at 400 KB/s: 100 s), and the slow client loses its session
/// (`08006`) once the batch has waited 5 s for it in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mate_that_reads_slowly_holds_the_others_only_for_a_bounded_time() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let (release, mut slow, mates) = huge_first_in_a_batch(&p, http).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 8 KiB every 20 ms, until told; then as fast as it comes, to the end of the stream.
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match slow.s.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(30), slow.s.read_to_end(&mut got)).await;
            got
        })
    };
    let started = Instant::now();
    for r in release {
        r.send(()).unwrap();
    }
    answered(&p, mates).await;
    let took = started.elapsed();
    eprintln!("batch-mates of a client that read slowly served in {took:?}");
    assert!(
        took < Duration::from_secs(9),
        "the batch-mates waited {took:?} for a slow reader"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = reader.await.unwrap();
    // Its own rows, then the end of its session (08006), never its whole answer.
    let (mut at, mut rows_seen, mut end) = (0, 0u64, None);
    while at + 5 <= got.len() {
        let len = u32::from_be_bytes(got[at + 1..at + 5].try_into().unwrap()) as usize;
        let Some(body) = got.get(at + 5..at + 1 + len) else {
            break;
        };
        match got[at] {
            b'D' => {
                assert!(body.ends_with(&[b'x'; 1000]), "a row of its own");
                rows_seen += 1;
            }
            b'E' => end = Some(String::from_utf8_lossy(body).to_string()),
            b'Z' => panic!("its whole answer came after all: {rows_seen} rows"),
            _ => {}
        }
        at += 1 + len;
    }
    let end = end.unwrap_or_else(|| panic!("no error after {rows_seen} rows"));
    assert!(end.contains("08006"), "{end}");
    assert!(rows_seen < 40000, "{rows_seen}");
    whole_again(&p, http, "a client that read slowly").await;
}

/// A client that leaves while its huge answer comes (after reading a little of it), in a
/// batch with others: they get their answers, nothing stays counted as active or
/// waiting, and the connection serves the next clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_batch_leaves_nothing_behind() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let admin = console(&p).await;
    for round in 0..2 {
        let release = hold_pool(&p, 1).await;
        let mut leaver = Raw::login(&p).await;
        leaver.query(HUGE).await;
        until_waiting(http, 1).await;
        let mates = mates(&p, http, 3, 1, 1).await;
        for r in release {
            r.send(()).unwrap();
        }
        if round == 0 {
            // Leave once the answer is coming.
            while leaver.msg().await.0 != b'D' {}
        }
        drop(leaver);
        answered(&p, mates).await;
        settles(&p, http, &admin, &format!("round {round}")).await;
    }
    let servers = show(&admin, "SHOW SERVERS").await;
    assert!(servers.len() <= 1, "{servers:?}");
    let c = client(&p).await;
    assert_eq!(
        rows(&c, "select 8").await.unwrap(),
        vec![vec!["8".to_string()]]
    );
    assert!(metric(http, "pgtenant_server_pipeline_batches_total").await >= 2);
}

/// query_wait_timeout of 0.2 s while a hog keeps the one connection busy and 40 clients
/// insert and read by turns (an insert may only be the last unit of a batch: reads come
/// before it): a client told `query_wait_timeout` never had its row inserted, and a
/// client that got an answer got its own row back and inserted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_racing_a_batch_never_runs_a_refused_statement() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "query_wait_timeout = 0.2");
    // A hog holds the pool a little longer than the wait timeout, again and again: the
    // waiters' timeouts fire around the moments it lets go and a batch forms.
    let setup = client(&p).await;
    setup
        .batch_execute("create table marks(m text)")
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hog = {
        let c = client(&p).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A transaction: never in a batch, it holds the connection.
                let _ = c
                    .batch_execute("begin; select pg_sleep(0.25); commit")
                    .await;
            }
        })
    };
    let mut tasks = Vec::new();
    for k in 0..40u32 {
        let c = client(&p).await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..8u32 {
                let m = format!("c{k}-{i}");
                let insert = (k + i) % 2 == 0;
                let sql = if insert {
                    format!("insert into marks values ('{m}') returning m")
                } else {
                    format!("select '{m}'::text")
                };
                let r = rows(&c, &sql).await;
                out.push((m, insert, r));
            }
            out
        }));
    }
    let (mut served, mut refused) = (HashMap::new(), Vec::new());
    for t in tasks {
        for (m, insert, r) in t.await.unwrap() {
            match r {
                Ok(r) => {
                    assert_eq!(r, vec![vec![m.clone()]], "{m} got another's answer");
                    if insert {
                        served.insert(m, ());
                    }
                }
                Err(e) => {
                    let db = e.as_db_error().unwrap_or_else(|| panic!("{m}: {e}"));
                    assert_eq!(
                        (db.code().code(), db.message()),
                        ("08006", "query_wait_timeout"),
                        "{m}"
                    );
                    if insert {
                        refused.push(m);
                    }
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hog.await.unwrap();
    let counts: HashMap<String, i64> = setup
        .query("select m, count(*) from marks group by m", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for m in served.keys() {
        assert_eq!(counts.get(m), Some(&1), "{m} answered: inserted once");
    }
    for m in &refused {
        assert_eq!(counts.get(m), None, "{m} was refused yet inserted");
    }
    assert_eq!(counts.len(), served.len(), "rows nobody was told of");
    let batched = metric(http, "pgtenant_server_pipelined_statements_total").await;
    eprintln!(
        "{} served, {} refused, {batched} statements batched",
        served.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty() && !served.is_empty() && batched > 0,
        "the race was not run: {} served, {} refused, {batched} batched",
        served.len(),
        refused.len()
    );
}

/// Wait until at least `n` statements have gone in batches.
async fn until_batched(http: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(http, "pgtenant_server_pipelined_statements_total").await < n {
        assert!(
            Instant::now() < deadline,
            "{n} statements never went in a batch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The console while batches run: RECONNECT (the batch finishes, its connection is not
/// reused), KILL_CLIENT of a batched client (it goes once answered, its mates stay),
/// PAUSE (returns once the batch is done; new statements wait for RESUME) and
/// `SET server_pipelining = off` (no batch forms any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_the_middle_of_a_batch() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let admin = console(&p).await;

    // RECONNECT.
    let release = hold_pool(&p, 1).await;
    let m = mates(&p, http, 4, 0, WORK_200MS).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    until_batched(http, 4).await;
    // Its clients count as active while it runs (0.8 s), not as idle.
    let t = Instant::now();
    while metric(http, "pgtenant_clients{state=\"active\"}").await < 4 {
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "batched clients shown idle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.simple_query("RECONNECT app").await.unwrap();
    let pids = answered(&p, m).await;
    assert!(pids.iter().all(|x| *x == pids[0]), "one batch: {pids:?}");
    let c = client(&p).await;
    let now = rows(&c, "select pg_backend_pid()").await.unwrap();
    assert_ne!(
        now[0][0], pids[0],
        "the connection RECONNECT marked was reused"
    );
    settles(&p, http, &admin, "RECONNECT").await;

    // KILL_CLIENT of a client whose statement is in a batch.
    let release = hold_pool(&p, 1).await;
    let before = m_batched(http).await;
    let mut victim = Raw::login(&p).await;
    let port = victim.s.local_addr().unwrap().port().to_string();
    victim
        .query(&format!(
            "select 'victim', {}",
            crate::pipelining::work(WORK_200MS * 3 / 2)
        ))
        .await;
    until_waiting(http, 1).await;
    let m = mates(&p, http, 3, 1, WORK_200MS / 2).await;
    let id = show(&admin, "SHOW CLIENTS")
        .await
        .into_iter()
        .find(|r| r["port"] == port)
        .expect("the victim in SHOW CLIENTS")["id"]
        .clone();
    release.into_iter().for_each(|r| r.send(()).unwrap());
    until_batched(http, before + 4).await;
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .unwrap();
    answered(&p, m).await;
    // Killed after its statement: its own answer, then its session ends.
    let mut seen = Vec::new();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut h = [0u8; 5];
            victim.s.read_exact(&mut h).await.ok()?;
            let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 4];
            victim.s.read_exact(&mut body).await.ok()?;
            Some((h[0], body))
        })
        .await
        .expect("KILL_CLIENT did not end the client");
        match read {
            Some(m) => seen.push(m),
            None => break,
        }
    }
    let text: Vec<String> = seen
        .iter()
        .map(|(t, b)| format!("{}:{}", *t as char, String::from_utf8_lossy(b)))
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with('D') && t.contains("victim")),
        "{text:?}"
    );
    assert!(
        text.last()
            .is_some_and(|t| t.starts_with('E') && t.contains("FATAL")),
        "{text:?}"
    );
    settles(&p, http, &admin, "KILL_CLIENT").await;

    // PAUSE while a batch runs: it returns once the batch is over.
    let release = hold_pool(&p, 1).await;
    let before = m_batched(http).await;
    let m = mates(&p, http, 4, 0, WORK_200MS).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    until_batched(http, before + 4).await;
    admin.simple_query("PAUSE app").await.unwrap();
    // Nothing runs on the server once PAUSE returned.
    assert_eq!(app_pool(&admin).await.1, 0, "PAUSE returned mid-batch");
    let running: i64 = pg
        .admin_client()
        .await
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' \
             and backend_type = 'client backend' and state <> 'idle' \
             and application_name not like 'pgtenant %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "PAUSE returned while a statement ran");
    answered(&p, m).await;
    let c = client(&p).await;
    let later = tokio::spawn(async move { rows(&c, "select 'after resume'").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!later.is_finished(), "a statement ran while paused");
    admin.simple_query("RESUME app").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("served after RESUME")
        .unwrap()
        .unwrap();
    assert_eq!(r[0][0], "after resume");
    settles(&p, http, &admin, "PAUSE/RESUME").await;

    // Pipelining turned off on the console: the same traffic forms no batch.
    admin
        .simple_query("SET server_pipelining = off")
        .await
        .unwrap();
    let batches = metric(http, "pgtenant_server_pipeline_batches_total").await;
    let release = hold_pool(&p, 1).await;
    let m = mates(&p, http, 4, 0, 1).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    answered(&p, m).await;
    assert_eq!(
        metric(http, "pgtenant_server_pipeline_batches_total").await,
        batches,
        "a batch formed with server_pipelining = off"
    );
    settles(&p, http, &admin, "SET server_pipelining = off").await;
}

async fn m_batched(http: u16) -> u64 {
    metric(http, "pgtenant_server_pipelined_statements_total").await
}

/// A reported setting changed behind pgtenant's back (a trigger calling `set_config`, which
/// no scan of the statement's text can see) by a batched statement: the ParameterStatus
/// goes to its client only, and the setting never reaches a client of a later
/// transaction on that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_changed_by_a_trigger_in_a_batch_reaches_no_later_client() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let setup = client(&p).await;
    setup
        .batch_execute(
            "create table tz_t(k int); \
             create function tz_f() returns trigger language plpgsql as $$ begin \
               perform set_config('TimeZone', 'Asia/Tokyo', false); return new; end $$; \
             create trigger tz_t before insert on tz_t for each row execute function tz_f()",
        )
        .await
        .unwrap();
    let default_tz = rows(&setup, "select current_setting('TimeZone')")
        .await
        .unwrap()[0][0]
        .clone();
    assert_ne!(default_tz, "Asia/Tokyo");
    let before = m_batched(http).await;
    let release = hold_pool(&p, 1).await;
    let m = mates(&p, http, 3, 0, 1).await;
    // Last in the batch: a write goes nowhere else.
    let mut changer = Raw::login(&p).await;
    changer.query("insert into tz_t values (1)").await;
    until_waiting(http, 4).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    answered(&p, m).await;
    // Its own client hears of the change.
    let mut told = None;
    loop {
        let (tag, body) = changer.msg().await;
        if tag == b'S' && body.starts_with(b"TimeZone\0") {
            told = Some(String::from_utf8_lossy(&body).to_string());
        }
        if tag == b'Z' {
            break;
        }
    }
    assert!(
        told.as_deref().is_some_and(|t| t.contains("Asia/Tokyo")),
        "{told:?}"
    );
    assert!(
        m_batched(http).await >= before + 4,
        "the insert was not batched"
    );
    // Later transactions of other clients, on the one connection of the pool.
    for _ in 0..3 {
        let c = client(&p).await;
        let tz = rows(&c, "select current_setting('TimeZone')")
            .await
            .unwrap();
        assert_eq!(
            tz[0][0], default_tz,
            "a batch-mate's setting reached a later client"
        );
    }
}

/// Statements whose text shows they may change the session (a session advisory lock, a
/// function of the application's that calls set_config) never share a batch, and what
/// they leave is seen by no batch-mate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_change_the_session_stay_out_of_batches() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 2, 8, "");
    let setup = client(&p).await;
    setup
        .batch_execute(
            "create function set_app() returns text language sql as \
             $$ select set_config('application_name', 'leaked', false) $$",
        )
        .await
        .unwrap();
    let release = hold_pool(&p, 2).await;
    let locker = client(&p).await;
    let l = tokio::spawn(async move {
        let r = rows(&locker, "select pg_advisory_lock(42)").await;
        (r, locker)
    });
    until_waiting(http, 1).await;
    let setter = client(&p).await;
    let s = tokio::spawn(async move {
        let r = rows(&setter, "select set_app()").await;
        (r, setter)
    });
    until_waiting(http, 2).await;
    let mut readers = Vec::new();
    for k in 0..6u32 {
        let c = client(&p).await;
        readers.push(tokio::spawn(async move {
            rows(
                &c,
                &format!(
                    "select {k}, (select count(*) from pg_locks where locktype = 'advisory' \
                     and pid = pg_backend_pid()), current_setting('application_name')"
                ),
            )
            .await
        }));
        until_waiting(http, 3 + u64::from(k)).await;
    }
    let before = m_batched(http).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    let (r, locker) = l.await.unwrap();
    r.unwrap();
    let (r, setter) = s.await.unwrap();
    assert_eq!(r.unwrap()[0][0], "leaked");
    for (k, t) in readers.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r[0][0], k.to_string());
        assert_eq!(r[0][1], "0", "reader {k} holds another's advisory lock");
        assert_ne!(r[0][2], "leaked", "reader {k} has another's setting");
    }
    // Their own sessions kept what they did.
    let held = rows(
        &locker,
        "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
    )
    .await
    .unwrap();
    assert_eq!(held[0][0], "1", "the lock holder lost its lock");
    let app = rows(&setter, "select current_setting('application_name')")
        .await
        .unwrap();
    assert_eq!(app[0][0], "leaked");
    assert!(m_batched(http).await >= before, "metrics");
    rows(&locker, "select pg_advisory_unlock(42)")
        .await
        .unwrap();
}

/// A client whose notices come to a channel.
async fn noticed_client(p: &Pgtenant) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (c, mut conn) = tokio_postgres::connect(&p.url("app", "secret", "app"), NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    let _ = tx.send(n.message().to_string());
                }
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(format!("notify {}", n.payload()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (c, rx)
}

/// A trigger's RAISE NOTICE and pg_notify in batched statements: each client gets its
/// own notice and nobody else's; a listener gets every notification once. Each insert is
/// queued behind a reader (a write may only be the last unit of a batch): batches of a
/// read and an insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_notifications_of_batched_statements_go_to_their_own() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let setup = client(&p).await;
    setup
        .batch_execute(
            "create table noisy(k int); \
             create function noisy_f() returns trigger language plpgsql as $$ begin \
               raise notice 'noisy %', new.k; perform pg_notify('noisy', new.k::text); \
               return new; end $$; \
             create trigger noisy_t before insert on noisy for each row execute function noisy_f()",
        )
        .await
        .unwrap();
    // The listener on the server itself: pgtenant's own LISTEN path is not under test.
    let (listener, mut heard) = {
        let (c, mut conn) = tokio_postgres::connect(&pg.url("app", "secret", "app"), NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        (c, rx)
    };
    listener.batch_execute("listen noisy").await.unwrap();
    let before = m_batched(http).await;
    let release = hold_pool(&p, 1).await;
    let mut tasks = Vec::new();
    for j in 0..12u32 {
        let (c, rx) = noticed_client(&p).await;
        let k = j / 2;
        let insert = j % 2 == 1;
        tasks.push(tokio::spawn(async move {
            let sql = if insert {
                format!("insert into noisy values ({k})")
            } else {
                format!("select {k}")
            };
            let r = rows(&c, &sql).await;
            (k, insert, r, rx, c)
        }));
        until_waiting(http, u64::from(j) + 1).await;
    }
    release.into_iter().for_each(|r| r.send(()).unwrap());
    for t in tasks {
        let (k, insert, r, mut rx, c) = t.await.unwrap();
        r.unwrap();
        // One more round trip: anything still on its way has arrived.
        rows(&c, "select 1").await.unwrap();
        let mut got = Vec::new();
        while let Ok(n) = rx.try_recv() {
            got.push(n);
        }
        if insert {
            assert_eq!(got, vec![format!("noisy {k}")], "client {k}'s notices");
        } else {
            assert!(got.is_empty(), "reader {k} got another's notices: {got:?}");
        }
    }
    assert!(
        m_batched(http).await >= before + 12,
        "the inserts were not batched"
    );
    let mut payloads = Vec::new();
    while payloads.len() < 6 {
        let n = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("a notification")
            .unwrap();
        payloads.push(n);
    }
    payloads.sort();
    assert_eq!(payloads, (0..6).map(|k| k.to_string()).collect::<Vec<_>>());
}

/// A cancel that does not come through pgtenant (pg_cancel_backend from a DBA's session,
/// a watchdog) hits a batched statement: its client gets the 57014, as without
/// pipelining; the statement is not run again behind the canceller's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_outside_pgtenant_reaches_the_batched_statement() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, "");
    let release = hold_pool(&p, 1).await;
    let slow = client(&p).await;
    let s = tokio::spawn(async move {
        let sql = format!(
            "select {}, 'outside'",
            crate::pipelining::work(crate::pipelining::FOREVER)
        );
        rows(&slow, &sql).await
    });
    until_waiting(http, 1).await;
    let m = mates(&p, http, 3, 1, 1).await;
    release.into_iter().for_each(|r| r.send(()).unwrap());
    let admin = pg.admin_client().await;
    let started = Instant::now();
    loop {
        let n = admin
            .execute(
                "select pg_cancel_backend(pid) from pg_stat_activity \
                 where query like '%''outside''%' and state = 'active' \
                 and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(10), s)
        .await
        .unwrap_or_else(|_| panic!("the cancelled statement ran again\n{}", p.logs()))
        .unwrap();
    let e = r.expect_err("cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    answered(&p, m).await;
    assert_eq!(
        metric(http, "pgtenant_server_pipeline_reruns_total").await,
        0
    );
}

/// 300 clients on a pool of one connection, batches of up to 64: no deadlock, every
/// answer its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_clients_on_one_connection() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 64, "");
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(client(&p).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            tokio::spawn(async move {
                for i in 0..5 {
                    let r = rows(&c, &format!("select {k}, {i}")).await.unwrap();
                    assert_eq!(r, vec![vec![k.to_string(), i.to_string()]]);
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .unwrap_or_else(|_| panic!("deadlock\n{}", p.logs()))
            .unwrap();
    }
    let batches = metric(http, "pgtenant_server_pipeline_batches_total").await;
    let units = m_batched(http).await;
    eprintln!(
        "300 clients x 5 statements in {:?}: {batches} batches, {units} statements in them",
        started.elapsed()
    );
    assert!(units > 2 * batches && batches > 0, "{batches}/{units}");
    let admin = console(&p).await;
    settles(&p, http, &admin, "300 clients").await;
}
