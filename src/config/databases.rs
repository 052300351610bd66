//! `[databases]` and the per-user limits: which server (and database, and role) a client's
//! database name leads to, and the pool limits of that pool.
//!
//! Rules:
//! - Without `[databases]` every database name a client asks for is passed through to the
//!   upstream server, as before: the pool's database is the client's.
//! - With `[databases]`, the client's database name picks its entry, else the `*` entry;
//!   a name with neither is refused after authentication with
//!   `FATAL 3D000 no such database: NAME` (PgBouncer's message; authentication first, so
//!   that a stranger learns nothing about which databases exist).
//! - An entry's `host` and `port` default to the upstream's, `dbname` to the name the
//!   client asked for (`*` included), `user` to the client's own role: a `user` set here is
//!   PgBouncer's forced user (every client of the entry shares its pools and logs in to the
//!   server as that role, with the entry's `password` or the secret pgtenant knows for it).
//! - Limits: a `[users]` value wins over the entry's, the entry's over the global one
//!   (PgBouncer's order for pool_size and pool_mode). max_db_connections counts per entry
//!   and node, max_user_connections per server role and node (each server enforces its
//!   own role limits, so a routed cluster's workers each get the whole limit).
//! - Routing (`routing` per entry): `auto` (the default) routes an entry that leads to the
//!   upstream's server and database with the upstream's shard map (`routed`), and leaves
//!   any other entry a plain pool; `on` routes an entry that leads elsewhere with a shard
//!   map of its own, read from its own server (`own_cluster`); `off` never routes.
use std::collections::BTreeMap;

use toml::Value;

use super::load::POOL_MODES;
use super::values::*;
use super::{PoolMode, Settings};

/// One `[databases]` entry; `None` = inherit (see the module rules).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Database {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    /// Forced server role for every client of this entry.
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<u32>,
    /// Role that reads unknown users' secrets for clients of this entry (auth_query).
    pub auth_user: Option<String>,
    /// Run once on every new server connection of this entry, before any client uses it.
    pub connect_query: Option<String>,
    /// `auto` (None), `on` or `off`: see the module rules.
    pub routing: Option<super::Routing>,
    /// client_encoding, datestyle, timezone, application_name: sent in the startup packet
    /// of the entry's server connections (the server's defaults for its clients).
    pub startup: Vec<(String, String)>,
    /// Blue-green migration: the old database ("blue"); the entry's own place is green
    /// (`crate::bluegreen`).
    pub blue: Option<BluePlace>,
    /// Where transactions of no tenant (or several) go; blue unless set.
    pub default_home: Option<Home>,
    /// The entry's own `tenant_max_active` (over the global one).
    pub tenant_max_active: Option<super::MaxActive>,
}

/// The old database of a blue-green entry (`[databases.NAME.blue]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BluePlace {
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
    /// Logical replication slots on blue whose subscriber must have confirmed blue's
    /// position before a `WAIT SYNC` cutover flips; empty = every logical slot of blue's
    /// database.
    pub slots: Vec<String>,
}

/// A tenant's home in a blue-green database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Home {
    Blue,
    Green,
}

impl Home {
    pub fn as_str(self) -> &'static str {
        match self {
            Home::Blue => "blue",
            Home::Green => "green",
        }
    }

    pub fn parse(s: &str) -> Option<Home> {
        match s.to_ascii_lowercase().as_str() {
            "blue" => Some(Home::Blue),
            "green" => Some(Home::Green),
            _ => None,
        }
    }

    pub fn other(self) -> Home {
        match self {
            Home::Blue => Home::Green,
            Home::Green => Home::Blue,
        }
    }
}

impl std::fmt::Debug for Database {
    // The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .field("max_db_connections", &self.max_db_connections)
            .finish_non_exhaustive()
    }
}

/// Where a client's database name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name the pool is known by (SHOW POOLS, PAUSE): what the client asked for.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The server's database.
    pub dbname: String,
    /// A forced role (the entry's `user`); None = the client's own.
    pub user: Option<String>,
    /// The entry's password for the forced role, if it gives one.
    pub password: Option<String>,
    /// Routed with a shard map (the upstream's, or its own with `own_cluster`).
    pub routed: bool,
    /// `routing = "on"` for a place that is not the upstream's database: a cluster (shard
    /// map, refresher) of its own.
    pub own_cluster: bool,
    pub connect_query: Option<String>,
    pub startup: Vec<(String, String)>,
    /// Blue-green: the old database (host, port, its database name) and where
    /// transactions of no tenant go.
    pub blue: Option<BlueTarget>,
}

/// A blue-green entry's old database, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub slots: Vec<String>,
    pub default_home: Home,
}

/// A pool's limits, resolved (module rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    /// 0 = unlimited.
    pub max_db_connections: u32,
    /// 0 = unlimited.
    pub max_user_connections: u32,
}

/// Startup parameters an entry may set, by their pgbouncer.ini / TOML names.
pub const STARTUP_KEYS: [(&str, &str); 4] = [
    ("client_encoding", "client_encoding"),
    ("datestyle", "DateStyle"),
    ("timezone", "TimeZone"),
    ("application_name", "application_name"),
];

