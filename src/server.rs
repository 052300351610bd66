//! The accept loop, signals and lifecycle (mini-redis' server.rs): bind the listeners,
//! spawn one task per client, reload on SIGHUP, drain on SIGTERM/SIGINT.
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Secret, UserStore};
use crate::config::{self, Overrides, Settings};
use crate::context::Context;
use crate::frontend::{self, CancelRegistry, ListenHub, StatementRegistry};
use crate::pool::{self, Node, Pools};
use crate::router::Router;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP listener (on by default, at a fixed port): the message says which
    /// listener it is and how to move it or turn it off, since a second pgtenant on the
    /// same host meets it first.
    #[error(
        "cannot listen on {addr} for /metrics, /healthz and /readyz (the HTTP listener): \
         {source}; choose another address with --http-listen (PGTENANT_HTTP_LISTEN, or \
         http_listen in the config file), or \"\" to turn it off"
    )]
    HttpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("auth_file: {0}")]
    AuthFile(#[from] auth::AuthError),
    #[error("auth_hba_file: {0}")]
    Hba(String),
    #[error("cannot listen on unix socket {path}: {message} (unix_socket_dir; \"\" turns it off)")]
    BindUnix { path: String, message: String },
    #[error("auth_user: {0}")]
    AuthUser(String),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Build the runtime and serve until shut down. The exit code says how it ended.
pub fn run(settings: Settings, overrides: Overrides) -> ExitCode {
    let engine = match crate::net::uring::choose(settings.io_engine) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot start: set io_engine = auto or epoll");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        io_engine = engine.name(),
        threads = crate::runtime::threads(settings.workers),
        reason = %engine.reason,
        "I/O engine"
    );
    let workers = settings.workers;
    match crate::runtime::run(&engine, workers, move || serve(settings, overrides)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "pgtenant stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::FAILURE
        }
    }
}

/// Users pgtenant accepts: the auth file first, then the TOML users (which include the
/// upstream URL's user); later entries win.
pub fn build_users(s: &Settings) -> Result<UserStore, ServerError> {
    let mut users = UserStore::new();
    if let Some(path) = &s.auth_file {
        for (u, secret) in auth::load_auth_file(path)? {
            users.insert(u, secret);
        }
    }
    for (name, u) in &s.users {
        if let Some(pw) = &u.password {
            users.insert(name.clone(), Secret::parse(pw));
        }
    }
    // auth_query runs as auth_user: pgtenant must be able to log in as it.
    if let Some(a) = &s.auth_user {
        let why = match users.get(a) {
            Some(Secret::Plain(_) | Secret::Md5(_)) => None,
            Some(Secret::Scram(_)) => {
                Some("has only a SCRAM-SHA-256 secret, with which pgtenant cannot log in")
            }
            None => Some("has no password"),
        };
        if let Some(why) = why {
            return Err(ServerError::AuthUser(format!(
                "'{a}' {why}: give it its password (plain, or md5 if the server asks it for md5) in [users.{a}] or the auth_file"
            )));
        }
    }
    Ok(users)
}

/// The rules of `auth_type = hba`, read whole (a file with an error is never used).
pub fn build_hba(s: &Settings) -> Result<Option<Arc<auth::hba::Hba>>, ServerError> {
    let used = s
        .listeners
        .iter()
        .any(|l| l.auth_type == crate::config::AuthType::Hba);
    match (&s.auth_hba_file, used) {
        (Some(p), true) => Ok(Some(Arc::new(
            auth::hba::Hba::load(p).map_err(ServerError::Hba)?,
        ))),
        _ => Ok(None),
    }
}

fn client_tls(s: &Settings) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    match (&s.client_tls_cert_file, &s.client_tls_key_file) {
        (Some(c), Some(k)) => Ok(Some(crate::net::tls::server_config(c, k)?)),
        _ => Ok(None),
    }
}

fn coordinator(s: &Settings) -> Node {
    Node {
        name: "coordinator".into(),
        host: s.upstream.host.as_str().into(),
        port: s.upstream.port,
    }
}

