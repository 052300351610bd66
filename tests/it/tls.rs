//! TLS on both sides of pgtenant, against a real PostgreSQL.
//!
//! Client side (client → pgtenant): `client_tls = "require"` refuses plain clients,
//! `"allow"` takes both, `"disable"` answers SSLRequest with 'N'; psql's `\conninfo` and
//! `openssl s_client -starttls postgres` show that TLS is really in use.
//!
//! Server side (pgtenant → PostgreSQL): libpq's sslmode names. PostgreSQL is told to
//! refuse `app` without TLS (`hostnossl … reject`), and `pg_stat_ssl` says what each
//! server connection really uses.

use crate::support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, gen_certs, wait_for_port, Certs, PgServer, Pgtenant, TempDir};
use tokio_postgres::error::SqlState;

/// Generous: the machine has 2 cores and other suites run at the same time.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Run psql (as app/secret) with a libpq conninfo string and extra args.
fn psql(conninfo: &str, args: &[&str]) -> Output {
    Command::new(support::pg_bin("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .arg(conninfo)
        .env("PGPASSWORD", "secret")
        .env("PGCONNECT_TIMEOUT", "20")
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .output()
        .expect("run psql")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// psql's `\conninfo` through pgtenant with the given sslmode; panics if psql fails.
fn conninfo_ok(port: u16, sslmode: &str, p: &Pgtenant) -> String {
    let ci = format!("host=127.0.0.1 port={port} dbname=app user=app sslmode={sslmode}");
    let out = psql(&ci, &["-c", "select 6 * 7", "-c", "\\conninfo"]);
    assert!(
        out.status.success(),
        "psql sslmode={sslmode} failed: {}\n--- pgtenant logs ---\n{}",
        stderr(&out),
        p.logs()
    );
    let text = stdout(&out);
    assert!(text.starts_with("42\n"), "unexpected output: {text}");
    text
}

/// pgtenant started with this TOML as its config (the primary listener from --listen).
fn pgtenant_with_config(toml: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("tls-config");
    let cfg = dir.config_file(toml);
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir)
}

/// A TOML string literal for a path.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("utf-8 path"))
}

/// A PostgreSQL server with TLS on that refuses `app` over plain TCP.
fn hostssl_server(certs: &Certs) -> PgServer {
    PgServer::builder()
        .ssl(certs)
        .hba("hostnossl all app 127.0.0.1/32 reject")
        .hba("hostssl all app 127.0.0.1/32 scram-sha-256")
        .start()
}

/// pgtenant pooling `app` on `pg` through `host`, with the given server_tls settings.
fn pgtenant_to(pg: &PgServer, host: &str, server_tls: &str, ca: Option<&Path>) -> Pgtenant {
    let mut toml = format!(
        "upstream = \"postgres://app:secret@{host}:{}/app\"\nserver_tls = \"{server_tls}\"\n",
        pg.port()
    );
    if let Some(ca) = ca {
        toml.push_str(&format!("server_tls_ca_file = {}\n", toml_path(ca)));
    }
    let (p, dir) = pgtenant_with_config(&toml);
    // The config is read at start; the dir may go.
    drop(dir);
    p
}

async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    tokio::time::timeout(TIMEOUT, support::try_connect(url))
        .await
        .unwrap_or_else(|_| panic!("connect through pgtenant timed out"))
}

/// Log in through pgtenant (plain client side) and return whether the server
/// connection serving this session uses TLS, as the server itself sees it; also check
/// pg_stat_ssl on the server for all of app's connections.
async fn server_side_ssl(p: &Pgtenant, pg: &PgServer) -> bool {
    let c = try_connect(&p.url("app", "secret", "app"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "login through pgtenant failed: {e:?}\n--- pgtenant logs ---\n{}",
                p.logs()
            )
        });
    let own: bool = c
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query pg_stat_ssl through pgtenant")
        .get(0);
    let admin = pg.admin_client().await;
    let all: Vec<bool> = admin
        .query(
            "select ssl from pg_stat_ssl join pg_stat_activity using (pid) \
             where usename = 'app'",
            &[],
        )
        .await
        .expect("query pg_stat_ssl as superuser")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!all.is_empty(), "no server connection of app seen");
    assert!(
        all.iter().all(|s| *s == own),
        "app's server connections disagree about TLS: {all:?}"
    );
    own
}

/// The login fails with `code`; pgtenant is still up and answers the next client the
/// same way. Returns the error message.
async fn assert_login_fails(p: &mut Pgtenant, code: &SqlState, what: &str) -> String {
    let mut message = String::new();
    for attempt in 0..2 {
        let e = match try_connect(&p.url("app", "secret", "app")).await {
            Ok(_) => panic!("{what}: login unexpectedly succeeded"),
            Err(e) => e,
        };
        assert_eq!(
            e.code(),
            Some(code),
            "{what} (attempt {attempt}): {e:?}\n--- pgtenant logs ---\n{}",
            p.logs()
        );
        message = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            p.wait_exit(Duration::ZERO).is_none(),
            "{what}: pgtenant exited\n{}",
            p.logs()
        );
    }
    message
}

