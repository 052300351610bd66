//! The settings model: what pgtenant can be told, where it is told (file < env < flags),
//! and validation that names the offending key.
//!
//! `Settings` is the fully-resolved, validated configuration. It is immutable once built;
//! a reload builds a new one and the server swaps it in (`arc_swap`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod databases;
mod load;
pub mod pgbouncer;
pub mod tenant_limits;
mod upstream;
mod values;

pub use databases::{BluePlace, BlueTarget, Database, Home, Limits, Target};
pub use load::{load, reload, ConfigError, Overrides};
pub use tenant_limits::{canonical_tenant, MaxActive, TenantOverride};
pub use upstream::Upstream;
pub(crate) use values::split_users;

/// How server connections are shared between clients (as in PgBouncer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A server connection is held for one transaction (the default).
    #[default]
    Transaction,
    /// A server connection is held for one statement; transactions are refused.
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AuthType {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
    /// The method comes from `auth_hba_file` (pg_hba.conf syntax), per connection.
    #[serde(rename = "hba")]
    Hba,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Md5 => "md5",
            AuthType::Trust => "trust",
            AuthType::Hba => "hba",
        }
    }
}

/// TLS towards clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// Refuse SSLRequest (answer 'N').
    #[default]
    Disable,
    /// Accept TLS when the client asks, plain otherwise.
    Allow,
    /// Refuse clients that do not use TLS.
    Require,
}

/// TLS towards servers (libpq's sslmode names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTls {
    #[default]
    Disable,
    /// Try TLS, fall back to plain if the server refuses; no certificate check.
    Prefer,
    /// TLS or fail; no certificate check.
    Require,
    /// TLS, the chain must lead to the CA file; the host name is not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

/// Tenant routing: `auto` routes when the upstream is a Citus coordinator (its catalog
/// tables exist), `on` insists (no routing until a shard map loads), `off` never routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    #[default]
    Auto,
    On,
    Off,
}

/// Where statements that read only reference tables go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceReads {
    #[default]
    Coordinator,
    /// Any worker (all hold a copy); pgtenant uses the first worker that is up.
    LocalWorker,
}

/// Where reads that no tenant pins go (`multi_tenant_reads`): multi-tenant and no-key
/// SELECTs and reference-table reads that are certainly read-only (`router`, "Read-only
/// statements") and form a transaction of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MultiTenantReads {
    #[default]
    Coordinator,
    /// Round-robin over the coordinator and the workers with Citus metadata that are up
    /// (Citus 11+: every node with metadata plans and runs distributed queries).
    Any,
}

impl MultiTenantReads {
    pub fn as_str(self) -> &'static str {
        match self {
            MultiTenantReads::Coordinator => "coordinator",
            MultiTenantReads::Any => "any",
        }
    }
}

impl ReferenceReads {
    pub fn as_str(self) -> &'static str {
        match self {
            ReferenceReads::Coordinator => "coordinator",
            ReferenceReads::LocalWorker => "local_worker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// One address pgtenant accepts clients on, with its own auth and TLS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub auth_type: AuthType,
    pub client_tls: ClientTls,
}

/// A user pgtenant knows, with the secret clients must prove and pgtenant uses towards
/// the server. `password` is plain text, an `md5…` hash or a `SCRAM-SHA-256$…` secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub password: Option<String>,
    /// Overrides the global pool_size for this user's pools.
    pub pool_size: Option<u32>,
    /// Overrides the global pool_mode for this user.
    pub pool_mode: Option<PoolMode>,
    /// Server connections of this role per node at most (0 = unlimited); overrides the
    /// global max_user_connections.
    pub max_user_connections: Option<u32>,
}

impl std::fmt::Debug for UserSettings {
    // Never print secrets, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSettings")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .field("max_user_connections", &self.max_user_connections)
            .finish()
    }
}

