//! What every client session shares: settings, users, pools, cancel keys, TLS, shutdown.
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::auth::UserStore;
use crate::citus::ShardMapHandle;
use crate::config::Settings;
use crate::frontend::{CancelRegistry, ListenHub, StatementRegistry};
use crate::pool::{Node, Pools};
use crate::router::Router;

pub struct Context {
    pub settings: Arc<ArcSwap<Settings>>,
    pub users: ArcSwap<UserStore>,
    pub pools: Arc<Pools>,
    pub cancels: Arc<CancelRegistry>,
    /// Named prepared statements, one entry per distinct statement in the process.
    pub statements: StatementRegistry,
    /// Custom setting names the databases' own functions and policies use.
    pub setting_names: crate::frontend::SettingNames,
    /// LISTEN on behalf of transaction-mode clients.
    pub listens: ListenHub,
    /// TLS towards clients; None when no certificate is configured.
    pub client_tls: ArcSwap<Option<Arc<rustls::ServerConfig>>>,
    /// The rules of `auth_type = hba` (None when no listener uses it).
    pub hba: ArcSwap<Option<Arc<crate::auth::hba::Hba>>>,
    pub router: Router,
    /// The Citus shard map of the upstream's database (None until loaded, or when the
    /// upstream is not Citus); the primary cluster's.
    pub shard_map: Arc<ShardMapHandle>,
    /// The upstream's database as a routed cluster (`citus::cluster`).
    pub primary_cluster: Arc<crate::citus::Cluster>,
    /// Bumped after every RELOAD and SET: sessions look up their home again at their next
    /// transaction when it moved (`Session::move_home`).
    pub config_epoch: std::sync::atomic::AtomicU64,
    /// `[databases]` entries routed with a shard map of their own, by catalog place.
    pub clusters: dashmap::DashMap<crate::citus::ClusterKey, Arc<crate::citus::Cluster>>,
    /// Routed transactions by destination and reason.
    pub routes: crate::frontend::routing::RouteStats,
    /// Workers that could not be reached.
    pub node_health: crate::frontend::routing::NodeHealth,
    /// Whose turn it is in the read spread (`multi_tenant_reads = any`).
    pub read_spread: crate::frontend::routing::Spread,
    pub coordinator: ArcSwap<Node>,
    /// Open client connections, from accept to close (metrics, SHOW LISTS).
    pub clients: AtomicU32,
    /// Who may hold a connection: max_startup_clients, max_client_conn.
    pub admission: crate::frontend::Admission,
    /// Secrets of users pgtenant does not know, read from the server (auth_query).
    pub auth_query: crate::frontend::AuthQuery,
    /// SCRAM secrets derived from plain passwords: user → (password, secret).
    pub scram_cache: dashmap::DashMap<String, (String, crate::auth::ScramSecret)>,
    /// Fires on SIGTERM/SIGINT: idle clients leave, busy ones finish their transaction.
    pub shutdown: CancellationToken,
    /// The admin console's state: connected clients, overrides for RELOAD, start time.
    pub admin: crate::admin::AdminState,
    /// Liveness and readiness state for /healthz and /readyz.
    pub health: crate::metrics::Health,
    /// The busiest tenants (SHOW TENANTS), in bounded memory.
    pub tenants: crate::metrics::tenants::Tenants,
    /// Blue-green databases: tenant homes, holds, leases (`bluegreen`).
    pub bluegreen: crate::bluegreen::BlueGreen,
    /// Every tenant's transactions over the last minutes and hours (SHOW TENANT ACTIVITY,
    /// SHOW QUIET TENANTS), in fixed memory; keyed by `tenants`' hash.
    pub activity: crate::metrics::activity::Activity,
    /// Per-tenant limits: run-time overrides, rate buckets, counts (`limits`).
    pub tenant_limits: crate::limits::TenantLimits,
    /// Startup settings, one copy per distinct set (clients of one app share it).
    pub startup_params: crate::frontend::params::SharedParams,
    /// Startup settings a server accepted, as it spells them (`frontend::startup_check`).
    pub startup_checks: crate::frontend::startup_check::StartupChecks,
}

impl Context {
    /// The SCRAM secret for a user with a plain password, derived once (again only if the
    /// password changes on reload) with the user's stable mock salt: such a user is shown
    /// the same salt at every login, as a user with a stored SCRAM secret or an unknown
    /// one is (auth::scram).
    pub fn scram_secret_for(&self, user: &str, password: &str) -> crate::auth::ScramSecret {
        if let Some(e) = self.scram_cache.get(user) {
            if e.0 == password {
                return e.1.clone();
            }
        }
        let secret = crate::auth::scram::secret_for_password(user, password);
        self.scram_cache
            .insert(user.to_owned(), (password.to_owned(), secret.clone()));
        secret
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }
}
