//! Startup: SSLRequest/GSSENCRequest, CancelRequest, protocol version, authentication,
//! then the greeting (ParameterStatus, BackendKeyData, ReadyForQuery).
//!
//! A user's secret comes from the config or the auth_file; one neither names is looked up
//! on the server with auth_query when auth_user is set (auth_query.rs), except on a trust
//! listener, which checks nothing. Whatever the source, a refusal is the same exchange
//! and the same 28P01 answer.
//!
//! Two phases. Until the client has authenticated it is *waiting* (admission.rs): it
//! counts against max_startup_clients, may be closed to make room for newer connections,
//! and must get there within client_login_timeout. Then it takes a max_client_conn slot
//! (admin console users have a small reserve beyond it), which it keeps until it leaves,
//! and is greeted; a never-used pool first opens a server connection for the server's
//! parameters, bounded by the pool's own timeouts.
//!
//! A session-mode client takes its server connection here, before it is greeted (it keeps
//! it for the whole session): it is told that server's parameters and that server's own
//! BackendKeyData, so `pg_backend_pid()`, `pg_stat_activity`, `pg_terminate_backend()` and
//! a notification's sender pid agree with its key, as on a direct connection. Clients of
//! the other modes get a key of pgtenant's own (cancel.rs).
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::admission::ADMIN_RESERVE;
use super::{CancelKey, FrontendError};
use crate::admin::ClientInfo;
use crate::auth::hba::{HbaDecision, HbaMethod};
use crate::auth::{self, ScramServer, Secret, ServerCredential};
use crate::backend::ServerConn;
use crate::config::{AuthType, ClientTls, Listener, PoolMode, Settings};
use crate::context::Context;
use crate::logging::Escaped;
use crate::metrics::counters::ClientState;
use crate::net::{Connection, Frame, Stream};
use crate::pool::{ParamList, Pool, PoolError};
use crate::protocol::{build, decode, sqlstate, StartupPacket};

/// Largest startup packet accepted (PostgreSQL uses 10000).
const MAX_STARTUP: usize = 10_000;

/// A logged-in client.
pub struct Client {
    pub conn: Connection,
    /// Shared with its pool's key (no copy per client).
    pub user: Arc<str>,
    pub database: Arc<str>,
    /// The settings its startup parameters ask for (replayed on every server it uses).
    pub startup: Arc<super::params::ParamMap>,
    pub key: CancelKey,
    /// Its home pool (`target::home`): the coordinator's, or its database entry's server.
    pub pool: Arc<Pool>,
    /// The cluster its statements are routed with (`citus::cluster`); None: not routed
    /// (its database is no routed entry's).
    pub cluster: Option<Arc<crate::citus::Cluster>>,
    /// A blue-green entry's blue side (None for every other entry).
    pub blue: Option<Arc<super::target::BlueHome>>,
    /// `Context::config_epoch` when its home was looked up.
    pub home_epoch: u64,
    /// What its login proved, for the pool it moves to when its entry changes (read only
    /// on a RELOAD that changes its entry). Shared with its pool when the same: a user's
    /// clients hold one copy ([`Pool::share_credential`]).
    pub credential: Option<Arc<ServerCredential>>,
    /// Its entry in the admin console's registry (SHOW CLIENTS), made at login and
    /// entered once it is logged in, with its state: active / waiting / idle (kept by the
    /// metrics guards) and its side of the console.
    pub entry: Arc<ClientInfo>,
}

/// A client without its connection: what a parked session keeps of it
/// (`session::park`), as the fields of [`Client`] other than `conn` and its names (which
/// its registry entry holds).
pub struct ClientParts {
    startup: Arc<super::params::ParamMap>,
    key: CancelKey,
    pool: Arc<Pool>,
    cluster: Option<Arc<crate::citus::Cluster>>,
    blue: Option<Arc<super::target::BlueHome>>,
    home_epoch: u64,
    credential: Option<Arc<ServerCredential>>,
    entry: Arc<ClientInfo>,
}

