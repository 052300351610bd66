//! Reading a configuration file (TOML, or a pgbouncer.ini read as PgBouncer reads it)
//! and applying its keys to the draft: every key checked, every bad value named.
use super::*;

pub(super) fn read_file(path: &Path, notes: &mut Vec<String>) -> Result<toml::Table, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("config", format!("cannot read '{shown}': {e}")))?;
    if crate::config::pgbouncer::is_pgbouncer_ini(&text) {
        // A PgBouncer configuration: read as PgBouncer reads it, then as if it were the
        // TOML `pgtenant import` writes.
        let lines =
            crate::config::pgbouncer::read(path).map_err(|e| ConfigError { errors: vec![e] })?;
        let t = crate::config::pgbouncer::translate(&lines);
        if !t.errors.is_empty() {
            return Err(ConfigError { errors: t.errors });
        }
        *notes = t.notes;
        return Ok(t.table);
    }
    text.parse::<toml::Table>().map_err(|e| {
        // toml's Display is a multi-line snippet; one line with the position reads better
        // in logs and in `check` output.
        let at = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError::one(
            "config",
            format!(
                "'{shown}' is not valid TOML{at}: {}",
                e.message().trim_end()
            ),
        )
    })
}

/// `node_addresses = { "10.0.0.5:5432" = "worker-0.citus:5432" }`: both sides host:port.
pub(super) fn node_addresses(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let t = v
        .as_table()
        .ok_or("expected a table of \"host:port\" = \"host:port\"")?;
    let mut out = BTreeMap::new();
    for (from, to) in t {
        let to = to
            .as_str()
            .ok_or_else(|| format!("'{from}': expected a \"host:port\" string"))?;
        for side in [from.as_str(), to] {
            match side.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => return Err(format!("'{side}' is not host:port")),
            }
        }
        out.insert(from.clone(), to.to_string());
    }
    Ok(out)
}

/// PgBouncer names that pgtenant spells differently, for a helpful "unknown key" error.
pub(super) const RENAMED: &[(&str, &str)] = &[
    ("default_pool_size", "pool_size"),
    ("listen_addr", "listen"),
    ("listen_port", "listen"),
    ("client_tls_sslmode", "client_tls"),
    ("server_tls_sslmode", "server_tls"),
    ("pkt_buf", "max_message_size"),
    ("max_packet_size", "max_message_size"),
];

pub(super) fn unknown_key(key: &str) -> String {
    match RENAMED.iter().find(|(old, _)| *old == key) {
        Some((_, new)) => format!("unknown key '{key}' (did you mean '{new}'?)"),
        None => format!("unknown key '{key}'"),
    }
}

