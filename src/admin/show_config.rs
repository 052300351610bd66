//! SHOW CONFIG, DATABASES, USERS, LISTS, VERSION, STATE; and the table of settings
//! `SET key = value` may change at run time.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{pool_database, ResultSet};
use crate::config::{Overrides, Settings};
use crate::context::Context;

pub const CONFIG: &[&str] = &["key", "value", "default", "changeable"];
pub const DATABASES: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "server_lifetime",
    "pool_mode",
    "load_balance_hosts",
    "max_connections",
    "current_connections",
    "max_client_connections",
    "current_client_connections",
    "paused",
    "disabled",
];
pub const USERS: &[&str] = &[
    "name",
    "pool_size",
    "reserve_pool_size",
    "pool_mode",
    "max_user_connections",
    "current_connections",
    "max_user_client_connections",
    "current_client_connections",
];
pub const LISTS: &[&str] = &["list", "items"];
pub const VERSION: &[&str] = &["version"];
pub const STATE: &[&str] = &["key", "value"];

fn secs(d: Duration) -> String {
    // Whole seconds print as integers (PgBouncer style); fractions keep them.
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

fn parse_secs(v: &str) -> Result<Duration, String> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&x) {
        return Err(format!("'{v}' is out of range"));
    }
    Ok(Duration::from_secs_f64(x))
}

/// As in the file: at least 1 s, no "0 = disabled".
fn parse_login_timeout(v: &str) -> Result<Duration, String> {
    let d = parse_secs(v)?;
    if d < Duration::from_secs(1) {
        return Err(format!("expected at least 1 second, got '{v}'"));
    }
    Ok(d)
}

fn parse_u32(v: &str, min: u32) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("expected an integer >= {min}, got '{v}'")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on/off, got '{v}'")),
    }
}

type Getter = fn(&Settings) -> String;
type Setter = fn(&mut Settings, &str) -> Result<(), String>;

/// One row of SHOW CONFIG; `set` is Some when SET may change it at run time.
struct Item {
    key: &'static str,
    get: Getter,
    set: Option<Setter>,
}

macro_rules! item {
    ($key:literal, |$s:ident| $get:expr) => {
        Item {
            key: $key,
            get: |$s: &Settings| $get,
            set: None,
        }
    };
    ($key:literal, |$s:ident| $get:expr, |$m:ident, $v:ident| $set:expr) => {
        Item {
            key: $key,
            get: |$s: &Settings| $get,
            set: Some(|$m: &mut Settings, $v: &str| {
                $set;
                Ok(())
            }),
        }
    };
}