impl Settings {
    /// The entry for a client's database name: its own, else `*`. None with no
    /// `[databases]` at all (everything passes through) or no match.
    pub fn database_entry(&self, name: &str) -> Option<&Database> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }

    /// Where a client asking for database `name` goes; None = no such database.
    pub fn target(&self, name: &str) -> Option<Target> {
        let up = &self.upstream;
        let Some(e) = self.database_entry(name) else {
            if !self.databases.is_empty() {
                return None;
            }
            return Some(Target {
                name: name.to_string(),
                host: up.host.clone(),
                port: up.port,
                dbname: name.to_string(),
                user: None,
                password: None,
                routed: name == up.database,
                own_cluster: false,
                connect_query: None,
                startup: Vec::new(),
                blue: None,
            });
        };
        let host = e.host.clone().unwrap_or_else(|| up.host.clone());
        let port = e.port.unwrap_or(up.port);
        let dbname = e.dbname.clone().unwrap_or_else(|| name.to_string());
        let upstreams = host == up.host && port == up.port && dbname == up.database;
        let (routed, own_cluster) = match e.routing {
            None | Some(super::Routing::Auto) => (upstreams, false),
            Some(super::Routing::On) => (true, !upstreams),
            Some(super::Routing::Off) => (false, false),
        };
        // `routing = "off"` globally turns every entry's routing off.
        let on = self.routing != super::Routing::Off;
        Some(Target {
            name: name.to_string(),
            routed: routed && on,
            own_cluster: own_cluster && on,
            host,
            port,
            dbname,
            user: e.user.clone(),
            password: e.password.clone(),
            connect_query: e.connect_query.clone(),
            startup: e.startup.clone(),
            blue: e.blue.as_ref().map(|b| BlueTarget {
                host: b.host.clone(),
                port: b.port,
                dbname: b.dbname.clone().unwrap_or_else(|| name.to_string()),
                slots: b.slots.clone(),
                default_home: e.default_home.unwrap_or(Home::Blue),
            }),
        })
    }

    /// The limits of the pool of database `name` (as clients call it) and server role
    /// `user`.
    pub fn limits(&self, name: &str, user: &str) -> Limits {
        let e = self.database_entry(name);
        let u = self.users.get(user);
        let pool_size = u
            .and_then(|u| u.pool_size)
            .or_else(|| e.and_then(|e| e.pool_size))
            .unwrap_or(self.pool_size);
        Limits {
            pool_size,
            min_pool_size: e
                .and_then(|e| e.min_pool_size)
                .unwrap_or(self.min_pool_size)
                .min(pool_size),
            reserve_pool_size: e
                .and_then(|e| e.reserve_pool_size)
                .unwrap_or(self.reserve_pool_size),
            max_db_connections: e
                .and_then(|e| e.max_db_connections)
                .unwrap_or(self.max_db_connections),
            max_user_connections: u
                .and_then(|u| u.max_user_connections)
                .unwrap_or(self.max_user_connections),
        }
    }

    /// `tenant_max_active` of database `name`: the entry's, else the global one.
    pub fn tenant_max_active_of(&self, name: &str) -> super::MaxActive {
        self.database_entry(name)
            .and_then(|e| e.tenant_max_active)
            .unwrap_or(self.tenant_max_active)
    }

    /// Pool mode of database `name` for server role `user`: the user's, the entry's, the
    /// global one.
    pub fn pool_mode_of(&self, name: &str, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or_else(|| self.database_entry(name).and_then(|e| e.pool_mode))
            .unwrap_or(self.pool_mode)
    }

    /// auth_user for clients of database `name`: the entry's, else the global one.
    pub fn auth_user_for(&self, name: &str) -> Option<&str> {
        self.database_entry(name)
            .and_then(|e| e.auth_user.as_deref())
            .or(self.auth_user.as_deref())
    }
}

