//! One-client round-trip latency through several targets, interleaved query by query.
//! The load benchmark (`scripts/loadbench.sh`, section `probe`) compares a direct
//! connection, PgBouncer and pgtenant with it.
//!
//! ```text
//! cargo run --release --example latency_probe -- USER PASSWORD DBNAME QUERIES \
//!     NAME=HOST:PORT [NAME=HOST:PORT ...]
//! ```
//!
//! Opens one connection to each target (tokio-postgres, one thread), then QUERIES times
//! sends `SELECT abalance FROM pgbench_accounts WHERE aid = N` (simple protocol, N from
//! 1 to 200,000, as `pgbench -S` at scale 2) to each target in turn, starting with a
//! different target each time, and times each round trip. Timing the targets query by
//! query, not run by run, keeps a busy or slowed-down machine from favouring whichever
//! target ran during a quiet spell: each target sees the same conditions within a few
//! hundred microseconds. Prints, per target, the number of round trips, the mean, p50,
//! p90 and p99 in µs, and the p50 and mean added over the first target.
use std::process::ExitCode;
use std::time::Instant;
use tokio_postgres::{Client, Config, NoTls};

struct Target {
    name: String,
    client: Client,
    micros: Vec<f64>,
}

fn usage() -> String {
    "usage: latency_probe USER PASSWORD DBNAME QUERIES NAME=HOST:PORT [NAME=HOST:PORT ...]"
        .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn connect(user: &str, password: &str, db: &str, spec: &str) -> Result<Target, String> {
    let (name, addr) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec}: not NAME=HOST:PORT"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{spec}: not NAME=HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{spec}: bad port"))?;
    let (client, conn) = Config::new()
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect(NoTls)
        .await
        .map_err(|e| format!("{name} ({addr}): {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection error: {e}");
        }
    });
    Ok(Target {
        name: name.to_string(),
        client,
        micros: Vec::new(),
    })
}

async fn run(argv: &[String]) -> Result<(), String> {
    if argv.len() < 5 {
        return Err(usage());
    }
    let queries: usize = argv[3].parse().map_err(|_| usage())?;
    let mut targets = Vec::new();
    for spec in &argv[4..] {
        targets.push(connect(&argv[0], &argv[1], &argv[2], spec).await?);
    }
    // A few unmeasured round trips each: server connections opened, caches warm.
    for t in &targets {
        for _ in 0..50 {
            t.client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut aid: u64 = 1;
    let n = targets.len();
    for q in 0..queries {
        for k in 0..n {
            let t = &mut targets[(q + k) % n];
            aid = aid
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = aid % 200_000 + 1;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {key}");
            let start = Instant::now();
            t.client
                .simple_query(&sql)
                .await
                .map_err(|e| format!("{}: {e}", t.name))?;
            t.micros.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mut first = None;
    for t in &mut targets {
        t.micros.sort_by(f64::total_cmp);
        let mean = t.micros.iter().sum::<f64>() / t.micros.len() as f64;
        let p50 = percentile(&t.micros, 0.5);
        let (b50, bmean) = *first.get_or_insert((p50, mean));
        println!(
            "{:<10} n {:>6}  mean {:>7.1}  p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1} µs  added p50 {:>6.1} mean {:>6.1} µs",
            t.name,
            t.micros.len(),
            mean,
            p50,
            percentile(&t.micros, 0.9),
            percentile(&t.micros, 0.99),
            p50 - b50,
            mean - bmean,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latency_probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&argv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latency_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
