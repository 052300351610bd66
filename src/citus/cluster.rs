//! Routed databases: each has a coordinator, a login that reads its Citus catalog, and a
//! shard map kept fresh by a refresher of its own.
//!
//! Rules:
//! - The upstream's database is the *primary* cluster: its map is `Context::shard_map`
//!   (the admin console's SHOW SHARDS/NODES, the metrics, /readyz), its coordinator
//!   `Context::coordinator`, its catalog read as the upstream's user.
//! - A `[databases]` entry with `routing = "on"` that leads to another server or database
//!   has a cluster of its own (`Target::own_cluster`): its coordinator is the entry's
//!   server, its catalog is read as the entry's forced user (with the entry's password or
//!   the secret pgtenant knows), else as its auth_user, else (only on the upstream's own
//!   server: the upstream's secret never goes elsewhere) as the upstream's user; its
//!   workers are named
//!   `<entry>/worker-<group>` so that node health, SHOW POOLS and the metrics never mix
//!   them with another cluster's.
//! - Clusters follow the configuration ([`sync`], at start and on RELOAD): one whose entry
//!   went away or now leads elsewhere stops its refresher; its map stays with the sessions
//!   that hold it until they move (`Pools::retire_changed`).
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ShardMapHandle;
use crate::auth::{Secret, ServerCredential};
use crate::config::Settings;
use crate::context::Context;
use crate::pool::Node;

/// Where a cluster's catalog is: its coordinator's host and port, and the database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// A forced role and its password (if the entry gives one).
type Role = (String, Option<String>);

pub struct Cluster {
    /// The entry it was made for; None = the primary (the upstream's database).
    pub entry: Option<String>,
    pub key: ClusterKey,
    /// The entry's forced role and its password, which read the catalog.
    user: Option<Role>,
    pub map: Arc<ShardMapHandle>,
    /// Ends its refresher (a secondary cluster's entry went away or changed).
    pub stop: CancellationToken,
}

/// Who reads a cluster's catalog, and where.
pub struct Login {
    pub node: Node,
    pub dbname: String,
    pub user: String,
    pub credential: Option<ServerCredential>,
}

impl Cluster {
    /// The upstream's database, with the context's map.
    pub fn primary(s: &Settings, map: Arc<ShardMapHandle>) -> Cluster {
        Cluster {
            entry: None,
            key: ClusterKey {
                host: s.upstream.host.clone(),
                port: s.upstream.port,
                dbname: s.upstream.database.clone(),
            },
            user: None,
            map,
            stop: CancellationToken::new(),
        }
    }

    pub fn is_primary(&self) -> bool {
        self.entry.is_none()
    }

    /// How its workers' node names begin (`worker-` for the primary).
    pub fn worker_prefix(&self) -> String {
        match &self.entry {
            None => "worker-".into(),
            // ':' would make the name look like a server's own (`Node::is_worker`).
            Some(e) => format!("{}/worker-", e.replace(':', "_")),
        }
    }

    /// Its coordinator node now (the primary's follows RELOAD of `upstream`).
    pub fn coordinator(&self, ctx: &Context) -> Node {
        let primary = ctx.coordinator.load();
        match self.entry {
            None => (**primary).clone(),
            Some(_) => Node::server(&primary, &self.key.host, self.key.port),
        }
    }

    /// The login that reads its catalog.
    pub fn login(&self, ctx: &Context, s: &Settings) -> Login {
        let (user, password) = match (&self.user, self.entry.is_some()) {
            (Some((u, p)), true) => (u.clone(), p.clone()),
            _ => (s.upstream.user.clone(), None),
        };
        let secret = match password {
            Some(p) => Some(Secret::parse(&p)),
            None => ctx.users.load().get(&user).cloned(),
        };
        Login {
            node: self.coordinator(ctx),
            dbname: match self.entry {
                None => s.upstream.database.clone(),
                Some(_) => self.key.dbname.clone(),
            },
            credential: secret
                .as_ref()
                .and_then(|x| ServerCredential::from_secret(x, &user, None)),
            user,
        }
    }

    /// A connection of its own (outside every pool: pgtenant's own reads and writes must
    /// not create pools) to its coordinator, as the login that reads its catalog.
    /// `purpose` is its application_name (`pgtenant <purpose>`), `place` names the server
    /// in errors ("green's coordinator").
    pub async fn open_own(
        &self,
        ctx: &Context,
        purpose: &str,
        place: &str,
    ) -> Result<crate::backend::ServerConn, String> {
        let s = ctx.settings();
        let l = self.login(ctx, &s);
        let params =
            ctx.pools
                .own_connect_params(&l.node, &l.dbname, &l.user, l.credential, purpose);
        tokio::time::timeout(s.server_connect_timeout, crate::backend::connect(&params))
            .await
            .map_err(|_| format!("connecting to {place} timed out"))?
            .map_err(|x| format!("connecting to {place}: {x}"))
    }
}

/// The cluster a session of database `name` is routed with (None: not routed).
pub fn for_target(ctx: &Context, t: &crate::config::Target) -> Option<Arc<Cluster>> {
    if !t.routed {
        return None;
    }
    if !t.own_cluster {
        return Some(ctx.primary_cluster.clone());
    }
    let key = ClusterKey {
        host: t.host.clone(),
        port: t.port,
        dbname: t.dbname.clone(),
    };
    ctx.clusters.get(&key).map(|c| c.clone())
}

/// Make the clusters the settings ask for and stop those they no longer do. Refreshers
/// are spawned for new ones.
pub fn sync(ctx: &Arc<Context>) {
    let s = ctx.settings();
    let mut wanted: Vec<(ClusterKey, String, Option<Role>)> = Vec::new();
    for name in s.databases.keys() {
        let Some(t) = s.target(name).filter(|t| t.own_cluster) else {
            continue;
        };
        let key = ClusterKey {
            host: t.host,
            port: t.port,
            dbname: t.dbname,
        };
        // The role that reads the catalog: the forced user, else the entry's (or the
        // global) auth_user; the upstream's user only on the upstream's own server
        // (`config` refuses the rest), so its secret never goes to another server.
        let reader = t
            .user
            .map(|u| (u, t.password))
            .or_else(|| s.auth_user_for(name).map(|u| (u.to_string(), None)));
        if wanted.iter().all(|(k, _, _)| *k != key) {
            wanted.push((key, name.clone(), reader));
        }
    }
    ctx.clusters.retain(|key, c| {
        let keep = wanted
            .iter()
            .any(|(k, e, u)| k == key && c.entry.as_deref() == Some(e.as_str()) && c.user == *u);
        if !keep {
            tracing::info!(
                entry = c.entry.as_deref().unwrap_or(""),
                "routing of a database entry ended: its shard map is no longer refreshed"
            );
            c.stop.cancel();
        }
        keep
    });
    for (key, entry, user) in wanted {
        if ctx.clusters.contains_key(&key) {
            continue;
        }
        let c = Arc::new(Cluster {
            entry: Some(entry),
            key: key.clone(),
            user,
            map: Arc::default(),
            stop: ctx.shutdown.child_token(),
        });
        tracing::info!(entry = c.entry.as_deref().unwrap_or(""), host = %key.host, port = key.port, database = %key.dbname, "routing a database entry with a shard map of its own");
        ctx.clusters.insert(key, c.clone());
        super::spawn_refresher(ctx.clone(), c.clone(), c.stop.clone());
    }
}
