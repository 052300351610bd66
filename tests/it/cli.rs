//! The command line against the real binary: `pgtenant check`, precedence of file <
//! environment < flags (observed on a real PostgreSQL), zero-file runs from the
//! environment or the README's four flags, and `--log-format json`.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{free_port, pgtenant_run, PgServer, Pgtenant, Signal, TempDir};
use tokio_postgres::{Client, SimpleQueryMessage};

const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

fn check(file: &Path, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    pgtenant_run(
        &["check", "--config", file.to_str().unwrap()],
        env,
        CHECK_TIMEOUT,
    )
}

fn assert_no_panic(out: &str) {
    assert!(!out.contains("panicked"), "pgtenant panicked:\n{out}");
}

/// First column of the first row, as text (simple protocol).
async fn value(c: &Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("NULL").to_string();
        }
    }
    panic!("{sql}: no row");
}

// ---------------------------------------------------------------------------------------
// pgtenant check
// ---------------------------------------------------------------------------------------

#[test]
fn check_accepts_the_shipped_config() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgtenant.toml");
    let (status, out) = check(&file, &[]);
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert_no_panic(&out);
}

#[test]
fn check_names_every_bad_key() {
    let dir = TempDir::new("cli-check");
    // An unknown key, a PgBouncer name, bad values, and no upstream at all.
    let file = dir.config_file(
        "listen = \"127.0.0.1:6432\"\n\
         frobnicate = true\n\
         default_pool_size = 10\n\
         pool_size = -1\n\
         pool_mode = \"weird\"\n\
         server_idle_timeout = \"soon\"\n",
    );
    let (status, out) = check(&file, &[]);
    assert!(!status.success(), "bad config accepted:\n{out}");
    assert!(!out.contains("configuration OK"), "{out}");
    for want in [
        "frobnicate: unknown key",
        "default_pool_size: unknown key 'default_pool_size' (did you mean 'pool_size'?)",
        "pool_size: ",
        "pool_mode: ",
        "weird",
        "server_idle_timeout: ",
        "upstream: missing",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // One error per line, each starting with its key.
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 6, "{out}");
    for l in &lines {
        let key = l.split(':').next().unwrap();
        assert!(
            !key.is_empty() && !key.contains(' '),
            "error line without a key: {l:?}"
        );
    }
    assert_no_panic(&out);

    // Values from the environment are checked too, named by their key.
    let good = dir.write(
        "good.toml",
        "upstream = \"postgres://app:secret@127.0.0.1:5432/app\"\n",
    );
    let (status, out) = check(&good, &[]);
    assert!(status.success(), "{out}");
    let (status, out) = check(&good, &[("PGTENANT_POOL_MODE", "bogus")]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("pool_mode: ") && out.contains("bogus"),
        "{out}"
    );
    assert_no_panic(&out);
}

#[test]
fn check_reports_missing_and_malformed_files_clearly() {
    let dir = TempDir::new("cli-files");
    let missing = dir.path().join("nope.toml");
    let (status, out) = check(&missing, &[]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("cannot read"), "{out}");
    assert!(out.contains("nope.toml"), "the path is not named: {out}");
    assert_no_panic(&out);

    let bad = dir.write(
        "syntax.toml",
        "upstream = \"postgres://app:secret@127.0.0.1/app\"\npool_size = = 3\n",
    );
    let (status, out) = check(&bad, &[]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("not valid TOML"), "{out}");
    assert!(out.contains("line 2"), "no position in: {out}");
    assert_no_panic(&out);

    // Not a file at all: a directory.
    let (status, out) = check(dir.path(), &[]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("cannot read"), "{out}");
    assert_no_panic(&out);

    // `run` with the same bad file exits non-zero with the same message, no panic.
    let (status, out) = pgtenant_run(
        &["run", "--config", bad.to_str().unwrap()],
        &[],
        CHECK_TIMEOUT,
    );
    assert!(!status.success(), "{out}");
    assert!(out.contains("not valid TOML"), "{out}");
    assert_no_panic(&out);
}

// ---------------------------------------------------------------------------------------
// Precedence: file < environment < flags
// ---------------------------------------------------------------------------------------

