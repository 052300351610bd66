//! One task per client: startup (TLS, protocol version, authentication), then the session
//! loop that lends it server connections.
//!
//! Peer-supplied strings (user, database, application_name) go into log lines through
//! `logging::Escaped`: no control character, bounded length.
pub mod admission;
pub mod auth_query;
mod cancel;
mod listen;
mod login;
pub mod node_health;
pub mod params;
mod pipeline;
pub mod prepared;
pub mod routing;
mod session;
pub mod setting_names;
pub mod target;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Listener;
use crate::context::Context;
use crate::logging::Escaped;

pub use admission::Admission;
pub use auth_query::AuthQuery;
pub use cancel::{CancelKey, CancelRegistry, CancelSlot};
pub use listen::ListenHub;
pub use prepared::StatementRegistry;
pub use setting_names::SettingNames;

/// Bumped before any token a session loop polls is cancelled (KILL, SHUTDOWN) and before
/// SUSPEND or RESUME wakes sessions: a session that sees the same value as at its last look, with the same waker,
/// knows its token is still not cancelled without locking it (two mutexes per look in
/// tokio-util), which it would otherwise do every time it goes to sleep.
static SESSION_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Cancel a token a session loop may be polling (its kill token or the shutdown token).
/// Every such cancel must go through here (see `SESSION_SIGNALS`).
pub fn cancel_session_token(t: &tokio_util::sync::CancellationToken) {
    signal_sessions();
    t.cancel();
}

