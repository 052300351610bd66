//! The merged draft checked as a whole (listeners, users, limits, routing), then built
//! into `Settings`.
use super::*;

/// Cross-checks on the merged values, then the `Settings`.
pub(super) fn finish(
    d: Draft,
    config_file: Option<PathBuf>,
    mut errs: Errors,
) -> Result<Settings, ConfigError> {
    // Listeners: each address must parse and be distinct.
    let mut listeners = Vec::new();
    for l in std::iter::once(&d.primary).chain(&d.extra_listeners) {
        let key = if l.key == "listen" {
            "listen".to_string()
        } else {
            format!("{}.listen", l.key)
        };
        let Some(addr) = errs.check(&key, socket_addr(&l.listen)) else {
            continue;
        };
        if listeners.iter().any(|x: &Listener| x.addr == addr) {
            errs.push(&key, format!("{addr} is already used by another listener"));
            continue;
        }
        if l.auth_type == AuthType::Hba && d.auth_hba_file.is_none() {
            errs.push(
                &key,
                "auth_type = \"hba\" needs auth_hba_file (pg_hba.conf syntax)",
            );
        }
        listeners.push(Listener {
            addr,
            auth_type: l.auth_type,
            client_tls: l.client_tls,
        });
    }

    // The metrics and probes listener: an address, or "" to turn it off.
    let http_listen = if d.http_listen.trim().is_empty() {
        None
    } else {
        match errs.check("http_listen", socket_addr(&d.http_listen)) {
            Some(a) if listeners.iter().any(|l| l.addr == a) => {
                errs.push(
                    "http_listen",
                    format!("{a} is already used by a client listener"),
                );
                None
            }
            a => a,
        }
    };

    let upstream = match &d.upstream {
        None => {
            errs.push("upstream", "missing; set upstream in the file, PGTENANT_UPSTREAM or --upstream (postgres://user:password@host:port/database)");
            None
        }
        Some(s) => errs.check("upstream", Upstream::parse(s)),
    };

    if d.pool_size == 0 {
        errs.push("pool_size", "expected a positive integer, got 0");
    }
    if d.min_pool_size > d.pool_size {
        errs.push(
            "min_pool_size",
            format!(
                "{} is larger than pool_size ({})",
                d.min_pool_size, d.pool_size
            ),
        );
    }
    for (name, u) in &d.users {
        if let Some(size) = u.pool_size {
            if d.min_pool_size > size {
                errs.push(
                    &format!("users.{name}.pool_size"),
                    format!("{size} is smaller than min_pool_size ({})", d.min_pool_size),
                );
            }
        }
    }
    if d.max_client_conn == 0 {
        errs.push("max_client_conn", "expected a positive integer, got 0");
    }
    if d.max_startup_clients == 0 {
        errs.push("max_startup_clients", "expected a positive integer, got 0");
    }
    // No "0 = disabled": a connection that never logs in must not hold its place forever.
    if d.client_login_timeout < secs(1) {
        errs.push(
            "client_login_timeout",
            format!(
                "expected at least 1 second, got {}",
                d.client_login_timeout.as_secs_f64()
            ),
        );
    }
    // Below 1 KiB even a startup packet with a few parameters would not fit; above 1 GiB
    // PostgreSQL itself refuses the message.
    const MIN_MESSAGE: u32 = 1024;
    const MAX_MESSAGE: u32 = 1 << 30;
    if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&d.max_message_size) {
        errs.push(
            "max_message_size",
            format!(
                "expected {MIN_MESSAGE} to {MAX_MESSAGE} bytes, got {}",
                d.max_message_size
            ),
        );
    }
    if d.max_buffered_message_bytes != 0 && d.max_buffered_message_bytes < d.max_message_size {
        errs.push(
            "max_buffered_message_bytes",
            format!(
                "{} is smaller than max_message_size ({}): a message that large could never be read (0 = no limit)",
                d.max_buffered_message_bytes, d.max_message_size
            ),
        );
    }
    if d.workers > 1024 {
        errs.push(
            "workers",
            format!(
                "expected at most 1024 (0 = one per core), got {}",
                d.workers
            ),
        );
    }
    if d.log_level.trim().is_empty() {
        errs.push(
            "log_level",
            "expected a filter such as 'info' or 'pgtenant=debug,info'",
        );
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&d.log_level) {
        errs.push("log_level", format!("not a valid filter ({e})"));
    }

    // TLS towards clients needs a certificate on any listener that offers it.
    if let Some(l) = listeners
        .iter()
        .find(|l| l.client_tls != ClientTls::Disable)
    {
        let why = format!(
            "required because the listener on {} has client_tls = {}",
            l.addr,
            name_of(l.client_tls, CLIENT_TLS)
        );
        if d.client_tls_cert_file.is_none() {
            errs.push("client_tls_cert_file", &why);
        }
        if d.client_tls_key_file.is_none() {
            errs.push("client_tls_key_file", &why);
        }
    }
    if matches!(d.server_tls, ServerTls::VerifyCa | ServerTls::VerifyFull)
        && d.server_tls_ca_file.is_none()
    {
        errs.push(
            "server_tls_ca_file",
            format!(
                "required because server_tls = {}",
                name_of(d.server_tls, SERVER_TLS)
            ),
        );
    }
    for (key, p) in [
        ("auth_file", &d.auth_file),
        ("client_tls_cert_file", &d.client_tls_cert_file),
        ("client_tls_key_file", &d.client_tls_key_file),
        ("server_tls_ca_file", &d.server_tls_ca_file),
    ] {
        if let Some(p) = p {
            errs.check(key, readable_file(p));
        }
    }

    if d.auth_query.trim().is_empty() {
        errs.push(
            "auth_query",
            "expected a query returning the user name and its password for $1",
        );
    }

    // An entry routed with its own shard map reads that server's catalog: not with the
    // upstream's secret, which must not go to another server.
    if let Some(up) = &upstream {
        for (name, e) in &d.databases {
            let elsewhere = e.host.as_ref().is_some_and(|h| *h != up.host)
                || e.port.is_some_and(|p| p != up.port);
            if e.routing == Some(Routing::On)
                && elsewhere
                && e.user.is_none()
                && e.auth_user.is_none()
                && d.auth_user.is_none()
            {
                errs.push(
                    &format!("databases.{name}.routing"),
                    "\"on\" on another server needs user or auth_user (the role that reads its Citus catalog)",
                );
            }
        }
    }

    // Blue-green entries: each transaction goes to its tenant's home, found with green's
    // shard map.
    if let Some(up) = &upstream {
        for (name, e) in &d.databases {
            if e.blue.is_none() {
                continue;
            }
            let key = format!("databases.{name}.blue");
            if e.pool_mode.unwrap_or(d.pool_mode) == PoolMode::Session {
                errs.push(&key, "a blue-green entry needs transaction or statement pooling (each transaction goes to its tenant's home); the pool mode here is session");
            }
            let upstreams = e.host.as_ref().is_none_or(|h| *h == up.host)
                && e.port.is_none_or(|p| p == up.port)
                && e.dbname.as_deref().unwrap_or(name) == up.database;
            let routed = match e.routing {
                Some(Routing::Off) => false,
                Some(Routing::On) => true,
                _ => upstreams,
            };
            if !routed || d.routing == Routing::Off {
                errs.push(&key, "green (the entry's own host, port and dbname) must be a routed Citus cluster: the upstream's database, or routing = \"on\"");
            }
        }
    }
    if !(secs(1)..=secs(3600)).contains(&d.tenant_homes_lease) {
        errs.push(
            "tenant_homes_lease",
            format!(
                "expected 1 to 3600 seconds, got {}",
                d.tenant_homes_lease.as_secs_f64()
            ),
        );
    }

    let (Some(upstream), true) = (upstream, errs.0.is_empty()) else {
        return Err(ConfigError { errors: errs.0 });
    };

    // The upstream login is the one clients use by default: make sure pgtenant knows it,
    // and knows its password when the file named the user without one.
    let mut users = d.users;
    let entry = users.entry(upstream.user.clone()).or_default();
    if entry.password.is_none() {
        entry.password = upstream.password.clone();
    }

    let mut s = Settings {
        config_file,
        notes: Vec::new(),
        auth_hba_file: d.auth_hba_file,
        unix_socket_dir: d.unix_socket_dir,
        unix_socket_mode: d.unix_socket_mode,
        listeners,
        upstream,
        pool_mode: d.pool_mode,
        pool_size: d.pool_size,
        min_pool_size: d.min_pool_size,
        reserve_pool_size: d.reserve_pool_size,
        reserve_pool_timeout: d.reserve_pool_timeout,
        max_client_conn: d.max_client_conn,
        max_startup_clients: d.max_startup_clients,
        client_login_timeout: d.client_login_timeout,
        max_db_connections: d.max_db_connections,
        max_user_connections: d.max_user_connections,
        databases: d.databases,
        query_wait_timeout: d.query_wait_timeout,
        server_connect_timeout: d.server_connect_timeout,
        server_idle_timeout: d.server_idle_timeout,
        server_lifetime: d.server_lifetime,
        pool_idle_timeout: d.pool_idle_timeout,
        idle_transaction_timeout: d.idle_transaction_timeout,
        server_reset_query: d.server_reset_query,
        server_reset_query_always: d.server_reset_query_always,
        session_check_always: d.session_check_always,
        server_pipelining: d.server_pipelining,
        server_pipeline_depth: d.server_pipeline_depth,
        server_check_query: d.server_check_query,
        server_check_delay: d.server_check_delay,
        stats_period: d.stats_period,
        max_message_size: d.max_message_size,
        max_buffered_message_bytes: d.max_buffered_message_bytes,
        max_prepared_statements: d.max_prepared_statements,
        max_listen_channels: d.max_listen_channels,
        max_pool_listen_channels: d.max_pool_listen_channels,
        shutdown_timeout: d.shutdown_timeout,
        auth_file: d.auth_file,
        users,
        auth_user: d.auth_user,
        auth_query: d.auth_query,
        auth_dbname: d.auth_dbname,
        auth_query_cache_ttl: d.auth_query_cache_ttl,
        client_tls_cert_file: d.client_tls_cert_file,
        client_tls_key_file: d.client_tls_key_file,
        server_tls: d.server_tls,
        server_tls_ca_file: d.server_tls_ca_file,
        log_format: d.log_format,
        log_level: d.log_level,
        workers: d.workers,
        io_engine: d.io_engine,
        tcp_keepalive: d.tcp_keepalive,
        routing: d.routing,
        shard_map_refresh_interval: d.shard_map_refresh_interval,
        instance_name: d.instance_name.unwrap_or_else(default_instance_name),
        tenant_homes_lease: d.tenant_homes_lease,
        node_addresses: d.node_addresses.clone(),
        reference_reads: d.reference_reads,
        multi_tenant_reads: d.multi_tenant_reads,
        plan_cache_size: d.plan_cache_size as usize,
        worker_retry_delay: d.worker_retry_delay,
        http_listen,
        shard_map_max_age: d.shard_map_max_age,
        admin_users: d.admin_users,
        stats_users: d.stats_users,
        tenant_max_active: d.tenant_max_active,
        tenant_max_tps: d.tenant_max_tps,
        tenant_statement_timeout: d.tenant_statement_timeout,
        tenant_limits: d.tenant_limits,
        tenant_limits_on: false,
    };
    s.derive();
    Ok(s)
}
