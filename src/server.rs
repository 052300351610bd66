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
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("auth_file: {0}")]
    AuthFile(#[from] auth::AuthError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Build the runtime and serve until shut down. The exit code says how it ended.
pub fn run(settings: Settings, overrides: Overrides) -> ExitCode {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if settings.workers > 0 {
        rt.worker_threads(settings.workers);
    }
    // SQL parsing recurses; a roomier stack than the 2 MiB default keeps the planner's
    // nesting limits far from the edge (the memory is only reserved, not touched).
    let rt = match rt
        .enable_all()
        .thread_name("pgtenant")
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings, overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pgtenant stopped");
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
    Ok(users)
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

async fn serve(settings: Settings, overrides: Overrides) -> Result<(), ServerError> {
    let users = build_users(&settings)?;
    let ctls = client_tls(&settings)?;
    let stls = crate::net::tls::client_config(
        settings.server_tls,
        settings.server_tls_ca_file.as_deref(),
    )?;
    let mut listeners = Vec::new();
    for l in &settings.listeners {
        let sock = TcpListener::bind(l.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: l.addr,
                source,
            })?;
        tracing::info!(listen = %l.addr, auth = l.auth_type.as_str(), "listening");
        listeners.push((sock, l.clone()));
    }
    let http = match settings.http_listen {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(upstream = %settings.upstream.redacted(), pool_mode = settings.pool_mode.as_str(), pool_size = settings.pool_size, "pgtenant started");

    crate::net::budget::set_limit(settings.max_buffered_message_bytes as usize);
    let shared_settings = Arc::new(ArcSwap::from_pointee(settings.clone()));
    let ctx = Arc::new(Context {
        settings: shared_settings.clone(),
        users: ArcSwap::from_pointee(users),
        pools: Pools::new(shared_settings, stls),
        cancels: Arc::new(CancelRegistry::default()),
        statements: StatementRegistry::default(),
        setting_names: Default::default(),
        listens: ListenHub::default(),
        client_tls: ArcSwap::from_pointee(ctls),
        router: Router::new(),
        shard_map: Default::default(),
        routes: Default::default(),
        node_health: Default::default(),
        read_spread: Default::default(),
        coordinator: ArcSwap::from_pointee(coordinator(&settings)),
        clients: AtomicU32::new(0),
        admission: Default::default(),
        scram_cache: Default::default(),
        shutdown: CancellationToken::new(),
        admin: crate::admin::AdminState::new(overrides.clone()),
        health: Default::default(),
        tenants: Default::default(),
        startup_params: Default::default(),
    });

    let stop_accepting = CancellationToken::new();
    let tracker = TaskTracker::new();
    let janitor_stop = CancellationToken::new();
    let janitor = pool::spawn_janitor(ctx.pools.clone(), janitor_stop.clone());
    let refresher = crate::citus::spawn_refresher(ctx.clone(), janitor_stop.clone());
    let stats = crate::admin::spawn_stats(ctx.clone(), janitor_stop.clone());
    let trimmer = crate::memory::spawn_trimmer(ctx.clone(), janitor_stop.clone());
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
    crate::frontend::cancel_session_token(&ctx.shutdown);
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
    let _ = stats.await;
    let _ = trimmer.await;
    for t in metrics {
        let _ = t.await;
    }
    ctx.pools.close_idle();
    tracing::info!("pgtenant stopped");
    Ok(())
}

async fn accept_loop(
    sock: TcpListener,
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
            Ok((socket, _peer)) => {
                let keepalive = ctx.settings.load().tcp_keepalive;
                if !keepalive.is_zero() {
                    let _ = crate::backend::socket_keepalive(&socket, keepalive);
                }
                tracker.spawn(frontend::handle_client(
                    socket,
                    listener.clone(),
                    ctx.clone(),
                ));
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
pub fn reload(ctx: &Context, overrides: &Overrides) {
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
    match crate::net::tls::client_config(new.server_tls, new.server_tls_ca_file.as_deref()) {
        Ok(t) => ctx.pools.set_tls(t),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    }
    if new.listeners != current.listeners {
        tracing::warn!("listen addresses changed: takes effect after a restart");
    }
    if new.upstream != current.upstream {
        ctx.coordinator.store(Arc::new(coordinator(&new)));
    }
    ctx.users.store(Arc::new(users));
    ctx.client_tls.store(Arc::new(ctls));
    crate::net::budget::set_limit(new.max_buffered_message_bytes as usize);
    ctx.settings.store(Arc::new(new));
    for p in ctx.pools.all() {
        p.regrant();
    }
    ctx.shard_map.request_refresh();
    tracing::info!("configuration reloaded");
}