fn items() -> Vec<Item> {
    vec![
        item!("listen", |s| s.primary_listen().to_string()),
        item!("upstream", |s| s.upstream.redacted()),
        item!("pool_mode", |s| s.pool_mode.as_str().to_string()),
        item!("pool_size", |s| s.pool_size.to_string(), |m, v| m
            .pool_size =
            parse_u32(v, 1)?),
        item!("min_pool_size", |s| s.min_pool_size.to_string(), |m, v| m
            .min_pool_size =
            parse_u32(v, 0)?),
        item!(
            "reserve_pool_size",
            |s| s.reserve_pool_size.to_string(),
            |m, v| m.reserve_pool_size = parse_u32(v, 0)?
        ),
        item!(
            "reserve_pool_timeout",
            |s| secs(s.reserve_pool_timeout),
            |m, v| m.reserve_pool_timeout = parse_secs(v)?
        ),
        item!(
            "max_client_conn",
            |s| s.max_client_conn.to_string(),
            |m, v| m.max_client_conn = parse_u32(v, 1)?
        ),
        item!(
            "max_startup_clients",
            |s| s.max_startup_clients.to_string(),
            |m, v| m.max_startup_clients = parse_u32(v, 1)?
        ),
        item!(
            "client_login_timeout",
            |s| secs(s.client_login_timeout),
            |m, v| m.client_login_timeout = parse_login_timeout(v)?
        ),
        item!(
            "max_db_connections",
            |s| s.max_db_connections.to_string(),
            |m, v| m.max_db_connections = parse_u32(v, 0)?
        ),
        item!(
            "max_user_connections",
            |s| s.max_user_connections.to_string(),
            |m, v| m.max_user_connections = parse_u32(v, 0)?
        ),
        item!(
            "query_wait_timeout",
            |s| secs(s.query_wait_timeout),
            |m, v| m.query_wait_timeout = parse_secs(v)?
        ),
        item!(
            "server_connect_timeout",
            |s| secs(s.server_connect_timeout),
            |m, v| m.server_connect_timeout = parse_secs(v)?
        ),
        item!(
            "server_idle_timeout",
            |s| secs(s.server_idle_timeout),
            |m, v| m.server_idle_timeout = parse_secs(v)?
        ),
        item!("server_lifetime", |s| secs(s.server_lifetime), |m, v| m
            .server_lifetime =
            parse_secs(v)?),
        item!(
            "pool_idle_timeout",
            |s| secs(s.pool_idle_timeout),
            |m, v| m.pool_idle_timeout = parse_secs(v)?
        ),
        item!(
            "idle_transaction_timeout",
            |s| secs(s.idle_transaction_timeout),
            |m, v| m.idle_transaction_timeout = parse_secs(v)?
        ),
        item!(
            "server_reset_query",
            |s| s.server_reset_query.clone(),
            |m, v| m.server_reset_query = v.to_string()
        ),
        item!(
            "server_reset_query_always",
            |s| u8::from(s.server_reset_query_always).to_string(),
            |m, v| m.server_reset_query_always = parse_bool(v)?
        ),
        item!(
            "session_check",
            |s| if s.session_check_always {
                "always"
            } else {
                "auto"
            }
            .to_string(),
            |m, v| m.session_check_always = match v.trim().to_ascii_lowercase().as_str() {
                "auto" => false,
                "always" => true,
                _ => return Err(format!("expected auto or always, got '{v}'")),
            }
        ),
        item!(
            "server_pipelining",
            |s| if s.server_pipelining { "auto" } else { "off" }.to_string(),
            |m, v| m.server_pipelining = match v.trim().to_ascii_lowercase().as_str() {
                "off" => false,
                "auto" => true,
                _ => return Err(format!("expected off or auto, got '{v}'")),
            }
        ),
        item!(
            "server_pipeline_depth",
            |s| s.server_pipeline_depth.to_string(),
            |m, v| m.server_pipeline_depth = match v.trim().parse::<u32>() {
                Ok(n @ 2..=64) => n,
                _ => return Err(format!("expected 2 to 64, got '{v}'")),
            }
        ),
        item!(
            "server_check_query",
            |s| s.server_check_query.clone(),
            |m, v| m.server_check_query = v.to_string()
        ),
        item!(
            "server_check_delay",
            |s| secs(s.server_check_delay),
            |m, v| m.server_check_delay = parse_secs(v)?
        ),
        item!("stats_period", |s| secs(s.stats_period)),
        item!("max_message_size", |s| s.max_message_size.to_string()),
        item!("max_buffered_message_bytes", |s| s
            .max_buffered_message_bytes
            .to_string()),
        item!("max_prepared_statements", |s| s
            .max_prepared_statements
            .to_string()),
        item!("max_listen_channels", |s| s.max_listen_channels.to_string()),
        item!("max_pool_listen_channels", |s| s
            .max_pool_listen_channels
            .to_string()),
        item!("shutdown_timeout", |s| secs(s.shutdown_timeout), |m, v| m
            .shutdown_timeout =
            parse_secs(v)?),
        item!("auth_file", |s| s
            .auth_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()),
        item!("auth_user", |s| s.auth_user.clone().unwrap_or_default()),
        item!("auth_query", |s| s.auth_query.clone()),
        item!("auth_dbname", |s| s.auth_dbname.clone().unwrap_or_default()),
        item!("auth_query_cache_ttl", |s| secs(s.auth_query_cache_ttl)),
        item!("auth_type", |s| s.listeners[0]
            .auth_type
            .as_str()
            .to_string()),
        item!("server_tls", |s| format!("{:?}", s.server_tls)
            .to_ascii_lowercase()),
        item!("log_format", |s| format!("{:?}", s.log_format)
            .to_ascii_lowercase()),
        item!("log_level", |s| s.log_level.clone()),
        item!("workers", |s| s.workers.to_string()),
        item!("io_engine", |s| s.io_engine.as_str().to_string()),
        item!("tcp_keepalive", |s| secs(s.tcp_keepalive)),
        item!("routing", |s| format!("{:?}", s.routing)
            .to_ascii_lowercase()),
        item!(
            "shard_map_refresh_interval",
            |s| secs(s.shard_map_refresh_interval),
            |m, v| {
                let d = parse_secs(v)?;
                if d.is_zero() {
                    return Err("must be more than 0 seconds".into());
                }
                m.shard_map_refresh_interval = d
            }
        ),
        item!("instance_name", |s| s.instance_name.clone()),
        item!("tenant_homes_lease", |s| secs(s.tenant_homes_lease)),
        item!(
            "tenant_max_active",
            |s| s.tenant_max_active.show(),
            |m, v| m.tenant_max_active = crate::config::MaxActive::parse(v)?
        ),
        item!(
            "tenant_max_tps",
            |s| s.tenant_max_tps.to_string(),
            |m, v| m.tenant_max_tps = crate::config::tenant_limits::parse_tps(v)?
        ),
        item!(
            "tenant_statement_timeout",
            |s| secs(s.tenant_statement_timeout),
            |m, v| m.tenant_statement_timeout = crate::config::tenant_limits::parse_timeout(v)?
        ),
        item!("reference_reads", |s| s
            .reference_reads
            .as_str()
            .to_string()),
        item!(
            "multi_tenant_reads",
            |s| s.multi_tenant_reads.as_str().to_string(),
            |m, v| m.multi_tenant_reads = match v.trim().to_ascii_lowercase().as_str() {
                "coordinator" => crate::config::MultiTenantReads::Coordinator,
                "any" => crate::config::MultiTenantReads::Any,
                _ => return Err(format!("expected coordinator or any, got '{v}'")),
            }
        ),
        item!("plan_cache_size", |s| s.plan_cache_size.to_string()),
        item!(
            "worker_retry_delay",
            |s| secs(s.worker_retry_delay),
            |m, v| m.worker_retry_delay = parse_secs(v)?
        ),
        item!("admin_users", |s| s.admin_users.join(","), |m, v| m
            .admin_users =
            crate::config::split_users(v)),
        item!("stats_users", |s| s.stats_users.join(","), |m, v| m
            .stats_users =
            crate::config::split_users(v)),
    ]
}