/// Run `clients` concurrent `pg_sleep(0.5)` queries through `url` and return the largest
/// number of `app` backends seen on PostgreSQL meanwhile.
async fn max_backends_under_load(pg: &PgServer, url: &str, clients: usize) -> i64 {
    let admin = pg.admin_client().await;
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(support::connect(url).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                         AND datname = 'app' AND backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(async move { c.simple_query("SELECT pg_sleep(0.5)").await }))
        .collect();
    for t in tasks {
        t.await.unwrap().expect("query under load failed");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    max.load(Ordering::SeqCst)
}

/// The `pool_size=N` the startup log line reports.
fn logged_pool_size(logs: &str) -> Option<u32> {
    let line = logs.lines().find(|l| l.contains("pgtenant started"))?;
    let rest = &line[line.find("pool_size=")? + "pool_size=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A pgtenant on the file's own listen address (no --listen added).
fn spawn_on(args: &[&str], env: &[(&str, &str)], port: u16) -> Pgtenant {
    let mut p = Pgtenant::spawn(args, env, Some(port));
    p.wait_ready(Duration::from_secs(15));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_file_then_env_then_flags() {
    let pg = PgServer::start();
    let dir = TempDir::new("cli-precedence");
    let port_a = free_port();
    let file = dir.config_file(&format!(
        "listen = \"127.0.0.1:{port_a}\"\nupstream = \"{}\"\npool_size = 3\n",
        pg.url("app", "secret", "app")
    ));
    let file = file.to_str().unwrap();
    let run = ["run", "--config", file];

    // (what, extra args, env, expected pool size)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], u32);
    let cases: [Case; 3] = [
        ("file alone", &[], &[], 3),
        ("env over file", &[], &[("PGTENANT_POOL_SIZE", "4")], 4),
        (
            "flag over env over file",
            &["--pool-size", "5"],
            &[("PGTENANT_POOL_SIZE", "4")],
            5,
        ),
    ];
    for (what, extra, env, want) in cases {
        let args: Vec<&str> = run.iter().chain(extra.iter()).copied().collect();
        let p = spawn_on(&args, env, port_a);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while logged_pool_size(&p.logs()).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            logged_pool_size(&p.logs()),
            Some(want),
            "{what}: startup log\n{}",
            p.logs()
        );
        let max = max_backends_under_load(&pg, &p.url("app", "secret", "app"), 8).await;
        assert_eq!(max, want as i64, "{what}: backends under load");
        drop(p);
        let left = pg
            .wait_for_backends("app", "app", 0, Duration::from_secs(10))
            .await;
        assert_eq!(left, 0);
    }

    // PGTENANT_LISTEN over the file's listen: B is served, A is not open.
    let port_b = free_port();
    let listen_b = format!("127.0.0.1:{port_b}");
    let p = spawn_on(&run, &[("PGTENANT_LISTEN", &listen_b)], port_b);
    let c = support::connect(&p.url("app", "secret", "app")).await;
    assert_eq!(value(&c, "SELECT 1").await, "1");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port_a)).is_err(),
        "the file's listen address is open although PGTENANT_LISTEN overrides it"
    );
    drop(c);
    drop(p);

    // And --listen over PGTENANT_LISTEN.
    let port_c = free_port();
    let listen_c = format!("127.0.0.1:{port_c}");
    let args: Vec<&str> = run.iter().copied().chain(["--listen", &listen_c]).collect();
    let p = spawn_on(&args, &[("PGTENANT_LISTEN", &listen_b)], port_c);
    let c = support::connect(&p.url("app", "secret", "app")).await;
    assert_eq!(value(&c, "SELECT 1").await, "1");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port_b)).is_err());
}

/// Does the startup log line say this pool mode (`pool_mode="x"` or `pool_mode=x`)?
fn logs_pool_mode(logs: &str, mode: &str) -> bool {
    logs.lines().any(|l| {
        l.contains("pgtenant started")
            && (l.contains(&format!("pool_mode=\"{mode}\""))
                || l.contains(&format!("pool_mode={mode} ")))
    })
}