impl Client {
    pub fn into_parts(self) -> (Connection, ClientParts) {
        let Client {
            conn,
            user,
            database,
            startup,
            key,
            pool,
            cluster,
            blue,
            home_epoch,
            credential,
            entry,
        } = self;
        drop((user, database));
        let parts = ClientParts {
            startup,
            key,
            pool,
            cluster,
            blue,
            home_epoch,
            credential,
            entry,
        };
        (conn, parts)
    }

    /// The client again, with its names from its entry.
    pub fn from_parts(conn: Connection, p: ClientParts) -> Client {
        Client {
            conn,
            user: p.entry.user.clone(),
            database: p.entry.database.clone(),
            startup: p.startup,
            key: p.key,
            pool: p.pool,
            cluster: p.cluster,
            blue: p.blue,
            home_epoch: p.home_epoch,
            credential: p.credential,
            entry: p.entry,
        }
    }

    /// Its session state (in its registry entry).
    #[inline]
    pub fn state(&self) -> &ClientState {
        &self.entry.state
    }

    /// The same, for the metrics guards (`Active`, `Waiting`) to keep.
    pub fn state_ref(&self) -> crate::metrics::counters::StateRef {
        self.entry.clone()
    }
}

impl ClientParts {
    pub fn state(&self) -> &ClientState {
        &self.entry.state
    }

    pub fn entry(&self) -> &Arc<ClientInfo> {
        &self.entry
    }
}

/// Who logged in: a client of a database, or of the admin console (database
/// `pgtenant` / `pgbouncer`), which gets no pool and no server connection.
///
/// Either one holds a max_client_conn slot; the caller gives it back
/// (`Admission::client_left`) when the connection ends.
pub enum Login {
    /// With its startup parameters other than user and database (for the log and SHOW
    /// CLIENTS; the session keeps only the settings they ask for), and in session mode
    /// the server connection it was greeted for.
    Client(Client, Vec<(String, String)>, Option<SessionServer>),
    Admin {
        conn: Connection,
        user: String,
        database: String,
        params: Vec<(String, String)>,
        key: CancelKey,
    },
}

/// A session-mode client's server connection from its login to the start of its session
/// (which takes it with [`SessionServer::take`]). Given back to the pool if the client
/// never gets that far (a failed greeting, shutdown): a lent connection must never be
/// simply dropped, or its pool would count it forever.
pub struct SessionServer {
    server: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
}

impl SessionServer {
    pub fn take(mut self) -> Box<ServerConn> {
        self.server.take().expect("taken once")
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            // Nothing was sent on it: clean unless the server said something meanwhile
            // (the pool looks).
            self.pool.release(s, true);
        }
    }
}

/// A client that has proven who it is, not yet greeted.
struct Authenticated {
    conn: Connection,
    user: String,
    database: String,
    /// Startup parameters other than user and database.
    rest: Vec<(String, String)>,
    /// What to log in to the server with (None: no usable credential).
    credential: Option<ServerCredential>,
}

/// Run the startup phase. `Ok(None)`: the connection was a cancel request, was refused,
/// timed out, was closed to make room, or left; nothing more to do.
pub async fn login(
    socket: Stream,
    listener: &Listener,
    ctx: &Arc<Context>,
) -> Result<Option<Login>, FrontendError> {
    let settings = ctx.settings();
    let peer = super::admission::peer_of(socket.peer_addr());
    let waiting = ctx
        .admission
        .start_login(settings.max_startup_clients, peer);
    let timeout = settings.client_login_timeout;
    drop(settings);
    let authenticated = tokio::select! {
        r = tokio::time::timeout(timeout, authenticate_client(socket, listener, ctx)) => match r {
            Ok(r) => r?,
            Err(_) => {
                ctx.admission.login_timed_out(timeout);
                return Ok(None);
            }
        },
        _ = waiting.pushed_out() => return Ok(None),
        _ = ctx.shutdown.cancelled() => return Ok(None),
    };
    drop(waiting);
    let Some(a) = authenticated else {
        return Ok(None);
    };
    tokio::select! {
        r = greet(a, ctx) => r,
        _ = ctx.shutdown.cancelled() => Ok(None),
    }
}

