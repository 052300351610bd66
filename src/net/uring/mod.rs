//! The io_uring I/O engine (`io_engine = io_uring`): a ring per runtime thread drives the
//! client and server sockets; everything else (timers, the listeners, TLS, unix sockets,
//! HTTP) stays on tokio's epoll reactor.
//!
//! Rules:
//! - The engine is chosen once at start ([`choose`]): `auto` takes io_uring when a probe
//!   ring with everything the engine uses can be made (a seccomp profile that refuses
//!   io_uring, an old kernel or `kernel.io_uring_disabled` fall back to epoll, with the
//!   reason logged); `io_uring` refuses to start without it; `epoll` never tries.
//! - Under io_uring, every runtime thread is a current-thread tokio runtime with its own
//!   ring ([`ring::install`]); a plain TCP socket made on such a thread becomes a
//!   [`UringStream`] ([`crate::net::Stream::plain`]). On any other thread (the epoll
//!   engine, tests) the same call gives tokio's `TcpStream`: code above `Stream` never
//!   knows which engine runs.
//! - TLS and unix sockets stay on epoll under both engines (a client's socket leaves the
//!   ring before its TLS handshake).
mod ring;
mod stream;

pub use ring::{after_unpark, install, on_ring_thread, this_ring};
pub use stream::{UringStream, OUTBOX_MAX};

/// The configured choice (`io_engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoEngine {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

impl IoEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            IoEngine::Auto => "auto",
            IoEngine::IoUring => "io_uring",
            IoEngine::Epoll => "epoll",
        }
    }
}

/// What runs: io_uring or epoll, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub uring: bool,
    pub reason: String,
}

impl Chosen {
    pub fn name(&self) -> &'static str {
        if self.uring {
            "io_uring"
        } else {
            "epoll"
        }
    }
}

/// Decide the engine. `Err` only for `io_uring` when the probe fails.
pub fn choose(want: IoEngine) -> Result<Chosen, String> {
    match want {
        IoEngine::Epoll => Ok(Chosen {
            uring: false,
            reason: "io_engine = epoll".into(),
        }),
        IoEngine::IoUring => probe()
            .map(|ok| Chosen {
                uring: true,
                reason: format!("io_engine = io_uring; {ok}"),
            })
            .map_err(|why| format!("io_engine = io_uring, but io_uring cannot be used: {why}")),
        IoEngine::Auto => Ok(match probe() {
            Ok(ok) => Chosen {
                uring: true,
                reason: format!("io_engine = auto; {ok}"),
            },
            Err(why) => Chosen {
                uring: false,
                reason: format!("io_engine = auto; io_uring unavailable ({why}), using epoll"),
            },
        }),
    }
}

/// Make a ring exactly as the engine does (its setup flags and its provided-buffer ring,
/// Linux 6.0+) and check the operations it submits. The error names what failed.
pub fn probe() -> Result<String, String> {
    let ring = ring::Ring::new().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => "io_uring_setup: operation not permitted (a seccomp profile or \
                              kernel.io_uring_disabled refuses it)"
            .to_string(),
        Some(libc::ENOSYS) => "io_uring_setup: not implemented by this kernel".to_string(),
        _ => format!("io_uring setup: {e} (Linux 6.0+ needed)"),
    })?;
    ring.supports_operations()?;
    Ok("io_uring works (single issuer, provided buffer rings)".into())
}

#[cfg(test)]
mod tests;
