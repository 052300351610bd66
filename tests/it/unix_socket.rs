//! Unix-domain sockets (issue 14, point 5): pgtenant listens on
//! `<unix_socket_dir>/.s.PGSQL.<port>` beside TCP, and reaches a server through its
//! socket directory (`host=/path`), with tokio-postgres and psql; hba `local` lines.
use crate::support;

use std::process::Command;
use std::time::Duration;

use support::{pg_bin, PgServer, Pgtenant, Signal, TempDir};

/// An upstream URL through the server's socket directory.
fn unix_upstream(pg: &PgServer) -> String {
    let dir = pg.socket_dir().display().to_string().replace('/', "%2F");
    format!("postgres://app:secret@{dir}:{}/app", pg.port())
}

fn start(pg: &PgServer, dir: &TempDir, extra: &str) -> Pgtenant {
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nunix_socket_dir = \"{}\"\n{extra}\n",
        unix_upstream(pg),
        dir.path().display()
    ));
    Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[])
}

async fn unix_client(
    dir: &TempDir,
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(dir.path())
        .port(port)
        .user(user)
        .password(password)
        .dbname("app");
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_servers_over_unix_sockets() {
    let pg = PgServer::start();
    let dir = TempDir::new("unix");
    let mut p = start(&pg, &dir, "");
    let socket = dir.path().join(format!(".s.PGSQL.{}", p.port()));
    assert!(socket.exists(), "{}", p.logs());
    // A client on the socket; its server connection came through the server's socket
    // (inet_server_addr() is NULL there).
    let c = unix_client(&dir, p.port(), "app", "secret").await.unwrap();
    let row = c
        .query_one(
            "select inet_server_addr() is null, inet_client_addr() is null",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
    // The password is still checked on the socket.
    assert!(unix_client(&dir, p.port(), "app", "wrong").await.is_err());
    // psql finds it with -h <dir> -p <port>, as it finds PgBouncer's.
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h"])
        .arg(dir.path())
        .args([
            "-p",
            &p.port().to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "select 6 * 7",
        ])
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TCP beside it.
    let t = support::connect(&p.url("app", "secret", "app")).await;
    let one: i32 = t.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // A second pgtenant on the same socket (its TCP address differs, the port and so the
    // socket name do not) is refused, with a clear error.
    let cfg2 = dir.write(
        "second.toml",
        &format!(
            "upstream = \"{}\"\nunix_socket_dir = \"{}\"\nlisten = \"127.0.0.2:{}\"\n",
            unix_upstream(&pg),
            dir.path().display(),
            p.port()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["run", "--config"])
        .arg(&cfg2)
        .args(["--http-listen", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("another server is listening on it"), "{text}");
    // Stopped: the socket file is gone.
    drop((c, t));
    p.signal(Signal::Term);
    p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn hba_local_lines_and_a_stale_socket() {
    let pg = PgServer::start();
    let dir = TempDir::new("unix");
    dir.write(
        "pg_hba.conf",
        "local all app trust\nhost all app 127.0.0.1/32 reject\n",
    );
    // A socket file left by a process that died (nobody listens on it).
    let port = support::free_port();
    let stale = dir.path().join(format!(".s.PGSQL.{port}"));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nunix_socket_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
         auth_type = \"hba\"\nauth_hba_file = \"pg_hba.conf\"\n",
        unix_upstream(&pg),
        dir.path().display()
    ));
    let mut p = Pgtenant::spawn(&["run", "--config", cfg.to_str().unwrap()], &[], Some(port));
    p.wait_ready(Duration::from_secs(20));
    // local: trust (no password needed); host: rejected.
    let c = unix_client(&dir, port, "app", "").await.unwrap();
    let one: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let Err(e) = support::try_connect(&format!("postgres://app:secret@127.0.0.1:{port}/app")).await
    else {
        panic!("a TCP client was let in");
    };
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("pg_hba.conf rejects connection")),
        "{e:?}"
    );
    p.signal(Signal::Term);
    p.wait_exit(Duration::from_secs(20));
}
