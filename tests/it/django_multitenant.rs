//! The django-multitenant example (`examples/django-multitenant/`) through pgtenant, in
//! front of an emulated Citus cluster: where every statement it sends goes.
//!
//! The cluster is ONE PostgreSQL server that plays the coordinator and both workers: it
//! listens on 127.0.0.1, 127.0.0.2 and 127.0.0.3, and the example's
//! `citus_emulation.sql` (run in `template1` and `app`) gives it the Citus catalog and the
//! functions the migrations call (`create_distributed_table`, `create_reference_table`),
//! with `pg_dist_node` naming 127.0.0.1 as the coordinator (group 0) and 127.0.0.2 /
//! 127.0.0.3 as the workers (groups 1 and 2). Every node therefore sees the same rows (a
//! Django app writing through pgtenant stays consistent), and where pgtenant sent a
//! statement shows in the server's log: `log_statement = all` with the backend pid in
//! `log_line_prefix`, and pgtenant's SHOW SERVERS maps each server connection's pid
//! (`remote_pid`) to the address it connected to.
//!
//! Two tests — psycopg's client-side binding (the default: literals in the text, simple
//! queries) and its server-side binding (Bind parameters, prepared statements) — each run,
//! in order, through pgtenant (transaction mode, pool of 4):
//! 1. `manage.py migrate`: the migrations create and distribute the tables; SHOW ROUTES
//!    must then show nothing sent to a worker.
//! 2. `manage.py traffic` (tracker/management/commands/traffic.py): 12 accounts made,
//!    filled and used through the ORM and the views, then the admin pages; the app records
//!    every statement it sends with the tenant it was issued for, and compares every
//!    SELECT run outside a transaction with the answer of a direct connection to the
//!    coordinator (it fails on a difference).
//! 3. The app's own test suite (`manage.py test --keepdb`, in the cluster's database).
//!
//! The recorded statements are matched, in order, with the server log; then each
//! statement issued for a tenant must have run on the worker that owns the tenant (found
//! from the catalog with the server's `hashint8`), or on the coordinator for a reason this
//! test names (`coordinator_reason`); each statement issued for no tenant (setup, admin)
//! must have run on the coordinator. Anything else fails the test with the statement and
//! where it went. The counts are printed (`-- --nocapture`).
//!
//! The Python side is the virtualenv of `tests/it/django.rs` (`target/django-venv`, from
//! `tests/django/requirements.txt`, which carries the example's pins).
//!
//! Run only these: `cargo test --test it django_multitenant:: -- --nocapture`.

use crate::django::{tail, venv_python};
use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::citus::{placement_group, uniform_ranges, CATALOG_DDL};
use support::{pg_bin, PgServer, Pgtenant, TempDir};

/// The three node addresses, coordinator first.
const COORDINATOR: &str = "127.0.0.1";
const WORKERS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
/// Accounts the traffic run makes and uses.
const ACCOUNTS: &str = "12";
/// `application_name` of the traffic run's direct connection (its statements are not the
/// app's and are left out when matching the log).
const DIRECT_APP: &str = "direct-check";
/// A Python step that takes longer than this is hung.
const PY_TIMEOUT: Duration = Duration::from_secs(240);

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("django-multitenant")
}

// ---------------------------------------------------------------------------------------
// The cluster, pgtenant, the Python steps
// ---------------------------------------------------------------------------------------

