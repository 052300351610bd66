//! What framing costs a forwarded message: `net::Frame::parse` (split one message off the
//! read buffer) and the forward (parse + copy into the peer's write buffer, as
//! `net::Connection::queue` does), on the messages of one `pgbench -S -M extended`
//! transaction:
//!
//! - `client`: Parse (`SELECT abalance FROM pgbench_accounts WHERE aid = $1`), Bind (one
//!   text parameter), Describe portal, Execute, Sync — 5 messages, 106 bytes;
//! - `server`: ParseComplete, BindComplete, RowDescription (`abalance int4`), DataRow,
//!   CommandComplete `SELECT 1`, ReadyForQuery — 6 messages, 80 bytes;
//! - `server_100_rows`: the same answer with 100 DataRows (105 messages), for per-message
//!   cost on a larger result.
//!
//! Each iteration is one batch, done the way `Connection` does it:
//!
//! - `decode`: append the batch to a long-lived read buffer (the copy the socket read
//!   makes; the buffer is topped up by 16 KiB when < 1 KiB is free, as `poll_fill` does),
//!   then `Frame::parse` until it returns `None`, dropping each frame.
//! - `forward`: the same, plus each frame's raw bytes appended to a long-lived write
//!   buffer (exactly the body of `Connection::queue`), which is then consumed whole with
//!   `Buf::advance` as `poll_write_out` does after a complete write. `Connection` itself
//!   is not used here: its buffers are private and fill only from a socket, so this
//!   measures the same `BytesMut` operations without a system call.
//! - `forward_connection`: the real `Connection` over a loopback TCP socket: parse, then
//!   `Connection::queue` for each frame and one `Connection::flush` per batch (one
//!   `write(2)`; a thread on the other end reads and discards). The difference to
//!   `forward` is the system call.
//!
//! Criterion's time is per batch, its throughput (elem/s) in messages. At the end a
//! summary prints ns per batch and per message (best of 5 runs of 200,000 batches) next
//! to the CPU one `pgbench -S` transaction costs pgtenant (~15 µs): framing must be a
//! small fraction of it. Target (performance issue): parse + forward well under 100 ns
//! per message.
//!
//! Run: `cargo bench --bench frame` (add `-- --quick` for a short run). `cargo test` runs
//! every benchmark and the summary once, briefly (`common::test_mode`).
mod common;

use std::hint::black_box;
use std::io::Read;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use criterion::{criterion_group, Criterion, Throughput};
use pgtenant::net::{Connection, Frame, Stream};

/// pgtenant's default `max_message_size`.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// `Connection`'s read chunk.
const READ_CHUNK: usize = 16 * 1024;
/// CPU time of one `pgbench -S` transaction through pgtenant (transaction mode).
const XACT_CPU_NS: f64 = 15_000.0;

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn put(batch: &mut Vec<u8>, tag: u8, body: &[u8]) {
    batch.extend_from_slice(Frame::new(tag, body).raw());
}

/// What libpq sends for pgbench's `SELECT abalance ... WHERE aid = :aid` with `-M extended`
/// (PQsendQueryParams: unnamed statement and portal, no parameter types).
fn client_batch() -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(
        &mut b,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    );
    b.put_i16(0);
    put(&mut out, b'P', &b);
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, "");
    b.put_i16(0); // parameter formats: all text
    b.put_i16(1);
    let aid = b"73205";
    b.put_i32(aid.len() as i32);
    b.extend_from_slice(aid);
    b.put_i16(0); // result formats: all text
    put(&mut out, b'B', &b);
    put(&mut out, b'D', b"P\0");
    let mut b = Vec::new();
    cstr(&mut b, "");
    b.put_i32(0);
    put(&mut out, b'E', &b);
    put(&mut out, b'S', b"");
    (out, 5)
}

/// The server's answer, with `rows` DataRows.
fn server_batch(rows: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    put(&mut out, b'1', b"");
    put(&mut out, b'2', b"");
    let mut b = Vec::new();
    b.put_i16(1);
    cstr(&mut b, "abalance");
    b.put_u32(16_397); // table oid
    b.put_i16(3); // column number
    b.put_u32(23); // int4
    b.put_i16(4);
    b.put_i32(-1);
    b.put_i16(0);
    put(&mut out, b'T', &b);
    for i in 0..rows {
        let v = format!("{}", -4_215 + i as i64);
        let mut b = Vec::new();
        b.put_i16(1);
        b.put_i32(v.len() as i32);
        b.extend_from_slice(v.as_bytes());
        put(&mut out, b'D', &b);
    }
    let mut b = Vec::new();
    cstr(&mut b, &format!("SELECT {rows}"));
    put(&mut out, b'C', &b);
    put(&mut out, b'Z', b"I");
    (out, rows + 5)
}

/// The socket read: top the buffer up as `Connection::poll_fill` does, then the bytes.
#[inline]
fn receive(rbuf: &mut BytesMut, batch: &[u8]) {
    if rbuf.capacity() - rbuf.len() < 1024 {
        rbuf.reserve(READ_CHUNK);
    }
    rbuf.extend_from_slice(batch);
}

/// Decode one batch; returns the number of frames.
#[inline]
fn decode(rbuf: &mut BytesMut, batch: &[u8]) -> usize {
    receive(rbuf, batch);
    let mut n = 0;
    while let Some(f) = Frame::parse(rbuf, MAX_MESSAGE).expect("well-formed batch") {
        black_box(&f);
        n += 1;
    }
    n
}