pub(super) fn apply_file(d: &mut Draft, table: &toml::Table, base: &Path, errs: &mut Errors) {
    for (key, v) in table {
        let k = key.as_str();
        // Each arm parses the value and stores it; a parse error is recorded under the key.
        let r: Result<(), String> = match k {
            "listen" => string(v).map(|x| d.primary.listen = x),
            "auth_type" => choice(v, AUTH_TYPES).map(|x| d.primary.auth_type = x),
            "client_tls" => choice(v, CLIENT_TLS).map(|x| d.primary.client_tls = x),
            "listener" => {
                apply_listeners(d, v, errs);
                Ok(())
            }
            "upstream" => string(v).map(|x| d.upstream = Some(x)),
            "users" => {
                apply_users(d, v, errs);
                Ok(())
            }
            "databases" => {
                let mut e = Vec::new();
                d.databases = crate::config::databases::parse(v, &mut e);
                errs.push_all(e);
                Ok(())
            }
            "max_user_connections" => count(v).map(|x| d.max_user_connections = x),
            "auth_file" => path(v, base).map(|x| d.auth_file = Some(x)),
            "auth_hba_file" => path(v, base).map(|x| d.auth_hba_file = Some(x)),
            "unix_socket_dir" => match v.as_str() {
                Some("") => {
                    d.unix_socket_dir = None;
                    Ok(())
                }
                _ => path(v, base).map(|x| d.unix_socket_dir = Some(x)),
            },
            "unix_socket_mode" => v
                .as_str()
                .and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
                .filter(|m| *m <= 0o777)
                .map(|m| d.unix_socket_mode = m)
                .ok_or_else(|| format!("expected an octal mode such as \"0777\", got {}", got(v))),
            // "" = unset, as PgBouncer writes it.
            "auth_user" => string(v).map(|x| d.auth_user = Some(x).filter(|u| !u.is_empty())),
            "auth_query" => string(v).map(|x| d.auth_query = x),
            "auth_dbname" => string(v).map(|x| d.auth_dbname = Some(x).filter(|u| !u.is_empty())),
            "auth_query_cache_ttl" => seconds(v).map(|x| d.auth_query_cache_ttl = x),
            "pool_mode" => choice(v, POOL_MODES).map(|x| d.pool_mode = x),
            "pool_size" => positive(v).map(|x| d.pool_size = x),
            "min_pool_size" => count(v).map(|x| d.min_pool_size = x),
            "reserve_pool_size" => count(v).map(|x| d.reserve_pool_size = x),
            "reserve_pool_timeout" => seconds(v).map(|x| d.reserve_pool_timeout = x),
            "max_client_conn" => positive(v).map(|x| d.max_client_conn = x),
            "max_startup_clients" => positive(v).map(|x| d.max_startup_clients = x),
            "client_login_timeout" => seconds(v).map(|x| d.client_login_timeout = x),
            "max_db_connections" => count(v).map(|x| d.max_db_connections = x),
            "query_wait_timeout" => seconds(v).map(|x| d.query_wait_timeout = x),
            "server_connect_timeout" => seconds(v).map(|x| d.server_connect_timeout = x),
            "server_idle_timeout" => seconds(v).map(|x| d.server_idle_timeout = x),
            "server_lifetime" => seconds(v).map(|x| d.server_lifetime = x),
            "pool_idle_timeout" => seconds(v).map(|x| d.pool_idle_timeout = x),
            "idle_transaction_timeout" => seconds(v).map(|x| d.idle_transaction_timeout = x),
            "server_reset_query" => string(v).map(|x| d.server_reset_query = x),
            "server_reset_query_always" => boolean(v).map(|x| d.server_reset_query_always = x),
            "session_check" => choice(v, SESSION_CHECKS).map(|x| d.session_check_always = x),
            "server_pipelining" => choice(v, SERVER_PIPELINING).map(|x| d.server_pipelining = x),
            "server_pipeline_depth" => positive(v)
                .and_then(|x| match x {
                    2..=64 => Ok(x),
                    _ => Err(format!("expected 2 to 64, got {x}")),
                })
                .map(|x| d.server_pipeline_depth = x),
            "server_check_query" => string(v).map(|x| d.server_check_query = x),
            "server_check_delay" => seconds(v).map(|x| d.server_check_delay = x),
            "stats_period" => seconds(v).map(|x| d.stats_period = x),
            "max_message_size" => count(v).map(|x| d.max_message_size = x),
            "max_buffered_message_bytes" => count(v).map(|x| d.max_buffered_message_bytes = x),
            "max_prepared_statements" => count(v).map(|x| d.max_prepared_statements = x),
            "max_listen_channels" => count(v).map(|x| d.max_listen_channels = x),
            "max_pool_listen_channels" => count(v).map(|x| d.max_pool_listen_channels = x),
            "shutdown_timeout" => seconds(v).map(|x| d.shutdown_timeout = x),
            "client_tls_cert_file" => path(v, base).map(|x| d.client_tls_cert_file = Some(x)),
            "client_tls_key_file" => path(v, base).map(|x| d.client_tls_key_file = Some(x)),
            "server_tls" => choice(v, SERVER_TLS).map(|x| d.server_tls = x),
            "server_tls_ca_file" => path(v, base).map(|x| d.server_tls_ca_file = Some(x)),
            "log_format" => choice(v, LOG_FORMATS).map(|x| d.log_format = x),
            "log_level" => string(v).map(|x| d.log_level = x),
            "workers" => count(v).map(|x| d.workers = x as usize),
            "io_engine" => choice(v, IO_ENGINES).map(|x| d.io_engine = x),
            "tcp_keepalive" => seconds(v).map(|x| d.tcp_keepalive = x),
            "routing" => choice(v, ROUTING).map(|x| d.routing = x),
            "shard_map_refresh_interval" => seconds(v).and_then(|x| {
                if x.is_zero() {
                    Err("must be more than 0 seconds".to_string())
                } else {
                    {
                        d.shard_map_refresh_interval = x;
                        Ok(())
                    }
                }
            }),
            "instance_name" => {
                string(v).map(|x| d.instance_name = Some(x).filter(|n| !n.is_empty()))
            }
            "tenant_homes_lease" => seconds(v).map(|x| d.tenant_homes_lease = x),
            "node_addresses" => node_addresses(v).map(|x| d.node_addresses = x),
            "reference_reads" => choice(v, REFERENCE_READS).map(|x| d.reference_reads = x),
            "multi_tenant_reads" => choice(v, MULTI_TENANT_READS).map(|x| d.multi_tenant_reads = x),
            "plan_cache_size" => positive(v).map(|x| d.plan_cache_size = x),
            "worker_retry_delay" => seconds(v).map(|x| d.worker_retry_delay = x),
            "http_listen" => string(v).map(|x| d.http_listen = x),
            "shard_map_max_age" => seconds(v).map(|x| d.shard_map_max_age = x),
            "admin_users" => user_list(v).map(|x| d.admin_users = x),
            "stats_users" => user_list(v).map(|x| d.stats_users = x),
            "tenant_max_active" => {
                crate::config::tenant_limits::max_active(v).map(|x| d.tenant_max_active = x)
            }
            "tenant_max_tps" => {
                crate::config::tenant_limits::max_tps(v).map(|x| d.tenant_max_tps = x)
            }
            "tenant_statement_timeout" => {
                crate::config::tenant_limits::timeout(v).map(|x| d.tenant_statement_timeout = x)
            }
            "tenant_limits" => {
                let mut e = Vec::new();
                d.tenant_limits = crate::config::tenant_limits::parse(v, &mut e);
                errs.push_all(e);
                Ok(())
            }
            _ => Err(unknown_key(k)),
        };
        errs.check(k, r);
    }
}

