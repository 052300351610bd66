//! Opens many idle, authenticated client connections and holds them. The load benchmark
//! (`scripts/loadbench.sh`) measures a pooler's memory per idle client with it.
//!
//! ```text
//! cargo run --release --example idle_clients -- HOST PORT USER PASSWORD DBNAME COUNT \
//!     [--hold-secs N] [--concurrency N]
//! ```
//!
//! Connects COUNT clients with tokio-postgres, at most `--concurrency` (default 64) at a
//! time. Each connect has a timeout and is retried on transient errors: connection refused
//! or reset, a full listen backlog, a timeout. An error from the server (bad password,
//! `53300` too many clients) ends the program at once. No query is sent, so a transaction
//! pooler holds no server connection for these clients.
//!
//! When all are in, prints one line on stdout: `connected COUNT clients in S s`. Then it
//! holds them until SIGINT or SIGTERM, or until `--hold-secs` seconds have passed, or (without
//! `--hold-secs`) until stdin closes. Then it drops them (each sends Terminate), prints
//! `closed COUNT clients` and exits. Progress goes to stderr.

use futures_util::stream::{self, StreamExt};
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TRIES: u32 = 30;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Args {
    config: Config,
    count: usize,
    hold: Option<Duration>,
    concurrency: usize,
}

fn usage() -> String {
    "usage: idle_clients HOST PORT USER PASSWORD DBNAME COUNT [--hold-secs N] [--concurrency N]"
        .to_string()
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut hold = None;
    let mut concurrency = 64usize;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hold-secs" | "--concurrency" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{a} needs a value\n{}", usage()))?;
                let n: u64 = v.parse().map_err(|_| format!("{a}: not a number: {v}"))?;
                if a == "--hold-secs" {
                    hold = Some(Duration::from_secs(n));
                } else {
                    concurrency = usize::try_from(n).unwrap_or(usize::MAX).max(1);
                }
            }
            "-h" | "--help" => return Err(usage()),
            _ => positional.push(a.clone()),
        }
    }
    let [host, port, user, password, dbname, count] = positional.as_slice() else {
        return Err(usage());
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port: {port}"))?;
    let count: usize = count.parse().map_err(|_| format!("bad count: {count}"))?;
    let mut config = Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password.as_bytes())
        .dbname(dbname)
        .application_name("idle_clients")
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(Args {
        config,
        count,
        hold,
        concurrency,
    })
}

/// Worth another try: the connection failed below the protocol (refused, reset, timed out:
/// what a full listen backlog or a busy accept loop looks like) or was closed during the
/// startup. An error the server sent (a bad password, too many clients) is not.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        return false;
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

async fn connect_one(config: &Config, n: usize) -> Result<(Client, JoinHandle<()>), String> {
    let mut backoff = Duration::from_millis(20);
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
            Ok(Ok((client, connection))) => {
                let task = tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok((client, task));
            }
            Ok(Err(e)) if !transient(&e) => return Err(format!("client {n}: {e}")),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        };
        if tries >= MAX_TRIES {
            return Err(format!("client {n}: gave up after {tries} tries: {error}"));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves on SIGINT or SIGTERM, after `hold`, or (without `hold`) when stdin closes.
async fn hold_until(hold: Option<Duration>) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("idle_clients: cannot install signal handlers");
            return "error";
        }
    };
    let stdin_closed = async {
        match hold {
            Some(d) => {
                tokio::time::sleep(d).await;
                "hold time over"
            }
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let mut sink = [0u8; 4096];
                    let mut stdin = std::io::stdin().lock();
                    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                    let _ = tx.send(());
                });
                let _ = rx.await;
                "stdin closed"
            }
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        why = stdin_closed => why,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let config = &args.config;
    let mut results = stream::iter(0..args.count)
        .map(|n| connect_one(config, n))
        .buffer_unordered(args.concurrency);
    let mut clients = Vec::with_capacity(args.count);
    let step = (args.count / 10).max(1);
    while let Some(r) = results.next().await {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => {
                eprintln!("idle_clients: {e} ({} connected so far)", clients.len());
                return ExitCode::FAILURE;
            }
        }
        if clients.len() % step == 0 {
            eprintln!("idle_clients: {}/{} connected", clients.len(), args.count);
        }
    }
    drop(results);
    println!(
        "connected {} clients in {:.1} s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );

    let why = hold_until(args.hold).await;
    eprintln!("idle_clients: {why}: closing {} clients", clients.len());
    let (held, tasks): (Vec<Client>, Vec<JoinHandle<()>>) = clients.into_iter().unzip();
    let count = held.len();
    drop(held);
    let all_closed = futures_util::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(30), all_closed)
        .await
        .is_err()
    {
        eprintln!("idle_clients: some connections did not close within 30 s");
        return ExitCode::FAILURE;
    }
    println!("closed {count} clients");
    ExitCode::SUCCESS
}