/// The startup log line may be written a moment after the port accepts connections:
/// wait for it (up to 10 s) instead of reading the log once.
fn wait_pool_mode(p: &Pgtenant, mode: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if logs_pool_mode(&p.logs(), mode) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Backend pids seen by client A, then by B inside a transaction, then by A again.
async fn pids_with_interleaved_transaction(p: &Pgtenant) -> (String, String, String) {
    let a = support::connect(&p.url("app", "secret", "app")).await;
    let b = support::connect(&p.url("app", "secret", "app")).await;
    let a1 = value(&a, "SELECT pg_backend_pid()").await;
    b.batch_execute("BEGIN").await.unwrap();
    let b1 = value(&b, "SELECT pg_backend_pid()").await;
    let a2 = value(&a, "SELECT pg_backend_pid()").await;
    b.batch_execute("COMMIT").await.unwrap();
    (a1, b1, a2)
}

/// PGTENANT_LISTEN, PGTENANT_UPSTREAM and PGTENANT_POOL_MODE alone (no file, no flags)
/// run a working pooler, and the pool mode really changes how servers are shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_alone_configures_a_working_pooler() {
    let pg = PgServer::start();
    let upstream = pg.url("app", "secret", "app");

    let listen = format!("127.0.0.1:{}", free_port());
    let p = Pgtenant::start(
        &["run"],
        &[
            ("PGTENANT_LISTEN", &listen),
            ("PGTENANT_UPSTREAM", &upstream),
            ("PGTENANT_POOL_MODE", "session"),
        ],
    );
    assert!(wait_pool_mode(&p, "session"), "{}", p.logs());
    // Session mode: A keeps its server while B holds another one.
    let (a1, b1, a2) = pids_with_interleaved_transaction(&p).await;
    assert_eq!(a1, a2, "session mode: A changed server");
    assert_ne!(a1, b1);
    drop(p);

    let listen = format!("127.0.0.1:{}", free_port());
    let p = Pgtenant::start(
        &["run"],
        &[
            ("PGTENANT_LISTEN", &listen),
            ("PGTENANT_UPSTREAM", &upstream),
            ("PGTENANT_POOL_MODE", "transaction"),
        ],
    );
    assert!(wait_pool_mode(&p, "transaction"), "{}", p.logs());
    // Transaction mode: B's transaction takes the idle server A used; A gets another.
    let (a1, b1, a2) = pids_with_interleaved_transaction(&p).await;
    assert_eq!(a1, b1, "transaction mode: the idle server was not reused");
    assert_ne!(a1, a2);
}

