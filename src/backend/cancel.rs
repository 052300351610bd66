//! CancelRequest towards a server.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::build;

/// What a CancelRequest for one server connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
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