/// The server that plays every node, with the Citus emulation in `template1` and `app`.
fn start_cluster() -> PgServer {
    let pg = PgServer::builder()
        .conf(&format!(
            "listen_addresses = '{COORDINATOR},{},{}'",
            WORKERS[0], WORKERS[1]
        ))
        .conf("log_statement = 'all'")
        .conf("log_line_prefix = '@@%p %a@@ '")
        .start();
    let port = pg.port();
    let nodes = format!(
        "SELECT citus_set_coordinator_host('{COORDINATOR}', {port}); \
         SELECT citus_add_node('{}', {port}); SELECT citus_add_node('{}', {port});",
        WORKERS[0], WORKERS[1]
    );
    let sql = example_dir().join("citus_emulation.sql");
    for db in ["template1", "app"] {
        let out = pg.psql(&["-q", "-d", db, "-f", sql.to_str().unwrap(), "-c", &nodes]);
        assert!(
            out.status.success(),
            "loading the Citus emulation into {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    pg
}

fn start_pgtenant(pg: &PgServer, dir: &TempDir) -> Pgtenant {
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_mode = \"transaction\"\npool_size = 4\n\
         max_client_conn = 200\nadmin_users = [\"app\"]\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    support::citus::wait_for_shard_map(&p);
    p
}

/// `python manage.py <args>` in the example with `DATABASE_URL` (and `extra` env);
/// its output, or a panic with it and pgtenant's logs.
fn manage(args: &[&str], database_url: &str, extra: &[(&str, &str)], pgt: &Pgtenant) -> String {
    let python = venv_python();
    let out_dir = TempDir::new("django-mt");
    let out_path = out_dir.path().join("out.log");
    let out = fs::File::create(&out_path).expect("create output file");
    let err = out.try_clone().expect("clone output handle");
    let mut cmd = Command::new(&python);
    cmd.arg("manage.py")
        .args(args)
        .current_dir(example_dir())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("PG") || k.starts_with("DJANGO") || k == "PYTHONPATH" {
            cmd.env_remove(k);
        }
    }
    cmd.env("DATABASE_URL", database_url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn python");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python") {
            break Some(s);
        }
        if t0.elapsed() > PY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    if !matches!(status, Some(s) if s.success()) {
        panic!(
            "manage.py {} failed ({status:?}) after {:.1?}\n--- output ---\n{}\n\
             --- pgtenant logs (tail) ---\n{}",
            args.join(" "),
            t0.elapsed(),
            tail(&output, 64 * 1024),
            tail(&pgt.logs(), 32 * 1024)
        );
    }
    output
}

/// A query on pgtenant's admin console: rows as column → value.
fn admin(p: &Pgtenant, sql: &str) -> Vec<BTreeMap<String, String>> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-F", "|", "-P", "footer=off", "-c", sql])
        .arg(p.url("app", "secret", "pgtenant"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split('|')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split('|').map(str::to_string))
                .collect()
        })
        .collect()
}

/// SHOW ROUTES as printable lines (rows with traffic only), and the total row's
/// (to_coordinator, to_worker) transactions.
fn routes(p: &Pgtenant) -> (String, (u64, u64)) {
    let rows = admin(p, "SHOW ROUTES");
    let mut text = String::from("  reason: transactions to coordinator / worker (statements)\n");
    let mut total = (0, 0);
    for r in &rows {
        if r["total"] == "0" {
            continue;
        }
        text.push_str(&format!(
            "  {}: {} / {} ({} / {})\n",
            r["reason"],
            r["to_coordinator"],
            r["to_worker"],
            r["statements_to_coordinator"],
            r["statements_to_worker"]
        ));
        if r["reason"] == "total" {
            total = (
                r["to_coordinator"].parse().unwrap(),
                r["to_worker"].parse().unwrap(),
            );
        }
    }
    (text, total)
}

// ---------------------------------------------------------------------------------------
// The server log and the app's record
// ---------------------------------------------------------------------------------------

/// A statement as the server logged it.
#[derive(Debug)]
struct Logged {
    pid: u32,
    app: String,
    text: String,
    /// Run through the extended protocol (`execute <name>: …`), not a simple query.
    extended: bool,
}