/// Sign a second server certificate with the CA of `certs`, for a name that is neither
/// `localhost` nor 127.0.0.1 (so connecting to either is a host-name mismatch).
fn wrong_name_certs(certs: &Certs, dir: &Path) -> Certs {
    let ca_key = certs.ca.with_file_name("ca.key");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.csr",
        "-subj",
        "/CN=db.invalid",
    ]);
    std::fs::write(
        dir.join("other.ext"),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:db.invalid\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "other.csr",
        "-CA",
        certs.ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-out",
        "other.crt",
        "-days",
        "3650",
        "-extfile",
        "other.ext",
    ]);
    Certs {
        ca: certs.ca.clone(),
        cert: dir.join("other.crt"),
        key: dir.join("other.key"),
    }
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// `client_tls = "require"`: TLS clients work (and can verify pgtenant's certificate),
/// plain clients are refused with a message saying why.
#[test]
fn client_tls_require() {
    let pg = PgServer::start();
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let (p, _cfg) = pgtenant_with_config(&format!(
        "upstream = \"{}\"\n\
         client_tls = \"require\"\n\
         client_tls_cert_file = {}\n\
         client_tls_key_file = {}\n",
        pg.url("app", "secret", "app"),
        toml_path(&certs.cert),
        toml_path(&certs.key)
    ));

    let info = conninfo_ok(p.port(), "require", &p);
    assert!(info.contains("SSL connection"), "not TLS: {info}");

    // libpq checks pgtenant's certificate against the CA and the host name.
    let ci = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=app user=app \
         sslmode=verify-full sslrootcert={}",
        p.port(),
        certs.ca.display()
    );
    let out = psql(&ci, &["-c", "select current_user", "-c", "\\conninfo"]);
    assert!(out.status.success(), "verify-full: {}", stderr(&out));
    assert!(stdout(&out).starts_with("app\n") && stdout(&out).contains("SSL connection"));

    let ci = format!(
        "host=127.0.0.1 port={} dbname=app user=app sslmode=disable",
        p.port()
    );
    let out = psql(&ci, &["-c", "select 1"]);
    assert!(!out.status.success(), "plain client was let in: {out:?}");
    assert!(
        stderr(&out).contains("TLS is required"),
        "unexpected refusal: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");

    // openssl, independent of libpq: the handshake after SSLRequest succeeds and the
    // certificate chain verifies.
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{}", p.port()))
        .arg("-CAfile")
        .arg(&certs.ca)
        .args(["-verify_hostname", "localhost", "-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "openssl s_client failed:\n{text}");
    assert!(
        text.contains("Verify return code: 0 (ok)")
            && text.contains("Verified peername: localhost"),
        "unexpected s_client output:\n{text}"
    );
}

/// `client_tls = "allow"`: both TLS and plain clients work, each as it asked. A second
/// listener without TLS (`disable`) answers SSLRequest with 'N'.
#[test]
fn client_tls_allow_and_disable() {
    let pg = PgServer::start();
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let plain_port = free_port();
    let (p, _cfg) = pgtenant_with_config(&format!(
        "upstream = \"{}\"\n\
         client_tls = \"allow\"\n\
         client_tls_cert_file = {}\n\
         client_tls_key_file = {}\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{plain_port}\"\n\
         client_tls = \"disable\"\n",
        pg.url("app", "secret", "app"),
        toml_path(&certs.cert),
        toml_path(&certs.key)
    ));
    assert!(
        wait_for_port(plain_port, Duration::from_secs(10)),
        "{}",
        p.logs()
    );

    let tls = conninfo_ok(p.port(), "require", &p);
    assert!(tls.contains("SSL connection"), "not TLS: {tls}");
    let plain = conninfo_ok(p.port(), "disable", &p);
    assert!(
        !plain.contains("SSL connection"),
        "TLS though disabled: {plain}"
    );

    // The TLS-less listener: prefer falls back to plain, require fails.
    let plain = conninfo_ok(plain_port, "prefer", &p);
    assert!(!plain.contains("SSL connection"), "{plain}");
    let ci = format!("host=127.0.0.1 port={plain_port} dbname=app user=app sslmode=require");
    let out = psql(&ci, &["-c", "select 1"]);
    assert!(
        !out.status.success(),
        "sslmode=require on a TLS-less listener worked"
    );
    assert!(
        stderr(&out).contains("does not support SSL"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

/// verify-full with the CA: works when the upstream host is in the certificate, as an
/// IP address (127.0.0.1) and as a DNS name (localhost); the server sees TLS.
#[tokio::test]
async fn server_tls_verify_full() {
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let pg = hostssl_server(&certs);

    // Without TLS PostgreSQL refuses app: the hba rules bite.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=app sslmode=disable",
            pg.port()
        ),
        &["-c", "select 1"],
    );
    assert!(!out.status.success(), "the server accepted app without TLS");

    for host in ["127.0.0.1", "localhost"] {
        let p = pgtenant_to(&pg, host, "verify-full", Some(&certs.ca));
        assert!(
            server_side_ssl(&p, &pg).await,
            "verify-full via {host}: server connection is not TLS"
        );
        drop(p);
        let n = pg
            .wait_for_backends("app", "app", 0, Duration::from_secs(20))
            .await;
        assert_eq!(n, 0, "server connections outlived pgtenant");
    }
}

/// verify-ca checks the chain but not the name: a certificate for another name works.
/// A CA that did not sign the server's certificate fails.
#[tokio::test]
async fn server_tls_verify_ca_ignores_host_name() {
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let other = wrong_name_certs(&certs, dir.path());
    let pg = hostssl_server(&other);

    let p = pgtenant_to(&pg, "127.0.0.1", "verify-ca", Some(&certs.ca));
    assert!(server_side_ssl(&p, &pg).await, "verify-ca: not TLS");
    drop(p);

    // Another CA: the chain does not verify.
    let dir2 = TempDir::new("tls-certs-other-ca");
    let unrelated = gen_certs(dir2.path());
    let mut p = pgtenant_to(&pg, "127.0.0.1", "verify-ca", Some(&unrelated.ca));
    let msg =
        assert_login_fails(&mut p, &SqlState::CONNECTION_FAILURE, "verify-ca, wrong CA").await;
    assert!(msg.contains("TLS"), "unhelpful error: {msg}");
}

/// verify-full with a certificate for another name fails; the client gets an error and
/// pgtenant stays up.
#[tokio::test]
async fn server_tls_verify_full_wrong_name_fails() {
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let other = wrong_name_certs(&certs, dir.path());
    let pg = hostssl_server(&other);

    let mut p = pgtenant_to(&pg, "127.0.0.1", "verify-full", Some(&certs.ca));
    let msg = assert_login_fails(
        &mut p,
        &SqlState::CONNECTION_FAILURE,
        "verify-full, wrong host name",
    )
    .await;
    assert!(msg.contains("TLS"), "unhelpful error: {msg}");
    assert_eq!(pg.count_backends("app", "app").await, 0);
}

/// require: TLS without any certificate check (no CA configured).
#[tokio::test]
async fn server_tls_require_without_ca() {
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let other = wrong_name_certs(&certs, dir.path());
    let pg = hostssl_server(&other);
    let p = pgtenant_to(&pg, "127.0.0.1", "require", None);
    assert!(server_side_ssl(&p, &pg).await, "require: not TLS");
}

/// require against a server without TLS fails rather than falling back to plain.
#[tokio::test]
async fn server_tls_require_against_plain_server_fails() {
    let pg = PgServer::start();
    let mut p = pgtenant_to(&pg, "127.0.0.1", "require", None);
    let msg = assert_login_fails(
        &mut p,
        &SqlState::CONNECTION_FAILURE,
        "require against a TLS-less server",
    )
    .await;
    assert!(msg.contains("TLS"), "unhelpful error: {msg}");
    assert_eq!(pg.count_backends("app", "app").await, 0);
}

/// prefer: plain against a server without TLS, TLS against one with it.
#[tokio::test]
async fn server_tls_prefer() {
    let plain_pg = PgServer::start();
    let p = pgtenant_to(&plain_pg, "127.0.0.1", "prefer", None);
    assert!(
        !server_side_ssl(&p, &plain_pg).await,
        "prefer against a TLS-less server"
    );
    drop(p);

    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let tls_pg = hostssl_server(&certs);
    let p = pgtenant_to(&tls_pg, "127.0.0.1", "prefer", None);
    assert!(
        server_side_ssl(&p, &tls_pg).await,
        "prefer against a TLS server did not use TLS"
    );
}

/// disable against a server that only takes app over TLS: PostgreSQL's refusal reaches
/// the client, and pgtenant stays up.
#[tokio::test]
async fn server_tls_disable_against_hostssl_only_fails() {
    let dir = TempDir::new("tls-certs");
    let certs = gen_certs(dir.path());
    let pg = hostssl_server(&certs);
    let mut p = pgtenant_to(&pg, "127.0.0.1", "disable", None);
    let msg = assert_login_fails(
        &mut p,
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "disable against hostssl-only",
    )
    .await;
    assert!(
        msg.contains("no encryption"),
        "not PostgreSQL's hba refusal: {msg}"
    );
}