/// The built-in defaults (what an empty file gives).
fn defaults() -> Option<Settings> {
    crate::config::load(
        None,
        &Overrides {
            upstream: Some("postgres://postgres@127.0.0.1:5432/postgres".into()),
            ..Default::default()
        },
    )
    .ok()
}

pub fn config(ctx: &Context) -> ResultSet {
    let s = ctx.settings();
    let d = defaults();
    let mut rs = ResultSet::new(CONFIG);
    for i in items() {
        rs.push(vec![
            Some(i.key.to_string()),
            Some((i.get)(&s)),
            d.as_ref().map(|d| (i.get)(d)),
            Some(if i.set.is_some() { "yes" } else { "no" }.to_string()),
        ]);
    }
    rs
}

/// `SET key = value`: a new Settings with that change. Errors name the key.
pub fn set(current: &Settings, key: &str, value: &str) -> Result<Settings, String> {
    let items = items();
    let Some(i) = items.iter().find(|i| i.key == key) else {
        return Err(format!("unknown config parameter: {key}"));
    };
    let Some(set) = i.set else {
        return Err(format!("{key} cannot be changed at run time (use RELOAD)"));
    };
    let mut new = current.clone();
    set(&mut new, value).map_err(|e| format!("{key}: {e}"))?;
    new.derive();
    if new.min_pool_size > new.pool_size {
        return Err(format!(
            "min_pool_size ({}) is larger than pool_size ({})",
            new.min_pool_size, new.pool_size
        ));
    }
    Ok(new)
}