/// From the first byte to a proven identity: TLS, the startup packet, authentication.
async fn authenticate_client(
    socket: Stream,
    listener: &Listener,
    ctx: &Arc<Context>,
) -> Result<Option<Authenticated>, FrontendError> {
    // A unix-socket client: no TLS there (PostgreSQL answers 'N' too), and the `local`
    // lines of an hba file.
    let local = socket.is_unix();
    let mut conn = Connection::new(socket, MAX_STARTUP);
    let mut tls_done = false;
    let (minor, params) = loop {
        let Some(pkt) = conn.read_startup(MAX_STARTUP).await? else {
            return Ok(None);
        };
        let pkt = match StartupPacket::parse(&pkt) {
            Ok(p) => p,
            Err(e) => {
                conn.send(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()))
                    .await?;
                return Ok(None);
            }
        };
        match pkt {
            StartupPacket::SslRequest if !tls_done => {
                let tls = ctx.client_tls.load_full();
                match (listener.client_tls, tls.as_ref()) {
                    (ClientTls::Allow | ClientTls::Require, Some(cfg)) if !local => {
                        conn.queue_bytes(b"S");
                        conn.flush().await?;
                        let Some(tcp) = conn.into_stream().ok().and_then(Stream::into_tcp) else {
                            // Bytes after SSLRequest before the handshake: refuse them
                            // (they would bypass TLS).
                            return Ok(None);
                        };
                        let tls = tokio_rustls::TlsAcceptor::from(cfg.clone())
                            .accept(tcp)
                            .await?;
                        conn = Connection::new(Stream::TlsServer(Box::new(tls)), MAX_STARTUP);
                        tls_done = true;
                    }
                    _ => {
                        conn.queue_bytes(b"N");
                        conn.flush().await?;
                    }
                }
            }
            StartupPacket::GssEncRequest if !tls_done => {
                conn.queue_bytes(b"N");
                conn.flush().await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                conn.send(&build::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "encryption requested twice",
                ))
                .await?;
                return Ok(None);
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup { minor, params, .. } => break (minor, params),
        }
    };

    if listener.client_tls == ClientTls::Require && !tls_done && !local {
        conn.send(&build::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "TLS is required for this connection (use sslmode=require)",
        ))
        .await?;
        return Ok(None);
    }

    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    let mut unrecognized = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            _ if k.starts_with("_pq_.") => unrecognized.push(k),
            _ => rest.push((k, v)),
        }
    }
    if minor > 0 || !unrecognized.is_empty() {
        conn.queue(&build::negotiate_protocol_version(0, &unrecognized));
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        conn.send(&build::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ))
        .await?;
        return Ok(None);
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());

    if ctx.shutdown.is_cancelled() {
        conn.send(&build::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            "pgtenant is shutting down",
        ))
        .await?;
        return Ok(None);
    }
    let mut listener_method = listener.auth_type;
    let mut cleartext = false;
    if listener_method == AuthType::Hba {
        // The file decides, per connection (auth::hba): the first matching line.
        let addr = conn.stream().peer_addr().map(|a| a.ip());
        let hba = ctx.hba.load_full();
        let decision = match hba.as_ref() {
            Some(h) => h.decide(local, addr, tls_done, &database, &user),
            None => HbaDecision::NoEntry,
        };
        listener_method = match decision {
            HbaDecision::Method(HbaMethod::Trust) => AuthType::Trust,
            HbaDecision::Method(HbaMethod::Md5) => AuthType::Md5,
            HbaDecision::Method(HbaMethod::ScramSha256) => AuthType::ScramSha256,
            HbaDecision::Method(HbaMethod::Password) => {
                cleartext = true;
                AuthType::ScramSha256
            }
            HbaDecision::Method(HbaMethod::Reject) | HbaDecision::NoEntry => {
                let msg = crate::auth::hba::refusal(decision, addr, tls_done, &database, &user);
                tracing::warn!(user = %Escaped(&user), database = %Escaped(&database), reason = %Escaped(&msg), "client refused by auth_hba_file");
                conn.send(&build::fatal(sqlstate::INVALID_AUTHORIZATION, &msg))
                    .await?;
                return Ok(None);
            }
        };
    }
    let users = ctx.users.load_full();
    let secret = match users.get(&user) {
        Some(s) => Some(s.clone()),
        // Neither the config nor the auth_file names it: the server may (auth_query).
        None if listener_method != AuthType::Trust => {
            match while_connected(&mut conn, looked_up(ctx, &user, &database)).await {
                Some(secret) => secret,
                // The client left before it was asked for a password: its lookup goes too
                // (a lookup no login waits for gives up its turn, see `auth_query`).
                None => return Ok(None),
            }
        }
        None => None,
    };
    drop(users);
    let method = effective_method(listener_method, secret.as_ref());
    let outcome = if cleartext {
        authenticate_cleartext(&mut conn, &user, secret.as_ref()).await?
    } else {
        authenticate(&mut conn, method, &user, secret.as_ref(), ctx).await?
    };
    let credential = match outcome {
        Some(c) => c,
        None => {
            tracing::warn!(user = %Escaped(&user), method = method.as_str(), "client authentication failed");
            conn.send(&build::fatal(
                sqlstate::INVALID_PASSWORD,
                &format!("password authentication failed for user \"{user}\""),
            ))
            .await?;
            return Ok(None);
        }
    };
    Ok(Some(Authenticated {
        conn,
        user,
        database,
        rest,
        credential,
    }))
}