/// `[databases.NAME]` tables (TOML). Errors are "databases.NAME.key: message".
pub(super) fn parse(v: &Value, errs: &mut Vec<(String, String)>) -> BTreeMap<String, Database> {
    let mut out = BTreeMap::new();
    let Some(t) = v.as_table() else {
        errs.push((
            "databases".into(),
            "expected tables like [databases.NAME]".into(),
        ));
        return out;
    };
    for (name, e) in t {
        let key = format!("databases.{name}");
        if name.is_empty() {
            errs.push((
                "databases".into(),
                "a database name may not be empty".into(),
            ));
            continue;
        }
        if crate::admin::is_admin_database(name) {
            errs.push((
                key,
                "is the admin console's name; choose another name for the entry".into(),
            ));
            continue;
        }
        let Some(t) = e.as_table() else {
            errs.push((
                key,
                "expected a table with host, port, dbname, user, …".into(),
            ));
            continue;
        };
        let mut d = Database::default();
        for (k, v) in t {
            let text = |v: &Value| -> Result<Option<String>, String> {
                string(v).map(|s| Some(s).filter(|s| !s.is_empty()))
            };
            let r: Result<(), String> = match k.as_str() {
                "host" => text(v).map(|x| d.host = x),
                "port" => port(v).map(|x| d.port = Some(x)),
                "dbname" => text(v).map(|x| d.dbname = x),
                "user" => text(v).map(|x| d.user = x),
                // Never echo the value: it is a secret.
                "password" => match v.as_str() {
                    Some(s) => {
                        d.password = Some(s.to_string());
                        Ok(())
                    }
                    None => Err(format!("expected a string, got {}", v.type_str())),
                },
                "pool_size" => positive(v).map(|x| d.pool_size = Some(x)),
                "min_pool_size" => count(v).map(|x| d.min_pool_size = Some(x)),
                "reserve_pool_size" => count(v).map(|x| d.reserve_pool_size = Some(x)),
                "pool_mode" => choice(v, POOL_MODES).map(|x| d.pool_mode = Some(x)),
                "max_db_connections" => count(v).map(|x| d.max_db_connections = Some(x)),
                "auth_user" => text(v).map(|x| d.auth_user = x),
                "connect_query" => text(v).map(|x| d.connect_query = x),
                "routing" => choice(v, super::load::ROUTING).map(|x| d.routing = Some(x)),
                "blue" => blue_place(v).map(|x| d.blue = Some(x)),
                "tenant_max_active" => super::tenant_limits::max_active(v)
                    .map(|x| d.tenant_max_active = Some(x)),
                "default_home" => match v.as_str().and_then(Home::parse) {
                    Some(h) => {
                        d.default_home = Some(h);
                        Ok(())
                    }
                    None => Err(format!("expected \"blue\" or \"green\", got {}", got(v))),
                },
                k if startup_name(k).is_some() => {
                    let name = startup_name(k).unwrap_or(k);
                    let value = text(v).and_then(|x| match x {
                        Some(x) if k == "client_encoding" => {
                            crate::protocol::encodings::canonical(&x)
                                .map(|c| Some(c.to_string()))
                                .ok_or_else(|| format!("unknown encoding '{x}'"))
                        }
                        x => Ok(x),
                    });
                    value.map(|x| d.startup.extend(x.map(|x| (name.to_string(), x))))
                }
                other => Err(format!(
                    "unknown key '{other}' (expected host, port, dbname, user, password, pool_size, min_pool_size, reserve_pool_size, pool_mode, max_db_connections, auth_user, connect_query, routing, blue, default_home, tenant_max_active, client_encoding, datestyle, timezone, application_name)"
                )),
            };
            if let Err(m) = r {
                errs.push((format!("{key}.{k}"), m));
            }
        }
        if let (Some(min), Some(size)) = (d.min_pool_size, d.pool_size) {
            if min > size {
                errs.push((
                    format!("{key}.min_pool_size"),
                    format!("{min} is larger than the entry's pool_size ({size})"),
                ));
            }
        }
        if d.default_home.is_some() && d.blue.is_none() {
            errs.push((
                format!("{key}.default_home"),
                "needs blue: default_home is for a blue-green entry".into(),
            ));
        }
        if d.password.is_some() && d.user.is_none() {
            errs.push((
                format!("{key}.password"),
                "needs user: the password is the forced user's".into(),
            ));
        }
        out.insert(name.clone(), d);
    }
    out
}

/// `blue = { host = "…", port = 5432, dbname = "…", slots = ["…"] }`.
fn blue_place(v: &Value) -> Result<BluePlace, String> {
    let Some(t) = v.as_table() else {
        return Err(format!(
            "expected a table such as {{ host = \"old-db\", port = 5432 }}, got {}",
            got(v)
        ));
    };
    let mut host = None;
    let mut p = None;
    let mut dbname = None;
    let mut slots = Vec::new();
    for (k, v) in t {
        let r = match k.as_str() {
            "host" => string(v).map(|x| host = Some(x).filter(|h| !h.is_empty())),
            "port" => port(v).map(|x| p = Some(x)),
            "dbname" => string(v).map(|x| dbname = Some(x).filter(|d| !d.is_empty())),
            "slots" => match v.as_array() {
                Some(a) => a.iter().try_for_each(|x| string(x).map(|s| slots.push(s))),
                None => Err(format!(
                    "slots: expected a list of slot names, got {}",
                    got(v)
                )),
            },
            other => Err(format!(
                "unknown key '{other}' (expected host, port, dbname, slots)"
            )),
        };
        r.map_err(|m| {
            if m.starts_with("unknown key") {
                m
            } else {
                format!("{k}: {m}")
            }
        })?;
    }
    Ok(BluePlace {
        host: host.ok_or("needs host (the old database's server)")?,
        port: p.unwrap_or(5432),
        dbname,
        slots,
    })
}

/// PostgreSQL's name of a startup setting an entry may set (`STARTUP_KEYS`).
fn startup_name(key: &str) -> Option<&'static str> {
    STARTUP_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, n)| *n)
}

fn port(v: &Value) -> Result<u16, String> {
    match v {
        Value::Integer(n) if (1..=65535).contains(n) => Ok(*n as u16),
        Value::String(s) => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("expected a port from 1 to 65535, got '{s}'")),
        _ => Err(format!("expected a port from 1 to 65535, got {}", got(v))),
    }
}
