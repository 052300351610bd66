//! tokio-postgres's own test suite, run through pgtenant: a real driver's checks of what
//! "like a direct connection" means (types, COPY in and out, notices, notifications,
//! cancels, transactions and their cancellation, pipelined prepares, password, md5 and
//! SCRAM logins right and wrong, channel binding refused, several hosts and ports).
//!
//! The suite is the `test` target of the tokio-postgres crate these tests already
//! depend on (its source in Cargo's registry, the version in Cargo.lock). It is copied to
//! `target/tokio-postgres-suite/` and built there with its own target directory; the
//! copy differs from the original in two things only:
//! - the server port it has written in (5433) is the port of the pgtenant under test;
//! - its dev-dependencies are cut to the two its tests use (`futures-util`, `tokio`:
//!   the others serve optional type features and benchmarks), its features to the
//!   default ones, and it is resolved with pgtenant's own Cargo.lock, so nothing new is
//!   downloaded (checked with a fresh `CARGO_HOME` that fetched pgtenant's dependencies
//!   only).
//!
//! What it runs against is what its own CI sets up: users `postgres` (trust),
//! `pass_user` (cleartext password), `md5_user` (md5) and `scram_user` (SCRAM), each
//! with password `password`, database `postgres`, extensions `hstore`, `citext` and
//! `ltree`. pgtenant gives each user its method with an hba file. Every test of the
//! suite must pass, through pgtenant in transaction mode (pool of 2, server_pipelining
//! auto: the suite's parallel tests share server connections) and in session mode. The
//! one test the suite itself ignores (a Unix socket path of its Docker setup) stays
//! ignored.
//!
//! Run only these: `cargo test --test it driver_suite::`.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, PgServer, Pgtenant, TempDir};

/// A suite run longer than this is hung; it is killed and the test fails.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// The port the suite has written in its sources.
const SUITE_PORT: &str = "5433";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tokio-postgres's version in Cargo.lock.
fn locked_version() -> String {
    let lock = fs::read_to_string(root().join("Cargo.lock")).expect("read Cargo.lock");
    let doc: toml::Value = lock.parse().expect("Cargo.lock is TOML");
    doc["package"]
        .as_array()
        .expect("Cargo.lock's packages")
        .iter()
        .find(|p| p["name"].as_str() == Some("tokio-postgres"))
        .and_then(|p| p["version"].as_str())
        .expect("tokio-postgres in Cargo.lock (a dev-dependency)")
        .to_string()
}

/// The crate's source, as Cargo unpacked it to build these tests.
fn crate_source(version: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry").join("src");
    let name = format!("tokio-postgres-{version}");
    fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(&name))
        .find(|p| p.join("tests").join("test").join("main.rs").exists())
        .unwrap_or_else(|| panic!("{name} with its tests/ under {}", src.display()))
}

/// Run a command to completion; its output, or a panic with it.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The manifest with only the dev-dependencies the suite's tests use, only the default
/// features, and no benches. Its other features name optional dependencies of
/// postgres-types (chrono, uuid, geo-types, …): as the root package, the crate would have
/// them resolved, and a machine that built only pgtenant has none of them in its
/// registry cache (`--offline` fails there).
fn trimmed_manifest(original: &str) -> String {
    let mut doc: toml::Table = original.parse().expect("tokio-postgres's Cargo.toml");
    if let Some(dev) = doc
        .get_mut("dev-dependencies")
        .and_then(|d| d.as_table_mut())
    {
        dev.retain(|name, _| name == "futures-util" || name == "tokio");
    }
    if let Some(features) = doc.get_mut("features").and_then(|f| f.as_table_mut()) {
        features.retain(|name, _| name == "default" || name == "runtime");
    }
    doc.remove("bench");
    toml::to_string(&doc).expect("write the manifest")
}

/// Copy `from` into `to` (a directory tree of plain files).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for e in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let e = e.expect("a directory entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("a file type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst)
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// The suite's copy with `port` written in, ready to build; its manifest path.
fn prepare(port: u16) -> PathBuf {
    let version = locked_version();
    let from = crate_source(&version);
    let base = root().join("target").join("tokio-postgres-suite");
    let dir = base.join(format!("tokio-postgres-{version}"));
    let _ = fs::remove_dir_all(&dir);
    copy_tree(&from, &dir);
    let manifest = dir.join("Cargo.toml");
    let original = fs::read_to_string(&manifest).expect("read the manifest");
    fs::write(&manifest, trimmed_manifest(&original)).expect("write the manifest");
    // pgtenant's lock: every version the suite needs is one these tests were built with.
    fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy Cargo.lock");
    // The suite's port, where it connects (not in parse.rs, which only parses strings).
    let mut rewritten = 0;
    for file in ["main.rs", "runtime.rs"] {
        let path = dir.join("tests").join("test").join(file);
        let text = fs::read_to_string(&path).expect("read a suite file");
        rewritten += text.matches(SUITE_PORT).count();
        fs::write(&path, text.replace(SUITE_PORT, &port.to_string())).expect("write it");
    }
    assert!(
        rewritten >= 10,
        "the suite names its port {rewritten} times"
    );
    manifest
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Its own target directory: the outer build's is not this crate's.
    c.env(
        "CARGO_TARGET_DIR",
        root()
            .join("target")
            .join("tokio-postgres-suite")
            .join("target"),
    );
    c
}