/// The secret of a user pgtenant does not know, read from the server with auth_query as
/// auth_user, in auth_dbname or else the client's database (the upstream's for the admin
/// console, which is no server's). None without auth_user, for a role that may not log
/// in, or when the lookup failed (auth_query.rs logs why).
/// Run `f` while the client, which is waiting for pgtenant's next message and sends
/// nothing meanwhile, stays connected: None when it closes the connection first. Bytes it
/// sends anyway stay buffered for the login to read.
async fn while_connected<T>(
    conn: &mut Connection,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(f);
    let mut watching = true;
    loop {
        tokio::select! {
            out = &mut f => return Some(out),
            read = conn.fill(), if watching => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => watching = false,
            },
        }
    }
}

async fn looked_up(ctx: &Context, user: &str, database: &str) -> Option<Secret> {
    let s = ctx.settings();
    let auth_user = s.auth_user_for(database)?;
    let credential = ctx
        .users
        .load()
        .get(auth_user)
        .and_then(|x| ServerCredential::from_secret(x, auth_user, None));
    // Where the query runs: auth_dbname's place (with [databases], as in PgBouncer, the
    // entry of that name; else a database of the upstream), else the client's database
    // entry's (the upstream's for the admin console, which is no server's, and for a name
    // that has no entry: that login fails after this anyway).
    let asked = match s.auth_dbname.as_deref() {
        Some(d) => Some(d),
        None => (!crate::admin::is_admin_database(database)).then_some(database),
    };
    let target = asked.and_then(|d| s.target(d));
    let (node, database) = match &target {
        Some(t) => (
            super::target::node_for(ctx, &t.host, t.port),
            t.dbname.as_str(),
        ),
        None => (
            (**ctx.coordinator.load()).clone(),
            s.auth_dbname
                .as_deref()
                .unwrap_or(s.upstream.database.as_str()),
        ),
    };
    let lookup = super::auth_query::Lookup {
        params: ctx
            .pools
            .own_connect_params(&node, database, auth_user, credential, "auth_query"),
        sql: s.auth_query.clone(),
        cache_ttl: s.auth_query_cache_ttl,
        timeout: lookup_timeout(&s),
        idle_timeout: s.server_idle_timeout,
    };
    ctx.auth_query.lookup(user, lookup).await
}

