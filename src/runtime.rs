//! The runtime under pgtenant, by I/O engine (see `net::uring`).
//!
//! Rules:
//! - epoll: one multi-thread tokio runtime, `workers` threads (0 = one per core); clients
//!   are tasks like any other.
//! - io_uring: `workers` threads (0 = one per core), each a current-thread tokio runtime
//!   with its own ring, started before anything else runs. The first one runs `serve`
//!   and every background task (listeners, janitor, refresher, metrics); accepted clients
//!   are handed to the threads in turn ([`spawn_client`]) and stay on theirs for life, so
//!   a client's socket is driven by one ring without cross-thread wake-ups. Server
//!   connections are shared by all threads: each operation goes to the ring of the thread
//!   that runs the client using it.
//! - Both: 8 MiB stacks (SQL parsing recurses; the memory is only reserved).
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::net::uring::Chosen;

const STACK: usize = 8 << 20;

/// The io_uring threads' runtimes (unset under epoll).
static CORES: OnceLock<Vec<Handle>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The epoll engine's runtime (unset under io_uring).
static MAIN: OnceLock<Handle> = OnceLock::new();

/// Run a client's task: on the next io_uring thread in turn, or as a plain task.
pub fn spawn_client<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match next_core() {
        Some(core) => drop(core.spawn(fut)),
        None => drop(tokio::spawn(fut)),
    }
}

/// The next io_uring thread's runtime in turn (None under epoll).
fn next_core() -> Option<&'static Handle> {
    let cores = CORES.get().filter(|c| !c.is_empty())?;
    Some(&cores[NEXT.fetch_add(1, Ordering::Relaxed) % cores.len()])
}

/// Can [`spawn_client_anywhere`] spawn? (Only inside [`run`]: library use without it,
/// as in tests, has no runtime known to every thread.)
pub fn runs_anywhere() -> bool {
    CORES.get().is_some_and(|c| !c.is_empty()) || MAIN.get().is_some()
}

/// [`spawn_client`] from any thread (a parked client taken up again by the parking
/// lot's thread, or by whoever woke it): on the next io_uring thread in turn, or on the
/// epoll runtime. Nothing if [`runs_anywhere`] is false.
pub fn spawn_client_anywhere<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match next_core().or(MAIN.get()) {
        Some(rt) => drop(rt.spawn(fut)),
        None => tracing::error!("a client's task cannot be spawned: no runtime is known"),
    }
}

/// Threads to run: `workers`, or one per core.
pub fn threads(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Run `main` to its end on the chosen engine's runtime.
pub fn run<F, M>(engine: &Chosen, workers: usize, main: M) -> std::io::Result<F::Output>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future + 'static,
    F::Output: Send + 'static,
{
    if !engine.uring {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            rt.worker_threads(workers);
        }
        let rt = rt
            .enable_all()
            .thread_name("pgtenant")
            .thread_stack_size(STACK)
            .build()?;
        let _ = MAIN.set(rt.handle().clone());
        return Ok(rt.block_on(main()));
    }
    let n = threads(workers);
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<Handle>>();
    let mut others = Vec::new();
    for i in 1..n {
        let (tx, stop) = (tx.clone(), stop.clone());
        others.push(
            std::thread::Builder::new()
                .name(format!("pgtenant-io-{i}"))
                .stack_size(STACK)
                .spawn(move || {
                    let rt = match current_thread() {
                        Ok(rt) => rt,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    rt.block_on(async move {
                        match crate::net::uring::install() {
                            Ok(_) => {
                                let _ = tx.send(Ok(Handle::current()));
                                stop.cancelled().await;
                            }
                            Err(e) => drop(tx.send(Err(e))),
                        }
                    });
                })?,
        );
    }
    let first = std::thread::Builder::new()
        .name("pgtenant-io-0".into())
        .stack_size(STACK)
        .spawn(move || -> std::io::Result<F::Output> {
            let rt = current_thread()?;
            rt.block_on(async move {
                crate::net::uring::install()?;
                let mut cores = vec![Handle::current()];
                for _ in 1..n {
                    cores.push(rx.recv().map_err(std::io::Error::other)??);
                }
                let _ = CORES.set(cores);
                Ok(main().await)
            })
        })?;
    let out = first
        .join()
        .map_err(|_| std::io::Error::other("the first io_uring thread panicked"));
    stop.cancel();
    for t in others {
        let _ = t.join();
    }
    out?
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_unpark(crate::net::uring::after_unpark)
        .build()
}
