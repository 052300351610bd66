//! Authentication through pgtenant against a real PostgreSQL.
//!
//! Client side (client → pgtenant): scram-sha-256 (the default), md5 and trust, per
//! listener. Server side (pgtenant → PostgreSQL): SCRAM, md5, cleartext and trust, with
//! secrets from `[users.NAME]` or a PgBouncer-style auth_file. And no password in the logs.
//!
//! Besides tokio-postgres and psql, a tiny raw-protocol client (`raw_login`) shows which
//! authentication request a listener sends first and exactly what follows a failure
//! (one ErrorResponse 28P01, then the connection closes).

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use md5::{Digest, Md5};
use pgtenant::auth::{ScramClient, ServerCredential};
use support::{free_port, startup_v3, wait_for_port, PgServer, Pgtenant, TempDir};
use tokio_postgres::error::SqlState;

/// Generous: the machine has 2 cores and other suites run at the same time.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Authentication request codes (the Int32 after 'R').
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Connect with tokio-postgres (bounded by TIMEOUT) and return `current_user`, after also
/// checking that a query with a parameter round-trips.
async fn login_and_query(url: &str) -> String {
    let (client, conn) =
        tokio::time::timeout(TIMEOUT, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .unwrap_or_else(|_| panic!("connect timed out: {}", redact(url)))
            .unwrap_or_else(|e| panic!("connect {} failed: {e:?}", redact(url)));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
        .await
        .expect("query through pgtenant");
    assert_eq!(row.get::<_, i32>(1), 42);
    row.get(0)
}

/// Connect with tokio-postgres, expecting failure; return the error.
async fn login_error(url: &str) -> tokio_postgres::Error {
    match tokio::time::timeout(TIMEOUT, tokio_postgres::connect(url, tokio_postgres::NoTls))
        .await
        .unwrap_or_else(|_| panic!("connect timed out: {}", redact(url)))
    {
        Ok(_) => panic!("login as {} unexpectedly succeeded", redact(url)),
        Err(e) => e,
    }
}

/// The login failed with SQLSTATE 28P01 (invalid_password).
async fn assert_invalid_password(url: &str) {
    let e = login_error(url).await;
    assert_eq!(
        e.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "login as {}: expected 28P01, got {e:?}",
        redact(url)
    );
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", Md5::digest(data))
}

/// A PostgreSQL md5 secret: "md5" + md5(password + user).
fn md5_secret(password: &str, user: &str) -> String {
    format!("md5{}", md5_hex(format!("{password}{user}").as_bytes()))
}

/// pgtenant with `toml` as its config file (the primary listener comes from --listen).
fn pgtenant_with_config(toml: &str, extra_args: &[&str]) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("auth-config");
    let path = dir.config_file(toml);
    let path = path.to_str().expect("utf-8 temp path").to_string();
    let mut args = vec!["run", "--config", path.as_str()];
    args.extend_from_slice(extra_args);
    let p = Pgtenant::start(&args, &[]);
    (p, dir)
}

/// A free port for an extra `[[listener]]`.
fn listener_port() -> u16 {
    free_port()
}

fn url_on(port: u16, user: &str, password: &str, db: &str) -> String {
    if password.is_empty() {
        format!("postgres://{user}@127.0.0.1:{port}/{db}")
    } else {
        format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
    }
}

fn wait_listening(port: u16, p: &Pgtenant) {
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "extra listener on {port} not up\n--- pgtenant logs ---\n{}",
        p.logs()
    );
}

// ---- a minimal raw protocol client ----

struct Raw(TcpStream);

