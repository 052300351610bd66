//! io_engine_probe: measure relay costs of epoll (tokio) vs io_uring engines for pgtenant.
//!
//! Subcommands:
//!   backend  --listen ADDR [--req 100] [--resp 300]
//!   relay    --engine ENGINE --listen ADDR --backend ADDR [--threads 2]
//!   load     --target ADDR --conns N [--req 100] [--resp 300] [--warmup 1] [--secs 5]
//!            [--perf-secs 3] [--pid RELAY_PID]
//!   detect   print which io_uring engines can start here
//!
//! ENGINE: tokio-mt | tokio-ct | monoio | monoio-legacy | compio | compio-poll | tokio-uring | raw-uring

mod backend;
mod common;
mod detect;
mod load;
mod relay_compio;
mod relay_monoio;
mod relay_raw;
mod relay_tokio;
mod relay_tokio_uring;

use common::Args;

fn main() {
    detect::maybe_deny_uring_from_env();
    let mut argv = std::env::args().skip(1);
    let cmd = argv.next().unwrap_or_default();
    let args = Args::parse(argv.collect());
    match cmd.as_str() {
        "backend" => backend::run(&args),
        "relay" => run_relay(&args),
        "load" => load::run(&args),
        "detect" => detect::run(),
        _ => {
            eprintln!("usage: io_engine_probe backend|relay|load|detect [--opts]");
            std::process::exit(2);
        }
    }
}

fn run_relay(args: &Args) {
    let engine = args.get("engine", "tokio-mt");
    let cfg = common::RelayCfg {
        listen: args.get("listen", "127.0.0.1:16432").parse().unwrap(),
        backend: args.get("backend", "127.0.0.1:15432").parse().unwrap(),
        threads: args.get_num("threads", 2),
    };
    eprintln!("relay engine={engine} threads={} listen={} backend={}", cfg.threads, cfg.listen, cfg.backend);
    match engine.as_str() {
        "tokio-mt" => relay_tokio::run_mt(cfg),
        "tokio-ct" => relay_tokio::run_ct(cfg),
        "monoio" => relay_monoio::run(cfg, false),
        "monoio-legacy" => relay_monoio::run(cfg, true),
        "compio" => relay_compio::run(cfg, false),
        "compio-poll" => relay_compio::run(cfg, true),
        "tokio-uring" => relay_tokio_uring::run(cfg),
        "raw-uring" => relay_raw::run(cfg, false),
        "raw-uring-naive" => relay_raw::run(cfg, true),
        other => {
            eprintln!("unknown engine {other}");
            std::process::exit(2);
        }
    }
}
