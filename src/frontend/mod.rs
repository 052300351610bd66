//! A task per client for its startup (TLS, protocol version, authentication); a logged-in
//! client's session loop, which lends it server connections, then runs as a task of its
//! own (so that an idle client's task holds nothing of its login), spawned on the runtime
//! it logged in on: under io_uring that is its thread for life.
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
pub mod startup_check;
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
pub use session::spawn_sweeper as spawn_park_sweeper;
pub use setting_names::SettingNames;

/// Bumped before anything a session loop looks at when woken changes (its kill flag, the
/// shutdown token) and before SUSPEND or RESUME wakes sessions: a session that sees the
/// same value as at its last look, with the same waker, knows nothing changed without
/// looking (the token takes a mutex), which it would otherwise do every time it goes to
/// sleep. A session registers its waker in one place, its console state
/// (`admin::SessionConsole`), where KILL, SUSPEND, RESUME and shutdown wake it.
static SESSION_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Shutdown (SIGTERM, SIGINT, the console's SHUTDOWN): cancel the context's token, then
/// wake every session to look at it (they hold no registration with the token; the wake
/// moves `SESSION_SIGNALS`). Idle sessions leave, busy ones finish their transaction.
pub fn shut_down_sessions(ctx: &Context) {
    ctx.shutdown.cancel();
    ctx.admin.clients.wake_sessions();
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
/// The login runs in this task, as a boxed future built before it starts. A logged-in
/// client's session then runs as a task of its own, spawned through `tracker` (shutdown
/// waits for it) from this one (the same thread under io_uring): that task holds the
/// session's state inline and nothing of the login, which is the memory an idle client
/// costs.
pub fn handle_client(
    socket: crate::net::Stream,
    listener: Listener,
    ctx: Arc<Context>,
    tracker: tokio_util::task::TaskTracker,
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
        let leaving = Leaving {
            ctx,
            logged_in: matches!(r, Ok(Some(_))),
            registered: 0,
        };
        let ctx = leaving.ctx.clone();
        match after_login(peer, r, &ctx, leaving, &tracker) {
            // Spawned as it is: wrapping it in another future would store it twice.
            Some(Serve::Session(s)) => drop(tracker.spawn(s)),
            Some(Serve::Other(s)) => drop(tracker.spawn(s)),
            None => {}
        }
    }
}

/// A client's connection ends: its registry entry (SHOW CLIENTS), its max_client_conn
/// slot (if it logged in) and its count are given back when this is dropped, at the end
/// of whatever served the client, also when that is dropped without finishing (a
/// panicking session, runtime shutdown).
struct Leaving {
    ctx: Arc<Context>,
    logged_in: bool,
    /// Its registry id once registered (ids start at 1).
    registered: u64,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        if self.registered != 0 {
            self.ctx.admin.clients.unregister(self.registered);
        }
        if self.logged_in {
            self.ctx.admission.client_left();
        }
        self.ctx.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What serves a logged-in client: its session's future (kept unboxed: it is the task
/// of every idle client), or a boxed one for the rare cases (the admin console, a client
/// held by SUSPEND).
enum Serve<S> {
    Session(S),
    Other(BoxFuture<()>),
}

/// What a logged-in client is served by: its session, or the admin console.
fn after_login(
    peer: Option<std::net::SocketAddr>,
    r: Result<Option<login::Login>, FrontendError>,
    ctx: &Arc<Context>,
    mut leaving: Leaving,
    tracker: &tokio_util::task::TaskTracker,
) -> Option<Serve<impl std::future::Future<Output = ()> + Send>> {
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
            // The registry keeps what SHOW CLIENTS shows (and where KILL finds it): the
            // entry the login made, which the session holds too.
            ctx.admin.clients.insert(client.entry.clone());
            leaving.registered = client.entry.id;
            drop(params);
            let ctx = ctx.clone();
            if ctx.admin.suspend.is_on() {
                // SUSPEND: a new client waits here, logged in, until RESUME or KILL
                // (admin::suspend).
                let tracker = tracker.clone();
                return Some(Serve::Other(Box::pin(async move {
                    ctx.admin.suspend.hold(&client.state().console).await;
                    start_session(client, own, &ctx, leaving, tracker).await;
                })));
            }
            Some(Serve::Session(start_session(
                client,
                own,
                &ctx,
                leaving,
                tracker.clone(),
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
            Some(Serve::Other(Box::pin(async move {
                let kill = ctx.shutdown.child_token();
                leaving.registered = ctx
                    .admin
                    .clients
                    .register(client_entry(
                        &ctx,
                        &conn,
                        user.as_str().into(),
                        database.as_str().into(),
                        &params,
                        Some(kill.clone()),
                    ))
                    .id;
                let r = crate::admin::serve(conn, user.clone(), ctx.clone(), kill).await;
                drop(leaving);
                drop(key);
                match r {
                    Ok(()) => {
                        tracing::info!(peer = ?peer, user = %Escaped(&user), "admin console client closed")
                    }
                    Err(e) => {
                        tracing::info!(peer = ?peer, user = %Escaped(&user), error = %e, "admin console client closed")
                    }
                }
            })))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(peer = ?peer, error = %e, "client left during startup");
            None
        }
    }
}

/// A registered client's session future; at its end `leaving` gives back what the client
/// held. The end's log line reads the peer and user back from the client's registry
/// entry (no copy per session).
fn start_session(
    client: login::Client,
    own: Option<login::SessionServer>,
    ctx: &Arc<Context>,
    leaving: Leaving,
    tracker: tokio_util::task::TaskTracker,
) -> impl std::future::Future<Output = ()> + Send {
    session::run(client, own, ctx.clone(), tracker, Ending(leaving))
}

/// The end of a registered client's session: `leaving` gives back what it held (and is
/// where a parked session finds the context).
struct Ending(Leaving);

impl session::SessionEnd for Ending {
    fn ctx(&self) -> &Arc<Context> {
        &self.0.ctx
    }

    fn end(self, r: Result<(), FrontendError>, entry: &crate::admin::ClientInfo) {
        drop(self.0);
        let (peer, user) = (entry.addr, &entry.user);
        match r {
            Ok(()) => tracing::info!(peer = ?peer, user = %Escaped(user), "client closed"),
            Err(e) => {
                tracing::info!(peer = ?peer, user = %Escaped(user), error = %e, "client closed")
            }
        }
    }
}

/// A logged-in client's entry for the admin console's registry (SHOW CLIENTS,
/// KILL_CLIENT), not entered yet. `kill`: a console session's token.
pub(crate) fn client_entry(
    ctx: &Context,
    conn: &crate::net::Connection,
    user: Arc<str>,
    database: Arc<str>,
    params: &[(String, String)],
    kill: Option<tokio_util::sync::CancellationToken>,
) -> crate::admin::ClientInfo {
    let stream = conn.stream();
    crate::admin::ClientInfo {
        id: ctx.admin.clients.next_id(),
        user,
        database,
        addr: stream.peer_addr().map(Into::into),
        local_addr: stream.local_addr().map(Into::into),
        connect_us: crate::admin::registry::now_us(),
        application_name: ctx.startup_params.share_name(
            params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map_or("", |(_, v)| v.as_str()),
        ),
        tls: conn.stream().is_tls(),
        kill,
        state: Default::default(),
    }
}

#[cfg(test)]
mod size_tests {
    fn ret_size4<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn ret_size5<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle client costs mostly its task: the session's future, spawned as a task of
    /// its own after the login (whose task is gone by then). Slow paths (login, waiting
    /// for or opening a server connection, reading settings back, the end of a session)
    /// are boxed and rare state is behind pointers so that they do not inflate it; this
    /// keeps anyone from quietly putting a big await or field back on the common path.
    /// (tokio rounds a task up to 128 bytes with its ~130-byte header: 600 bytes of
    /// future make a 768-byte task.)
    #[test]
    fn an_idle_clients_futures_stay_small() {
        let login = ret_size4(super::handle_client);
        let session = ret_size5(super::session::run::<super::Ending>);
        eprintln!("login task: {login} bytes; session task: {session} bytes");
        assert!(login <= 128, "handle_client's future is {login} bytes");
        assert!(session <= 616, "a session's future is {session} bytes");
    }
}