/// Everything the sessions share, from loaded settings and what `serve` read for them
/// (users, HBA rules, TLS both ways). No socket is bound and no task spawned: `serve`
/// adds listeners and background tasks; the session fuzz target drives sessions on it
/// directly.
pub fn build_context(
    settings: &Settings,
    overrides: &Overrides,
) -> Result<Arc<Context>, ServerError> {
    let users = build_users(settings)?;
    let hba = build_hba(settings)?;
    let ctls = client_tls(settings)?;
    let stls = crate::net::tls::client_config(
        settings.server_tls,
        settings.server_tls_ca_file.as_deref(),
    )?;
    crate::net::budget::set_limit(settings.max_buffered_message_bytes as usize);
    let shared_settings = Arc::new(ArcSwap::from_pointee(settings.clone()));
    let shard_map: Arc<crate::citus::ShardMapHandle> = Arc::default();
    let primary_cluster = Arc::new(crate::citus::Cluster::primary(settings, shard_map.clone()));
    Ok(Arc::new(Context {
        settings: shared_settings.clone(),
        users: ArcSwap::from_pointee(users),
        pools: Pools::new(shared_settings, stls),
        cancels: Arc::new(CancelRegistry::default()),
        statements: StatementRegistry::default(),
        setting_names: Default::default(),
        listens: ListenHub::default(),
        client_tls: ArcSwap::from_pointee(ctls),
        hba: ArcSwap::from_pointee(hba),
        router: Router::with_capacity(settings.plan_cache_size),
        shard_map,
        primary_cluster: primary_cluster.clone(),
        clusters: Default::default(),
        config_epoch: Default::default(),
        routes: Default::default(),
        node_health: Default::default(),
        read_spread: Default::default(),
        coordinator: ArcSwap::from_pointee(coordinator(settings)),
        clients: AtomicU32::new(0),
        admission: Default::default(),
        auth_query: Default::default(),
        scram_cache: Default::default(),
        shutdown: CancellationToken::new(),
        admin: crate::admin::AdminState::new(overrides.clone()),
        health: Default::default(),
        tenants: Default::default(),
        activity: Default::default(),
        startup_params: Default::default(),
        startup_checks: Default::default(),
        tenant_limits: Default::default(),
        bluegreen: Default::default(),
    }))
}

async fn serve(settings: Settings, overrides: Overrides) -> Result<(), ServerError> {
    let ctx = build_context(&settings, &overrides)?;
    let mut listeners = Vec::new();
    for l in &settings.listeners {
        let sock = TcpListener::bind(l.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: l.addr,
                source,
            })?;
        tracing::info!(listen = %l.addr, auth = l.auth_type.as_str(), "listening");
        listeners.push((Acceptor::Tcp(sock), l.clone()));
    }
    let mut unix_socket = None;
    if let Some(dir) = &settings.unix_socket_dir {
        // As PostgreSQL and PgBouncer name it, for the port of the primary listener:
        // libpq clients find it with host=<dir> port=<port>.
        let primary = settings.listeners[0].clone();
        let path = dir.join(format!(".s.PGSQL.{}", primary.addr.port()));
        let sock = bind_unix(&path, settings.unix_socket_mode)?;
        tracing::info!(listen = %path.display(), auth = primary.auth_type.as_str(), "listening");
        listeners.push((Acceptor::Unix(sock), primary));
        unix_socket = Some(path);
    }
    let http = match settings.http_listen {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .map_err(|source| ServerError::HttpBind { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(upstream = %settings.upstream.redacted(), pool_mode = settings.pool_mode.as_str(), pool_size = settings.pool_size, "pgtenant started");

    let primary_cluster = ctx.primary_cluster.clone();

    let stop_accepting = CancellationToken::new();
    let tracker = TaskTracker::new();
    let janitor_stop = CancellationToken::new();
    let janitor = pool::spawn_janitor(ctx.pools.clone(), janitor_stop.clone());
    let refresher =
        crate::citus::spawn_refresher(ctx.clone(), primary_cluster, janitor_stop.clone());
    crate::citus::cluster::sync(&ctx);
    crate::bluegreen::sync(&ctx);
    // Run-time tenant limits (SET TENANT), shared through the upstream's database.
    let limits_sync = crate::limits::sync::spawn(ctx.clone(), janitor_stop.clone());
    let stats = crate::admin::spawn_stats(ctx.clone(), janitor_stop.clone());
    let trimmer = crate::memory::spawn_trimmer(ctx.clone(), janitor_stop.clone());
    // Idle clients park: their tasks end, their sockets wait in the parking lot.
    let park_sweeper = frontend::spawn_park_sweeper(ctx.clone(), janitor_stop.clone());
    // /metrics, /healthz, /readyz keep answering while clients drain (/readyz says so).
    let metrics = crate::metrics::start(http, ctx.clone(), janitor_stop.clone());
    for (sock, l) in listeners {
        let ctx = ctx.clone();
        let stop = stop_accepting.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(accept_loop(sock, l, ctx, stop, tracker2));
    }

    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Runtime)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&ctx, &overrides),
            // SHUTDOWN from the admin console.
            _ = ctx.shutdown.cancelled() => break,
        }
    }

    // Drain: stop accepting, tell sessions (idle ones leave now, busy ones after their
    // transaction), wait up to shutdown_timeout; a second signal ends it at once.
    let timeout = ctx.settings().shutdown_timeout;
    tracing::info!(
        clients = ctx.clients.load(Ordering::Relaxed),
        timeout_s = timeout.as_secs_f64(),
        "shutting down"
    );
    stop_accepting.cancel();
    crate::frontend::shut_down_sessions(&ctx);
    // A SUSPEND would keep the draining sessions parked until shutdown_timeout.
    crate::admin::lift_suspend_at_shutdown(&ctx);
    tracker.close();
    let limit = if timeout.is_zero() {
        Duration::from_secs(u64::MAX / 4)
    } else {
        timeout
    };
    tokio::select! {
        _ = tracker.wait() => tracing::info!("all clients gone"),
        _ = tokio::time::sleep(limit) => tracing::warn!(clients = ctx.clients.load(Ordering::Relaxed), "shutdown_timeout reached; closing remaining clients"),
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    janitor_stop.cancel();
    let _ = janitor.await;
    let _ = refresher.await;
    let _ = limits_sync.await;
    let _ = stats.await;
    let _ = trimmer.await;
    let _ = park_sweeper.await;
    for t in metrics {
        let _ = t.await;
    }
    ctx.pools.close_idle();
    if let Some(path) = unix_socket {
        let _ = std::fs::remove_file(path);
    }
    ctx.auth_query.close_all();
    tracing::info!("pgtenant stopped");
    Ok(())
}

