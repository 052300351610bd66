//! One task per client: startup (TLS, protocol version, authentication), then the session
//! loop that lends it server connections.
mod cancel;
mod listen;
mod login;
pub mod params;
mod pipeline;
pub mod prepared;
pub mod routing;
mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::Listener;
use crate::context::Context;

pub use cancel::{CancelKey, CancelRegistry, CancelSlot};
pub use listen::ListenHub;
pub use prepared::StatementRegistry;

/// Errors that end a client session.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("client sent a bad message: {0}")]
    Conn(#[from] crate::net::ConnError),
    #[error("client protocol: {0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
}

/// Serve one client connection until it leaves.
pub async fn handle_client(socket: TcpStream, listener: Listener, ctx: Arc<Context>) {
    let peer = socket.peer_addr().ok();
    let _ = socket.set_nodelay(true);
    // Counted from accept to close; max_client_conn is checked against it at login.
    ctx.clients.fetch_add(1, Ordering::AcqRel);
    let r = login::login(socket, &listener, &ctx).await;
    match r {
        Ok(Some(client)) => {
            let app = client
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.as_str());
            tracing::info!(
                peer = ?peer, user = %client.user, database = %client.database,
                application_name = app.unwrap_or(""), tls = client.conn.stream().is_tls(), "client logged in"
            );
            let user = client.user.clone();
            let r = session::run(client, &ctx).await;
            match r {
                Ok(()) => tracing::info!(peer = ?peer, user = %user, "client closed"),
                Err(e) => tracing::info!(peer = ?peer, user = %user, error = %e, "client closed"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(peer = ?peer, error = %e, "client left during startup"),
    }
    ctx.clients.fetch_sub(1, Ordering::AcqRel);
}
