//! Django's own test runner, through pgtenant in transaction mode.
//!
//! `tests/django/` is a small Django project (Django 5.x, psycopg 3) whose tests cover
//! what a Django app does to its database: CRUD, nested `atomic()` blocks, savepoints,
//! `select_for_update` (nowait, skip_locked, waiting), `bulk_create`, `iterator()`
//! without server-side cursors, two connections with different time zones interleaved,
//! migrations back to zero and forward, and eight threads at once on a pool of two
//! server connections. Each test here starts a real PostgreSQL, puts pgtenant in front
//! of it (pool size 2) and runs `python manage.py test --noinput -v 2` against it; one
//! test runs the suite straight against PostgreSQL to prove the suite itself is right.
//!
//! The Python side lives in a virtualenv at `target/django-venv`, made on first use
//! with `python3 -m venv` and `pip install -r tests/django/requirements.txt` (packages
//! from PyPI), and made again when the requirements file or the Python changes. Set
//! `PGTENANT_TEST_PYTHON` to use another interpreter than `python3`.
//!
//! Run only these: `cargo test --test it django::` (add `-- --nocapture` to see each run's
//! summary).

use crate::support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant, TempDir};

/// A Django run that takes longer than this is hung (a lock or a pool wait that never
/// ends); it is killed and the test fails with what it printed so far.
const DJANGO_TIMEOUT: Duration = Duration::from_secs(240);

/// Server connections in pgtenant's pool: fewer than the Django connections the suite
/// opens at once (up to eight threads plus the main thread's two aliases).
const POOL_SIZE: &str = "2";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn django_dir() -> PathBuf {
    root().join("tests").join("django")
}

fn venv_dir() -> PathBuf {
    root().join("target").join("django-venv")
}

// ---------------------------------------------------------------------------------------
// The virtualenv
// ---------------------------------------------------------------------------------------

/// Run a command to completion; Err with its output when it cannot start or fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: could not run {cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}): {cmd:?}\n{text}", out.status))
    }
}

/// What the venv was made from: the requirements and the base interpreter. A venv whose
/// stamp differs is made again.
fn venv_stamp(base_python: &str, requirements: &str) -> Result<String, String> {
    let version = run(
        Command::new(base_python).args([
            "-c",
            "import sys; print(sys.executable); print(sys.version)",
        ]),
        "python3 --version",
    )
    .map_err(|e| {
        format!(
            "{e}\nPython 3 is needed for the Django tests (scripts/test.sh installs \
             python3-venv and python3-pip); set PGTENANT_TEST_PYTHON to use another one"
        )
    })?;
    Ok(format!("{requirements}\n# python:\n{version}"))
}

/// Holds `target/django-venv.lock` (a directory: creating one is atomic) while the venv
/// is checked or made, so that two test processes do not build it at once. A lock older
/// than ten minutes is left from a killed process and is taken over.
struct VenvLock(PathBuf);

impl VenvLock {
    fn take() -> VenvLock {
        let path = root().join("target").join("django-venv.lock");
        let _ = fs::create_dir_all(root().join("target"));
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if fs::create_dir(&path).is_ok() {
                return VenvLock(path);
            }
            let stale = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600));
            if stale || Instant::now() > deadline {
                let _ = fs::remove_dir(&path);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for VenvLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn make_venv() -> Result<PathBuf, String> {
    let _lock = VenvLock::take();
    let base_python = std::env::var("PGTENANT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let req_path = django_dir().join("requirements.txt");
    let requirements =
        fs::read_to_string(&req_path).map_err(|e| format!("read {}: {e}", req_path.display()))?;
    let stamp = venv_stamp(&base_python, &requirements)?;

    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let stamp_path = venv.join("pgtenant-requirements.stamp");
    if python.exists() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        return Ok(python);
    }

    let t0 = Instant::now();
    let _ = fs::remove_dir_all(&venv);
    run(
        Command::new(&base_python).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )
    .map_err(|e| format!("{e}\n(on Debian: apt-get install python3-venv)"))?;
    let installed = run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "-q", "-r"])
            .arg(&req_path)
            .env("PIP_NO_INPUT", "1"),
        "pip install -r tests/django/requirements.txt",
    );
    if let Err(e) = installed {
        let _ = fs::remove_dir_all(&venv);
        return Err(e);
    }
    // Written last: a venv without it is incomplete and is made again next time.
    fs::write(&stamp_path, &stamp).map_err(|e| format!("write {}: {e}", stamp_path.display()))?;
    eprintln!("django: made {} in {:.1?}", venv.display(), t0.elapsed());
    Ok(python)
}

