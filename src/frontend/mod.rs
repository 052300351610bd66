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
        Ok(Some(login::Login::Client(client))) => {
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
            let info = register(
                &ctx,
                &client.conn,
                &client.user,
                &client.database,
                &client.params,
                client.kill.clone(),
                Some(client.state.clone()),
            );
            let r = session::run(client, &ctx).await;
            ctx.admin.clients.unregister(info.id);
            match r {
                Ok(()) => tracing::info!(peer = ?peer, user = %user, "client closed"),
                Err(e) => tracing::info!(peer = ?peer, user = %user, error = %e, "client closed"),
            }
        }
        Ok(Some(login::Login::Admin {
            conn,
            user,
            database,
            params,
            key,
        })) => {
            tracing::info!(peer = ?peer, user = %user, database = %database, "admin console client logged in");
            let kill = ctx.shutdown.child_token();
            let info = register(&ctx, &conn, &user, &database, &params, kill.clone(), None);
            let r = crate::admin::serve(conn, user.clone(), ctx.clone(), kill).await;
            ctx.admin.clients.unregister(info.id);
            drop(key);
            match r {
                Ok(()) => tracing::info!(peer = ?peer, user = %user, "admin console client closed"),
                Err(e) => {
                    tracing::info!(peer = ?peer, user = %user, error = %e, "admin console client closed")
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(peer = ?peer, error = %e, "client left during startup"),
    }
    ctx.clients.fetch_sub(1, Ordering::AcqRel);
}

/// Enter a logged-in client in the admin console's registry (SHOW CLIENTS, KILL_CLIENT).
fn register(
    ctx: &Context,
    conn: &crate::net::Connection,
    user: &str,
    database: &str,
    params: &[(String, String)],
    kill: tokio_util::sync::CancellationToken,
    state: Option<Arc<crate::metrics::counters::ClientState>>,
) -> Arc<crate::admin::ClientInfo> {
    let tcp = conn.stream().tcp();
    ctx.admin.clients.register(crate::admin::ClientInfo {
        id: ctx.admin.clients.next_id(),
        user: user.to_owned(),
        database: database.to_owned(),
        addr: tcp.peer_addr().ok(),
        local_addr: tcp.local_addr().ok(),
        connect_time: std::time::SystemTime::now(),
        application_name: params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        tls: conn.stream().is_tls(),
        kill,
        state,
    })
}
