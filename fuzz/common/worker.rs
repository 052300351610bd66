//! Run a check on a thread with tokio's worker stack size (2 MiB), as pgtenant's sessions
//! run: a recursion that fits the fuzzer's 8 MiB main thread but not a worker is a crash.
//! One long-lived thread, fed through a channel (a thread per input would halve the
//! execution rate). A panic or a stack overflow on it aborts the process, which libFuzzer
//! reports as a crash like any other.
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};

pub const WORKER_STACK: usize = 2 * 1024 * 1024;

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: SyncSender<Job>,
    done: Mutex<Receiver<()>>,
}

fn worker() -> &'static Worker {
    static W: OnceLock<Worker> = OnceLock::new();
    W.get_or_init(|| {
        let (jobs, rx) = sync_channel::<Job>(0);
        let (tx_done, done) = sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("fuzz-worker".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                for job in rx {
                    job();
                    tx_done.send(()).unwrap();
                }
            })
            .unwrap();
        Worker {
            jobs,
            done: Mutex::new(done),
        }
    })
}

/// Run `f` on the 2 MiB worker and wait for it.
pub fn on_worker(f: impl FnOnce() + Send + 'static) {
    let w = worker();
    w.jobs.send(Box::new(f)).unwrap();
    w.done.lock().unwrap().recv().unwrap();
}