/// How long an auth_query lookup may take: half of client_login_timeout, so that the
/// client hears the wrong-password answer instead of a closed socket, and no more than
/// server_connect_timeout.
fn lookup_timeout(s: &Settings) -> Duration {
    let half = s.client_login_timeout / 2;
    if s.server_connect_timeout.is_zero() {
        half
    } else {
        half.min(s.server_connect_timeout)
    }
}

/// An authenticated client: take its max_client_conn slot, then greet it (the admin
/// console, or a pool's client with the server's parameters).
async fn greet(a: Authenticated, ctx: &Arc<Context>) -> Result<Option<Login>, FrontendError> {
    let Authenticated {
        mut conn,
        user,
        database,
        rest,
        credential,
    } = a;
    let settings = ctx.settings();
    let admin = crate::admin::is_admin_database(&database);
    if admin && crate::admin::access(ctx, &user).is_none() {
        tracing::warn!(user = %Escaped(&user), "admin console refused: not in admin_users or stats_users");
        conn.send(&build::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            &format!(
                "user \"{user}\" is not allowed in the admin console (admin_users, stats_users)"
            ),
        ))
        .await?;
        return Ok(None);
    }
    let limit = match admin {
        true => settings.max_client_conn.saturating_add(ADMIN_RESERVE),
        false => settings.max_client_conn,
    };
    let Some(slot) = ctx.admission.take_slot(limit) else {
        tracing::warn!(user = %Escaped(&user), max_client_conn = settings.max_client_conn, "client refused: max_client_conn reached");
        conn.send(&build::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        ))
        .await?;
        return Ok(None);
    };
    conn.set_max_message(settings.max_message_size as usize);

    if admin {
        let key = ctx.cancels.register();
        let app = rest
            .iter()
            .find(|(k, _)| k == "application_name")
            .map_or("", |(_, v)| v.as_str());
        crate::admin::greet(&mut conn, key.pid, key.secret, app);
        conn.flush().await?;
        slot.keep();
        return Ok(Some(Login::Admin {
            conn,
            user,
            database,
            params: rest,
            key,
        }));
    }

    if let Some((_, enc)) = rest
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("client_encoding"))
        .filter(|(_, v)| crate::protocol::encodings::canonical(v).is_none())
    {
        // As PostgreSQL refuses it (a server would, once pgtenant replayed it).
        conn.send(&build::fatal(
            sqlstate::INVALID_PARAMETER_VALUE,
            &format!("invalid value for parameter \"client_encoding\": \"{enc}\""),
        ))
        .await?;
        return Ok(None);
    }
    // Read before the lookup: a RELOAD after it makes the session look again.
    let epoch = ctx.config_epoch.load(std::sync::atomic::Ordering::Acquire);
    let Some(home) = super::target::home(ctx, &settings, &database, &user, credential.clone())
    else {
        // After authentication, as PgBouncer: a stranger learns nothing of which exist.
        tracing::warn!(user = %Escaped(&user), database = %Escaped(&database), "client refused: no such database ([databases] has no entry for it and no *)");
        conn.send(&super::target::no_such_database(&database))
            .await?;
        return Ok(None);
    };
    let mut pool = home.pool;
    let mut cluster = home.cluster;
    let mut blue = home.blue;

    let mut startup = super::params::from_startup(&rest);
    // Checked and spelled as a direct connection would (`startup_check`); not while the
    // database is paused (PAUSE waits for every server connection to come back) nor
    // while pgtenant is suspended (no server socket is read until RESUME).
    let mut notices = Vec::new();
    if !ctx.admin.pause.is_paused(&pool.key.database) && !ctx.admin.suspend.is_on() {
        match ctx.startup_checks.check(&pool, &mut startup).await {
            Ok(n) => notices = n,
            Err(e) => {
                let f = match e {
                    super::startup_check::Refused::Setting(e) => {
                        tracing::info!(user = %Escaped(&user), code = %e.code, message = %Escaped(&e.message), "client refused: a startup setting the server refuses");
                        build::fatal(&e.code, &e.message)
                    }
                    super::startup_check::Refused::Pool(e) => pool_error_frame(&e),
                };
                conn.send(&f).await?;
                return Ok(None);
            }
        }
    }
    // Session mode: the client's own server connection, taken now.
    let own = match settings.pool_mode_of(&pool.key.database, &pool.key.user) {
        PoolMode::Session => match session_server(&pool, ctx).await {
            // PgBouncer's switchover (PAUSE, RELOAD, RESUME) moved the entry while this
            // login waited: take the server at its new place.
            Ok(s) if pool.is_stale() => {
                drop(s);
                let s2 = ctx.settings();
                let Some(h) = super::target::home(ctx, &s2, &database, &user, credential.clone())
                else {
                    conn.send(&super::target::no_such_database(&database))
                        .await?;
                    return Ok(None);
                };
                pool = h.pool;
                cluster = h.cluster;
                blue = h.blue;
                match session_server(&pool, ctx).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        conn.send(&pool_error_frame(&e)).await?;
                        return Ok(None);
                    }
                }
            }
            Ok(s) => Some(s),
            Err(e) => {
                conn.send(&pool_error_frame(&e)).await?;
                return Ok(None);
            }
        },
        _ => None,
    };
    // The client must see the real server's parameters: its own server's, or else the
    // pool's first connection's, opening one if this pool has never connected.
    let server_params = match (
        own.as_ref().and_then(|o| o.server.as_deref()),
        pool.server_params(),
    ) {
        (Some(s), defaults) => greeting_params(s, defaults.as_ref(), &startup),
        (None, Some(p)) => p,
        (None, None) => match pool.acquire(None).await {
            Ok(c) => {
                pool.release(c, true);
                pool.server_params().unwrap_or_default()
            }
            Err(e) => {
                let f = pool_error_frame(&e);
                conn.send(&f).await?;
                return Ok(None);
            }
        },
    };

    let cancel_key = match own.as_ref().and_then(|o| o.server.as_deref()) {
        Some(s) => ctx
            .cancels
            .register_as(s.cancel.pid)
            .unwrap_or_else(|| {
                tracing::debug!(
                    server_pid = s.cancel.pid,
                    "another client holds this backend pid (upstream servers share pid numbers): the client gets a key of pgtenant's own"
                );
                ctx.cancels.register()
            }),
        None => ctx.cancels.register(),
    };
    conn.queue(&build::auth_ok());
    // What the server said of the startup settings (an application_name cut to 63
    // bytes), where a direct connection shows it: after AuthenticationOk.
    for n in &notices {
        conn.queue(n);
    }
    // The server's values, except where this client's startup packet set a reported
    // setting: it must see what a direct connection would report.
    for (k, v) in server_params.iter() {
        match startup.get(&k.to_ascii_lowercase()) {
            Some(mine) => conn.queue(&build::parameter_status(
                k,
                &super::params::reported_value(k, mine),
            )),
            None => conn.queue(&build::parameter_status(k, v)),
        }
    }
    conn.queue(&build::backend_key_data(cancel_key.pid, cancel_key.secret));
    conn.queue(&build::ready_for_query(b'I'));
    conn.flush().await?;
    drop(database);
    slot.keep();
    // Shared with the pool's key unless the entry forces another role.
    let user: Arc<str> = if *pool.key.user == *user {
        pool.key.user.clone()
    } else {
        user.as_str().into()
    };
    let entry = Arc::new(super::client_entry(
        ctx,
        &conn,
        user.clone(),
        pool.key.database.clone(),
        &rest,
        None,
    ));
    Ok(Some(Login::Client(
        Client {
            conn,
            user,
            database: pool.key.database.clone(),
            cluster,
            blue,
            home_epoch: epoch,
            credential: credential.map(|c| pool.share_credential(c)),
            startup: ctx.startup_params.share(startup),
            key: cancel_key,
            pool,
            entry,
        },
        rest,
        own,
    )))
}

