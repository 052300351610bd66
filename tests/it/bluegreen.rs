//! Blue-green tenant migration (`src/bluegreen`): blue is a plain PostgreSQL server with
//! the application's table, green a second server with the Citus catalog emulation
//! (examples/django-multitenant/citus_emulation.sql) that listens on 127.0.0.1 (the
//! coordinator) and 127.0.0.2 (its worker: the same server, so the same rows, but another
//! node to pgtenant). Where a row was written shows in which server has it.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::support::{self, PgServer, Pgtenant, TempDir};

const WORKER: &str = "127.0.0.2";

pub(crate) fn emulation_sql() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("django-multitenant")
        .join("citus_emulation.sql")
}

/// The application's table, in both homes. Ids are made by the writer (unique across
/// homes: green's own writes and blue's replicated ones never collide); `written_at` is
/// the writing server's clock (both servers run on this machine, one clock).
const EVENTS: &str = "CREATE TABLE events (
    account_id bigint NOT NULL,
    id text NOT NULL,
    via text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (account_id, id));
ALTER TABLE events OWNER TO app;";

pub(crate) struct Homes {
    pub blue: PgServer,
    pub green: PgServer,
}

/// Blue and green; with `replicate`, blue publishes `events` and green subscribes
/// (slot `green_sub` on blue).
pub(crate) fn start_homes(replicate: bool) -> Homes {
    let blue = PgServer::builder()
        .conf("wal_level = logical")
        .conf("max_wal_senders = 10")
        .conf("max_replication_slots = 10")
        .conf("wal_sender_timeout = '5s'")
        .start();
    let green = PgServer::builder()
        .conf(&format!("listen_addresses = '127.0.0.1,{WORKER}'"))
        .conf("wal_receiver_status_interval = '1s'")
        .hba("host all all 127.0.0.0/8 scram-sha-256")
        .start();
    let out = blue.psql(&["-q", "-v", "ON_ERROR_STOP=1", "-d", "app", "-c", EVENTS]);
    assert!(
        out.status.success(),
        "blue schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = green.port();
    let nodes = format!(
        "SELECT citus_set_coordinator_host('127.0.0.1', {port}); SELECT citus_add_node('{WORKER}', {port});"
    );
    let out = green.psql(&[
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "app",
        "-f",
        emulation_sql().to_str().unwrap(),
        "-c",
        &nodes,
        "-c",
        EVENTS,
        "-c",
        "SELECT create_distributed_table('events', 'account_id')",
    ]);
    assert!(
        out.status.success(),
        "green schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if replicate {
        let out = blue.psql(&[
            "-q",
            "-d",
            "app",
            "-c",
            "CREATE PUBLICATION green_pub FOR TABLE events",
        ]);
        assert!(
            out.status.success(),
            "publication: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = green.psql(&[
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "app",
            "-c",
            &format!(
                "CREATE SUBSCRIPTION green_sub CONNECTION 'host=127.0.0.1 port={} dbname=app user={} password={}' PUBLICATION green_pub",
                blue.port(),
                support::SUPERUSER,
                support::SUPERUSER_PASSWORD
            ),
        ]);
        assert!(
            out.status.success(),
            "subscription: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Homes { blue, green }
}

/// A pgtenant in front of both: entry `app` is green (the upstream's database, routed)
/// with blue's place; entry `plain` is a database without blue.
pub(crate) fn start_instance(h: &Homes, dir: &TempDir, name: &str, lease_s: f64) -> Pgtenant {
    start_instance_with(h, dir, name, lease_s, 8)
}

pub(crate) fn start_instance_with(
    h: &Homes,
    dir: &TempDir,
    name: &str,
    lease_s: f64,
    pool_size: u32,
) -> Pgtenant {
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "upstream = \"{}\"\npool_mode = \"transaction\"\npool_size = {pool_size}\nmax_client_conn = 400\n\
             admin_users = [\"app\"]\ninstance_name = \"{name}\"\ntenant_homes_lease = {lease_s}\n\
             query_wait_timeout = 60\n\
             [databases.app]\nblue = {{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}\n\
             [databases.plain]\ndbname = \"app\"\nrouting = \"off\"\n",
            h.green.url("app", "secret", "app"),
            h.blue.port()
        ),
    );
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    p.wait_for_log("shard map loaded", Duration::from_secs(20));
    p
}

