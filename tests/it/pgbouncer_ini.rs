//! pgtenant run from a PgBouncer configuration (`pgbouncer.ini`), and `pgtenant import`
//! (issue 14, point 1), against a real PostgreSQL with psql and tokio-postgres clients.
use crate::support;

use std::process::Command;
use std::time::Duration;

use support::{free_port, PgServer, Pgtenant, TempDir};

fn pgtenant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

/// A realistic PgBouncer setup: userlist.txt, an %include, settings pgtenant carries and
/// some it only notes (logfile, pidfile); no unix socket (`unix_socket_dir =`).
fn write_ini(dir: &TempDir, pg: &PgServer, listen_port: u16) -> std::path::PathBuf {
    dir.write(
        "userlist.txt",
        "\"app\" \"secret\"\n\"monitor\" \"monpw\"\n",
    );
    dir.write(
        "pool.ini",
        "; shared pool settings\npool_mode = transaction\ndefault_pool_size = 2\nserver_lifetime = 1h\n",
    );
    dir.write(
        "pgbouncer.ini",
        &format!(
            ";; as a team replacing PgBouncer has it\n\
             [databases]\n\
             * = host=127.0.0.1 port={} user=app password=secret\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen_port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = userlist.txt\n\
             %include pool.ini\n\
             max_client_conn = 50\n\
             admin_users = app\n\
             stats_users = monitor\n\
             query_wait_timeout = 30\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = /var/log/pgbouncer/pgbouncer.log\n\
             pidfile = /var/run/pgbouncer/pgbouncer.pid\n",
            pg.port()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_from_a_pgbouncer_ini() {
    let pg = PgServer::start();
    let dir = TempDir::new("ini");
    let port = free_port();
    let ini = write_ini(&dir, &pg, port);
    // The ini's own listen_addr/listen_port: no --listen flag.
    let mut p = Pgtenant::spawn(&["run", "--config", ini.to_str().unwrap()], &[], Some(port));
    p.wait_ready(Duration::from_secs(20));
    let c = support::connect(&format!("postgres://app:secret@127.0.0.1:{port}/app")).await;
    let row = c.query_one("select 40 + $1::int", &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // Settings carried: the admin console shows them.
    let admin = support::connect(&format!("postgres://app:secret@127.0.0.1:{port}/pgtenant")).await;
    let mut config = std::collections::HashMap::new();
    for m in admin.simple_query("SHOW CONFIG").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            config.insert(
                r.get(0).unwrap().to_string(),
                r.get(1).unwrap_or("").to_string(),
            );
        }
    }
    assert_eq!(config["pool_mode"], "transaction");
    assert_eq!(config["pool_size"], "2");
    assert_eq!(config["server_lifetime"], "3600");
    assert_eq!(config["max_client_conn"], "50");
    // The password in userlist.txt is checked (a wrong one is refused).
    assert!(
        support::try_connect(&format!("postgres://app:wrong@127.0.0.1:{port}/app"))
            .await
            .is_err()
    );
    // What was not carried is logged, with its line.
    let logs = p.logs();
    assert!(
        logs.contains("pgbouncer.ini:17: logfile") && logs.contains("not carried"),
        "{logs}"
    );
}

#[test]
fn import_writes_toml_that_pgtenant_accepts() {
    let pg = PgServer::start();
    let dir = TempDir::new("ini");
    let ini = write_ini(&dir, &pg, free_port());
    let out = pgtenant().args(["import"]).arg(&ini).output().unwrap();
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(toml.contains("pgbouncer.ini:17: logfile"), "{toml}");
    assert!(toml.contains("pool_mode = \"transaction\""), "{toml}");
    // Written elsewhere, it still finds userlist.txt (absolute paths).
    let other = TempDir::new("ini-out");
    let path = other.write("pgtenant.toml", &toml);
    let check = pgtenant()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_bad_ini_is_refused_with_file_and_line_and_nothing_starts() {
    let dir = TempDir::new("ini");
    let port = free_port();
    let ini = dir.write(
        "pgbouncer.ini",
        &format!(
            "[databases]\n* = host=127.0.0.1 user=app\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\ndefault_pool_sise = 20\nauth_type = pam\n"
        ),
    );
    let mut p = Pgtenant::spawn(&["run", "--config", ini.to_str().unwrap()], &[], Some(port));
    let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let logs = p.logs();
    assert!(
        logs.contains("pgbouncer.ini:7: unknown PgBouncer setting 'default_pool_sise'")
            && logs.contains("pgbouncer.ini:8: auth_type = pam"),
        "{logs}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // import says the same, and exits 1.
    let out = pgtenant().arg("import").arg(&ini).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":7: unknown PgBouncer setting"));
}

/// A PgBouncer configuration with several databases on two servers: an alias, an entry
/// with its own pool settings and startup settings on the other server, the `*`
/// fallback, and a `[users]` limit; run as it is, and imported as `[databases.NAME]`.
#[tokio::test(flavor = "multi_thread")]
async fn several_databases_on_two_servers() {
    let a = PgServer::start();
    let b = PgServer::start();
    a.psql_ok("CREATE DATABASE shop OWNER app");
    b.psql_ok("CREATE DATABASE billing_db OWNER app");
    b.psql_ok("CREATE DATABASE archive OWNER app");
    let dir = TempDir::new("ini-dbs");
    let port = free_port();
    dir.write("userlist.txt", "\"app\" \"secret\"\n");
    let ini = dir.write(
        "pgbouncer.ini",
        &format!(
            "[databases]\n\
             ; an alias on server A\n\
             main = host=127.0.0.1 port={a} dbname=shop user=app password=secret\n\
             billing = host=127.0.0.1 port={b} dbname=billing_db pool_size=3 pool_mode=session timezone=Europe/Paris application_name=billing\n\
             * = host=127.0.0.1 port={b}\n\
             \n\
             [users]\n\
             app = max_user_connections=10\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = userlist.txt\n\
             admin_users = app\n\
             pool_mode = transaction\n\
             default_pool_size = 5\n",
            a = a.port(),
            b = b.port(),
        ),
    );
    let mut p = Pgtenant::spawn(&["run", "--config", ini.to_str().unwrap()], &[], Some(port));
    p.wait_ready(Duration::from_secs(20));
    let url = |db: &str| format!("postgres://app:secret@127.0.0.1:{port}/{db}");
    let main = support::connect(&url("main")).await;
    let row = main
        .query_one("SELECT current_database(), inet_server_port()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "shop");
    assert_eq!(row.get::<_, i32>(1), i32::from(a.port()));
    let billing = support::connect(&url("billing")).await;
    let row = billing
        .query_one(
            "SELECT current_database(), inet_server_port(), current_setting('TimeZone')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "billing_db");
    assert_eq!(row.get::<_, i32>(1), i32::from(b.port()));
    assert_eq!(row.get::<_, String>(2), "Europe/Paris");
    let archive = support::connect(&url("archive")).await;
    let row = archive
        .query_one("SELECT current_database(), inet_server_port()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "archive");
    assert_eq!(row.get::<_, i32>(1), i32::from(b.port()));

    let admin = support::connect(&url("pgbouncer")).await;
    let mut rows = std::collections::HashMap::new();
    for m in admin.simple_query("SHOW DATABASES").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            rows.insert(
                r.get("name").unwrap().to_string(),
                (
                    r.get("port").unwrap().to_string(),
                    r.get("database").unwrap().to_string(),
                    r.get("pool_size").unwrap().to_string(),
                    r.get("pool_mode").unwrap_or("").to_string(),
                    r.get("force_user").unwrap_or("").to_string(),
                ),
            );
        }
    }
    let b_port = b.port().to_string();
    assert_eq!(
        rows["billing"],
        (
            b_port.clone(),
            "billing_db".into(),
            "3".into(),
            "session".into(),
            String::new()
        )
    );
    assert_eq!(
        rows["main"],
        (
            a.port().to_string(),
            "shop".into(),
            "5".into(),
            String::new(),
            "app".into()
        )
    );
    assert_eq!(rows["archive"].0, b_port);
    drop(p);

    // Imported: every entry as a table of its own, accepted by `check`.
    let out = pgtenant().args(["import"]).arg(&ini).output().unwrap();
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{toml}");
    for want in [
        "[databases.billing]",
        "dbname = \"billing_db\"",
        "pool_size = 3",
        "timezone = \"Europe/Paris\"",
        "[databases.\"*\"]",
        "max_user_connections = 10",
    ] {
        assert!(toml.contains(want), "missing {want} in:\n{toml}");
    }
    let path = dir.write("imported.toml", &toml);
    let check = pgtenant()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
