//! Loading: TOML file < environment < command-line flags, then validation.
//!
//! The file is walked key by key instead of being deserialized into one struct: serde stops
//! at the first bad field, and an operator fixing a ConfigMap wants every mistake at once.
//! Every error names its key (`pool_size: expected a positive integer, got -1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

use super::values::*;

use super::{
    AuthType, ClientTls, Listener, LogFormat, MultiTenantReads, PoolMode, ReferenceReads, Routing,
    ServerTls, Settings, Upstream, UserSettings,
};

/// Values given on the command line or in the environment; `None` = not given.
///
/// clap fills this with flag > environment precedence; `load` puts it above the file.
/// The same value is kept for the life of the process so a reload re-applies it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config` / `PGTENANT_CONFIG`. `load` reads only the file it is handed; this is
    /// kept here so the server knows what was asked for.
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub workers: Option<usize>,
    pub auth_type: Option<String>,
    pub max_client_conn: Option<u32>,
    /// `--max-startup-clients` / `PGTENANT_MAX_STARTUP_CLIENTS`.
    pub max_startup_clients: Option<u32>,
    /// `--client-login-timeout SECONDS` / `PGTENANT_CLIENT_LOGIN_TIMEOUT`.
    pub client_login_timeout: Option<f64>,
    /// `--http-listen` / `PGTENANT_HTTP_LISTEN`: the metrics and probes address.
    pub http_listen: Option<String>,
    /// `--admin-users a,b` / `PGTENANT_ADMIN_USERS`.
    pub admin_users: Option<String>,
    /// `--stats-users a,b` / `PGTENANT_STATS_USERS`.
    pub stats_users: Option<String>,
    /// `--server-pipelining off|auto` / `PGTENANT_SERVER_PIPELINING`.
    pub server_pipelining: Option<String>,
}

/// Every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl ConfigError {
    fn one(key: &str, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            errors: vec![format!("{key}: {msg}")],
        }
    }
}

/// Load settings from `file` (if any), then apply `overrides`, then validate.
pub fn load(file: Option<&PathBuf>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut draft = Draft::default();
    let mut errs = Errors::default();
    let mut notes = Vec::new();
    if let Some(path) = file {
        let table = read_file(path, &mut notes)?;
        // Relative paths in the file are relative to the file, not to the working
        // directory: the same file then means the same thing from `check` and from `run`.
        let base = path.parent().unwrap_or(Path::new(""));
        apply_file(&mut draft, &table, base, &mut errs);
    }
    apply_overrides(&mut draft, overrides, &mut errs);
    let mut settings = finish(draft, file.cloned(), errs)?;
    settings.notes = notes;
    Ok(settings)
}

/// Re-read the file the current settings came from and re-apply the same overrides.
/// The caller swaps the result in only if it is Ok; a bad edit leaves the old settings.
pub fn reload(current: &Settings, overrides: &Overrides) -> Result<Settings, ConfigError> {
    load(current.config_file.as_ref(), overrides)
}

/// Errors collected while loading; each is "key: message".
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }

    /// Record the error of `r`, if any, under `key`.
    fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(key, e)).ok()
    }
}