/// The README's zero-file command line serves psql.
#[test]
fn readme_flags_serve_psql() {
    let pg = PgServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let upstream = pg.url("app", "secret", "app");
    let p = Pgtenant::start(
        &[
            "run",
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--pool-mode",
            "transaction",
            "--pool-size",
            "20",
        ],
        &[],
    );
    assert_eq!(p.port(), port);
    let out = Command::new(support::pg_bin("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", "app", "-d", "app"])
        .args(["-c", "CREATE TABLE readme (id int)"])
        .args(["-c", "INSERT INTO readme SELECT generate_series(1, 10)"])
        .args(["-c", "SELECT current_user, sum(id) FROM readme"])
        .env("PGPASSWORD", "secret")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}\n--- pgtenant logs ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.logs()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "app|55"), "{stdout}");
    // The rows really are on the server.
    let out = pg.psql(&["-At", "-d", "app", "-c", "SELECT count(*) FROM readme"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10", "{out:?}");
}

// ---------------------------------------------------------------------------------------
// --log-format json
// ---------------------------------------------------------------------------------------

/// A minimal JSON validator (RFC 8259 grammar, no semantics): is `s` exactly one value?
fn is_json(s: &str) -> bool {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }
    fn string(b: &[u8], mut i: usize) -> Option<usize> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        loop {
            match *b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let hex = b.get(i + 2..i + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }
    fn number(b: &[u8], mut i: usize) -> Option<usize> {
        let start = i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > s
        };
        if !digits(&mut i) {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        (i > start).then_some(i)
    }
    fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
        if depth > 64 {
            return None;
        }
        let i = ws(b, i);
        match *b.get(i)? {
            b'{' => {
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    return Some(i + 1);
                }
                loop {
                    i = ws(b, string(b, ws(b, i))?);
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i = ws(b, value(b, i + 1, depth + 1)?);
                    match *b.get(i)? {
                        b',' => i += 1,
                        b'}' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    return Some(i + 1);
                }
                loop {
                    i = ws(b, value(b, i, depth + 1)?);
                    match *b.get(i)? {
                        b',' => i += 1,
                        b']' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'"' => string(b, i),
            b't' => b[i..].starts_with(b"true").then_some(i + 4),
            b'f' => b[i..].starts_with(b"false").then_some(i + 5),
            b'n' => b[i..].starts_with(b"null").then_some(i + 4),
            _ => number(b, i),
        }
    }
    let b = s.as_bytes();
    matches!(value(b, 0, 0), Some(end) if ws(b, end) == b.len())
}

#[test]
fn the_json_checker_checks() {
    assert!(is_json(
        r#"{"a":1,"b":[true,null,-1.5e3],"c":{"d":"x\"y\n\u00e9"}}"#
    ));
    for bad in [
        "",
        "{",
        "{\"a\":1",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{\"a\":\"b\nc\"}",
        "{a:1}",
        "{} x",
        "2024-01-01 INFO hello",
    ] {
        assert!(!is_json(bad), "accepted {bad:?}");
    }
}

fn assert_all_json(logs: &str) {
    let lines: Vec<&str> = logs.lines().collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        assert!(
            l.starts_with('{') && l.ends_with('}') && is_json(l),
            "not a JSON line: {l:?}\n--- all logs ---\n{logs}"
        );
        assert!(l.contains("\"level\":"), "no level: {l}");
        assert!(l.contains("\"timestamp\":"), "no timestamp: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_on_every_line() {
    let pg = PgServer::start();
    let dir = TempDir::new("cli-json");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_size = 2\nshutdown_timeout = 10\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    // Events of many kinds: logins (one with an application_name full of characters
    // JSON must escape), a failed password, garbage at startup, a bad reload, a good
    // reload, shutdown.
    let weird = "we%22ird%5Cname%0Anewline%09tab";
    let c = support::connect(&format!(
        "{}?application_name={weird}",
        p.url("app", "secret", "app")
    ))
    .await;
    assert_eq!(value(&c, "SELECT 1").await, "1");
    assert!(support::try_connect(&p.url("app", "wrong", "app"))
        .await
        .is_err());
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }
    std::fs::write(&cfg, "pool_size = \"x\"\nbogus = 1\n").unwrap();
    p.signal(Signal::Hup);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.logs().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(
        &cfg,
        format!(
            "upstream = \"{}\"\npool_size = 3\nshutdown_timeout = 10\n",
            pg.url("app", "secret", "app")
        ),
    )
    .unwrap();
    p.signal(Signal::Hup);
    while !p.logs().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload logged\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    p.signal(Signal::Term);
    let mut p = p;
    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(Duration::from_secs(15));
        (p, s)
    })
    .await
    .unwrap();
    let (p, status) = status;
    assert!(status.is_some(), "did not exit\n{}", p.logs());
    let logs = p.logs();
    for event in [
        "\"pgtenant started\"",
        "\"client logged in\"",
        "client authentication failed",
        "reload failed",
        "\"configuration reloaded\"",
        "\"shutting down\"",
    ] {
        assert!(logs.contains(event), "no {event} in logs:\n{logs}");
    }
    assert!(
        logs.contains(r#"we\"ird\\name\nnewline\ttab"#),
        "application_name not escaped as expected:\n{logs}"
    );
    assert_all_json(&logs);

    // A configuration error in JSON mode is JSON too (what a log pipeline sees when the
    // pod crash-loops).
    let (status, out) = pgtenant_run(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[("PGTENANT_POOL_MODE", "nope")],
        CHECK_TIMEOUT,
    );
    assert!(!status.success(), "{out}");
    assert!(out.contains("pool_mode"), "{out}");
    assert_all_json(&out);
}