impl Raw {
    fn startup(port: u16, user: &str, db: &str) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to pgtenant");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut raw = Raw(s);
        raw.0
            .write_all(&startup_v3(user, db))
            .expect("send startup");
        raw
    }

    /// The next message, or None when the peer closed the connection.
    fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut hdr = [0u8; 5];
        match self.0.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return None
            }
            Err(e) => panic!("raw read: {e}"),
        }
        let len = i32::from_be_bytes(hdr[1..5].try_into().unwrap());
        assert!((4..1 << 20).contains(&len), "bad message length {len}");
        let mut body = vec![0u8; len as usize - 4];
        self.0.read_exact(&mut body).expect("read message body");
        Some((hdr[0], body))
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend(((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.0.write_all(&msg).expect("raw send");
    }
}

/// What a raw login saw: the first authentication request's code, and every message
/// after the authentication exchange (AuthenticationOk/SASLFinal included) up to
/// ReadyForQuery or the connection's end.
struct RawOutcome {
    first_auth: i32,
    after: Vec<(u8, Vec<u8>)>,
    closed: bool,
}

impl RawOutcome {
    fn tags(&self) -> String {
        self.after.iter().map(|(t, _)| *t as char).collect()
    }

    /// Exactly one ErrorResponse 28P01, then the connection closed: nothing else.
    fn assert_only_invalid_password(&self, what: &str) {
        assert_eq!(
            self.tags(),
            "E",
            "{what}: expected exactly one ErrorResponse, got {:?}",
            self.after
                .iter()
                .map(|(t, b)| (*t as char, String::from_utf8_lossy(b).into_owned()))
                .collect::<Vec<_>>()
        );
        assert_eq!(error_code(&self.after[0].1), "28P01", "{what}");
        assert!(self.closed, "{what}: connection not closed after the error");
    }

    fn assert_logged_in(&self, what: &str) {
        let tags = self.tags();
        assert!(
            tags.ends_with('Z') && !tags.contains('E'),
            "{what}: expected a login, got {tags:?}: {:?}",
            self.after
                .iter()
                .map(|(t, b)| (*t as char, String::from_utf8_lossy(b).into_owned()))
                .collect::<Vec<_>>()
        );
        assert!(
            self.after
                .iter()
                .any(|(t, b)| *t == b'R' && auth_code(b) == AUTH_OK),
            "{what}: no AuthenticationOk"
        );
    }
}

fn auth_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().expect("auth request code"))
}

/// The SQLSTATE ('C' field) of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Log in over a raw socket, answering cleartext, md5 and SCRAM with `password`.
fn raw_login(port: u16, user: &str, db: &str, password: &str) -> RawOutcome {
    let mut r = Raw::startup(port, user, db);
    let mut first_auth = None;
    let mut scram: Option<ScramClient> = None;
    let mut after = Vec::new();
    let mut closed = true;
    while let Some((tag, body)) = r.read() {
        if tag == b'R' {
            let code = auth_code(&body);
            first_auth.get_or_insert(code);
            match code {
                AUTH_CLEARTEXT => {
                    let mut pw = password.as_bytes().to_vec();
                    pw.push(0);
                    r.send(b'p', &pw);
                }
                AUTH_MD5 => {
                    let salt = &body[4..8];
                    let inner = md5_hex(format!("{password}{user}").as_bytes());
                    let mut data = inner.into_bytes();
                    data.extend_from_slice(salt);
                    let mut resp = format!("md5{}", md5_hex(&data)).into_bytes();
                    resp.push(0);
                    r.send(b'p', &resp);
                }
                AUTH_SASL => {
                    let mut c = ScramClient::new(ServerCredential::Password(password.into()))
                        .expect("scram client");
                    let first = c.client_first();
                    let mut msg = b"SCRAM-SHA-256\0".to_vec();
                    msg.extend((first.len() as i32).to_be_bytes());
                    msg.extend(first);
                    r.send(b'p', &msg);
                    scram = Some(c);
                }
                AUTH_SASL_CONTINUE => {
                    let c = scram.as_mut().expect("SASLContinue before SASL");
                    let fin = c
                        .handle_server_first(&body[4..])
                        .expect("pgtenant's server-first-message is well formed");
                    r.send(b'p', &fin);
                }
                AUTH_SASL_FINAL => {
                    // pgtenant must prove it knows the secret too.
                    let c = scram.as_mut().expect("SASLFinal before SASL");
                    c.handle_server_final(&body[4..])
                        .expect("pgtenant's server signature verifies");
                    after.push((tag, body));
                }
                _ => after.push((tag, body)),
            }
            continue;
        }
        let done = tag == b'Z';
        after.push((tag, body));
        if done {
            closed = false;
            break;
        }
    }
    RawOutcome {
        first_auth: first_auth.unwrap_or(-1),
        after,
        closed,
    }
}

// ---------------------------------------------------------------------------------------
// Client-side methods
// ---------------------------------------------------------------------------------------