/// The statements in `log` (`@@<pid> <application_name>@@ LOG:  statement: …` or
/// `… execute <name>: …`, continuation lines included).
fn logged_statements(log: &str) -> Vec<Logged> {
    let mut records: Vec<(u32, String, String)> = Vec::new();
    for line in log.lines() {
        let head = line
            .strip_prefix("@@")
            .and_then(|rest| rest.split_once("@@ "))
            .and_then(|(meta, msg)| {
                let (pid, app) = meta.split_once(' ')?;
                Some((pid.parse::<u32>().ok()?, app.to_string(), msg.to_string()))
            });
        match head {
            Some(r) => records.push(r),
            None => {
                if let Some(last) = records.last_mut() {
                    last.2.push('\n');
                    last.2.push_str(line);
                }
            }
        }
    }
    records
        .into_iter()
        .filter_map(|(pid, app, msg)| {
            let msg = msg.strip_prefix("LOG:  ")?;
            let (text, extended) = if let Some(t) = msg.strip_prefix("statement: ") {
                (t, false)
            } else {
                let rest = msg.strip_prefix("execute ")?;
                (rest.split_once(": ")?.1, true)
            };
            Some(Logged {
                pid,
                app,
                text: text.to_string(),
                extended,
            })
        })
        .collect()
}

/// The text without a trailing tenant comment (`… /*tenant_id='42'*/`, added after the
/// app's own wrapper recorded it), and whether it had one.
fn strip_tenant_comment(text: &str) -> (&str, bool) {
    let t = text.trim_end();
    if let Some(start) = t.rfind("/*tenant_id=") {
        if t.ends_with("*/") {
            return (t[..start].trim_end(), true);
        }
    }
    (t, false)
}

/// One statement of the app's record (tracker/management/commands/traffic.py).
#[derive(Debug)]
struct Recorded {
    n: u64,
    phase: String,
    tenant: Option<i64>,
    sql: String,
    in_tx: bool,
}

fn read_record(path: &std::path::Path) -> Vec<Recorded> {
    fs::read_to_string(path)
        .expect("read the traffic record")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            Recorded {
                n: v["n"].as_u64().expect("n"),
                phase: v["phase"].as_str().expect("phase").to_string(),
                tenant: v["tenant"].as_i64(),
                sql: v["sql"].as_str().expect("sql").to_string(),
                in_tx: v["in_tx"].as_bool().expect("in_tx"),
            }
        })
        .collect()
}

/// Why a statement issued for a tenant may run on the coordinator, or `None` (then it
/// must not). `first_of_tx` is the first statement of the transaction it is in.
fn coordinator_reason(r: &Recorded, first_of_tx: Option<&Recorded>) -> Option<&'static str> {
    if let Some(first) = first_of_tx {
        if first.n != r.n && coordinator_reason(first, None).is_some() {
            return Some(
                "in a transaction whose first statement went to the coordinator (a \
                 transaction runs on one node)",
            );
        }
    }
    let tables: Vec<&str> = r
        .sql
        .split('"')
        .filter(|w| w.starts_with("tracker_"))
        .collect();
    let read = r.sql.trim_start().to_uppercase().starts_with("SELECT");
    if read && !tables.is_empty() && tables.iter().all(|t| *t == "tracker_plan") {
        return Some("reads only the reference table tracker_plan (reference_read)");
    }
    None
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// psycopg's default client-side binding: the tenant is a literal in each text.
#[test]
fn django_multitenant_app_is_routed_to_tenant_owners() {
    run_case(false);
}

/// psycopg's server-side binding (`OPTIONS={"server_side_binding": True}`): the tenant is a
/// Bind parameter (an array parameter in bulk_create's UNNEST), and psycopg prepares the
/// statements it runs often.
#[test]
fn django_multitenant_app_is_routed_with_server_side_binding() {
    run_case(true);
}