/// The venv's python, made once per test process (the tests here and in
/// `django_multitenant` share it).
pub(crate) fn venv_python() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(make_venv) {
        Ok(p) => p.clone(),
        Err(e) => panic!("could not make the Django virtualenv: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Running the suite
// ---------------------------------------------------------------------------------------

/// Where the suite connects, and how.
struct Target<'a> {
    port: u16,
    server_side_binding: bool,
    /// For failure messages: pgtenant's logs, if pgtenant is in the path.
    pgtenant: Option<&'a Pgtenant>,
    label: &'a str,
}

/// Lines worth reading first in Django's output: the failed tests and the summary.
pub(crate) fn failure_summary(output: &str) -> String {
    let mut lines: Vec<&str> = output
        .lines()
        .filter(|l| {
            l.starts_with("ERROR: ")
                || l.starts_with("FAIL: ")
                || l.starts_with("Ran ")
                || l.starts_with("FAILED")
                || l.starts_with("OK")
                || l.contains("Error: ")
        })
        .collect();
    lines.dedup();
    lines.join("\n")
}

/// The last `max` bytes of `s` (on a char boundary).
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Run `python manage.py test --noinput -v 2` against `target`; panic with Django's
/// output (and pgtenant's logs) unless it passes.
fn run_django_suite(target: Target) {
    let python = venv_python();
    let out_dir = TempDir::new("django");
    let out_path = out_dir.path().join("django.log");
    let out = fs::File::create(&out_path).expect("create django log");
    let err = out.try_clone().expect("clone django log handle");

    let mut cmd = Command::new(&python);
    cmd.args(["manage.py", "test", "--noinput", "-v", "2"])
        .current_dir(django_dir())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // libpq and Django settings from the developer's environment stay out of the run.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("PG") || k.starts_with("DJANGO") || k == "PYTHONPATH" {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGT_HOST", "127.0.0.1")
        .env("PGT_PORT", target.port.to_string())
        .env("PGT_USER", "app")
        .env("PGT_PASSWORD", "secret")
        .env("PGT_DB", "app")
        .env(
            "PGT_SERVER_SIDE_BINDING",
            if target.server_side_binding { "1" } else { "0" },
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");

    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for django") {
            break Some(status);
        }
        if t0.elapsed() > DJANGO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = t0.elapsed();
    let output = fs::read_to_string(&out_path).unwrap_or_default();

    let passed = matches!(status, Some(s) if s.success());
    if passed {
        println!(
            "django ({}): passed in {elapsed:.1?}\n{}",
            target.label,
            failure_summary(&output)
        );
        return;
    }
    let how = match status {
        Some(s) => format!("exited with {s}"),
        None => format!("was killed after {DJANGO_TIMEOUT:?}"),
    };
    let logs = target
        .pgtenant
        .map(|p| {
            format!(
                "\n--- pgtenant logs (last 64 KiB) ---\n{}",
                tail(&p.logs(), 64 * 1024)
            )
        })
        .unwrap_or_default();
    panic!(
        "Django suite ({}) {how} after {elapsed:.1?}\n--- summary ---\n{}\n\
         --- Django output ---\n{output}{logs}",
        target.label,
        failure_summary(&output)
    );
}

/// pgtenant in transaction mode in front of `pg`, with a pool of two.
fn start_pgtenant(pg: &PgServer) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    Pgtenant::start(
        &[
            "run",
            "--upstream",
            &upstream,
            "--pool-mode",
            "transaction",
            "--pool-size",
            POOL_SIZE,
            "--max-client-conn",
            "200",
        ],
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The suite straight against PostgreSQL, both binding modes: proves the Django tests
/// themselves are right, so a failure through pgtenant is pgtenant's. The two runs go at
/// once, each against a server of its own (each run creates and drops its test database
/// `test_app`); a run keeps about half a core busy, so together they take little longer
/// than one.
#[test]
fn django_suite_passes_directly_against_postgresql() {
    venv_python();
    std::thread::scope(|s| {
        let runs: Vec<_> = [false, true]
            .into_iter()
            .map(|server_side_binding| {
                s.spawn(move || {
                    let pg = PgServer::start();
                    run_django_suite(Target {
                        port: pg.port(),
                        server_side_binding,
                        pgtenant: None,
                        label: if server_side_binding {
                            "PostgreSQL directly, server-side binding"
                        } else {
                            "PostgreSQL directly"
                        },
                    });
                })
            })
            .collect();
        for run in runs {
            if let Err(panic) = run.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// The suite through pgtenant in transaction mode (pool of two), psycopg's default
/// client-side binding.
#[test]
fn django_suite_passes_through_pgtenant_transaction_mode() {
    venv_python();
    let pg = PgServer::start();
    let pgt = start_pgtenant(&pg);
    run_django_suite(Target {
        port: pgt.port(),
        server_side_binding: false,
        pgtenant: Some(&pgt),
        label: "pgtenant, transaction mode",
    });
}

/// The same with `OPTIONS={"server_side_binding": True}` and psycopg preparing
/// statements after five runs: named prepared statements must follow each client to
/// whichever server connection serves it.
#[test]
fn django_suite_passes_through_pgtenant_with_server_side_binding() {
    venv_python();
    let pg = PgServer::start();
    let pgt = start_pgtenant(&pg);
    run_django_suite(Target {
        port: pgt.port(),
        server_side_binding: true,
        pgtenant: Some(&pgt),
        label: "pgtenant, transaction mode, server-side binding",
    });
}

/// The prepared-statement hijack (issue 11) with psycopg 3 and `prepare=True`: two
/// clients on one server connection; B's attempts through pgtenant's reserved names and
/// through dynamic SQL never make A's statement run B's SQL (tests/django/isolation).
#[test]
fn psycopg_prepared_statements_cannot_be_hijacked() {
    let python = venv_python();
    let pg = PgServer::start();
    let out = pg.psql(&[
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "app",
        "-c",
        "CREATE TABLE items(id int primary key, v text); \
         INSERT INTO items VALUES (1, 'one'), (2, 'two'); \
         CREATE TABLE loot(v text); GRANT ALL ON items, loot TO app;",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upstream = pg.url("app", "secret", "app");
    let pt = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &upstream,
            "--pool-mode",
            "transaction",
            "--pool-size",
            "1",
        ],
        &[],
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=app",
        pt.port()
    );
    let script = django_dir().join("isolation").join("hijack.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dsn)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}\n--- pgtenant ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        pt.logs()
    );
}

/// psycopg behaviours a direct connection has (issue 12), checked directly and through
/// pgtenant in transaction and session mode (tests/django/fidelity/like_direct.py): an
/// error in an async executemany pipeline, DEALLOCATE ALL after DROP TYPE, a client's own
/// NOTIFY before its result, the backend pid and cancel, client_encoding's spelling,
/// DROP DATABASE of a database the pool holds connections to.
#[test]
fn psycopg_behaves_as_on_a_direct_connection() {
    let python = venv_python();
    let pg = PgServer::start();
    let upstream = pg.url("app", "secret", "app");
    let start = |mode: &str| {
        Pgtenant::start(
            &[
                "run",
                "--upstream",
                &upstream,
                "--pool-mode",
                mode,
                "--pool-size",
                "3",
            ],
            &[],
        )
    };
    let tx = start("transaction");
    let session = start("session");
    let script = django_dir().join("fidelity").join("like_direct.py");
    for (mode, port, pt) in [
        ("direct", pg.port(), None),
        ("transaction", tx.port(), Some(&tx)),
        ("session", session.port(), Some(&session)),
    ] {
        let dsn = format!("host=127.0.0.1 port={port} user=app password=secret dbname=app");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&dsn)
            .arg(mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all ok"),
            "{mode}:\n{stdout}\n{}\n--- pgtenant ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            pt.map(|p| p.logs()).unwrap_or_default()
        );
    }
}

/// psycopg's test_change_password (tests/pq/test_pgconn.py) through pgtenant with
/// auth_query (issue 12 item 8, issue 14 point 3): a role made after pgtenant started
/// logs in, its password changed with PQchangePassword works at once and the old one is
/// refused; the role changes its own password and restores it; NOLOGIN and a dropped
/// role are refused (tests/django/auth/change_password.py).
#[test]
fn psycopg_change_password_through_auth_query() {
    let python = venv_python();
    let pg = PgServer::start();
    let dir = TempDir::new("django-auth-query");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_user = \"postgres\"\n\n[users.postgres]\npassword = \"postgres\"\n",
        pg.url("app", "secret", "app")
    ));
    let pt = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres",
        pt.port()
    );
    let script = django_dir().join("auth").join("change_password.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dsn)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}\n--- pgtenant ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        pt.logs()
    );
}

/// Every Python package is pinned, so every run installs the same set.
#[test]
fn requirements_are_pinned() {
    let text = fs::read_to_string(django_dir().join("requirements.txt")).unwrap();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(line.contains("=="), "unpinned requirement: {line}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("Django==5.")),
        "Django 5.x expected"
    );
    assert!(
        text.lines().any(|l| l.starts_with("psycopg[binary]==3.")),
        "psycopg 3 expected"
    );
    assert!(django_dir().join("manage.py").exists());
}