/// The default listener speaks SCRAM-SHA-256: the right password logs in; a wrong one or
/// an unknown user gets 28P01 and nothing more, and no server session is opened for it.
#[tokio::test]
async fn scram_is_the_default_client_method() {
    let pg = PgServer::start();
    let p = Pgtenant::start(&["run", "--upstream", &pg.url("app", "secret", "app")], &[]);

    // Failures first, so that no server connection exists yet.
    let wrong = raw_login(p.port(), "app", "app", "not-the-password");
    assert_eq!(
        wrong.first_auth, AUTH_SASL,
        "default listener must ask for SASL"
    );
    wrong.assert_only_invalid_password("scram, wrong password");
    assert_invalid_password(&p.url("app", "not-the-password", "app")).await;

    // An unknown user goes through the same exchange and fails the same way.
    let unknown = raw_login(p.port(), "nosuchuser", "app", "whatever");
    assert_eq!(unknown.first_auth, AUTH_SASL);
    unknown.assert_only_invalid_password("scram, unknown user");
    assert_invalid_password(&p.url("nosuchuser", "whatever", "app")).await;

    assert_eq!(
        pg.count_backends("app", "app").await,
        0,
        "a failed login must not open a server session"
    );

    assert_eq!(login_and_query(&p.url("app", "secret", "app")).await, "app");
    raw_login(p.port(), "app", "app", "secret").assert_logged_in("scram, right password");

    // Still refused after a successful login filled the pool.
    assert_invalid_password(&p.url("app", "Secret", "app")).await;
}

/// `--auth-type md5`: AuthenticationMD5Password, right password in, wrong one 28P01.
#[tokio::test]
async fn md5_client_method_from_flag() {
    let pg = PgServer::start();
    let p = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &pg.url("app", "secret", "app"),
            "--auth-type",
            "md5",
        ],
        &[],
    );

    let wrong = raw_login(p.port(), "app", "app", "not-the-password");
    assert_eq!(
        wrong.first_auth, AUTH_MD5,
        "--auth-type md5 must ask for md5"
    );
    wrong.assert_only_invalid_password("md5, wrong password");
    assert_invalid_password(&p.url("app", "not-the-password", "app")).await;

    let unknown = raw_login(p.port(), "nosuchuser", "app", "whatever");
    assert_eq!(unknown.first_auth, AUTH_MD5);
    unknown.assert_only_invalid_password("md5, unknown user");
    assert_invalid_password(&p.url("nosuchuser", "whatever", "app")).await;

    assert_eq!(pg.count_backends("app", "app").await, 0);

    assert_eq!(login_and_query(&p.url("app", "secret", "app")).await, "app");
    raw_login(p.port(), "app", "app", "secret").assert_logged_in("md5, right password");
}

/// `--auth-type trust`: no password asked; pgtenant still logs in to the server with the
/// secret it holds for the user.
#[tokio::test]
async fn trust_client_method() {
    let pg = PgServer::start();
    let p = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &pg.url("app", "secret", "app"),
            "--auth-type",
            "trust",
        ],
        &[],
    );
    let out = raw_login(p.port(), "app", "app", "");
    assert_eq!(out.first_auth, AUTH_OK, "trust must not ask for a password");
    out.assert_logged_in("trust");
    assert_eq!(login_and_query(&p.url("app", "", "app")).await, "app");
    // A password the client volunteers is not asked for, so it does not matter.
    assert_eq!(
        login_and_query(&p.url("app", "anything", "app")).await,
        "app"
    );
}

/// `auth_type` in the TOML for the primary listener, and `[[listener]]`s each with their
/// own method: every port asks for its own method and accepts only the right password.
#[tokio::test]
async fn each_listener_uses_its_own_method() {
    let pg = PgServer::start();
    let scram_port = listener_port();
    let trust_port = listener_port();
    let toml = format!(
        "upstream = \"{}\"\n\
         auth_type = \"md5\"\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{scram_port}\"\n\
         auth_type = \"scram-sha-256\"\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{trust_port}\"\n\
         auth_type = \"trust\"\n",
        pg.url("app", "secret", "app")
    );
    let (p, _dir) = pgtenant_with_config(&toml, &[]);
    wait_listening(scram_port, &p);
    wait_listening(trust_port, &p);
    let md5_port = p.port();

    for (port, method, name) in [
        (md5_port, AUTH_MD5, "md5 (primary, TOML auth_type)"),
        (scram_port, AUTH_SASL, "scram-sha-256 listener"),
    ] {
        let wrong = raw_login(port, "app", "app", "not-the-password");
        assert_eq!(wrong.first_auth, method, "{name}: wrong first auth request");
        wrong.assert_only_invalid_password(name);
        assert_invalid_password(&url_on(port, "app", "not-the-password", "app")).await;
        assert_eq!(
            login_and_query(&url_on(port, "app", "secret", "app")).await,
            "app",
            "{name}"
        );
        raw_login(port, "app", "app", "secret").assert_logged_in(name);
    }

    let trusted = raw_login(trust_port, "app", "app", "");
    assert_eq!(
        trusted.first_auth, AUTH_OK,
        "trust listener asked for a password"
    );
    trusted.assert_logged_in("trust listener");
    assert_eq!(
        login_and_query(&url_on(trust_port, "app", "", "app")).await,
        "app"
    );
}