fn run_case(server_side_binding: bool) {
    let label = if server_side_binding {
        "server-side binding"
    } else {
        "client-side binding"
    };
    let binding = [(
        "DJANGO_SERVER_SIDE_BINDING",
        if server_side_binding { "1" } else { "0" },
    )];
    let t0 = Instant::now();
    venv_python();
    let pg = start_cluster();
    let dir = TempDir::new("django-mt");
    let pgt = start_pgtenant(&pg, &dir);
    let through = pgt.url("app", "secret", "app");
    let direct = format!(
        "{}?application_name={DIRECT_APP}",
        pg.url("app", "secret", "app")
    );

    // 1. Migrations through pgtenant: all on the coordinator.
    let log_start = pg.log().len();
    manage(
        &["migrate", "--noinput", "-v", "0"],
        &through,
        &binding,
        &pgt,
    );
    let (after_migrate, (_, to_worker)) = routes(&pgt);
    assert_eq!(
        to_worker, 0,
        "migrations sent transactions to a worker:\n{after_migrate}"
    );
    let migrate_end = pg.log().len();
    check_emulation_matches_the_harness(&pg);

    // pgtenant's next shard-map refresh (every 0.5 s) sees the distributed tables.
    wait_for_tables(&pgt, "tracker_account");

    // 2. The traffic run.
    let record_path = dir.path().join("traffic.jsonl");
    let traffic_start = pg.log().len();
    let summary = manage(
        &[
            "traffic",
            "--record",
            record_path.to_str().unwrap(),
            "--direct-url",
            &direct,
            "--accounts",
            ACCOUNTS,
        ],
        &through,
        &binding,
        &pgt,
    );
    let log = pg.log();
    let traffic_log = &log[traffic_start..];
    let (after_traffic, _) = routes(&pgt);
    let summary: serde_json::Value = serde_json::from_str(
        summary
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("the traffic run's JSON summary"),
    )
    .expect("JSON summary");
    let compared = summary["selects_compared"].as_u64().unwrap();
    assert!(
        summary["mismatches"].as_array().unwrap().is_empty() && compared > 200,
        "answers through pgtenant vs the coordinator: {summary}"
    );

    // Where each server connection goes: SHOW SERVERS' remote_pid → address.
    let servers = admin(&pgt, "SHOW SERVERS");
    let node_of_pid: HashMap<u32, String> = servers
        .iter()
        .map(|r| (r["remote_pid"].parse().unwrap(), r["addr"].clone()))
        .collect();

    // No statement of the migrations on a worker connection.
    for s in logged_statements(&log[log_start..migrate_end]) {
        if let Some(addr) = node_of_pid.get(&s.pid) {
            assert_eq!(
                addr, COORDINATOR,
                "a migration statement ran on {addr}: {}",
                s.text
            );
        }
    }

    // The owner of each account, from the catalog.
    let accounts: Vec<i64> = summary["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let owner = owners(&pg, &accounts);
    for w in WORKERS {
        assert!(
            owner.values().any(|o| o == w),
            "no traffic account lives on {w} (owners: {owner:?}); the test would not \
             show routing to both workers"
        );
    }

    // Match the record with the log, in order.
    let record = read_record(&record_path);
    let logged: Vec<Logged> = logged_statements(traffic_log)
        .into_iter()
        .filter(|s| s.app != DIRECT_APP)
        .collect();
    let mut at = 0;
    let mut placed: Vec<(&Recorded, &Logged, bool)> = Vec::new();
    for r in &record {
        let found = logged[at..].iter().position(|s| {
            let (text, _) = strip_tenant_comment(&s.text);
            text == r.sql.trim_end()
        });
        let Some(i) = found else {
            panic!(
                "statement {} of the record ({:?}, tenant {:?}) is not in the server log \
                 after statement {}: {}",
                r.n, r.phase, r.tenant, at, r.sql
            );
        };
        let s = &logged[at + i];
        let hinted = strip_tenant_comment(&s.text).1;
        placed.push((r, s, hinted));
        at += i + 1;
    }

    // The binding really is the one asked for: psycopg sends client-side bound texts as
    // simple queries, server-side bound ones through the extended protocol.
    let extended = placed.iter().filter(|(_, s, _)| s.extended).count();
    assert_eq!(
        extended > 0,
        server_side_binding,
        "{extended} of the app's statements came through the extended protocol ({label})"
    );

    // Judge every statement.
    let mut failures: Vec<String> = Vec::new();
    let mut tenant_total = 0;
    let mut by_key = 0;
    let mut by_hint = 0;
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    let mut explained: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut explained_examples: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut untenanted = 0;
    let mut first_of_tx: Option<&Recorded> = None;
    for (r, s, hinted) in &placed {
        // Transactions: runs of in_tx statements of one phase and tenant.
        if !r.in_tx {
            first_of_tx = None;
        } else if first_of_tx.is_none_or(|f| f.phase != r.phase || f.tenant != r.tenant) {
            first_of_tx = Some(r);
        }
        let Some(addr) = node_of_pid.get(&s.pid) else {
            failures.push(format!(
                "statement {} ran on server connection pid {}, which SHOW SERVERS does not \
                 list: {}",
                r.n, s.pid, r.sql
            ));
            continue;
        };
        match r.tenant {
            None => {
                untenanted += 1;
                if addr != COORDINATOR {
                    failures.push(format!(
                        "[{}] statement {} issued for no tenant ran on {addr}, not the \
                         coordinator: {}",
                        r.phase, r.n, r.sql
                    ));
                }
            }
            Some(t) => {
                tenant_total += 1;
                let want = owner[&t].as_str();
                if addr == want {
                    *per_worker.entry(want).or_default() += 1;
                    if *hinted {
                        by_hint += 1;
                    } else {
                        by_key += 1;
                    }
                } else if addr == COORDINATOR {
                    match coordinator_reason(r, first_of_tx) {
                        Some(why) => {
                            *explained.entry(why).or_default() += 1;
                            explained_examples
                                .entry(why)
                                .or_insert_with(|| r.sql.chars().take(160).collect());
                        }
                        None => failures.push(format!(
                            "[{}] statement {} for tenant {t} (owner {want}) ran on the \
                             coordinator, for no reason this test knows: {}",
                            r.phase, r.n, r.sql
                        )),
                    }
                } else {
                    failures.push(format!(
                        "[{}] statement {} for tenant {t} ran on {addr}, but {want} owns \
                         the tenant: {}",
                        r.phase, r.n, r.sql
                    ));
                }
            }
        }
    }
    let on_owner = by_key + by_hint;
    let mut report = format!(
        "django-multitenant example through pgtenant ({label}): {} statements recorded, {} \
         accounts (owners: {:?})\n\
         tenant-scoped: {tenant_total}; on the owner: {on_owner} ({:.1} %; by key {by_key}, \
         by tenant comment {by_hint}; per worker {per_worker:?})\n",
        record.len(),
        accounts.len(),
        owner,
        100.0 * on_owner as f64 / tenant_total.max(1) as f64,
    );
    for (why, n) in &explained {
        report.push_str(&format!(
            "  on the coordinator, {n}: {why}\n    e.g. {}\n",
            explained_examples[why]
        ));
    }
    report.push_str(&format!(
        "no tenant (setup, admin): {untenanted}, on the coordinator\n\
         answers: {compared} SELECTs compared with a direct coordinator connection, all equal\n\
         SHOW ROUTES after the migrations:\n{after_migrate}\
         SHOW ROUTES after the traffic run:\n{after_traffic}"
    ));
    assert!(
        failures.is_empty(),
        "{} statements went where they should not:\n{}\n\n{report}",
        failures.len(),
        failures.join("\n")
    );
    assert!(tenant_total > 300 && untenanted > 20, "{report}");

    // 3. The app's own suite, through pgtenant, in the cluster's database.
    let suite = manage(
        &["test", "--keepdb", "--noinput", "-v", "2"],
        &through,
        &[("DJANGO_TEST_DATABASE", "app"), binding[0]],
        &pgt,
    );
    let ran = suite
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("Ran ? tests")
        .to_string();
    assert!(suite.lines().any(|l| l.trim() == "OK"), "{suite}");
    let (after_suite, _) = routes(&pgt);
    report.push_str(&format!(
        "the app's suite: {ran}, OK\nSHOW ROUTES after the suite:\n{after_suite}\
         wall time {:.1?}",
        t0.elapsed()
    ));
    println!("{report}");
}

/// Wait until pgtenant's shard map has `table` (SHOW SHARDS names it).
fn wait_for_tables(p: &Pgtenant, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = admin(p, "SHOW SHARDS");
        if rows
            .iter()
            .any(|r| r.get("tables").is_some_and(|t| t.contains(table)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgtenant's shard map never showed {table}: {rows:?}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Account id → the address of the node that owns it (catalog + the server's hashint8).
fn owners(pg: &PgServer, accounts: &[i64]) -> HashMap<i64, String> {
    let ids: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
    let out = pg.psql(&[
        "-At",
        "-d",
        "app",
        "-c",
        &format!(
            "SELECT a.id, n.nodename FROM unnest(ARRAY[{}]::bigint[]) AS a(id) \
             JOIN pg_dist_shard s ON s.logicalrelid = 'tracker_account'::regclass \
              AND hashint8(a.id) BETWEEN s.shardminvalue::int AND s.shardmaxvalue::int \
             JOIN pg_dist_placement pl ON pl.shardid = s.shardid \
             JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary'",
            ids.join(",")
        ),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: HashMap<i64, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, node)| (id.parse().unwrap(), node.to_string()))
        .collect();
    assert_eq!(
        map.len(),
        accounts.len(),
        "an owner for every account: {map:?}"
    );
    map
}

/// One SQL string in database `app` as the superuser: its trimmed output.
fn app_sql(pg: &PgServer, sql: &str) -> String {
    let out = pg.psql(&["-At", "-d", "app", "-c", sql]);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The emulation's catalog is the harness' (tests/support/citus.rs): the same tables,
/// Citus' hash ranges for 32 shards, placements round robin over the workers, and every
/// tenant table colocated with tracker_account.
fn check_emulation_matches_the_harness(pg: &PgServer) {
    let sql = fs::read_to_string(example_dir().join("citus_emulation.sql")).unwrap();
    for table in CATALOG_DDL
        .split(";\n")
        .filter(|s| s.contains("CREATE TABLE"))
    {
        let table = table.trim();
        assert!(
            sql.contains(table),
            "citus_emulation.sql does not have the harness' catalog table:\n{table}"
        );
    }
    let shards = |table: &str| {
        app_sql(
            pg,
            &format!(
                "SELECT string_agg(s.shardminvalue || ':' || s.shardmaxvalue || '@' || \
             pl.groupid, ',' ORDER BY s.shardminvalue::int) FROM pg_dist_shard s \
             JOIN pg_dist_placement pl ON pl.shardid = s.shardid \
             WHERE s.logicalrelid = '{table}'::regclass"
            ),
        )
    };
    let want: Vec<String> = uniform_ranges(32)
        .iter()
        .enumerate()
        .map(|(i, (lo, hi))| format!("{lo}:{hi}@{}", placement_group(i)))
        .collect();
    let account = shards("tracker_account");
    assert_eq!(account, want.join(","), "tracker_account's shards");
    for t in [
        "tracker_member",
        "tracker_project",
        "tracker_tag",
        "tracker_task",
        "tracker_tasktag",
        "tracker_comment",
    ] {
        assert_eq!(shards(t), account, "{t} is colocated with tracker_account");
    }
    let plan = app_sql(
        pg,
        "SELECT p.partmethod::text || ':' || (SELECT string_agg(pl.groupid::text, ',' \
         ORDER BY pl.groupid) FROM pg_dist_shard s JOIN pg_dist_placement pl \
         ON pl.shardid = s.shardid WHERE s.logicalrelid = p.logicalrelid) \
         FROM pg_dist_partition p WHERE p.logicalrelid = 'tracker_plan'::regclass",
    );
    assert_eq!(
        plan, "n:0,1,2",
        "tracker_plan is a reference table on every node"
    );
}

/// The example's pins are the test venv's (one venv runs both).
#[test]
fn example_requirements_are_in_the_test_venv() {
    let ours = fs::read_to_string(example_dir().join("requirements.txt")).unwrap();
    let venv = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("django")
            .join("requirements.txt"),
    )
    .unwrap();
    let mut pins = 0;
    for line in ours.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            line.contains("=="),
            "unpinned requirement in the example: {line}"
        );
        assert!(
            venv.lines().any(|l| l.trim() == line),
            "tests/django/requirements.txt lacks the example's {line}"
        );
        pins += 1;
    }
    assert!(
        pins >= 4,
        "the example pins Django, psycopg, django-multitenant, dj-database-url"
    );
}
