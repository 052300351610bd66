//! CancelRequest towards a server.
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::build;

/// What a CancelRequest for one server connection needs.
#[derive(Debug)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
    /// A cancel was sent to this connection and not seen through (the postmaster did not
    /// close the cancel socket in time, or the exchange failed half-way): its signal may
    /// still land, on whatever statement runs then. The connection is closed rather than
    /// lent to another client ([`CancelTarget::unsettled`], `pool::Pool::release_at`).
    unsettled: AtomicBool,
    /// Cancels taken for this connection and not yet delivered (whoever's: a batch's
    /// connection waits for none before it goes back to the pool).
    in_flight: AtomicU32,
}

impl CancelTarget {
    pub fn new(host: String, port: u16, pid: i32, secret: i32) -> CancelTarget {
        CancelTarget {
            host,
            port,
            pid,
            secret,
            unsettled: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
        }
    }

    /// A cancel for this connection is on its way now.
    pub fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// A cancel for this connection was taken (to be sent): counted until
    /// [`CancelTarget::delivered`].
    pub fn sending(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A cancel counted by [`CancelTarget::sending`] was delivered (or given up).
    pub fn delivered(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// See the field: a cancel to this connection may still land.
    pub fn unsettled(&self) -> bool {
        self.unsettled.load(Ordering::SeqCst)
    }

    /// A cancel to this connection was not seen through (before the sender lets the
    /// connection go on).
    pub fn mark_unsettled(&self) {
        self.unsettled.store(true, Ordering::SeqCst);
    }
}

/// Send a CancelRequest and wait until the postmaster closes the socket: by then it has
/// signalled the backend, so the caller may hand the connection to someone else safely.
pub async fn send_cancel(t: &CancelTarget) -> std::io::Result<()> {
    let fut = async {
        let mut s = crate::net::stream::connect(&t.host, t.port).await?;
        s.write_all(&build::cancel_request(t.pid, t.secret)).await?;
        let mut sink = [0u8; 16];
        // The server sends nothing and closes; EOF (or a reset) means it is done.
        let _ = s.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