/// A listening socket: TCP, or the unix socket in `unix_socket_dir`.
enum Acceptor {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Acceptor {
    async fn accept(&self) -> std::io::Result<crate::net::Stream> {
        match self {
            Acceptor::Tcp(l) => {
                let (tcp, _) = l.accept().await?;
                tcp.set_nodelay(true)?;
                crate::net::Stream::plain(tcp)
            }
            Acceptor::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| crate::net::Stream::Unix(Box::new(s))),
        }
    }
}

/// Bind the unix socket: a socket file left by a process that died is replaced; one
/// that answers belongs to a running server and is not taken.
fn bind_unix(path: &std::path::Path, mode: u32) -> Result<tokio::net::UnixListener, ServerError> {
    let err = |message: String| ServerError::BindUnix {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another server is listening on it".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(format!("cannot set its mode: {e}")))?;
    Ok(l)
}

async fn accept_loop(
    sock: Acceptor,
    listener: crate::config::Listener,
    ctx: Arc<Context>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let _running = ctx.health.accept_loop_running();
    loop {
        let accepted = tokio::select! {
            r = sock.accept() => r,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok(socket) => {
                let keepalive = ctx.settings.load().tcp_keepalive;
                if let (false, Some(tcp)) = (keepalive.is_zero(), socket.tcp()) {
                    let _ = crate::backend::socket_keepalive(&tcp, keepalive);
                }
                crate::runtime::spawn_client(tracker.track_future(frontend::handle_client(
                    socket,
                    listener.clone(),
                    ctx.clone(),
                    tracker.clone(),
                )));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// SIGHUP: re-read the configuration. Clients stay; new limits apply from now on.
pub fn reload(ctx: &Arc<Context>, overrides: &Overrides) {
    let current = ctx.settings();
    let new = match config::reload(&current, overrides) {
        Ok(s) => s,
        Err(e) => {
            for line in &e.errors {
                tracing::error!(error = %line, "reload failed; keeping the running configuration");
            }
            return;
        }
    };
    let users = match build_users(&new) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    let ctls = match client_tls(&new) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    let hba = match build_hba(&new) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    match crate::net::tls::client_config(new.server_tls, new.server_tls_ca_file.as_deref()) {
        Ok(t) => ctx.pools.set_tls(t),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    }
    if new.listeners != current.listeners
        || new.unix_socket_dir != current.unix_socket_dir
        || new.unix_socket_mode != current.unix_socket_mode
    {
        tracing::warn!("listen addresses changed: takes effect after a restart");
    }
    if new.upstream != current.upstream {
        ctx.coordinator.store(Arc::new(coordinator(&new)));
    }
    ctx.users.store(Arc::new(users));
    // auth_user, its password or the server may have changed: lookups connect afresh.
    ctx.auth_query.close_all();
    ctx.client_tls.store(Arc::new(ctls));
    ctx.hba.store(Arc::new(hba));
    crate::net::budget::set_limit(new.max_buffered_message_bytes as usize);
    ctx.settings.store(Arc::new(new));
    let retired = ctx.pools.retire_changed(&current, &ctx.settings());
    crate::citus::cluster::sync(ctx);
    crate::bluegreen::sync(ctx);
    // After the clusters: a session that looks again finds its entry's cluster.
    ctx.config_epoch
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    for p in ctx.pools.all() {
        p.regrant();
    }
    ctx.shard_map.request_refresh();
    tracing::info!(pools_retired = retired, "configuration reloaded");
}