/// `[[listener]]`: more addresses, each with its own auth and TLS. Unset fields take the
/// type defaults (scram-sha-256, no TLS), not the primary's, so that relaxing the primary
/// (say `auth_type = "trust"` on a loopback port) never relaxes another port by accident.
pub(super) fn apply_listeners(d: &mut Draft, v: &Value, errs: &mut Errors) {
    let Some(items) = v.as_array() else {
        errs.push("listener", "expected an array of tables ([[listener]])");
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let key = format!("listener[{i}]");
        let Some(t) = item.as_table() else {
            errs.push(&key, "expected a table with listen, auth_type, client_tls");
            continue;
        };
        let mut l = DraftListener {
            key: key.clone(),
            listen: String::new(),
            auth_type: AuthType::default(),
            client_tls: ClientTls::default(),
        };
        for (k, v) in t {
            let r = match k.as_str() {
                "listen" => string(v).map(|x| l.listen = x),
                "auth_type" => choice(v, AUTH_TYPES).map(|x| l.auth_type = x),
                "client_tls" => choice(v, CLIENT_TLS).map(|x| l.client_tls = x),
                _ => Err(unknown_key(k)),
            };
            errs.check(&format!("{key}.{k}"), r);
        }
        if !t.contains_key("listen") {
            errs.push(
                &format!("{key}.listen"),
                "missing; every [[listener]] needs an address",
            );
            continue;
        }
        d.extra_listeners.push(l);
    }
}

/// `[users.NAME]`: password, pool_size, pool_mode.
pub(super) fn apply_users(d: &mut Draft, v: &Value, errs: &mut Errors) {
    let Some(users) = v.as_table() else {
        errs.push("users", "expected tables like [users.NAME]");
        return;
    };
    for (name, u) in users {
        let key = format!("users.{name}");
        if name.is_empty() {
            errs.push("users", "a user name may not be empty");
            continue;
        }
        let Some(t) = u.as_table() else {
            errs.push(&key, "expected a table with password, pool_size, pool_mode");
            continue;
        };
        let mut user = UserSettings::default();
        for (k, v) in t {
            let r = match k.as_str() {
                // Never echo the value: it is a secret.
                "password" => match v.as_str() {
                    Some(s) => {
                        user.password = Some(s.to_string());
                        Ok(())
                    }
                    None => Err(format!("expected a string, got {}", v.type_str())),
                },
                "pool_size" => positive(v).map(|x| user.pool_size = Some(x)),
                "pool_mode" => choice(v, POOL_MODES).map(|x| user.pool_mode = Some(x)),
                "max_user_connections" => count(v).map(|x| user.max_user_connections = Some(x)),
                _ => Err(unknown_key(k)),
            };
            errs.check(&format!("{key}.{k}"), r);
        }
        d.users.insert(name.clone(), user);
    }
}