/// A command on `p`'s admin console: its rows as column → value (NULL as "").
pub(crate) async fn console(
    p: &Pgtenant,
    sql: &str,
) -> Result<Vec<HashMap<String, String>>, String> {
    let c = support::try_connect(&p.url("app", "secret", "pgtenant"))
        .await
        .map_err(|e| e.to_string())?;
    let msgs = tokio::time::timeout(Duration::from_secs(90), c.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer in 90 s\n--- logs ---\n{}", p.logs()))?
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })?;
    Ok(msgs
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
        .collect())
}

/// Wait until `p`'s lease on the homes of `app` is valid.
pub(crate) async fn wait_lease(p: &Pgtenant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = console(p, "SHOW MIGRATION").await.unwrap_or_default();
        if rows
            .iter()
            .any(|r| r["type"] == "instance" && r["phase"] == "lease valid")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no valid lease: {rows:?}\n--- logs ---\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `p` holds `tenant` for a cutover and the hold's detail passes `detail`.
async fn wait_hold(p: &Pgtenant, tenant: &str, detail: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = console(p, "SHOW MIGRATION").await.unwrap_or_default();
        if rows
            .iter()
            .any(|r| r["type"] == "hold" && r["tenant"] == tenant && detail(&r["detail"]))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no such hold of {tenant}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows of `account` by id: (id, written_at as epoch seconds).
pub(crate) async fn rows_of(server: &PgServer, account: i64) -> HashMap<String, f64> {
    let c = server.client("app", "secret", "app").await;
    c.query(
        "SELECT id, extract(epoch FROM written_at)::float8 FROM events WHERE account_id = $1",
        &[&account],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn insert(c: &tokio_postgres::Client, account: i64, id: &str) -> Result<(), String> {
    c.execute(
        "INSERT INTO events (account_id, id, via) VALUES ($1, $2, 'test')",
        &[&account, &id],
    )
    .await
    .map(|_| ())
    .map_err(|e| support::citus::db_err(&e))
}

/// `pgtenant migrate --admin <p's console> <words>`.
fn migrate_cli(p: &Pgtenant, words: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["migrate", "--admin", &p.url("app", "secret", "pgtenant")])
        .args(words)
        .output()
        .unwrap()
}

fn one(rows: &[HashMap<String, String>]) -> &HashMap<String, String> {
    assert_eq!(rows.len(), 1, "{rows:?}");
    &rows[0]
}

/// One instance: a tenant moves to green and back; its rows land in its home, others stay
/// in blue; every bad input is a clear error that changes nothing; a second cutover of a
/// tenant whose cutover runs is refused; a cutover that cannot drain aborts and the held
/// transaction goes on where it was; the command line does what the console does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_moves_to_green_and_back_and_bad_input_changes_nothing() {
    let h = start_homes(false);
    let dir = TempDir::new("bluegreen");
    let p = start_instance(&h, &dir, "one", 2.0);
    wait_lease(&p).await;
    let c = support::connect(&p.url("app", "secret", "app")).await;

    insert(&c, 7, "before").await.unwrap();
    assert!(rows_of(&h.blue, 7).await.contains_key("before"));
    assert!(rows_of(&h.green, 7).await.is_empty());

    let r = console(&p, "MIGRATE TENANT 7 TO green TIMEOUT 5s")
        .await
        .unwrap();
    let r = one(&r);
    assert_eq!(r["result"], "done", "{r:?}\n{}", p.logs());
    assert_eq!(
        (r["from_home"].as_str(), r["to_home"].as_str()),
        ("blue", "green")
    );
    insert(&c, 7, "after").await.unwrap();
    insert(&c, 8, "other").await.unwrap();
    assert!(rows_of(&h.green, 7).await.contains_key("after"));
    assert!(!rows_of(&h.blue, 7).await.contains_key("after"));
    assert!(rows_of(&h.blue, 8).await.contains_key("other"));
    // A statement of no tenant goes to the default home, blue.
    let n: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "blue has 'before' and 'other'");
    // The tenant's spelling does not matter: 007 is 7.
    let err = console(&p, "MIGRATE TENANT 007 TO green")
        .await
        .unwrap_err();
    assert!(err.contains("already in green"), "{err}");

    // Bad input: a clear error, nothing changed.
    for (cmd, want) in [
        (
            "MIGRATE TENANT 9 TABLE nosuch TO green",
            "not a distributed table",
        ),
        ("MIGRATE TENANT abc TO green", "does not fit"),
        (
            "MIGRATE TENANT 9 TO green DATABASE plain",
            "no blue-green entry",
        ),
        (
            "MIGRATE TENANT 9 TO green DATABASE nosuch",
            "no blue-green entry",
        ),
        ("MIGRATE TENANT 9,x TO green", "does not fit"),
        ("MIGRATE TENANT 9 TO purple", "usage"),
    ] {
        let err = console(&p, cmd).await.unwrap_err();
        assert!(err.contains(want), "{cmd}: {err}");
    }
    let m = console(&p, "SHOW MIGRATION").await.unwrap();
    let away: Vec<_> = m.iter().filter(|r| r["type"] == "tenant").collect();
    assert_eq!(away.len(), 1, "only tenant 7 is in green: {m:?}");
    assert_eq!(
        (away[0]["tenant"].as_str(), away[0]["home"].as_str()),
        ("7", "green")
    );

    // A transaction of tenant 9 stays open: the drain cannot finish, the cutover aborts
    // at its timeout, and a second cutover of 9 meanwhile is refused.
    let c9 = support::connect(&p.url("app", "secret", "app")).await;
    c9.batch_execute("BEGIN").await.unwrap();
    insert(&c9, 9, "open").await.unwrap();
    let p_url = p.url("app", "secret", "pgtenant");
    let first = tokio::spawn(async move {
        let c = support::connect(&p_url).await;
        c.simple_query("MIGRATE TENANT 9 TO green TIMEOUT 3s").await
    });
    wait_hold(&p, "9", |_| true).await;
    let err = console(&p, "MIGRATE TENANT 9 TO green").await.unwrap_err();
    assert!(err.contains("already running"), "{err}");
    // Meanwhile a new transaction of 9 is held (no error), one of 10 is not.
    let c10 = support::connect(&p.url("app", "secret", "app")).await;
    let t0 = Instant::now();
    insert(&c10, 10, "not-held").await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let held = {
        let c = support::connect(&p.url("app", "secret", "app")).await;
        tokio::spawn(async move {
            let t0 = Instant::now();
            insert(&c, 9, "held").await.map(|_| t0.elapsed())
        })
    };
    // It waits on the hold (SHOW MIGRATION counts it).
    wait_hold(&p, "9", |detail| detail.contains("1 waiting")).await;
    let msgs = first.await.unwrap().unwrap();
    let aborted = msgs.iter().any(|m| match m {
        SimpleQueryMessage::Row(r) => {
            r.get("result") == Some("aborted")
                && r.get("reason")
                    .is_some_and(|x| x.contains("drain timed out"))
        }
        _ => false,
    });
    assert!(
        aborted,
        "the cutover of 9 aborted at its drain timeout\n{}",
        p.logs()
    );
    // Released to blue when the cutover aborted, without an error.
    held.await.unwrap().unwrap();
    c9.batch_execute("COMMIT").await.unwrap();
    let blue9 = rows_of(&h.blue, 9).await;
    assert!(
        blue9.contains_key("open") && blue9.contains_key("held"),
        "{blue9:?}"
    );
    assert!(rows_of(&h.green, 9).await.is_empty());

    // Back to blue.
    let r = console(&p, "MIGRATE TENANT 7 TO blue").await.unwrap();
    assert_eq!(one(&r)["result"], "done", "{r:?}");
    insert(&c, 7, "back").await.unwrap();
    assert!(rows_of(&h.blue, 7).await.contains_key("back"));

    // The command line: the same through the console.
    let out = migrate_cli(&p, &["TENANT", "11", "TO", "green"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("result: done"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = migrate_cli(&p, &["TENANT", "11", "TO", "green"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in green"));
    insert(&c, 11, "cli").await.unwrap();
    assert!(rows_of(&h.green, 11).await.contains_key("cli"));

    // The final cutover: default_home = "green" (RELOAD): a statement of no tenant now
    // reads green.
    let cfg = dir.path().join("one.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "dbname = \"app\" }\n",
        "dbname = \"app\" }\ndefault_home = \"green\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    console(&p, "RELOAD").await.unwrap();
    let in_green: i64 = h
        .green
        .client("app", "secret", "app")
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let n: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((n, in_green), (2, 2), "green has 'after' and 'cli'");

    // SHOW MIGRATION: the store's cutovers, newest first after the running ones.
    let m = console(&p, "SHOW MIGRATION").await.unwrap();
    let cutovers: Vec<_> = m.iter().filter(|r| r["type"] == "cutover").collect();
    assert_eq!(cutovers.len(), 4, "{m:?}");
    assert!(
        cutovers
            .iter()
            .any(|r| r["phase"] == "aborted" && r["tenant"] == "9"),
        "{m:?}"
    );
    assert!(m.iter().all(|r| r["type"] != "hold"), "no hold left: {m:?}");
}

/// What the load did.
#[derive(Default)]
struct Load {
    /// (account, id) of every insert that succeeded.
    written: Vec<(i64, String)>,
    /// Errors other than the loss of the killed instance's connections.
    errors: Vec<String>,
    /// Connections that ended with the killed instance (then reconnected elsewhere).
    lost_with_killed: usize,
    /// Longest insert of a migrated tenant (1..=10), in ms.
    max_migrated_ms: f64,
}

/// The chaos run of issue 17: 51 clients over 100 tenants through three instances while
/// ten tenants move to green one by one (WAIT SYNC), one of them back to blue; instance C
/// is killed (SIGKILL) during a cutover and B frozen (SIGSTOP) past its lease during
/// another. Zero client errors (but the killed instance's own connections), and every
/// row is where its tenant's home was when it was written: a row in blue was written
/// before its tenant's flip to green (or after the flip back), a row only in green after
/// it; blue's rows all reached green by replication; no write was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn tenants_move_under_load_with_an_instance_killed_and_one_frozen() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use support::Signal;

    let h = start_homes(true);
    let dir = TempDir::new("bluegreen-chaos");
    let lease = 3.0;
    let a = start_instance(&h, &dir, "a", lease);
    let b = start_instance(&h, &dir, "b", lease);
    let c = start_instance(&h, &dir, "c", lease);
    for p in [&a, &b, &c] {
        wait_lease(p).await;
    }
    let urls: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|p| p.url("app", "secret", "app"))
        .collect();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    const CLIENTS: usize = 51;
    const TENANTS: u64 = 100;
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (urls, killed, stop, load) = (urls.clone(), killed.clone(), stop.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut at = k % 3;
            let mut client = support::connect(&urls[at]).await;
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 * 7919);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let account = ((seed >> 33) % TENANTS + 1) as i64;
                let id = format!("c{k}-{n}");
                n += 1;
                let t0 = Instant::now();
                let r = client
                    .execute(
                        "INSERT INTO events (account_id, id, via) VALUES ($1, $2, $3)",
                        &[&account, &id, &["a", "b", "c"][at]],
                    )
                    .await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                match r {
                    Ok(_) => {
                        let mut l = load.lock().unwrap();
                        l.written.push((account, id));
                        if account <= 10 && ms > l.max_migrated_ms {
                            l.max_migrated_ms = ms;
                        }
                    }
                    Err(e)
                        if at == 2
                            && killed.load(Ordering::Relaxed)
                            && e.as_db_error().is_none() =>
                    {
                        // The write may or may not have committed before the kill: look.
                        load.lock().unwrap().lost_with_killed += 1;
                        at = k % 2;
                        client = support::connect(&urls[at]).await;
                        let found = client
                            .query(
                                "SELECT 1 FROM events WHERE account_id = $1 AND id = $2",
                                &[&account, &id],
                            )
                            .await
                            .map(|r| !r.is_empty())
                            .unwrap_or(false);
                        if found {
                            load.lock().unwrap().written.push((account, id));
                        }
                    }
                    Err(e) => load.lock().unwrap().errors.push(format!(
                        "client {k} via {at}: {}",
                        support::citus::db_err(&e)
                    )),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (tenant, to, console of) in order; tenant 5's cutover sees C killed, tenant 7's sees
    // B frozen.
    let plan: Vec<(u32, &str, usize)> = vec![
        (1, "green", 0),
        (2, "green", 1),
        (3, "green", 0),
        (2, "blue", 1),
        (4, "green", 0),
        (5, "green", 0),
        (6, "green", 1),
        (7, "green", 0),
        (8, "green", 1),
        (9, "green", 0),
        (10, "green", 1),
    ];
    let consoles = [&a, &b];
    let mut outcomes: Vec<HashMap<String, String>> = Vec::new();
    let mut c_proc = Some(c);
    for (tenant, to, on) in plan {
        let sync = if to == "green" { " WAIT SYNC" } else { "" };
        let cmd = format!("MIGRATE TENANT {tenant} TO {to} TIMEOUT 10s{sync}");
        let p = consoles[on];
        let r = match tenant {
            5 => {
                let url = p.url("app", "secret", "pgtenant");
                let cmd2 = cmd.clone();
                let run = tokio::spawn(async move {
                    let c = support::connect(&url).await;
                    c.simple_query(&cmd2)
                        .await
                        .map_err(|e| support::citus::db_err(&e))
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut cp = c_proc.take().unwrap();
                killed.store(true, Ordering::Relaxed);
                cp.signal(Signal::Kill);
                cp.wait_exit(Duration::from_secs(5));
                let msgs = run.await.unwrap().unwrap();
                msgs.into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => Some(
                            r.columns()
                                .iter()
                                .enumerate()
                                .map(|(i, c)| {
                                    (c.name().to_string(), r.get(i).unwrap_or("").to_string())
                                })
                                .collect::<HashMap<String, String>>(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            }
            7 => {
                b.signal(Signal::Stop);
                let frozen = Instant::now();
                let r = console(p, &cmd).await;
                // Past its lease for sure, then resume it.
                let until = frozen + Duration::from_secs_f64(lease + 2.0);
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                b.signal(Signal::Cont);
                r.unwrap()
            }
            _ => console(p, &cmd)
                .await
                .unwrap_or_else(|e| panic!("{cmd}: {e}")),
        };
        let r = one(&r).clone();
        eprintln!(
            "cutover {}: tenant {tenant} to {to}: {} pause {} ms (drain {} sync {}) {}",
            r["cutover"], r["result"], r["pause_ms"], r["drain_ms"], r["sync_ms"], r["reason"]
        );
        if tenant != 5 {
            assert_eq!(r["result"], "done", "{cmd}: {r:?}");
        } else {
            assert!(matches!(r["result"].as_str(), "done" | "aborted"), "{r:?}");
        }
        outcomes.push(r);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a load client hung")
            .unwrap();
    }
    let load = std::mem::take(&mut *load.lock().unwrap());
    assert!(
        load.errors.is_empty(),
        "{} client errors, e.g. {:?}\n--- a ---\n{}\n--- b ---\n{}",
        load.errors.len(),
        &load.errors[..load.errors.len().min(5)],
        a.logs(),
        b.logs()
    );

    // Blue's rows all reach green.
    let lsn = h
        .blue
        .psql(&["-At", "-d", "app", "-c", "SELECT pg_current_wal_lsn()"]);
    let lsn = String::from_utf8_lossy(&lsn.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught = h.blue.psql(&[
            "-At",
            "-d",
            "app",
            "-c",
            &format!("SELECT confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots WHERE slot_name = 'green_sub'"),
        ]);
        if String::from_utf8_lossy(&caught.stdout).trim() == "t" {
            break;
        }
        assert!(Instant::now() < deadline, "replication did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flips, from the store: tenant → [(to, time)].
    let g = h.green.client("app", "secret", "app").await;
    let mut flips: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    for r in g
        .query(
            "SELECT tenant, to_home, extract(epoch FROM ended_at)::float8 FROM pgtenant.cutovers WHERE phase = 'done' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
    {
        flips.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    let home_at = |tenant: i64, t: f64| -> &str {
        let mut home = "blue";
        for (to, at) in flips.get(&tenant.to_string()).into_iter().flatten() {
            if t > *at {
                home = to;
            }
        }
        home
    };
    let mut written: HashMap<i64, std::collections::HashSet<String>> = HashMap::new();
    for (acc, id) in &load.written {
        written.entry(*acc).or_default().insert(id.clone());
    }
    let (mut in_blue, mut green_only, mut problems) = (0, 0, Vec::new());
    for tenant in 1..=TENANTS as i64 {
        let blue = rows_of(&h.blue, tenant).await;
        let green = rows_of(&h.green, tenant).await;
        for (id, at) in &blue {
            in_blue += 1;
            if home_at(tenant, *at) != "blue" {
                problems.push(format!(
                    "tenant {tenant}: {id} written in blue at {at} after its flip to green"
                ));
            }
            if !green.contains_key(id) {
                problems.push(format!("tenant {tenant}: {id} in blue never reached green"));
            }
        }
        for (id, at) in green.iter().filter(|(id, _)| !blue.contains_key(*id)) {
            green_only += 1;
            if home_at(tenant, *at) != "green" {
                problems.push(format!(
                    "tenant {tenant}: {id} written in green at {at} while its home was blue"
                ));
            }
        }
        let mine = written.remove(&tenant).unwrap_or_default();
        let stored: std::collections::HashSet<String> =
            blue.keys().chain(green.keys()).cloned().collect();
        for id in mine.difference(&stored) {
            problems.push(format!(
                "tenant {tenant}: write {id} acknowledged but found nowhere"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    let mut pauses: Vec<f64> = outcomes
        .iter()
        .filter(|r| r["result"] == "done")
        .filter_map(|r| r["pause_ms"].parse().ok())
        .collect();
    pauses.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let p = |q: f64| pauses[((pauses.len() as f64 * q).ceil() as usize).clamp(1, pauses.len()) - 1];
    eprintln!(
        "blue-green chaos: {} writes by {CLIENTS} clients over {TENANTS} tenants, 0 errors ({} connections lost with the killed instance, reconnected); rows in blue {in_blue} (all replicated), written in green {green_only}; {} cutovers done, pause p50 {:.0} ms p99 {:.0} ms max {:.0} ms; longest write of a migrated tenant {:.0} ms; tenant 5's cutover (instance killed): {} ({})",
        load.written.len(),
        load.lost_with_killed,
        pauses.len(),
        p(0.5),
        p(0.99),
        pauses.last().copied().unwrap_or(0.0),
        load.max_migrated_ms,
        outcomes[5]["result"],
        outcomes[5]["reason"],
    );
    // No hold is left anywhere, and the live instances agree on the homes.
    for p in [&a, &b] {
        let m = console(p, "SHOW MIGRATION").await.unwrap();
        assert!(m.iter().all(|r| r["type"] != "hold"), "{m:?}");
        let mut away: Vec<String> = m
            .iter()
            .filter(|r| r["type"] == "tenant")
            .map(|r| r["tenant"].clone())
            .collect();
        away.sort_by_key(|t| t.parse::<u32>().unwrap_or(0));
        let want: Vec<String> = [1, 3, 4, 5, 6, 7, 8, 9, 10]
            .iter()
            .filter(|t| **t != 5 || outcomes[5]["result"] == "done")
            .map(|t| t.to_string())
            .collect();
        assert_eq!(away, want, "{m:?}");
    }
}

/// The lease at work: instance B holds an open transaction of tenant 3 in blue and is
/// frozen (SIGSTOP). A cutover of 3 on instance A waits until B's lease has ended (B
/// cannot answer), then flips. When B resumes, the open transaction's next statement must
/// not reach blue: B re-reads the homes first, sees 3 moved, and ends the transaction
/// (FATAL 40001; its server connection closed, so blue rolls it back). A new transaction
/// of 3 through B then goes to green.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_instance_does_not_write_in_the_old_home_after_the_flip() {
    use support::Signal;
    let h = start_homes(false);
    let dir = TempDir::new("bluegreen-frozen");
    let a = start_instance(&h, &dir, "a", 2.0);
    let b = start_instance(&h, &dir, "b", 2.0);
    wait_lease(&a).await;
    wait_lease(&b).await;
    let cb = support::connect(&b.url("app", "secret", "app")).await;
    cb.batch_execute("BEGIN").await.unwrap();
    insert(&cb, 3, "open-1").await.unwrap();
    b.signal(Signal::Stop);
    let t0 = Instant::now();
    let r = console(&a, "MIGRATE TENANT 3 TO green TIMEOUT 10s").await;
    let waited = t0.elapsed();
    b.signal(Signal::Cont);
    let r = r.unwrap();
    assert_eq!(one(&r)["result"], "done", "{r:?}\n{}", a.logs());
    assert!(
        waited >= Duration::from_millis(1000),
        "the flip waited for B's lease to end: {waited:?}"
    );
    // B's open transaction of 3 must not go on in blue.
    // The client is told with FATAL 40001; now and then (1 run in ~6 under load) it
    // reports only that the connection closed: what matters here is that nothing of the
    // transaction reached blue, and that B says why it ended it.
    let err = insert(&cb, 3, "open-2").await.unwrap_err();
    assert!(
        err.contains("40001")
            || err.contains("moved between blue and green")
            || err.contains("connection closed"),
        "{err}\n{}",
        b.logs()
    );
    assert!(
        b.logs()
            .contains("lease lapsed during a tenant transaction and its home changed"),
        "{}",
        b.logs()
    );
    let blue = rows_of(&h.blue, 3).await;
    assert!(
        blue.is_empty(),
        "nothing of the open transaction committed in blue: {blue:?}"
    );
    // A new client of B: tenant 3 is in green now.
    let cb2 = support::connect(&b.url("app", "secret", "app")).await;
    insert(&cb2, 3, "after").await.unwrap();
    assert!(rows_of(&h.green, 3).await.contains_key("after"));
    assert!(rows_of(&h.blue, 3).await.is_empty());
}

/// A transaction routed to blue that waits for a connection while its instance is frozen
/// and its tenant moves: nothing was sent yet, so it is routed again, to green, without
/// an error. (B's blue pool has one connection, held by an open transaction of another
/// tenant.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_waiting_for_a_connection_follows_its_tenant_after_a_freeze() {
    use support::Signal;
    let h = start_homes(false);
    let dir = TempDir::new("bluegreen-waiting");
    let a = start_instance(&h, &dir, "a", 2.0);
    let b = start_instance_with(&h, &dir, "b", 2.0, 1);
    wait_lease(&a).await;
    wait_lease(&b).await;
    // X holds B's only blue connection.
    let x = support::connect(&b.url("app", "secret", "app")).await;
    x.batch_execute("BEGIN").await.unwrap();
    insert(&x, 4, "x").await.unwrap();
    // Y's transaction of 3 is routed to blue and waits for that connection.
    let y = support::connect(&b.url("app", "secret", "app")).await;
    // (A simple Query: routed with its tenant at once; tokio-postgres' `execute` would
    // first send a Parse/Describe/Sync of no tenant.)
    let waiting = tokio::spawn(async move {
        y.batch_execute("INSERT INTO events (account_id, id, via) VALUES (3, 'y', 'test')")
            .await
            .map_err(|e| support::citus::db_err(&e))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    b.signal(Signal::Stop);
    let r = console(&a, "MIGRATE TENANT 3 TO green TIMEOUT 10s").await;
    b.signal(Signal::Cont);
    assert_eq!(one(&r.unwrap())["result"], "done");
    x.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("Y finished")
        .unwrap()
        .unwrap_or_else(|e| panic!("Y got an error: {e}\n{}", b.logs()));
    assert!(rows_of(&h.green, 3).await.contains_key("y"));
    assert!(rows_of(&h.blue, 3).await.is_empty());
    assert!(rows_of(&h.blue, 4).await.contains_key("x"));
    assert!(b.logs().contains("routed again"), "{}", b.logs());
}