/// Decode one batch and queue every frame into `wbuf`, then consume `wbuf` as a
/// complete write does.
#[inline]
fn forward(rbuf: &mut BytesMut, wbuf: &mut BytesMut, batch: &[u8]) -> usize {
    receive(rbuf, batch);
    let mut n = 0;
    while let Some(f) = Frame::parse(rbuf, MAX_MESSAGE).expect("well-formed batch") {
        wbuf.extend_from_slice(f.raw());
        n += 1;
    }
    black_box(&wbuf[..]);
    let len = wbuf.len();
    wbuf.advance(len);
    n
}

/// A real `Connection` over loopback TCP whose peer reads and discards everything.
struct Sink {
    rt: tokio::runtime::Runtime,
    conn: Option<Connection>,
    reader: Option<std::thread::JoinHandle<u64>>,
}

impl Sink {
    fn new() -> Sink {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let ours = std::net::TcpStream::connect(listener.local_addr().expect("local addr"))
            .expect("connect loopback");
        let (mut theirs, _) = listener.accept().expect("accept loopback");
        ours.set_nodelay(true).expect("nodelay");
        ours.set_nonblocking(true).expect("nonblocking");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match theirs.read(&mut buf) {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                }
            }
        });
        let conn = {
            let _g = rt.enter();
            let tcp = tokio::net::TcpStream::from_std(ours).expect("tokio stream");
            Connection::new(Stream::Plain(tcp), MAX_MESSAGE)
        };
        Sink {
            rt,
            conn: Some(conn),
            reader: Some(reader),
        }
    }

    /// Decode one batch, `Connection::queue` each frame, one `Connection::flush`.
    #[inline]
    fn forward(&mut self, rbuf: &mut BytesMut, batch: &[u8]) -> usize {
        let conn = self.conn.as_mut().expect("open");
        receive(rbuf, batch);
        let mut n = 0;
        while let Some(f) = Frame::parse(rbuf, MAX_MESSAGE).expect("well-formed batch") {
            conn.queue(&f);
            n += 1;
        }
        self.rt.block_on(conn.flush()).expect("write to loopback");
        n
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        drop(self.conn.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn batches() -> Vec<(&'static str, Vec<u8>, usize)> {
    let (c, cn) = client_batch();
    let (s, sn) = server_batch(1);
    let (s100, s100n) = server_batch(100);
    vec![
        ("client", c, cn),
        ("server", s, sn),
        ("server_100_rows", s100, s100n),
    ]
}

fn bench_frame(c: &mut Criterion) {
    let batches = batches();
    for (name, batch, n) in &batches {
        // Setup check: the batch parses into exactly the expected messages, no leftovers.
        let mut rbuf = BytesMut::new();
        assert_eq!(decode(&mut rbuf, batch), *n, "{name}");
        assert!(rbuf.is_empty(), "{name}: bytes left over");
        println!("{name}: {n} messages, {} bytes", batch.len());
    }

    let mut g = c.benchmark_group("frame");
    for (name, batch, n) in &batches {
        g.throughput(Throughput::Elements(*n as u64));
        let mut rbuf = BytesMut::new();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode(&mut rbuf, black_box(batch)))
        });
        let mut wbuf = BytesMut::new();
        g.bench_function(format!("forward/{name}"), |b| {
            b.iter(|| forward(&mut rbuf, &mut wbuf, black_box(batch)))
        });
        let mut sink = Sink::new();
        g.bench_function(format!("forward_connection/{name}"), |b| {
            b.iter(|| sink.forward(&mut rbuf, black_box(batch)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_frame);

/// Best of `runs` runs of `n` calls of `f`: ns per call.
fn ns_per((n, runs): (u64, usize), mut f: impl FnMut() -> usize) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn summary() {
    println!();
    println!(
        "framing per batch and per message vs ~{:.0} µs CPU per pgbench -S transaction:",
        XACT_CPU_NS / 1000.0
    );
    if common::test_mode() {
        println!("{}", common::TEST_MODE_NOTE);
    }
    let mut per_xact = [0.0f64; 3];
    for (name, batch, n) in &batches() {
        let mut rbuf = BytesMut::new();
        let mut wbuf = BytesMut::new();
        let mut sink = Sink::new();
        let runs = common::sizes(if *n > 10 { 20_000 } else { 200_000 });
        let results = [
            ("decode", ns_per(runs, || decode(&mut rbuf, batch))),
            (
                "forward",
                ns_per(runs, || forward(&mut rbuf, &mut wbuf, batch)),
            ),
            (
                "forward_connection",
                ns_per(runs, || sink.forward(&mut rbuf, batch)),
            ),
        ];
        for (i, (what, ns)) in results.iter().enumerate() {
            if *name != "server_100_rows" {
                per_xact[i] += ns;
            }
            println!(
                "  {what:<18} {name:<15} {ns:8.1} ns/batch  {:6.1} ns/message",
                ns / *n as f64
            );
        }
    }
    for (i, what) in ["decode", "forward", "forward_connection"]
        .iter()
        .enumerate()
    {
        println!(
            "  {what:<18} one transaction (client + server batch): {:7.1} ns = {:.2}% of a transaction",
            per_xact[i],
            100.0 * per_xact[i] / XACT_CPU_NS
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
