//! What a client sees when its server connection dies under it (issue 13), for each way a
//! server can die: a fast shutdown (every backend sends `FATAL 57P01` and exits), a
//! backend killed with `kill -9` (it says nothing; PostgreSQL then ends every other
//! backend with a `WARNING 57P02` and restarts), and a network reset between pgtenant and
//! the server (a proxy resets its connections, both processes alive). In transaction mode
//! against a worker of the emulated Citus cluster, in session mode against one server.
//!
//! The rule under test (README "Pooling", DESIGN.md "Taking and giving back a server
//! connection"): a client that holds a server connection when it breaks (in a transaction,
//! mid-statement, mid-COPY, mid-pipeline; in session mode always) gets, after whatever the
//! server had already sent it, exactly one ErrorResponse: `FATAL 08006` with the server's
//! own FATAL text when it sent one (its SQLSTATE in the DETAIL), else "server closed the
//! connection unexpectedly"; then pgtenant closes the connection. A transaction-mode client
//! that held no server at that moment sees nothing, and its next transaction works. New
//! clients work afterwards.
//!
//! Raw protocol clients show every message; a tokio-postgres client shows what a driver
//! makes of it.

use crate::support;

use std::time::{Duration, Instant};

use support::citus::{wait_for_shard_map, CitusCluster, CitusOptions};
use support::proxy::ResetProxy;
use support::wire::{self, Msg, Raw};
use support::{PgServer, Pgtenant, TempDir};

/// How long a told client's connection may stay open.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);
/// pgtenant's message when the server went without a FATAL (libpq's words).
const CLOSED: &str = "server closed the connection unexpectedly";
/// The FATAL a backend sends on SIGTERM (fast shutdown, pg_terminate_backend).
const ADMIN_COMMAND: &str = "terminating connection due to administrator command";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    FastShutdown,
    Kill9,
    NetworkReset,
}