/// Build the suite (the `test` target) for `manifest`.
fn build(manifest: &Path) {
    let t0 = Instant::now();
    run(
        cargo()
            .args([
                "test",
                "--offline",
                "--test",
                "test",
                "--no-run",
                "--manifest-path",
            ])
            .arg(manifest),
        "building tokio-postgres's test suite",
    );
    eprintln!("driver_suite: built in {:.1?}", t0.elapsed());
}

/// Run the suite; (passed, failed, ignored) and its output.
fn run_suite(manifest: &Path) -> ((u32, u32, u32), String) {
    let mut child = cargo()
        .args(["test", "--offline", "--test", "test", "--manifest-path"])
        .arg(manifest)
        .args(["--", "--test-threads", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the suite");
    let deadline = Instant::now() + SUITE_TIMEOUT;
    while child.try_wait().expect("wait for the suite").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("the suite's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("test result: "))
        .unwrap_or_else(|| panic!("no summary (hung or not built):\n{text}"));
    let count = |word: &str| -> u32 {
        summary
            .split(';')
            .find(|p| p.trim_end().ends_with(word))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {word} count in {summary:?}"))
    };
    ((count("passed"), count("failed"), count("ignored")), text)
}

/// The server as the suite's own CI sets it up.
fn server() -> PgServer {
    let pg = PgServer::start();
    pg.psql_ok(
        "CREATE ROLE pass_user LOGIN PASSWORD 'password'; \
         CREATE ROLE md5_user LOGIN PASSWORD 'password'; \
         CREATE ROLE scram_user LOGIN PASSWORD 'password'; \
         CREATE EXTENSION IF NOT EXISTS hstore; \
         CREATE EXTENSION IF NOT EXISTS citext; \
         CREATE EXTENSION IF NOT EXISTS ltree;",
    );
    pg
}

/// pgtenant on `port` in `mode`, each user with the suite's login method.
fn pgtenant(pg: &PgServer, dir: &TempDir, port: u16, mode: &str, pool: u32) -> Pgtenant {
    let hba = dir.write(
        "hba.conf",
        "host all postgres 127.0.0.1/32 trust\n\
         host all pass_user 127.0.0.1/32 password\n\
         host all md5_user 127.0.0.1/32 md5\n\
         host all scram_user 127.0.0.1/32 scram-sha-256\n",
    );
    let users = dir.write(
        "users.txt",
        "\"postgres\" \"postgres\"\n\"pass_user\" \"password\"\n\
         \"md5_user\" \"password\"\n\"scram_user\" \"password\"\n",
    );
    let cfg = dir.config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\n\
         upstream = \"{}\"\n\
         pool_mode = \"{mode}\"\n\
         pool_size = {pool}\n\
         server_pipelining = \"auto\"\n\
         auth_type = \"hba\"\n\
         auth_hba_file = \"{}\"\n\
         auth_file = \"{}\"\n",
        pg.url("postgres", "postgres", "postgres"),
        hba.display(),
        users.display(),
    ));
    let cfg = cfg.to_str().expect("a UTF-8 path");
    let mut p = Pgtenant::spawn(&["run", "--config", cfg], &[], Some(port));
    p.wait_ready(Duration::from_secs(10));
    p
}

/// Every test of tokio-postgres's suite passes through pgtenant, in transaction mode on
/// a pool of 2 (with server_pipelining auto) and in session mode.
#[test]
fn tokio_postgres_own_suite_passes_through_pgtenant() {
    let pg = server();
    let port = free_port();
    let manifest = prepare(port);
    // Built before pgtenant starts (minutes on a cold build): nothing waits on it.
    build(&manifest);
    for (mode, pool) in [("transaction", 2), ("session", 10)] {
        let dir = TempDir::new(&format!("driver-suite-{mode}"));
        let p = pgtenant(&pg, &dir, port, mode, pool);
        let ((passed, failed, ignored), out) = run_suite(&manifest);
        let failures: Vec<&str> = out
            .lines()
            .filter(|l| l.ends_with("FAILED") || l.contains("panicked at"))
            .collect();
        assert!(
            failed == 0 && passed >= 100 && ignored <= 1,
            "{mode} mode: {passed} passed, {failed} failed, {ignored} ignored\n{}\n\
             --- pgtenant's log ---\n{}",
            failures.join("\n"),
            p.logs()
        );
        eprintln!("driver_suite: {mode} mode: {passed} passed, {ignored} ignored");
        drop(p);
    }
}
