//! Load generator: N connections, each does request/response ping-pong through the relay.
//! Measures tx/s, relay CPU (utime+stime from /proc/PID/stat) in window A, relay syscalls
//! (perf stat raw_syscalls:sys_enter) in a separate window B so perf's cost does not
//! pollute the CPU numbers.  Prints one line of key=value results.
use crate::common::Args;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn proc_cpu_ticks(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the ")" : state is field 3; utime=14, stime=15 (1-based)
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}

fn ctx_switches(pid: u32) -> u64 {
    // sum voluntary+nonvoluntary over all threads
    let mut tot = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                for l in s.lines() {
                    if l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches") {
                        tot += l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
                    }
                }
            }
        }
    }
    tot
}

/// (busy, total) jiffies of the whole machine, to see how much else ran during a window.
fn host_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = s.lines().next().unwrap().split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    (total - idle, total)
}

pub fn run(args: &Args) {
    let target: std::net::SocketAddr = args.get("target", "127.0.0.1:16432").parse().unwrap();
    let conns: usize = args.get_num("conns", 1);
    let req: usize = args.get_num("req", 100);
    let resp: usize = args.get_num("resp", 300);
    let warmup: f64 = args.get_num("warmup", 1.0);
    let secs: f64 = args.get_num("secs", 5.0);
    let perf_secs: f64 = args.get_num("perf-secs", 3.0);
    let pid: u32 = args.get_num("pid", 0);
    let threads: usize = args.get_num("threads", 1);

    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap()
    };
    let count = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let lats: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));

    rt.block_on(async {
        let mut handles = vec![];
        for _ in 0..conns {
            let mut s = tokio::net::TcpStream::connect(target).await.expect("connect relay");
            s.set_nodelay(true).unwrap();
            let (count, recording, stop, lats) = (count.clone(), recording.clone(), stop.clone(), lats.clone());
            handles.push(tokio::spawn(async move {
                let q = vec![b'Q'; req];
                let mut buf = vec![0u8; 64 * 1024];
                let mut local: Vec<u32> = Vec::with_capacity(if conns == 1 { 1 << 20 } else { 0 });
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if s.write_all(&q).await.is_err() {
                        break;
                    }
                    let mut got = 0;
                    while got < resp {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => panic!("relay closed"),
                            Ok(n) => got += n,
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    if conns == 1 && recording.load(Ordering::Relaxed) {
                        local.push(t.elapsed().as_nanos() as u32);
                    }
                }
                lats.lock().unwrap().extend(local);
            }));
        }

        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        // ---- window A: throughput, CPU, latency (no tracer attached)
        let (u0, s0) = if pid > 0 { proc_cpu_ticks(pid) } else { (0, 0) };
        let cs0 = if pid > 0 { ctx_switches(pid) } else { 0 };
        let h0 = host_jiffies();
        let c0 = count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        recording.store(false, Ordering::Relaxed);
        let c1 = count.load(Ordering::Relaxed);
        let el = t0.elapsed().as_secs_f64();
        let (u1, s1) = if pid > 0 { proc_cpu_ticks(pid) } else { (0, 0) };
        let cs1 = if pid > 0 { ctx_switches(pid) } else { 0 };
        let h1 = host_jiffies();
        let host_busy_pct = (h1.0 - h0.0) as f64 / (h1.1 - h0.1).max(1) as f64 * 100.0;
        let relay_cpu_pct = ((u1 - u0) + (s1 - s0)) as f64 / (h1.1 - h0.1).max(1) as f64 * 100.0 * num_cpus() as f64;
        let tx = (c1 - c0) as f64;
        let tps = tx / el;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let user_us = (u1 - u0) as f64 / hz * 1e6 / tx;
        let sys_us = (s1 - s0) as f64 / hz * 1e6 / tx;
        let cs_per_tx = (cs1 - cs0) as f64 / tx;

        // ---- window B: syscalls per tx via perf (tracepoint counting)
        let mut sc_per_tx = f64::NAN;
        if pid > 0 && perf_secs > 0.0 {
            let c0 = count.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let out = tokio::process::Command::new("perf")
                .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string(), "--", "sleep", &perf_secs.to_string()])
                .output()
                .await;
            let c1 = count.load(Ordering::Relaxed);
            let _el = t0.elapsed().as_secs_f64();
            if let Ok(out) = out {
                let txt = String::from_utf8_lossy(&out.stderr);
                for l in txt.lines() {
                    if l.contains("raw_syscalls:sys_enter") {
                        if let Ok(n) = l.split(',').next().unwrap().parse::<f64>() {
                            sc_per_tx = n / (c1 - c0) as f64;
                        }
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        let mut l = lats.lock().unwrap();
        l.sort_unstable();
        let pct = |p: f64| -> f64 {
            if l.is_empty() { f64::NAN } else { l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0 }
        };
        println!(
            "conns={conns} tps={tps:.0} cpu_us_per_tx={:.2} user_us_per_tx={user_us:.2} sys_us_per_tx={sys_us:.2} syscalls_per_tx={sc_per_tx:.3} ctxsw_per_tx={cs_per_tx:.3} p50_us={:.1} p99_us={:.1} relay_cpu_pct={relay_cpu_pct:.0} host_busy_pct={host_busy_pct:.0}",
            user_us + sys_us,
            pct(0.50),
            pct(0.99)
        );
    });
    std::process::exit(0);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(
        std::fs::read_to_string("/proc/stat").map(|s| s.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count()).unwrap_or(1),
    )
}
