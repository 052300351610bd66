//! `auth_type = "hba"` with `auth_hba_file` (issue 14, point 4): the first matching line of
//! a pg_hba.conf-style file decides each connection's method, against a real PostgreSQL
//! with tokio-postgres clients; a bad file is refused at start and at RELOAD.
use crate::support;

use std::time::Duration;

use support::{try_connect, PgServer, Pgtenant, Signal, TempDir};

const RULES: &str = "\
# TYPE     DATABASE  USER         ADDRESS          METHOD
hostssl    all       all          0.0.0.0/0        reject
host       all       evil         127.0.0.0/8      reject
host       all       trustuser    127.0.0.1/32     trust
host       app       app          127.0.0.1/32     scram-sha-256
host       all       md5user      127.0.0.1/32     md5
host       all       @cleartext   127.0.0.1 255.255.255.255  password
";

fn start(pg: &PgServer, dir: &TempDir) -> (Pgtenant, std::path::PathBuf) {
    dir.write("cleartext", "plainuser\nscramuser\n");
    let hba = dir.write("pg_hba.conf", RULES);
    // A SCRAM verifier, as PostgreSQL stores it: a cleartext password is salted with it.
    pg.psql_ok(
        "set password_encryption = 'scram-sha-256'; \
         create role scramuser login password 'scrampass'; \
         grant all on database app to scramuser",
    );
    let verifier = pg.psql_ok("select rolpassword from pg_authid where rolname = 'scramuser'");
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"hba\"\nauth_hba_file = \"pg_hba.conf\"\n\
         [users.md5user]\npassword = \"md5pass\"\n\
         [users.plainuser]\npassword = \"plainpass\"\n\
         [users.scramuser]\npassword = \"{verifier}\"\n\
         [users.evil]\npassword = \"evilpass\"\n",
        pg.url("app", "secret", "app")
    ));
    (
        Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]),
        hba,
    )
}

async fn login(p: &Pgtenant, user: &str, password: &str, db: &str) -> Result<(), String> {
    match try_connect(&p.url(user, password, db)).await {
        Ok(c) => {
            let one: i32 = c
                .query_one("select 1", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            assert_eq!(one, 1);
            Ok(())
        }
        Err(e) => Err(e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_matching_line_decides() {
    let pg = PgServer::start();
    let dir = TempDir::new("hba");
    let (p, _) = start(&pg, &dir);
    // scram-sha-256 for app on database app; the password is checked.
    login(&p, "app", "secret", "app").await.unwrap();
    let e = login(&p, "app", "wrong", "app").await.unwrap_err();
    assert!(e.starts_with("28P01"), "{e}");
    // app on another database: no line.
    let e = login(&p, "app", "secret", "postgres").await.unwrap_err();
    assert_eq!(
        e,
        "28000 no pg_hba.conf entry for host \"127.0.0.1\", user \"app\", database \"postgres\", no encryption"
    );
    // md5, trust, cleartext password (the user listed in an @file).
    login(&p, "md5user", "md5pass", "app").await.unwrap();
    login(&p, "trustuser", "", "app").await.unwrap();
    login(&p, "plainuser", "plainpass", "app").await.unwrap();
    let e = login(&p, "plainuser", "nope", "app").await.unwrap_err();
    assert!(e.starts_with("28P01"), "{e}");
    // A cleartext password checked against a SCRAM verifier (salted off the runtime's
    // threads); pgtenant logs in to the server with it.
    login(&p, "scramuser", "scrampass", "app")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let e = login(&p, "scramuser", "nope", "app").await.unwrap_err();
    assert!(e.starts_with("28P01"), "{e}");
    // reject, whatever the password.
    let e = login(&p, "evil", "evilpass", "app").await.unwrap_err();
    assert_eq!(
        e,
        "28000 pg_hba.conf rejects connection for host \"127.0.0.1\", user \"evil\", database \"app\", no encryption"
    );
    // A user no line names.
    let e = login(&p, "nobody", "x", "app").await.unwrap_err();
    assert!(e.starts_with("28000 no pg_hba.conf entry"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_is_refused_at_reload_and_the_rules_kept() {
    let pg = PgServer::start();
    let dir = TempDir::new("hba");
    let (p, hba) = start(&pg, &dir);
    login(&p, "md5user", "md5pass", "app").await.unwrap();
    // A bad line: the running rules stay.
    std::fs::write(&hba, format!("{RULES}host all all 10.0.0.0/40 trust\n")).unwrap();
    p.signal(Signal::Hup);
    p.wait_for_log("reload failed", Duration::from_secs(10));
    assert!(
        p.logs()
            .contains("pg_hba.conf:8: '/40' is not a prefix length"),
        "{}",
        p.logs()
    );
    login(&p, "md5user", "md5pass", "app").await.unwrap();
    // A good change takes effect: md5user is now rejected.
    std::fs::write(
        &hba,
        format!("host all md5user 127.0.0.1/32 reject\n{RULES}"),
    )
    .unwrap();
    p.signal(Signal::Hup);
    p.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let e = login(&p, "md5user", "md5pass", "app").await.unwrap_err();
    assert!(e.contains("rejects connection"), "{e}");
    login(&p, "app", "secret", "app").await.unwrap();
}

#[test]
fn a_bad_file_stops_the_start_and_a_missing_one_is_named() {
    let pg = PgServer::start();
    let dir = TempDir::new("hba");
    dir.write("pg_hba.conf", "host all +admins 0.0.0.0/0 trust\n");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nauth_type = \"hba\"\nauth_hba_file = \"pg_hba.conf\"\n",
        pg.url("app", "secret", "app")
    ));
    let mut p = Pgtenant::spawn(&["run", "--config", cfg.to_str().unwrap()], &[], None);
    let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(
        p.logs()
            .contains("pg_hba.conf:1: '+admins': group membership"),
        "{}",
        p.logs()
    );
    let cfg = dir.write(
        "no_file.toml",
        &format!(
            "upstream = \"{}\"\nauth_type = \"hba\"\n",
            pg.url("app", "secret", "app")
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs auth_hba_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