fn read_file(path: &Path, notes: &mut Vec<String>) -> Result<toml::Table, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("config", format!("cannot read '{shown}': {e}")))?;
    if super::pgbouncer::is_pgbouncer_ini(&text) {
        // A PgBouncer configuration: read as PgBouncer reads it, then as if it were the
        // TOML `pgtenant import` writes.
        let lines = super::pgbouncer::read(path).map_err(|e| ConfigError { errors: vec![e] })?;
        let t = super::pgbouncer::translate(&lines);
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

/// A listener as written, before its address is checked.
struct DraftListener {
    /// How errors name it: `listen` for the primary, `listener[i]` for the others.
    key: String,
    listen: String,
    auth_type: AuthType,
    client_tls: ClientTls,
}

/// Settings being assembled: defaults, then the file, then overrides. Values that need
/// cross-checks or parsing (listen, upstream) stay raw until `finish`.
struct Draft {
    primary: DraftListener,
    extra_listeners: Vec<DraftListener>,
    upstream: Option<String>,
    pool_mode: PoolMode,
    pool_size: u32,
    min_pool_size: u32,
    reserve_pool_size: u32,
    reserve_pool_timeout: Duration,
    max_client_conn: u32,
    max_startup_clients: u32,
    client_login_timeout: Duration,
    max_db_connections: u32,
    query_wait_timeout: Duration,
    server_connect_timeout: Duration,
    server_idle_timeout: Duration,
    server_lifetime: Duration,
    pool_idle_timeout: Duration,
    idle_transaction_timeout: Duration,
    server_reset_query: String,
    server_reset_query_always: bool,
    session_check_always: bool,
    server_pipelining: bool,
    server_pipeline_depth: u32,
    server_check_query: String,
    server_check_delay: Duration,
    stats_period: Duration,
    max_message_size: u32,
    max_buffered_message_bytes: u32,
    max_prepared_statements: u32,
    shutdown_timeout: Duration,
    auth_file: Option<PathBuf>,
    auth_hba_file: Option<PathBuf>,
    unix_socket_dir: Option<PathBuf>,
    unix_socket_mode: u32,
    users: BTreeMap<String, UserSettings>,
    databases: BTreeMap<String, super::Database>,
    max_user_connections: u32,
    auth_user: Option<String>,
    auth_query: String,
    auth_dbname: Option<String>,
    auth_query_cache_ttl: Duration,
    client_tls_cert_file: Option<PathBuf>,
    client_tls_key_file: Option<PathBuf>,
    server_tls: ServerTls,
    server_tls_ca_file: Option<PathBuf>,
    log_format: LogFormat,
    log_level: String,
    workers: usize,
    tcp_keepalive: Duration,
    routing: Routing,
    shard_map_refresh_interval: Duration,
    instance_name: Option<String>,
    tenant_homes_lease: Duration,
    node_addresses: BTreeMap<String, String>,
    reference_reads: ReferenceReads,
    multi_tenant_reads: MultiTenantReads,
    plan_cache_size: u32,
    worker_retry_delay: Duration,
    http_listen: String,
    shard_map_max_age: Duration,
    admin_users: Vec<String>,
    stats_users: Vec<String>,
    tenant_max_active: super::MaxActive,
    tenant_max_tps: f64,
    tenant_statement_timeout: Duration,
    tenant_limits: BTreeMap<String, super::TenantOverride>,
}

/// The defaults, as PgBouncer's where PgBouncer has the setting.
impl Default for Draft {
    fn default() -> Draft {
        Draft {
            primary: DraftListener {
                key: "listen".into(),
                listen: "127.0.0.1:6432".into(),
                auth_type: AuthType::ScramSha256,
                client_tls: ClientTls::Disable,
            },
            extra_listeners: Vec::new(),
            upstream: None,
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: secs(5),
            max_client_conn: 100,
            // Not in PgBouncer; as many waiting logins as max_client_conn's default.
            max_startup_clients: 1000,
            // PgBouncer says 60; an honest login takes milliseconds, a silent socket
            // should not hold its place for a minute.
            client_login_timeout: secs(15),
            max_db_connections: 0,
            query_wait_timeout: secs(120),
            server_connect_timeout: secs(15),
            server_idle_timeout: secs(600),
            server_lifetime: secs(3600),
            pool_idle_timeout: secs(60),
            idle_transaction_timeout: secs(0),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            session_check_always: false,
            server_pipelining: false,
            server_pipeline_depth: 8,
            server_check_query: "select 1".into(),
            server_check_delay: secs(30),
            stats_period: secs(60),
            max_message_size: 64 * 1024 * 1024,
            max_buffered_message_bytes: crate::net::budget::DEFAULT_BUDGET as u32,
            max_prepared_statements: 200,
            shutdown_timeout: secs(30),
            auth_file: None,
            auth_hba_file: None,
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            users: BTreeMap::new(),
            databases: BTreeMap::new(),
            max_user_connections: 0,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            // Not in PgBouncer (which asks at every login). Long enough that a client
            // retrying a refused name in a loop costs the server one query per 5 s;
            // short enough that a role created right after a refused try logs in
            // seconds later.
            auth_query_cache_ttl: secs(5),
            client_tls_cert_file: None,
            client_tls_key_file: None,
            server_tls: ServerTls::Disable,
            server_tls_ca_file: None,
            log_format: LogFormat::Plain,
            log_level: "info".into(),
            workers: 0,
            tcp_keepalive: secs(0),
            routing: Routing::Auto,
            shard_map_refresh_interval: Duration::from_millis(500),
            instance_name: None,
            tenant_homes_lease: secs(10),
            node_addresses: BTreeMap::new(),
            reference_reads: ReferenceReads::Coordinator,
            multi_tenant_reads: MultiTenantReads::Coordinator,
            plan_cache_size: 10_000,
            worker_retry_delay: secs(5),
            http_listen: "127.0.0.1:9930".into(),
            shard_map_max_age: secs(60),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            tenant_max_active: super::MaxActive::Off,
            tenant_max_tps: 0.0,
            tenant_statement_timeout: Duration::ZERO,
            tenant_limits: BTreeMap::new(),
        }
    }
}

/// PgBouncer 1.25's default auth_query: no row for a role that may not log in, NULL for
/// one whose password has expired.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// This host's name and the process id: unique per instance on a host, and across pods.
fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgtenant".into());
    format!("{host}:{}", std::process::id())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `session_check`: after transactions that may have changed the session (`auto`), or
/// after every transaction (`always`: also what triggers, views and policies do).
const SESSION_CHECKS: &[(&str, bool)] = &[("auto", false), ("always", true)];

/// `server_pipelining`: several clients' self-contained statements back to back on one
/// server connection while the pool is saturated (`auto`), or never (`off`).
pub(crate) const SERVER_PIPELINING: &[(&str, bool)] = &[("off", false), ("auto", true)];

pub(super) const POOL_MODES: &[(&str, PoolMode)] = &[
    ("session", PoolMode::Session),
    ("transaction", PoolMode::Transaction),
    ("statement", PoolMode::Statement),
];
const AUTH_TYPES: &[(&str, AuthType)] = &[
    ("scram-sha-256", AuthType::ScramSha256),
    ("md5", AuthType::Md5),
    ("trust", AuthType::Trust),
    ("hba", AuthType::Hba),
];
const CLIENT_TLS: &[(&str, ClientTls)] = &[
    ("disable", ClientTls::Disable),
    ("allow", ClientTls::Allow),
    ("require", ClientTls::Require),
];
const SERVER_TLS: &[(&str, ServerTls)] = &[
    ("disable", ServerTls::Disable),
    ("prefer", ServerTls::Prefer),
    ("require", ServerTls::Require),
    ("verify-ca", ServerTls::VerifyCa),
    ("verify-full", ServerTls::VerifyFull),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("plain", LogFormat::Plain), ("json", LogFormat::Json)];
pub(super) const ROUTING: &[(&str, Routing)] = &[
    ("auto", Routing::Auto),
    ("on", Routing::On),
    ("off", Routing::Off),
];
const REFERENCE_READS: &[(&str, ReferenceReads)] = &[
    ("coordinator", ReferenceReads::Coordinator),
    ("local_worker", ReferenceReads::LocalWorker),
];
const MULTI_TENANT_READS: &[(&str, MultiTenantReads)] = &[
    ("coordinator", MultiTenantReads::Coordinator),
    ("any", MultiTenantReads::Any),
];

/// `node_addresses = { "10.0.0.5:5432" = "worker-0.citus:5432" }`: both sides host:port.
fn node_addresses(v: &Value) -> Result<BTreeMap<String, String>, String> {
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
const RENAMED: &[(&str, &str)] = &[
    ("default_pool_size", "pool_size"),
    ("listen_addr", "listen"),
    ("listen_port", "listen"),
    ("client_tls_sslmode", "client_tls"),
    ("server_tls_sslmode", "server_tls"),
    ("pkt_buf", "max_message_size"),
    ("max_packet_size", "max_message_size"),
];

fn unknown_key(key: &str) -> String {
    match RENAMED.iter().find(|(old, _)| *old == key) {
        Some((_, new)) => format!("unknown key '{key}' (did you mean '{new}'?)"),
        None => format!("unknown key '{key}'"),
    }
}

fn apply_file(d: &mut Draft, table: &toml::Table, base: &Path, errs: &mut Errors) {
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
                d.databases = super::databases::parse(v, &mut e);
                for (k, m) in e {
                    errs.push(&k, m);
                }
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
            "shutdown_timeout" => seconds(v).map(|x| d.shutdown_timeout = x),
            "client_tls_cert_file" => path(v, base).map(|x| d.client_tls_cert_file = Some(x)),
            "client_tls_key_file" => path(v, base).map(|x| d.client_tls_key_file = Some(x)),
            "server_tls" => choice(v, SERVER_TLS).map(|x| d.server_tls = x),
            "server_tls_ca_file" => path(v, base).map(|x| d.server_tls_ca_file = Some(x)),
            "log_format" => choice(v, LOG_FORMATS).map(|x| d.log_format = x),
            "log_level" => string(v).map(|x| d.log_level = x),
            "workers" => count(v).map(|x| d.workers = x as usize),
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
                super::tenant_limits::max_active(v).map(|x| d.tenant_max_active = x)
            }
            "tenant_max_tps" => super::tenant_limits::max_tps(v).map(|x| d.tenant_max_tps = x),
            "tenant_statement_timeout" => {
                super::tenant_limits::timeout(v).map(|x| d.tenant_statement_timeout = x)
            }
            "tenant_limits" => {
                let mut e = Vec::new();
                d.tenant_limits = super::tenant_limits::parse(v, &mut e);
                for (k, m) in e {
                    errs.push(&k, m);
                }
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
fn apply_listeners(d: &mut Draft, v: &Value, errs: &mut Errors) {
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
fn apply_users(d: &mut Draft, v: &Value, errs: &mut Errors) {
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

/// Overrides sit above the file. Their errors say where the value came from, since the
/// operator will otherwise look for it in the file.
fn apply_overrides(d: &mut Draft, o: &Overrides, errs: &mut Errors) {
    const FROM: &str = "(from command line or environment)";
    if let Some(x) = &o.listen {
        d.primary.listen = x.clone();
    }
    if let Some(x) = &o.upstream {
        d.upstream = Some(x.clone());
    }
    if let Some(x) = &o.pool_mode {
        let r = choice_str(x, POOL_MODES).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("pool_mode", r) {
            d.pool_mode = x;
        }
    }
    if let Some(x) = o.pool_size {
        d.pool_size = x;
    }
    if let Some(x) = &o.log_format {
        let r = choice_str(x, LOG_FORMATS).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("log_format", r) {
            d.log_format = x;
        }
    }
    if let Some(x) = &o.log_level {
        d.log_level = x.clone();
    }
    if let Some(x) = o.workers {
        d.workers = x;
    }
    if let Some(x) = &o.auth_type {
        let r = choice_str(x, AUTH_TYPES).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("auth_type", r) {
            d.primary.auth_type = x;
        }
    }
    if let Some(x) = o.max_client_conn {
        d.max_client_conn = x;
    }
    if let Some(x) = o.max_startup_clients {
        d.max_startup_clients = x;
    }
    if let Some(x) = &o.server_pipelining {
        let r = choice_str(x, SERVER_PIPELINING).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("server_pipelining", r) {
            d.server_pipelining = x;
        }
    }
    if let Some(x) = o.client_login_timeout {
        let r = Duration::try_from_secs_f64(x)
            .map_err(|_| format!("expected a number of seconds, got {x} {FROM}"));
        if let Some(x) = errs.check("client_login_timeout", r) {
            d.client_login_timeout = x;
        }
    }
    if let Some(x) = &o.http_listen {
        d.http_listen = x.clone();
    }
    if let Some(x) = &o.admin_users {
        d.admin_users = split_users(x);
    }
    if let Some(x) = &o.stats_users {
        d.stats_users = split_users(x);
    }
}

/// Cross-checks on the merged values, then the `Settings`.
fn finish(
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

#[cfg(test)]
mod tests;