// ---------------------------------------------------------------------------------------
// Server-side methods
// ---------------------------------------------------------------------------------------

/// pgtenant logs in to PostgreSQL with whatever method pg_hba asks for: SCRAM (app), md5
/// (md5user), cleartext (plainuser), trust (trustuser, who has no password at all).
/// PostgreSQL's own log says which method each login used.
#[tokio::test]
async fn server_side_methods() {
    let pg = PgServer::builder().conf("log_connections = on").start();
    let trust_port = listener_port();
    let toml = format!(
        "upstream = \"{}\"\n\
         \n\
         [users.md5user]\n\
         password = \"md5pass\"\n\
         \n\
         [users.plainuser]\n\
         password = \"plainpass\"\n\
         \n\
         [users.trustuser]\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{trust_port}\"\n\
         auth_type = \"trust\"\n",
        pg.url("app", "secret", "app")
    );
    let (p, _dir) = pgtenant_with_config(&toml, &[]);
    wait_listening(trust_port, &p);

    for (user, password) in [
        ("app", "secret"),
        ("md5user", "md5pass"),
        ("plainuser", "plainpass"),
    ] {
        assert_eq!(
            login_and_query(&p.url(user, password, "app")).await,
            user,
            "{user} through the scram listener"
        );
        assert_invalid_password(&p.url(user, "wrong-password", "app")).await;
    }
    assert_eq!(
        login_and_query(&url_on(trust_port, "trustuser", "", "app")).await,
        "trustuser"
    );
    // Without a secret pgtenant cannot run SCRAM with the client: refused like an
    // unknown user.
    assert_invalid_password(&p.url("trustuser", "anything", "app")).await;

    let log = pg.log();
    for (user, method) in [
        ("app", "scram-sha-256"),
        ("md5user", "md5"),
        ("plainuser", "password"),
    ] {
        let line = format!("connection authenticated: identity=\"{user}\" method={method}");
        assert!(
            log.contains(&line),
            "PostgreSQL log lacks {line:?}\n--- server log ---\n{log}"
        );
    }
    assert!(
        log.contains("connection authorized: user=trustuser database=app"),
        "trustuser never logged in to PostgreSQL\n--- server log ---\n{log}"
    );
}