/// Before waking sessions from outside (a cancel, SUSPEND, RESUME): they look at their
/// token and register their waker again at their next poll.
pub fn signal_sessions() {
    SESSION_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

pub(crate) fn session_signals() -> u64 {
    SESSION_SIGNALS.load(Ordering::SeqCst)
}

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

/// The startup phase's outcome, with the context handed back.
type LoginDone = (Result<Option<login::Login>, FrontendError>, Arc<Context>);
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Serve one client connection until it leaves.
///
/// Each phase is a boxed future built before it starts, so the client's task holds only
/// the phase it is in: the startup phase's state (and the socket and listener it owns) is
/// freed once it is over, and a logged-in client carries only its session's state
/// (memory per idle client).
pub fn handle_client(
    socket: crate::net::Stream,
    listener: Listener,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> + Send {
    let peer = socket.peer_addr();
    // Open connections, counted from accept to close (metrics, SHOW LISTS); who may
    // stay is admission.rs's business.
    ctx.clients.fetch_add(1, Ordering::AcqRel);
    let login: BoxFuture<LoginDone> = Box::pin(async move {
        let r = login::login(socket, &listener, &ctx).await;
        (r, ctx)
    });
    async move {
        let (r, ctx) = login.await;
        // A login holds a max_client_conn slot until the client leaves.
        let logged_in = matches!(r, Ok(Some(_)));
        if let Some(serve) = after_login(peer, r, &ctx) {
            serve.await;
        }
        if logged_in {
            ctx.admission.client_left();
        }
        ctx.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a logged-in client is served by: its session, or the admin console.
fn after_login(
    peer: Option<std::net::SocketAddr>,
    r: Result<Option<login::Login>, FrontendError>,
    ctx: &Arc<Context>,
) -> Option<BoxFuture<()>> {
    match r {
        Ok(Some(login::Login::Client(client, params, own))) => {
            let app = params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.as_str());
            tracing::info!(
                peer = ?peer, user = %Escaped(&client.user), database = %Escaped(&client.database),
                application_name = %Escaped(app.unwrap_or("")), tls = client.conn.stream().is_tls(), "client logged in"
            );
            let user = client.user.clone();
            let ctx = ctx.clone();
            if ctx.admin.suspend.is_on() {
                // SUSPEND: a new client waits here, logged in, until RESUME
                // (admin::suspend).
                return Some(Box::pin(async move {
                    ctx.admin.suspend.hold(&client.kill).await;
                    start_session(peer, user, client, params, own, &ctx).await;
                }));
            }
            Some(Box::pin(start_session(
                peer, user, client, params, own, &ctx,
            )))
        }
        Ok(Some(login::Login::Admin {
            conn,
            user,
            database,
            params,
            key,
        })) => {
            tracing::info!(peer = ?peer, user = %Escaped(&user), database = %Escaped(&database), "admin console client logged in");
            let ctx = ctx.clone();
            Some(Box::pin(async move {
                let kill = ctx.shutdown.child_token();
                let info = register(
                    &ctx,
                    &conn,
                    user.as_str().into(),
                    database.as_str().into(),
                    &params,
                    kill.clone(),
                    None,
                );
                let r = crate::admin::serve(conn, user.clone(), ctx.clone(), kill).await;
                ctx.admin.clients.unregister(info.id);
                drop(key);
                match r {
                    Ok(()) => {
                        tracing::info!(peer = ?peer, user = %Escaped(&user), "admin console client closed")
                    }
                    Err(e) => {
                        tracing::info!(peer = ?peer, user = %Escaped(&user), error = %e, "admin console client closed")
                    }
                }
            }))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(peer = ?peer, error = %e, "client left during startup");
            None
        }
    }
}

/// Register a logged-in client and build its session's future (which unregisters it at
/// its end).
fn start_session(
    peer: Option<std::net::SocketAddr>,
    user: Arc<str>,
    client: login::Client,
    params: Vec<(String, String)>,
    own: Option<login::SessionServer>,
    ctx: &Arc<Context>,
) -> impl std::future::Future<Output = ()> + Send {
    // The registry keeps what SHOW CLIENTS shows; the session needs only `startup`.
    let info = register(
        ctx,
        &client.conn,
        client.user.clone(),
        client.database.clone(),
        &params,
        client.kill.clone(),
        Some(client.state.clone()),
    );
    drop(params);
    let id = info.id;
    session::run(client, own, ctx.clone(), move |r, ctx: &Context| {
        ctx.admin.clients.unregister(id);
        match r {
            Ok(()) => tracing::info!(peer = ?peer, user = %Escaped(&user), "client closed"),
            Err(e) => {
                tracing::info!(peer = ?peer, user = %Escaped(&user), error = %e, "client closed")
            }
        }
    })
}

/// Enter a logged-in client in the admin console's registry (SHOW CLIENTS, KILL_CLIENT).
fn register(
    ctx: &Context,
    conn: &crate::net::Connection,
    user: Arc<str>,
    database: Arc<str>,
    params: &[(String, String)],
    kill: tokio_util::sync::CancellationToken,
    state: Option<Arc<crate::metrics::counters::ClientState>>,
) -> Arc<crate::admin::ClientInfo> {
    let stream = conn.stream();
    ctx.admin.clients.register(crate::admin::ClientInfo {
        id: ctx.admin.clients.next_id(),
        user,
        database,
        addr: stream.peer_addr(),
        local_addr: stream.local_addr(),
        connect_time: std::time::SystemTime::now(),
        application_name: ctx.startup_params.share_name(
            params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map_or("", |(_, v)| v.as_str()),
        ),
        tls: conn.stream().is_tls(),
        kill,
        state,
    })
}

#[cfg(test)]
mod size_tests {
    fn ret_size<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn ret_size4<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle client costs mostly its task: the futures it holds between transactions.
    /// Slow paths (login, waiting for or opening a server connection, reading settings
    /// back, the end of a session) are boxed so that they do not inflate it; this keeps
    /// anyone from quietly putting a big await back on the common path.
    #[test]
    fn an_idle_clients_futures_stay_small() {
        let outer = ret_size(super::handle_client);
        type End = fn(Result<(), super::FrontendError>, &crate::context::Context);
        let session = ret_size4(super::session::run::<End>);
        eprintln!("client task: {outer} bytes + session {session} bytes");
        assert!(outer <= 256, "handle_client's future is {outer} bytes");
        assert!(session <= 1024, "a session's future is {session} bytes");
    }
}
