//! The I/O engine (`io_engine = auto | io_uring | epoll`): which one runs is decided and
//! logged at start; where a seccomp profile refuses io_uring (Docker's and containerd's
//! defaults), `auto` runs on epoll and `io_uring` refuses to start with the reason. The
//! rest of the suite runs under the default engine, and again under epoll (test.sh).

use crate::support;

use std::time::Duration;

use support::{connect, free_port, PgServer, Pgtenant};

fn engine_line(p: &Pgtenant) -> String {
    p.logs()
        .lines()
        .find(|l| l.contains("I/O engine"))
        .unwrap_or_else(|| panic!("no I/O engine line in the logs:\n{}", p.logs()))
        .to_string()
}

/// 20 clients at once, each with its own rows back (the answers do not depend on the
/// engine).
async fn clients_get_their_own_answers(p: &Pgtenant) {
    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let url = p.url("app", "secret", "app");
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for round in 0..10i32 {
                let rows = c
                    .query(
                        "select $1::int * 1000 + g from generate_series(1, 500) g",
                        &[&(i * 100 + round)],
                    )
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 500);
                let last: i32 = rows[499].get(0);
                assert_eq!(last, (i * 100 + round) * 1000 + 500);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_the_engine_that_runs() {
    let pg = PgServer::start();
    let up = pg.url("app", "secret", "app");
    for engine in ["io_uring", "epoll"] {
        let p = Pgtenant::start(&["run", "--upstream", &up, "--io-engine", engine], &[]);
        let line = engine_line(&p);
        assert!(line.contains(&format!("io_engine=\"{engine}\"")), "{line}");
        assert!(
            line.contains(&format!("reason=io_engine = {engine}")),
            "{line}"
        );
        clients_get_their_own_answers(&p).await;
    }
    // auto on this machine (io_uring works here: the unit tests check it).
    let p = Pgtenant::start(&["run", "--upstream", &up, "--io-engine", "auto"], &[]);
    let line = engine_line(&p);
    assert!(
        line.contains("io_engine=\"io_uring\"") && line.contains("auto"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_epoll_where_seccomp_refuses_io_uring() {
    let pg = PgServer::start();
    let up = pg.url("app", "secret", "app");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut p = Pgtenant::spawn_without_io_uring(
        &[
            "run",
            "--upstream",
            &up,
            "--listen",
            &listen,
            "--io-engine",
            "auto",
        ],
        &[],
        Some(port),
    );
    p.wait_ready(Duration::from_secs(10));
    let line = engine_line(&p);
    assert!(line.contains("io_engine=\"epoll\""), "{line}");
    assert!(
        line.contains("io_uring unavailable") && line.contains("operation not permitted"),
        "the reason is logged: {line}"
    );
    clients_get_their_own_answers(&p).await;
}

#[test]
fn io_engine_io_uring_refuses_to_start_where_io_uring_is_refused() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut p = Pgtenant::spawn_without_io_uring(
        &[
            "run",
            "--upstream",
            "postgres://app@127.0.0.1:1/app",
            "--listen",
            &listen,
        ],
        &[("PGTENANT_IO_ENGINE", "io_uring")],
        None,
    );
    let status = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running:\n{}", p.logs()));
    assert!(!status.success());
    let logs = p.logs();
    assert!(
        logs.contains("io_engine = io_uring, but io_uring cannot be used: io_uring_setup: operation not permitted"),
        "{logs}"
    );
    assert!(logs.contains("set io_engine = auto or epoll"), "{logs}");
}