/// A session-mode client's server connection, taken from its pool at login (after any
/// PAUSE of its database, like a transaction's).
async fn session_server(pool: &Arc<Pool>, ctx: &Context) -> Result<SessionServer, PoolError> {
    ctx.admin.pause.wait(&pool.key.database).await;
    let _waiting = crate::metrics::counters::Waiting::enter_for(None);
    match Box::pin(pool.acquire(None)).await {
        Ok(s) => Ok(SessionServer {
            server: Some(s),
            pool: pool.clone(),
        }),
        Err(e) => {
            tracing::warn!(pool = %pool.name(), error = %e, "no server connection for a session-mode client's login");
            Err(e)
        }
    }
}

/// The parameters a session-mode client is told: what its own server reports now, except
/// where the session will change them before the client's first statement
/// (`Session::install`): a setting pgtenant applied there for an earlier client and this one
/// does not ask for is reset (to `defaults`, what the pool's first connection reported),
/// as is everything but the identities after an earlier client's unknown changes
/// (`RESET ALL`). The startup settings themselves are overlaid by the caller.
fn greeting_params(
    server: &ServerConn,
    defaults: Option<&ParamList>,
    startup: &super::params::ParamMap,
) -> ParamList {
    let reset = |lower: &str| {
        let identity = matches!(lower, "session_authorization" | "is_superuser");
        let applied = |k: &str| server.applied.contains_key(k) && !startup.contains_key(k);
        (server.dirty_by != 0 && !identity)
            || applied(lower)
            // is_superuser follows the session authorization.
            || (lower == "is_superuser" && applied("session_authorization"))
    };
    let default = |k: &str| {
        defaults
            .and_then(|d| d.iter().find(|(n, _)| n == k))
            .map(|(_, v)| v.clone())
    };
    let params = server
        .params
        .iter()
        .map(|(k, v)| {
            let v = match reset(&k.to_ascii_lowercase()) {
                true => default(k).unwrap_or_else(|| v.clone()),
                false => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    Arc::new(params)
}

/// The ErrorResponse a client gets when no server connection could be had.
pub fn pool_error_frame(e: &PoolError) -> Frame {
    match e {
        PoolError::WaitTimeout | PoolError::TenantWaitTimeout(_) => {
            build::fatal(sqlstate::CONNECTION_FAILURE, "query_wait_timeout")
        }
        PoolError::ShuttingDown => {
            build::fatal(sqlstate::ADMIN_SHUTDOWN, "pgtenant is shutting down")
        }
        PoolError::TenantRate(m) => build::fatal(sqlstate::CONFIGURATION_LIMIT_EXCEEDED, m),
        PoolError::Connect(crate::backend::BackendError::Server(f)) => {
            build::fatal(&f.code, &f.message)
        }
        PoolError::Connect(e) => build::fatal(
            sqlstate::CONNECTION_FAILURE,
            &format!("pgtenant could not connect to the server: {e}"),
        ),
    }
}

/// The method a client logs in with. As in PgBouncer, an md5 listener uses SCRAM for a
/// user whose stored secret is a SCRAM verifier: md5 cannot be checked against one, and
/// SCRAM is what gives pgtenant the ClientKey it needs to log in to the server.
fn effective_method(listener: AuthType, secret: Option<&Secret>) -> AuthType {
    match (listener, secret) {
        (AuthType::Md5, Some(Secret::Scram(_))) => AuthType::ScramSha256,
        (method, _) => method,
    }
}

/// Run the listener's auth method. Returns the credential to use towards the server
/// (`Some(None)`: authenticated, no usable server credential), or `None` on failure.
async fn authenticate(
    conn: &mut Connection,
    method: AuthType,
    user: &str,
    secret: Option<&Secret>,
    ctx: &Context,
) -> Result<Option<Option<ServerCredential>>, FrontendError> {
    match method {
        // Resolved to a method by the caller (auth_hba_file).
        AuthType::Hba => Ok(None),
        AuthType::Trust => {
            Ok(Some(secret.and_then(|s| {
                ServerCredential::from_secret(s, user, None)
            })))
        }
        AuthType::Md5 => {
            let salt: [u8; 4] = rand::thread_rng().gen();
            conn.send(&build::auth_md5(salt)).await?;
            let Some(f) = read_password(conn).await? else {
                return Ok(None);
            };
            let resp = decode::password_message(f.body())?;
            let resp = String::from_utf8_lossy(resp);
            match secret {
                Some(s) if auth::md5_verify(s, user, salt, &resp).is_ok() => {
                    Ok(Some(ServerCredential::from_secret(s, user, None)))
                }
                _ => Ok(None),
            }
        }
        AuthType::ScramSha256 => {
            // An unknown user (or one with an md5-only secret) goes through the same
            // exchange with a mock secret (a salt stable per name, 4096 iterations) and
            // fails at the end with the same error, so neither the exchange nor the
            // answer tells which users exist.
            let known = matches!(secret, Some(Secret::Plain(_) | Secret::Scram(_)));
            // A plain password's SCRAM secret is derived once (4096 PBKDF2 rounds), not
            // at every login.
            let derived = match secret {
                Some(Secret::Plain(pw)) => Some(Secret::Scram(ctx.scram_secret_for(user, pw))),
                _ => None,
            };
            let mut server = match derived.as_ref().or(secret) {
                Some(s) if known => match ScramServer::new(s, user) {
                    Ok(s) => s,
                    Err(_) => ScramServer::mock(user),
                },
                _ => ScramServer::mock(user),
            };
            conn.send(&build::auth_sasl(&["SCRAM-SHA-256"])).await?;
            let Some(f) = read_password(conn).await? else {
                return Ok(None);
            };
            let (mech, data) = decode::sasl_initial_response(f.body())?;
            if mech != "SCRAM-SHA-256" {
                return Ok(None);
            }
            let Ok(first) = server.handle_client_first(data) else {
                return Ok(None);
            };
            conn.send(&build::auth_sasl_continue(&first)).await?;
            let Some(f) = read_password(conn).await? else {
                return Ok(None);
            };
            match server.handle_client_final(f.body()) {
                Ok(fin) if known => {
                    conn.queue(&build::auth_sasl_final(&fin));
                    let cred = secret
                        .and_then(|s| ServerCredential::from_secret(s, user, server.client_key()));
                    Ok(Some(cred))
                }
                _ => Ok(None),
            }
        }
    }
}

/// `password` (hba): the client sends its password in clear (over TLS, one hopes); it is
/// checked against the stored secret of any kind, and then is the server credential.
async fn authenticate_cleartext(
    conn: &mut Connection,
    user: &str,
    secret: Option<&Secret>,
) -> Result<Option<Option<ServerCredential>>, FrontendError> {
    conn.send(&build::auth_cleartext()).await?;
    let Some(f) = read_password(conn).await? else {
        return Ok(None);
    };
    let given = decode::password_message(f.body())?;
    let given = String::from_utf8_lossy(given).into_owned();
    let Some(s) = secret else {
        return Ok(None);
    };
    let ok = match s {
        Secret::Scram(_) => salted_off_thread(s.clone(), user.to_owned(), given.clone()).await,
        _ => s.verify_cleartext(user, &given),
    };
    Ok(ok.then(|| ServerCredential::from_secret(&Secret::Plain(given), user, None)))
}

/// [`Secret::verify_cleartext`] for a SCRAM verifier: salting the password takes the
/// verifier's iterations of PBKDF2 (4096 by default: milliseconds of CPU, more with a
/// higher `scram_iterations`). It runs on a blocking thread, as many at once as there
/// are cores, so that a peer trying passwords in a loop stalls no runtime thread (under
/// io_uring each runs its clients' sessions) and takes at most the cores' share of CPU.
async fn salted_off_thread(s: Secret, user: String, given: String) -> bool {
    static SALTING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SALTING.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    let Ok(_slot) = slots.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || s.verify_cleartext(&user, &given))
        .await
        .unwrap_or(false)
}

/// Read the client's next auth message ('p'); anything else ends the login.
async fn read_password(conn: &mut Connection) -> Result<Option<Frame>, FrontendError> {
    match conn.read_frame().await? {
        Some(f) if f.tag() == b'p' => Ok(Some(f)),
        _ => Ok(None),
    }
}