impl Way {
    /// The message of the one FATAL a client of the dead server connection gets.
    fn message(self) -> &'static str {
        match self {
            Way::FastShutdown => ADMIN_COMMAND,
            Way::Kill9 | Way::NetworkReset => CLOSED,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Run `sql` (simple protocol): its messages up to ReadyForQuery; panics on an error.
fn run(c: &mut Raw, sql: &str) -> Vec<Msg> {
    let msgs = c.exchange(&[wire::query(sql)]);
    assert!(!msgs.iter().any(|m| m.tag == b'E'), "{sql}: {msgs:?}");
    msgs
}

/// The first column of the first row `sql` returns.
fn value(c: &mut Raw, sql: &str) -> String {
    let msgs = run(c, sql);
    msgs.iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"))
        .value()
}

/// The second column of the first row `sql` returns.
fn second_value(c: &mut Raw, sql: &str) -> String {
    let msgs = run(c, sql);
    let d = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"));
    let first = i32::from_be_bytes(d.body[2..6].try_into().unwrap()) as usize;
    let at = 6 + first;
    let len = i32::from_be_bytes(d.body[at..at + 4].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&d.body[at + 4..at + 4 + len]).into_owned()
}

/// Start a statement that runs for 30 s (answer not read).
fn send_sleep(c: &mut Raw) {
    c.send(&[wire::query("SELECT pg_sleep(30)")]);
}

/// Start COPY FROM STDIN into a new temp table and send rows without ending it.
fn start_copy(c: &mut Raw) {
    run(c, "CREATE TEMP TABLE copy_target (x int)");
    c.send(&[wire::query("COPY copy_target FROM STDIN")]);
    let g = c.read_msg();
    assert_eq!(g.tag, b'G', "expected CopyInResponse: {g:?}");
    let rows: Vec<Vec<u8>> = (0..100)
        .map(|i| wire::frame(b'd', format!("{i}\n").as_bytes()))
        .collect();
    c.send(&rows);
}

/// Send a pipeline of two extended-protocol statements (the first runs for 30 s) and
/// one Sync, answers not read.
fn send_pipeline(c: &mut Raw) {
    c.send(&[
        wire::parse("", "SELECT pg_sleep(30)", &[]),
        wire::bind("", "", &[]),
        wire::execute(""),
        wire::parse("", "SELECT 1", &[]),
        wire::bind("", "", &[]),
        wire::execute(""),
        wire::sync(),
    ]);
}

/// Wait until `n` statements run pg_sleep(30) on `server`.
fn wait_for_sleepers(server: &PgServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
               AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()";
    loop {
        let got = server.psql_ok(sql);
        if got == n.to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} statements sleeping, expected {n}: {}",
            server.psql_ok("SELECT string_agg(state || ': ' || query, E'\n') FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Messages for an assertion's text: tags, and for errors and notices their fields.
fn describe(msgs: &[Msg]) -> String {
    msgs.iter()
        .map(|m| match m.tag {
            b'E' | b'N' => format!(
                "{} {} {} {:?} (DETAIL {:?})",
                m.tag as char,
                m.field(b'S').unwrap_or_default(),
                m.field(b'C').unwrap_or_default(),
                m.field(b'M').unwrap_or_default(),
                m.field(b'D').unwrap_or_default(),
            ),
            t => (t as char).to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A client whose server connection died: read everything until pgtenant closes the
/// connection and check it is the documented sequence. `before`: the tags the server may
/// have sent it first (a RowDescription, a pipeline's ParseComplete/BindComplete: what
/// the backend had buffered goes out with its FATAL); a server's notices may come too
/// (after `kill -9` the other backends send `WARNING 57P02` before they exit).
/// Returns the FATAL.
fn assert_told(who: &str, c: &mut Raw, way: Way, before: &[u8]) -> Msg {
    let msgs = c.until_closed(CLOSE_WITHIN);
    let Some((last, rest)) = msgs.split_last() else {
        panic!("{who}: {way:?}: the connection closed without a word");
    };
    let seen = describe(&msgs);
    assert_eq!(last.tag, b'E', "{who}: {way:?}: the last message: {seen}");
    let field = |f: u8| last.field(f).unwrap_or_default();
    assert_eq!(
        (field(b'S'), field(b'V'), field(b'C'), field(b'M')),
        (
            "FATAL".into(),
            "FATAL".into(),
            "08006".into(),
            way.message().into()
        ),
        "{who}: {way:?}: {seen}"
    );
    for m in rest {
        match m.tag {
            b'N' => {
                // The server's own notice, relayed as it came.
                let code = m.field(b'C').unwrap_or_default();
                assert!(
                    way == Way::Kill9 && code == "57P02",
                    "{who}: {way:?}: a notice: {seen}"
                );
            }
            t => assert!(
                before.contains(&t),
                "{who}: {way:?}: {:?} before the FATAL: {seen}",
                t as char
            ),
        }
    }
    let detail = field(b'D');
    match way {
        Way::FastShutdown => assert!(
            detail.contains("SQLSTATE 57P01"),
            "{who}: the server's SQLSTATE is not in the DETAIL: {seen}"
        ),
        Way::NetworkReset => assert!(
            detail.contains("reset") || detail.contains("Broken pipe"),
            "{who}: the reset is not in the DETAIL: {seen}"
        ),
        Way::Kill9 => {}
    }
    last.clone()
}

/// A tokio-postgres client on its own runtime.
struct Driver {
    rt: tokio::runtime::Runtime,
    client: std::sync::Arc<tokio_postgres::Client>,
}

impl Driver {
    fn connect(port: u16) -> Driver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = format!("postgres://app:secret@127.0.0.1:{port}/app");
        let client = std::sync::Arc::new(rt.block_on(support::connect(&url)));
        Driver { rt, client }
    }

    fn run(&self, sql: &str) {
        let c = self.client.clone();
        self.rt
            .block_on(async move { c.batch_execute(sql).await })
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Start `sql`; its result once it comes.
    fn start(
        &self,
        sql: &'static str,
    ) -> tokio::task::JoinHandle<
        Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    > {
        let c = self.client.clone();
        self.rt.spawn(async move { c.simple_query(sql).await })
    }

    /// The driver's view of the statement that was running: an error with SQLSTATE 08006
    /// and the documented message; and the connection is closed.
    fn assert_told(
        &self,
        running: tokio::task::JoinHandle<
            Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
        >,
        way: Way,
    ) {
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(CLOSE_WITHIN, running).await })
            .expect("the driver's statement hung")
            .unwrap();
        let e = r.expect_err("the statement on the dead server succeeded");
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{way:?}: not a server error: {e:?}"));
        assert_eq!(
            (db.severity(), db.code().code(), db.message()),
            ("FATAL", "08006", way.message()),
            "{way:?}: {e:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.client.is_closed() {
            assert!(
                Instant::now() < deadline,
                "{way:?}: the driver's connection stays open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transaction mode: a worker of the emulated Citus cluster
// ---------------------------------------------------------------------------------------

/// pgtenant in transaction mode (trust auth on the listener) in front of `cluster`, once
/// its shard map is loaded; `extra` TOML lines.
fn start_routing(cluster: &CitusCluster, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("server-lost-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"trust\"\npool_size = 8\n{extra}\n",
        cluster.upstream_url()
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    wait_for_shard_map(&p);
    (p, dir)
}

/// A tenant of `orders` whose shard is on worker 0.
fn worker0_tenant(cluster: &CitusCluster) -> String {
    let keys = cluster.tenant_keys("orders");
    let w0 = cluster.workers[0].port();
    let owners = cluster.owner_ports("orders", &keys);
    let i = owners
        .iter()
        .position(|&o| o == w0)
        .expect("a tenant on worker 0");
    keys[i].clone()
}

fn tenant_sql(tenant: &str) -> String {
    format!("SELECT inet_server_port(), count(*) FROM orders WHERE account_id = {tenant}")
}

/// Open a transaction on worker 0 (through the tenant's statement); the backend pid.
fn begin_on_worker0(c: &mut Raw, cluster: &CitusCluster, tenant: &str) -> i32 {
    run(c, "BEGIN");
    let port = value(c, &tenant_sql(tenant));
    assert_eq!(
        port,
        cluster.workers[0].port().to_string(),
        "not on worker 0"
    );
    value(c, "SELECT pg_backend_pid()").parse().unwrap()
}

/// Clients of worker 0 in every state, then `kill` it one way, then check what each
/// sees: the four holding a server connection (mid-statement, idle in a transaction,
/// mid-COPY, mid-pipeline) and a driver mid-statement get the one FATAL and are closed;
/// the one idle between transactions sees nothing and its next statement is answered;
/// a new client works.
fn worker_dies(way: Way) {
    let mut cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    });
    let proxy = ResetProxy::start(cluster.workers[0].port());
    let extra = match way {
        Way::NetworkReset => format!("node_addresses = {{ {} }}", proxy.node_address_rewrite()),
        _ => String::new(),
    };
    let (p, _cfg) = start_routing(&cluster, &extra);
    let tenant = worker0_tenant(&cluster);

    let mut busy = Raw::connect(p.port());
    let busy_pid = begin_on_worker0(&mut busy, &cluster, &tenant);
    send_sleep(&mut busy);
    let mut in_tx = Raw::connect(p.port());
    begin_on_worker0(&mut in_tx, &cluster, &tenant);
    let mut copying = Raw::connect(p.port());
    begin_on_worker0(&mut copying, &cluster, &tenant);
    start_copy(&mut copying);
    let mut pipelined = Raw::connect(p.port());
    begin_on_worker0(&mut pipelined, &cluster, &tenant);
    send_pipeline(&mut pipelined);
    let mut idle = Raw::connect(p.port());
    assert_eq!(
        value(&mut idle, &tenant_sql(&tenant)),
        cluster.workers[0].port().to_string()
    );
    let driver = Driver::connect(p.port());
    driver.run("BEGIN");
    driver.run(&tenant_sql(&tenant));
    let driven = driver.start("SELECT pg_sleep(30)");
    wait_for_sleepers(&cluster.workers[0], 3);

    match way {
        Way::FastShutdown => cluster.workers[0].stop_fast(),
        Way::Kill9 => cluster.workers[0].kill_backend(busy_pid),
        Way::NetworkReset => assert!(proxy.reset_all() >= 5, "too few connections proxied"),
    }

    assert_told("mid-statement", &mut busy, way, b"T");
    assert_told("idle in transaction", &mut in_tx, way, &[]);
    assert_told("mid-COPY", &mut copying, way, &[]);
    assert_told("mid-pipeline", &mut pipelined, way, b"12");
    driver.assert_told(driven, way);

    // Between transactions: nothing; its next statement is answered (by the coordinator
    // or by the worker, whichever pgtenant finds up).
    assert!(idle.nothing_within(Duration::from_millis(300)));
    assert_eq!(second_value(&mut idle, &tenant_sql(&tenant)), "3");
    let mut fresh = Raw::connect(p.port());
    run(&mut fresh, "BEGIN");
    assert_eq!(second_value(&mut fresh, &tenant_sql(&tenant)), "3");
    run(&mut fresh, "COMMIT");
    assert!(p.logs().contains("server connection lost"), "{}", p.logs());
}

#[test]
fn worker_fast_shutdown() {
    worker_dies(Way::FastShutdown);
}

#[test]
fn worker_backend_killed() {
    worker_dies(Way::Kill9);
}

#[test]
fn worker_network_reset() {
    worker_dies(Way::NetworkReset);
}

// ---------------------------------------------------------------------------------------
// Session mode: one server
// ---------------------------------------------------------------------------------------

/// pgtenant in session mode (trust auth on the listener) in front of 127.0.0.1:`port`.
fn start_session_mode(port: u16) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("server-lost-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"postgres://app:secret@127.0.0.1:{port}/app\"\nauth_type = \"trust\"\n\
         pool_mode = \"session\"\npool_size = 10\n"
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

/// A new client logs in and runs a statement (retried while the server restarts).
fn new_client_works(p: &Pgtenant) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Raw::try_login(p.port(), &[("user", "app"), ("database", "app")]) {
            Ok(mut c) => {
                assert_eq!(value(&mut c, "SELECT 41 + 1"), "42");
                return;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no new client within 30 s: {e:?}\n{}",
                p.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Session-mode clients in every state (each holds its own server connection, so the idle
/// one too), then the server dies one way: each gets the one FATAL and is closed; a new
/// client works.
fn session_server_dies(way: Way) {
    let mut pg = PgServer::start();
    let proxy = ResetProxy::start(pg.port());
    let upstream = match way {
        Way::NetworkReset => proxy.port(),
        _ => pg.port(),
    };
    let (p, _cfg) = start_session_mode(upstream);

    let mut busy = Raw::connect(p.port());
    // Its key is its backend's (session mode).
    let busy_pid = busy.key.0;
    assert_eq!(
        value(&mut busy, "SELECT pg_backend_pid()"),
        busy_pid.to_string()
    );
    send_sleep(&mut busy);
    let mut in_tx = Raw::connect(p.port());
    run(&mut in_tx, "BEGIN");
    run(&mut in_tx, "SELECT 1");
    let mut copying = Raw::connect(p.port());
    start_copy(&mut copying);
    let mut pipelined = Raw::connect(p.port());
    send_pipeline(&mut pipelined);
    let mut idle = Raw::connect(p.port());
    run(&mut idle, "SELECT 1");
    let driver = Driver::connect(p.port());
    let driven = driver.start("SELECT pg_sleep(30)");
    wait_for_sleepers(&pg, 3);

    match way {
        Way::FastShutdown => pg.stop_fast(),
        Way::Kill9 => pg.kill_backend(busy_pid),
        Way::NetworkReset => assert!(proxy.reset_all() >= 6, "too few connections proxied"),
    }

    assert_told("mid-statement", &mut busy, way, b"T");
    assert_told("idle in transaction", &mut in_tx, way, &[]);
    assert_told("mid-COPY", &mut copying, way, &[]);
    assert_told("mid-pipeline", &mut pipelined, way, b"12");
    assert_told("idle", &mut idle, way, &[]);
    driver.assert_told(driven, way);

    if way == Way::FastShutdown {
        pg.start_again();
    }
    new_client_works(&p);
    assert!(p.logs().contains("server connection lost"), "{}", p.logs());
}

#[test]
fn session_fast_shutdown() {
    session_server_dies(Way::FastShutdown);
}

#[test]
fn session_backend_killed() {
    session_server_dies(Way::Kill9);
}

#[test]
fn session_network_reset() {
    session_server_dies(Way::NetworkReset);
}

// ---------------------------------------------------------------------------------------
// The pool after a lost connection
// ---------------------------------------------------------------------------------------

/// pgtenant in transaction mode in front of `pg` (trust auth), plus `extra` TOML lines.
fn start_pool(pg: &PgServer, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("server-lost-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"postgres://app:secret@127.0.0.1:{}/app\"\nauth_type = \"trust\"\n\
         pool_size = 6\n{extra}\n",
        pg.port()
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

/// Each client runs one transaction (BEGIN, SELECT 1, COMMIT), all of them open at once:
/// as many server connections as clients, idle afterwards.
async fn open_transactions(cs: Vec<Raw>) -> Vec<Raw> {
    tokio::task::spawn_blocking(move || {
        let mut cs = cs;
        for c in cs.iter_mut() {
            run(c, "BEGIN");
            value(c, "SELECT 1");
        }
        for c in cs.iter_mut() {
            run(c, "COMMIT");
        }
        cs
    })
    .await
    .unwrap()
}

/// A client in a transaction whose backend is terminated: it gets FATAL 08006. Returns
/// when the loss was caused.
async fn lose_a_connection(pg: &PgServer, port: u16) -> Instant {
    let (mut x, pid) = tokio::task::spawn_blocking(move || {
        let mut x = Raw::connect(port);
        run(&mut x, "BEGIN");
        let pid = value(&mut x, "SELECT pg_backend_pid()");
        (x, pid)
    })
    .await
    .unwrap();
    let at = Instant::now();
    pg.psql_ok(&format!("SELECT pg_terminate_backend({pid})"));
    let told = tokio::task::spawn_blocking(move || x.until_closed(Duration::from_secs(10)))
        .await
        .unwrap();
    let fatal = told.iter().find(|m| m.tag == b'E').expect("a FATAL");
    assert_eq!(fatal.sqlstate(), "08006", "{told:?}");
    at
}

/// A lent connection ended by its server (FATAL 57P01, as on a fast shutdown, where a
/// loaded server ends its backends one by one) makes the pool check each idle
/// connection with server_check_query before it is lent (one of them may be about to
/// die too, and would fail its next client), once: a client that ends its own backend
/// costs the others at most one check per connection a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_has_the_pools_idle_ones_checked() {
    let pg = PgServer::start();
    let admin = pg
        .app_admin("CREATE SEQUENCE pgt_checks; GRANT USAGE, SELECT ON pgt_checks TO app")
        .await;
    // Checks only for suspect connections (an hour of idleness for the others).
    let (p, _dir) = start_pool(
        &pg,
        "server_check_query = \"select nextval('pgt_checks')\"\nserver_check_delay = 3600",
    );
    let port = p.port();
    let checks = || async {
        admin
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM pgt_checks",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let backends = |n: i64| pg.wait_for_backends("app", "app", n, Duration::from_secs(10));
    let clients: Vec<Raw> =
        tokio::task::spawn_blocking(move || (0..3).map(|_| Raw::connect(port)).collect())
            .await
            .unwrap();
    let clients = open_transactions(clients).await;
    assert_eq!(backends(3).await, 3);
    assert_eq!(checks().await, 0, "no check before a loss");

    // The lost one was one of the three (the most recently used idle one); the other
    // two stay, each checked once before it is lent again.
    let first_loss = lose_a_connection(&pg, port).await;
    let clients = open_transactions(clients).await;
    assert_eq!(
        checks().await,
        2,
        "each idle connection checked once\n{}",
        p.logs()
    );
    assert_eq!(backends(3).await, 3);
    let clients = open_transactions(clients).await;
    assert_eq!(checks().await, 2, "checked once, not at each lend");

    // A second loss within the second marks nothing.
    let second_loss = lose_a_connection(&pg, port).await;
    let mut clients = open_transactions(clients).await;
    if second_loss.duration_since(first_loss) < Duration::from_millis(900) {
        assert_eq!(checks().await, 2, "rate-limited");
    } else {
        assert!(checks().await > 2, "a second later: checked again");
    }
    let got = tokio::task::spawn_blocking(move || value(&mut clients[0], "SELECT 42"))
        .await
        .unwrap();
    assert_eq!(got, "42");
}

/// With no server_check_query, the idle connections are closed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_closes_the_pools_idle_ones_without_a_check_query() {
    let pg = PgServer::start();
    let (p, _dir) = start_pool(&pg, "server_check_query = \"\"");
    let port = p.port();
    let clients: Vec<Raw> =
        tokio::task::spawn_blocking(move || (0..3).map(|_| Raw::connect(port)).collect())
            .await
            .unwrap();
    let clients = open_transactions(clients).await;
    let backends = |n: i64| pg.wait_for_backends("app", "app", n, Duration::from_secs(10));
    assert_eq!(backends(3).await, 3);
    lose_a_connection(&pg, port).await;
    assert_eq!(
        backends(0).await,
        0,
        "the pool's idle connections were closed\n{}",
        p.logs()
    );
    let mut clients = open_transactions(clients).await;
    let got = tokio::task::spawn_blocking(move || value(&mut clients[0], "SELECT 42"))
        .await
        .unwrap();
    assert_eq!(got, "42");
}
