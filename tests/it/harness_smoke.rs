//! Smoke tests for the shared test harness in `tests/support`.

use crate::support;

use std::time::Duration;
use support::{free_port, gen_certs, try_connect, PgServer, TempDir};

#[test]
fn two_servers_start_in_parallel() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::start);
        let b = s.spawn(PgServer::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.port(), 5432);
    assert_eq!(a.psql_ok("SHOW port"), a.port().to_string());
    assert_eq!(b.psql_ok("SHOW port"), b.port().to_string());
    assert_eq!(a.psql_ok("SHOW fsync"), "off");
    assert_eq!(a.psql_ok("SHOW max_connections"), "300");
}

#[tokio::test]
async fn every_auth_method_connects() {
    let pg = PgServer::start();
    for (user, password) in [
        ("app", "secret"),
        ("md5user", "md5pass"),
        ("plainuser", "plainpass"),
        ("trustuser", ""),
        ("postgres", "postgres"),
    ] {
        let c = pg.client(user, password, "app").await;
        let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }
    // Wrong passwords are refused.
    assert!(try_connect(&pg.url("app", "wrong", "app")).await.is_err());
    assert!(try_connect(&pg.url("md5user", "wrong", "app"))
        .await
        .is_err());
    assert!(try_connect(&pg.url("plainuser", "wrong", "app"))
        .await
        .is_err());

    // Stored password formats and hba methods are what the tests rely on.
    let admin = pg.admin_client().await;
    let rows = admin
        .query(
            "SELECT rolname::text, left(rolpassword, 5) FROM pg_authid \
             WHERE rolname IN ('app', 'md5user') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "SCRAM");
    assert!(rows[1].get::<_, String>(1).starts_with("md5"));

    // Any role may create tables in database app.
    let c = pg.client("md5user", "md5pass", "app").await;
    c.batch_execute("CREATE TABLE t_md5 (id int); DROP TABLE t_md5")
        .await
        .unwrap();
}

#[tokio::test]
async fn count_backends_sees_client_connections() {
    let pg = PgServer::start();
    assert_eq!(pg.count_backends("app", "app").await, 0);
    let c1 = pg.client("app", "secret", "app").await;
    let c2 = pg.client("app", "secret", "app").await;
    let c3 = pg.client("app", "secret", "app").await;
    assert_eq!(pg.count_backends("app", "app").await, 3);
    drop((c1, c2));
    let n = pg
        .wait_for_backends("app", "app", 1, Duration::from_secs(5))
        .await;
    assert_eq!(n, 1);
    drop(c3);
}

#[test]
fn psql_runs_against_server() {
    let pg = PgServer::builder().conf("work_mem = '7MB'").start();
    let out = pg.psql(&["-At", "-c", "SELECT 1 + 1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    assert_eq!(pg.psql_ok("SHOW work_mem"), "7MB");
    // Failing SQL fails psql.
    assert!(!pg
        .psql(&["-c", "SELECT * FROM no_such_table"])
        .status
        .success());
}

#[test]
fn stop_and_start_again_keeps_port() {
    let mut pg = PgServer::start();
    let port = pg.port();
    pg.stop();
    assert!(!pg.psql(&["-c", "SELECT 1"]).status.success());
    pg.start_again();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql_ok("SELECT 1"), "1");
}

#[test]
fn ssl_server_accepts_verified_tls() {
    let dir = TempDir::new("certs");
    let certs = gen_certs(dir.path());
    let pg = PgServer::builder().ssl(&certs).start();
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=app user=app \
         sslmode=verify-full sslrootcert={}",
        pg.port(),
        certs.ca.display()
    );
    let out = std::process::Command::new(support::pg_bin("psql"))
        .args(["-X", "-At", "-c"])
        .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .arg(&conninfo)
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", pg.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    // sslmode=require through the psql helper too.
    let out = pg.psql(&[
        "-At",
        "-c",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        "-d",
        "dbname=postgres sslmode=require",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}

#[test]
fn free_ports_and_temp_dirs() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    let path = {
        let d = TempDir::new("smoke");
        let f = d.config_file("listen = \"127.0.0.1:1\"\n");
        assert!(f.exists());
        d.path().to_path_buf()
    };
    assert!(!path.exists(), "TempDir removes itself");
}

#[test]
fn pgtenant_process_runs_to_exit_with_logs() {
    // Works with the placeholder binary and with the real CLI alike.
    let (status, _logs) = support::pgtenant_run(&["--version"], &[], Duration::from_secs(10));
    assert!(status.success());
}

#[test]
#[should_panic(expected = "exited early")]
fn pgtenant_start_panics_when_process_exits_early() {
    let _p = support::Pgtenant::start(&["--version"], &[]);
}