/// A PgBouncer-style userlist.txt with a plain password, an md5 secret and a SCRAM
/// verifier copied from pg_authid. The SCRAM user logs in with SCRAM, and pgtenant
/// passes the ClientKey learnt from that login through to PostgreSQL; the md5 secret
/// serves md5 on both sides.
#[tokio::test]
async fn auth_file_plain_md5_and_scram_secrets() {
    let pg = PgServer::builder().conf("log_connections = on").start();
    let admin = pg.admin_client().await;
    let scram: String = admin
        .query_one(
            "select rolpassword from pg_authid where rolname = 'app'",
            &[],
        )
        .await
        .expect("read app's SCRAM verifier")
        .get(0);
    assert!(scram.starts_with("SCRAM-SHA-256$"), "{scram}");
    let md5 = md5_secret("md5pass", "md5user");
    // PostgreSQL stores md5user's password as md5: the test computes the same thing.
    let stored_md5: String = admin
        .query_one(
            "select rolpassword from pg_authid where rolname = 'md5user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(md5, stored_md5);

    let dir = TempDir::new("auth-file");
    dir.write(
        "userlist.txt",
        &format!(
            "; PgBouncer userlist\n\
             \"app\" \"{scram}\"\n\
             \"md5user\" \"{md5}\"\n\
             \"plainuser\" \"plainpass\"\n"
        ),
    );
    let md5_port = listener_port();
    // The upstream URL carries no password, so app's only secret is the file's verifier.
    let upstream = format!("postgres://app@127.0.0.1:{}/app", pg.port());
    let cfg = dir.config_file(&format!(
        "upstream = \"{upstream}\"\n\
         auth_file = \"userlist.txt\"\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{md5_port}\"\n\
         auth_type = \"md5\"\n"
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    wait_listening(md5_port, &p);

    // SCRAM verifier: SCRAM on the client side, ClientKey pass-through on the server side.
    assert_invalid_password(&p.url("app", "not-the-password", "app")).await;
    assert_eq!(login_and_query(&p.url("app", "secret", "app")).await, "app");
    // A transaction held open keeps its server connection, so the next client needs a
    // second server login with the passed-through keys.
    let holder = support::connect(&p.url("app", "secret", "app")).await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open a transaction");
    assert_eq!(login_and_query(&p.url("app", "secret", "app")).await, "app");
    assert!(pg.count_backends("app", "app").await >= 2);
    holder.batch_execute("COMMIT").await.unwrap();

    // Plain password: SCRAM with the client, cleartext towards the server.
    assert_eq!(
        login_and_query(&p.url("plainuser", "plainpass", "app")).await,
        "plainuser"
    );
    assert_invalid_password(&p.url("plainuser", "plainpas", "app")).await;

    // md5 secret: md5 with the client, md5 towards the server.
    assert_eq!(
        login_and_query(&url_on(md5_port, "md5user", "md5pass", "app")).await,
        "md5user"
    );
    assert_invalid_password(&url_on(md5_port, "md5user", "md5pas", "app")).await;
    // An md5 hash cannot check a SCRAM proof: the scram listener refuses md5user (as
    // PgBouncer does).
    assert_invalid_password(&p.url("md5user", "md5pass", "app")).await;
    // The other way round PgBouncer switches to SCRAM: on an md5 listener a user whose
    // secret is a SCRAM verifier is asked for SCRAM, and logs in.
    let out = raw_login(md5_port, "app", "app", "secret");
    assert_eq!(
        out.first_auth, AUTH_SASL,
        "md5 listener, SCRAM secret: expected SCRAM as in PgBouncer"
    );
    out.assert_logged_in("md5 listener, SCRAM secret");
    assert_eq!(
        login_and_query(&url_on(md5_port, "app", "secret", "app")).await,
        "app"
    );
    raw_login(md5_port, "app", "app", "wrong")
        .assert_only_invalid_password("md5 listener, SCRAM secret, wrong password");
    // Plain secrets keep md5 on that listener.
    assert_eq!(
        raw_login(md5_port, "plainuser", "app", "plainpass").first_auth,
        AUTH_MD5
    );

    let log = pg.log();
    for (user, method) in [
        ("app", "scram-sha-256"),
        ("md5user", "md5"),
        ("plainuser", "password"),
    ] {
        let line = format!("connection authenticated: identity=\"{user}\" method={method}");
        assert!(
            log.contains(&line),
            "PostgreSQL log lacks {line:?}\n--- server log ---\n{log}"
        );
    }
    drop(p);
}

// ---------------------------------------------------------------------------------------
// Secrets stay out of the logs
// ---------------------------------------------------------------------------------------

/// With `--log-level debug`, successful and failed logins (scram and md5, known and
/// unknown users) leave no password and no md5 hash of one in pgtenant's output.
#[tokio::test]
async fn passwords_never_appear_in_logs() {
    const UPSTREAM_PW: &str = "Upstream-Pw-55c1e";
    const USER_PW: &str = "LogTest-Pw-9f2e7";
    const WRONG_PW: &str = "Wrong-Pw-3b7d0";

    let pg = PgServer::start();
    pg.psql_ok(&format!("ALTER ROLE app PASSWORD '{UPSTREAM_PW}'"));
    pg.psql_ok(&format!(
        "CREATE ROLE logtest LOGIN PASSWORD '{USER_PW}'; \
         GRANT CONNECT ON DATABASE app TO logtest"
    ));
    let md5_port = listener_port();
    let toml = format!(
        "upstream = \"{}\"\n\
         \n\
         [users.logtest]\n\
         password = \"{USER_PW}\"\n\
         \n\
         [[listener]]\n\
         listen = \"127.0.0.1:{md5_port}\"\n\
         auth_type = \"md5\"\n",
        pg.url("app", UPSTREAM_PW, "app")
    );
    let (p, _dir) = pgtenant_with_config(&toml, &["--log-level", "debug"]);
    wait_listening(md5_port, &p);

    for port in [p.port(), md5_port] {
        for (user, pw) in [("app", UPSTREAM_PW), ("logtest", USER_PW)] {
            assert_eq!(login_and_query(&url_on(port, user, pw, "app")).await, user);
            assert_invalid_password(&url_on(port, user, WRONG_PW, "app")).await;
        }
        assert_invalid_password(&url_on(port, "nosuchuser", WRONG_PW, "app")).await;
        // Cleartext on the wire is what a careless implementation would log.
        raw_login(port, "logtest", "app", WRONG_PW)
            .assert_only_invalid_password("raw wrong password");
    }

    let logs = p.logs();
    assert!(
        logs.contains("DEBUG") && logs.contains("authentication failed"),
        "expected debug output and failed-login lines, got:\n{logs}"
    );
    for secret in [
        UPSTREAM_PW.to_string(),
        USER_PW.to_string(),
        WRONG_PW.to_string(),
        md5_secret(USER_PW, "logtest"),
        md5_secret(UPSTREAM_PW, "app"),
        md5_secret(WRONG_PW, "logtest"),
    ] {
        assert!(
            !logs.contains(&secret),
            "pgtenant logged a secret ({} chars)",
            secret.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// No user enumeration
// ---------------------------------------------------------------------------------------

/// Start a SCRAM login as `user` and return what the server-first-message shows before
/// any proof: `s=<salt>,i=<iterations>`.
fn scram_salt(port: u16, user: &str) -> String {
    let mut r = Raw::startup(port, user, "app");
    let (tag, body) = r.read().expect("an authentication request");
    assert_eq!((tag, auth_code(&body)), (b'R', AUTH_SASL), "{user}");
    let mut c = ScramClient::new(ServerCredential::Password("whatever".into())).expect("c");
    let first = c.client_first();
    let mut msg = b"SCRAM-SHA-256\0".to_vec();
    msg.extend((first.len() as i32).to_be_bytes());
    msg.extend(first);
    r.send(b'p', &msg);
    let (tag, body) = r.read().expect("SASLContinue");
    assert_eq!(
        (tag, auth_code(&body)),
        (b'R', AUTH_SASL_CONTINUE),
        "{user}"
    );
    let server_first = String::from_utf8(body[4..].to_vec()).expect("utf-8");
    let (_, salt) = server_first.split_once(",s=").expect("a salt");
    format!("s={salt}")
}

/// An ErrorResponse's fields as (code, text), with `user` in the texts replaced by "x".
fn error_fields(body: &[u8], user: &str) -> Vec<(char, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| {
            let text = String::from_utf8_lossy(&f[1..]).replace(user, "x");
            (f[0] as char, text)
        })
        .collect()
}

/// Two unauthenticated SCRAM starts tell nothing about which users exist or how their
/// secret is stored: an unknown user, a user with a plain password and one with a
/// SCRAM verifier each see the same salt and 4096 iterations on every try, and a wrong
/// password and an unknown user end in the same ErrorResponse.
#[tokio::test]
async fn scram_salts_and_failures_do_not_reveal_users() {
    let pg = PgServer::start();
    let verifier: String = pg
        .admin_client()
        .await
        .query_one(
            "select rolpassword from pg_authid where rolname = 'app'",
            &[],
        )
        .await
        .expect("app's SCRAM verifier")
        .get(0);
    let stored_salt = verifier
        .split('$')
        .nth(1)
        .and_then(|s| s.split_once(':'))
        .map(|(i, s)| format!("s={s},i={i}"))
        .expect("iterations:salt");
    // app's only secret is the verifier (the upstream URL has no password).
    let toml = format!(
        "upstream = \"postgres://app@127.0.0.1:{}/app\"\n\
         \n\
         [users.app]\n\
         password = \"{verifier}\"\n\
         \n\
         [users.plainuser]\n\
         password = \"plainpass\"\n",
        pg.port()
    );
    let (p, _dir) = pgtenant_with_config(&toml, &[]);

    let mut seen = Vec::new();
    for user in ["nosuchuser", "plainuser", "app", "other-unknown"] {
        let first = scram_salt(p.port(), user);
        let second = scram_salt(p.port(), user);
        assert_eq!(first, second, "{user}: the salt changed between two tries");
        assert!(first.ends_with(",i=4096"), "{user}: {first}");
        seen.push(first);
    }
    assert_eq!(seen[2], stored_salt, "app is shown its stored salt");
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "each user has its own salt: {seen:?}"
    );

    // The known users still log in, and are refused with a wrong password exactly as an
    // unknown user is.
    assert_eq!(login_and_query(&p.url("app", "secret", "app")).await, "app");
    assert_eq!(
        login_and_query(&p.url("plainuser", "plainpass", "app")).await,
        "plainuser"
    );
    assert_eq!(
        scram_salt(p.port(), "plainuser"),
        seen[1],
        "stable after a login"
    );
    let mut failures = Vec::new();
    for user in ["app", "plainuser", "nosuchuser"] {
        let out = raw_login(p.port(), user, "app", "wrong-password");
        out.assert_only_invalid_password(user);
        let fields = error_fields(&out.after[0].1, user);
        assert!(
            fields.contains(&('M', "password authentication failed for user \"x\"".into())),
            "{user}: {fields:?}"
        );
        failures.push(fields);
        let e = login_error(&p.url(user, "wrong-password", "app")).await;
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
    assert_eq!(failures[0], failures[2], "wrong password vs unknown user");
    assert_eq!(failures[1], failures[2], "wrong password vs unknown user");
}

// ---------------------------------------------------------------------------------------
// No log injection
// ---------------------------------------------------------------------------------------

/// Log in with names that carry newlines and other control characters.
async fn log_in_with_hostile_names(p: &Pgtenant) {
    // Refused: the user name is logged with the failure.
    raw_login(p.port(), "evil\nFAKE LINE level=ERROR", "app", "x")
        .assert_only_invalid_password("hostile user name");
    // Logged in: the application_name is logged too.
    let mut cfg: tokio_postgres::Config = p.url("app", "secret", "app").parse().unwrap();
    cfg.application_name("app\nFAKE APP level=ERROR\u{1b}[2J\r\u{2028}");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.expect("query");
    // A database that does not exist: the pool's and the server's errors name it.
    let mut cfg: tokio_postgres::Config = p.url("app", "secret", "app").parse().unwrap();
    cfg.dbname("nodb\nFAKE SERVER LINE");
    assert!(cfg.connect(tokio_postgres::NoTls).await.is_err());
    drop(client);
}

/// User names, database names and application_names with newlines cannot write a line
/// of their own into pgtenant's log, in the plain and in the JSON format.
#[tokio::test]
async fn control_characters_in_names_do_not_forge_log_lines() {
    let pg = PgServer::start();
    for format in ["plain", "json"] {
        let p = Pgtenant::start(
            &[
                "run",
                "--upstream",
                &pg.url("app", "secret", "app"),
                "--log-format",
                format,
            ],
            &[],
        );
        log_in_with_hostile_names(&p).await;
        // The close of the last client is logged asynchronously.
        p.wait_for_log("FAKE SERVER LINE", TIMEOUT);
        let logs = p.logs();
        for line in logs.lines() {
            assert!(
                !line.trim_start().starts_with("FAKE"),
                "{format}: a forged line {line:?}\n--- logs ---\n{logs}"
            );
            assert!(
                !line.contains('\u{1b}') && !line.contains('\r') && !line.contains('\u{2028}'),
                "{format}: a control character in {line:?}"
            );
            if format == "json" {
                assert!(line.starts_with('{'), "json: not an object: {line:?}");
            }
        }
        for shown in [
            r"evil\nFAKE LINE level=ERROR",
            r"app\nFAKE APP level=ERROR",
            "FAKE SERVER LINE",
        ] {
            // Plain lines escape the newline as `\n`; JSON writes the value's newline as
            // `\n` itself (escaped once, the value is the name as sent).
            let shown = shown.to_string();
            assert!(
                logs.contains(&shown),
                "{format}: {shown:?} not in the logs:\n{logs}"
            );
        }
    }
}