/// One row per database clients can name: each `[databases]` entry (not `*` itself), the
/// names `*` has served, and the upstream's database without `[databases]`; then one row
/// per routed database and worker (`db@worker-N`). Columns as PgBouncer's, values from
/// the entry (`pool_mode` empty when the entry does not set one, as PgBouncer shows it).
pub fn databases(ctx: &Context) -> ResultSet {
    let s = ctx.settings();
    let mut names: BTreeSet<String> = s.databases.keys().filter(|n| *n != "*").cloned().collect();
    if s.databases.is_empty() {
        names.insert(s.upstream.database.clone());
    }
    /// (server connections of its pools, a worker row's host and port, the entry's name).
    type Row = (u32, Option<(String, u16)>, String);
    let mut conns: BTreeMap<String, Row> = BTreeMap::new();
    for p in ctx.pools.all() {
        let name = pool_database(&p.key);
        let worker = p
            .key
            .node
            .is_worker()
            .then(|| (p.key.node.host.to_string(), p.key.node.port));
        let e = conns
            .entry(name.clone())
            .or_insert_with(|| (0, worker, p.key.database.to_string()));
        e.0 += p.counts().1;
        if !p.key.node.is_worker() {
            names.insert(name);
        }
    }
    for (name, (_, worker, _)) in &conns {
        if worker.is_some() {
            names.insert(name.clone());
        }
    }
    let mut rs = ResultSet::new(DATABASES);
    for name in names {
        let (n, worker, entry_name) = conns.get(&name).cloned().unwrap_or((0, None, name.clone()));
        let Some(t) = s.target(&entry_name) else {
            continue; // a pool of a removed entry, on its way out
        };
        let (host, port) = worker.unwrap_or((t.host.clone(), t.port));
        let e = s.database_entry(&entry_name);
        let l = s.limits(&entry_name, t.user.as_deref().unwrap_or(""));
        let clients = ctx
            .admin
            .clients
            .count_where(|c| *c.database == *entry_name && !name.contains('@'));
        let paused = ctx.admin.pause.is_paused(&entry_name);
        rs.push_values([
            name,
            host,
            port.to_string(),
            t.dbname.clone(),
            t.user.clone().unwrap_or_default(),
            e.and_then(|e| e.pool_size)
                .unwrap_or(s.pool_size)
                .to_string(),
            l.min_pool_size.to_string(),
            l.reserve_pool_size.to_string(),
            s.server_lifetime.as_secs().to_string(),
            e.and_then(|e| e.pool_mode)
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            String::new(),
            l.max_db_connections.to_string(),
            n.to_string(),
            "0".into(),
            clients.to_string(),
            if paused { "1" } else { "0" }.into(),
            "0".into(),
        ]);
    }
    rs
}

pub fn users(ctx: &Context) -> ResultSet {
    let s = ctx.settings();
    let mut names: BTreeSet<String> = s.users.keys().cloned().collect();
    let pools = ctx.pools.all();
    names.extend(pools.iter().map(|p| p.key.user.to_string()));
    let mut rs = ResultSet::new(USERS);
    for name in names {
        let conns: u32 = pools
            .iter()
            .filter(|p| *p.key.user == *name)
            .map(|p| p.counts().1)
            .sum();
        let clients = ctx.admin.clients.count_where(|c| *c.user == *name);
        let u = s.users.get(&name);
        rs.push_values([
            name.clone(),
            u.and_then(|u| u.pool_size)
                .unwrap_or(s.pool_size)
                .to_string(),
            s.reserve_pool_size.to_string(),
            u.and_then(|u| u.pool_mode)
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            u.and_then(|u| u.max_user_connections)
                .unwrap_or(s.max_user_connections)
                .to_string(),
            conns.to_string(),
            "0".into(),
            clients.to_string(),
        ]);
    }
    rs
}

pub fn lists(ctx: &Context) -> ResultSet {
    let pools = ctx.pools.all();
    let dbs: BTreeSet<String> = pools.iter().map(|p| pool_database(&p.key)).collect();
    let users: BTreeSet<&str> = pools.iter().map(|p| &*p.key.user).collect();
    let (idle, total) = pools.iter().fold((0u32, 0u32), |(i, t), p| {
        let (pi, pt) = p.counts();
        (i + pi, t + pt)
    });
    let clients = ctx.admin.clients.all().len();
    let logging_in = (ctx.clients.load(Ordering::Relaxed) as usize).saturating_sub(clients);
    let mut rs = ResultSet::new(LISTS);
    for (k, v) in [
        ("databases", dbs.len()),
        ("users", users.len()),
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", logging_in),
        ("free_servers", 0),
        ("used_servers", total as usize),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        rs.push_values([k.to_string(), v.to_string()]);
    }
    let _ = idle;
    rs
}

pub fn version() -> ResultSet {
    let mut rs = ResultSet::new(VERSION);
    rs.push_values([format!("pgtenant {}", env!("CARGO_PKG_VERSION"))]);
    rs
}

pub fn state(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(STATE);
    let paused = ctx.admin.pause.all_paused();
    let suspended = ctx.admin.suspend.is_on();
    // PgBouncer: active = neither paused nor suspended (pgtenant: nor shutting down).
    let active = !ctx.shutdown.is_cancelled() && !paused && !suspended;
    for (k, v) in [
        ("active", active),
        ("paused", paused),
        ("suspended", suspended),
    ] {
        rs.push_values([k, if v { "yes" } else { "no" }]);
    }
    rs
}
