//! The pool a client's database name leads to: its `[databases]` entry's server, database
//! and forced role (`config::databases` has the rules), or the upstream's.
//!
//! Rules:
//! - A target on the upstream's host and port uses the coordinator node (so that a routed
//!   entry's worker pools and SHOW NODES name it the same); any other server is a node of
//!   its own, named `host:port`.
//! - A forced role's server credential is the entry's password, else the secret pgtenant
//!   knows for that role (config users, auth_file); never the client's.
//! - The client's own credential (what its login proved) opens its own role's pools.
use std::sync::Arc;

use crate::auth::{Secret, ServerCredential};
use crate::config::Settings;
use crate::context::Context;
use crate::pool::{Node, Pool, PoolKey};

/// A client's home pool and the cluster its statements are routed with (None: not
/// routed).
pub struct Home {
    pub pool: Arc<Pool>,
    pub cluster: Option<Arc<crate::citus::Cluster>>,
    /// A blue-green entry's old database: its pool and the entry's homes (`bluegreen`).
    pub blue: Option<Arc<BlueHome>>,
}

/// The blue side of a blue-green entry, for one client: where its tenants in blue (and,
/// with `default_home = blue`, its transactions of no tenant) go.
pub struct BlueHome {
    pub pool: Arc<Pool>,
    pub entry: Arc<crate::bluegreen::Entry>,
    pub default_home: crate::config::Home,
}

/// The home pool of a client of database `name` that logged in as `user` with
/// `credential`. None = no such database (no entry and no `*`).
pub fn home(
    ctx: &Context,
    s: &Settings,
    name: &str,
    user: &str,
    credential: Option<ServerCredential>,
) -> Option<Home> {
    let t = s.target(name)?;
    let node = node_for(ctx, &t.host, t.port);
    let (role, credential) = match &t.user {
        Some(forced) => {
            let secret = match &t.password {
                Some(p) => Some(Secret::parse(p)),
                None => ctx.users.load().get(forced).cloned(),
            };
            let c = secret
                .as_ref()
                .and_then(|x| ServerCredential::from_secret(x, forced, None));
            (forced.as_str(), c)
        }
        None => (user, credential),
    };
    let key = PoolKey {
        node,
        database: name.into(),
        dbname: t.dbname.as_str().into(),
        user: role.into(),
        forced: t.user.is_some(),
    };
    let blue = t.blue.as_ref().and_then(|b| {
        // The store names the entry as the configuration does (`*` for the fallback).
        let entry_name = if s.databases.contains_key(name) {
            name
        } else {
            "*"
        };
        let entry = ctx.bluegreen.get(entry_name)?;
        let key = PoolKey {
            node: node_for(ctx, &b.host, b.port),
            database: name.into(),
            dbname: b.dbname.as_str().into(),
            user: role.into(),
            forced: t.user.is_some(),
        };
        let pool = ctx.pools.get(&key);
        pool.set_credential(credential.clone());
        Some(Arc::new(BlueHome {
            pool,
            entry,
            default_home: b.default_home,
        }))
    });
    let pool = ctx.pools.get(&key);
    pool.set_credential(credential);
    Some(Home {
        pool,
        cluster: crate::citus::cluster::for_target(ctx, &t),
        blue,
    })
}

/// What a client asking for a database with no entry (and no `*`) is told, as PgBouncer.
pub fn no_such_database(name: &str) -> crate::net::Frame {
    crate::protocol::build::fatal(
        crate::protocol::sqlstate::INVALID_CATALOG_NAME,
        &format!("no such database: {name}"),
    )
}

/// The node of a server: the coordinator's when it is the upstream's host and port, else
/// one named `host:port` (`Node::server`).
pub fn node_for(ctx: &Context, host: &str, port: u16) -> Node {
    Node::server(&ctx.coordinator.load(), host, port)
}