/// The resolved configuration. Durations of zero mean "disabled" where PgBouncer says so.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the settings came from (for reload); None with zero files.
    pub config_file: Option<PathBuf>,
    /// `auth_hba_file`: the rules of `auth_type = hba` (pg_hba.conf syntax).
    pub auth_hba_file: Option<PathBuf>,
    /// `unix_socket_dir`: also listen on `<dir>/.s.PGSQL.<port of listen>` (None: TCP
    /// only). Clients there log in with the primary listener's auth_type.
    pub unix_socket_dir: Option<PathBuf>,
    /// `unix_socket_mode`: the socket file's permissions (default 0o777).
    pub unix_socket_mode: u32,
    /// What reading the file left out (a PgBouncer configuration's settings that have no
    /// effect on clients), logged at start and reload.
    pub notes: Vec<String>,
    pub listeners: Vec<Listener>,
    /// The coordinator (or plain PostgreSQL server).
    pub upstream: Upstream,
    pub pool_mode: PoolMode,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: Duration,
    /// Logged-in clients at once (admin console users have 5 more slots).
    pub max_client_conn: u32,
    /// Connections still logging in at once; a new one beyond it closes the one that has
    /// waited longest.
    pub max_startup_clients: u32,
    /// From connect to authenticated; at least 1 s (no "disabled").
    pub client_login_timeout: Duration,
    /// Server connections per database entry and node; 0 = unlimited.
    pub max_db_connections: u32,
    /// Server connections per server role and node; 0 = unlimited.
    pub max_user_connections: u32,
    /// `[databases]`: entries by the name clients ask for (`*` = the fallback); empty =
    /// every name passes through to the upstream (`databases.rs`).
    pub databases: BTreeMap<String, Database>,
    /// 0 = wait forever.
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    /// 0 = never close idle servers.
    pub server_idle_timeout: Duration,
    /// 0 = no lifetime limit.
    pub server_lifetime: Duration,
    /// A pool with no client and no server connection for this long is removed (a
    /// database that does not exist, or one no longer used); 0 = pools are kept.
    pub pool_idle_timeout: Duration,
    /// 0 = disabled.
    pub idle_transaction_timeout: Duration,
    /// Run when a server connection leaves a client in session mode. Empty = none.
    pub server_reset_query: String,
    /// Also run the reset query in transaction and statement mode.
    pub server_reset_query_always: bool,
    /// `session_check = always`: read the session back after every transaction in
    /// transaction and statement mode, not only after those that may have changed it.
    pub session_check_always: bool,
    /// `server_pipelining = auto`: while a pool is saturated, the self-contained
    /// statements of several waiting clients go back to back on one server connection
    /// (`pool::batch`).
    pub server_pipelining: bool,
    /// The most clients' statements one server connection takes at once (2–64).
    pub server_pipeline_depth: u32,
    /// Run on a server that has been idle longer than server_check_delay. Empty = none.
    pub server_check_query: String,
    pub server_check_delay: Duration,
    /// How often SHOW STATS' averages are recomputed: avg_* cover the last full period
    /// (PgBouncer's stats_period, 60 s).
    pub stats_period: Duration,
    /// Largest message accepted from a client or server, in bytes.
    pub max_message_size: u32,
    /// Bytes of large messages (over 1 MiB each) all connections together may hold
    /// while reading and forwarding them; 0 = no limit (`net::budget`).
    pub max_buffered_message_bytes: u32,
    /// Named prepared statements kept per server connection (LRU); 0 = no tracking,
    /// named statements are forwarded as they are (PgBouncer's max_prepared_statements).
    pub max_prepared_statements: u32,
    /// Channels one client may LISTEN to at once in transaction/statement mode (its
    /// LISTENs go onto its pool's one listening connection); 0 = no limit.
    pub max_listen_channels: u32,
    /// Distinct channels a pool's listening connection may listen to, over all its
    /// clients (PostgreSQL scans a backend's channel list per LISTEN and per
    /// notification); 0 = no limit.
    pub max_pool_listen_channels: u32,
    pub shutdown_timeout: Duration,
    /// PgBouncer-style userlist.txt ("user" "secret" per line).
    pub auth_file: Option<PathBuf>,
    /// Users from the TOML file (the upstream URL's user is added by the loader).
    pub users: BTreeMap<String, UserSettings>,
    /// Role that reads the secrets of users pgtenant does not know, with `auth_query`;
    /// None = only the users pgtenant knows may log in (PgBouncer's auth_user).
    pub auth_user: Option<String>,
    /// The query, with `$1` = the user name; returns (user name, password) or no row.
    pub auth_query: String,
    /// Database the query runs in; None = the client's own database.
    pub auth_dbname: Option<String>,
    /// How long a refusal from auth_query (no such role, no login, no valid password) is
    /// remembered for that name; 0 = ask at every login.
    pub auth_query_cache_ttl: Duration,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub server_tls: ServerTls,
    pub server_tls_ca_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// tracing EnvFilter directive, e.g. "info" or "pgtenant=debug".
    pub log_level: String,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// The I/O engine asked for (read at start only; see `net::uring`).
    pub io_engine: crate::net::uring::IoEngine,
    /// Keep-alive for client and server sockets; 0 = OS default.
    pub tcp_keepalive: Duration,
    pub routing: Routing,
    /// How often the shard map is checked for changes (a cheap query; full load on change).
    pub shard_map_refresh_interval: Duration,
    /// This instance's name in the tenant homes store (blue-green migration); unique per
    /// instance (default: host name and process id).
    pub instance_name: String,
    /// How long an instance's lease on the tenant homes lasts without renewal (renewed
    /// every quarter of it); a cutover waits this long for an instance that does not
    /// answer.
    pub tenant_homes_lease: Duration,
    /// Rewrites of node addresses as Citus stores them ("host:port") to what pgtenant
    /// should connect to (e.g. Kubernetes service names).
    pub node_addresses: BTreeMap<String, String>,
    pub reference_reads: ReferenceReads,
    pub multi_tenant_reads: MultiTenantReads,
    /// Statement shapes whose route is cached.
    pub plan_cache_size: usize,
    /// How long a worker that could not be reached is skipped (statements go to the
    /// coordinator meanwhile); doubles on repeated failures up to 60 s.
    pub worker_retry_delay: Duration,
    /// The HTTP listener for /metrics, /healthz and /readyz; None = off (`http_listen = ""`).
    pub http_listen: Option<SocketAddr>,
    /// /readyz fails when the Citus shard map was last confirmed longer ago than this.
    pub shard_map_max_age: Duration,
    /// Users allowed every admin console command (database `pgtenant` / `pgbouncer`).
    pub admin_users: Vec<String>,
    /// Users allowed the admin console's SHOW commands only.
    pub stats_users: Vec<String>,
    /// Per-tenant limits (`tenant_limits.rs`, enforced by `crate::limits`): server
    /// connections of one pool one tenant may hold at once.
    pub tenant_max_active: MaxActive,
    /// Transactions per second one tenant may start through this instance; 0 = no limit.
    pub tenant_max_tps: f64,
    /// A tenant's statement running longer is cancelled; 0 = none.
    pub tenant_statement_timeout: Duration,
    /// `[tenant_limits]`: overrides for named tenants (canonical value → override).
    pub tenant_limits: BTreeMap<String, TenantOverride>,
    /// Derived ([`Settings::derive`]): is any tenant limit configured?
    tenant_limits_on: bool,
}

impl Settings {
    /// Is any per-tenant limit configured (a default, an entry's, or a named tenant's)?
    /// When none is (and none was set at run time), transactions carry no tenant claim
    /// and pools queue in plain FIFO order: the limits cost nothing.
    /// Read per routed transaction: kept in a field, computed by [`Settings::derive`].
    pub fn tenant_limits_configured(&self) -> bool {
        self.tenant_limits_on
    }

    /// Compute the derived fields again after a change (load, SET).
    pub fn derive(&mut self) {
        self.tenant_limits_on = self.tenant_limits_any();
    }

    fn tenant_limits_any(&self) -> bool {
        !self.tenant_max_active.is_off()
            || self.tenant_max_tps > 0.0
            || !self.tenant_statement_timeout.is_zero()
            || !self.tenant_limits.is_empty()
            || self
                .databases
                .values()
                .any(|d| d.tenant_max_active.is_some_and(|m| !m.is_off()))
    }

    /// The first listener's address (what most callers and tests mean by "the port").
    pub fn primary_listen(&self) -> SocketAddr {
        self.listeners[0].addr
    }
}
