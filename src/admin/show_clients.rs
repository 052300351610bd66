//! SHOW CLIENTS and SHOW SERVERS (same columns, as in PgBouncer).
//!
//! `ptr` is the object's id in hex (clients and servers count separately); `link` is the
//! peer's `ptr`: a client's server while one is lent to it, and that server's client.
//! `request_time`: a client's latest request (to the second); a server's last use (when
//! it went back to the pool; while lent, its client's latest request). `wait` is a
//! client's wait for a server; 0 for servers, as in PgBouncer. `remote_pid`: 0 for clients
//! (TCP), the backend pid for servers. `prepared_statements`: the named protocol-level
//! statements in a client's view (transaction and statement mode), those prepared on a
//! server connection.
use std::collections::HashMap;
use std::time::SystemTime;

use super::{format_time, pool_database, ResultSet};
use crate::context::Context;

pub const SOCKETS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

fn addr_parts(a: Option<crate::admin::registry::Addr>) -> (String, String) {
    match a {
        Some(a) => (a.ip().to_string(), a.port().to_string()),
        None => ("unix".into(), "0".into()),
    }
}

pub fn clients(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(SOCKETS);
    for c in ctx.admin.clients.all() {
        let (addr, port) = addr_parts(c.addr);
        let (laddr, lport) = addr_parts(c.local_addr);
        let console = c.session().map(|s| &s.console);
        // The coarse clock may lag the login by a second.
        let request = console
            .and_then(|s| s.request_time())
            .map_or(c.connect_time(), |t| t.max(c.connect_time()));
        let link = console.map_or(0, |s| s.link());
        // PgBouncer: active (linked to a server, or idle in a session-mode session),
        // waiting (for a server), idle (transaction mode, no server). The console's own
        // sessions are active.
        let state = c.session().map_or("active", |s| s.kind().as_str());
        let waited = c.session().and_then(|s| s.waited()).unwrap_or_default();
        rs.push_values([
            "C".to_string(),
            c.user.to_string(),
            c.database.to_string(),
            "none".into(),
            state.into(),
            addr,
            port,
            laddr,
            lport,
            format_time(c.connect_time()),
            format_time(request),
            waited.as_secs().to_string(),
            waited.subsec_micros().to_string(),
            "0".into(),
            format!("{:x}", c.id),
            ptr_or_empty(link),
            "0".into(),
            if c.tls { "TLS".into() } else { String::new() },
            c.application_name.to_string(),
            console.map_or(0, |s| s.prepared()).to_string(),
            c.id.to_string(),
        ]);
    }
    rs
}

/// A hex id, or empty for none (0).
fn ptr_or_empty(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!("{id:x}")
    }
}

pub fn servers(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(SOCKETS);
    // Server id → (client id, the client's latest request), from the clients' links.
    let linked: HashMap<u64, (u64, Option<SystemTime>)> = ctx
        .admin
        .clients
        .all()
        .iter()
        .filter_map(|c| {
            let s = &c.session()?.console;
            let link = s.link();
            (link != 0).then(|| (link, (c.id, s.request_time())))
        })
        .collect();
    for p in super::show_pools::sorted_pools(ctx) {
        for (s, state, close_needed) in p.servers() {
            let (laddr, lport) = addr_parts(s.local_addr.map(Into::into));
            let client = linked.get(&s.id);
            let request = match (s.last_used, client) {
                (Some(t), _) => SystemTime::now()
                    .checked_sub(t.elapsed())
                    .unwrap_or(s.created),
                (None, Some((_, Some(t)))) => *t,
                _ => s.created,
            };
            rs.push_values([
                "S".to_string(),
                p.key.user.to_string(),
                pool_database(&p.key),
                "none".into(),
                state.as_str().into(),
                p.key.node.host.to_string(),
                p.key.node.port.to_string(),
                laddr,
                lport,
                format_time(s.created),
                format_time(request.max(s.created)),
                "0".into(),
                "0".into(),
                u8::from(close_needed).to_string(),
                format!("{:x}", s.id),
                ptr_or_empty(client.map_or(0, |c| c.0)),
                s.remote_pid.to_string(),
                if s.tls { "TLS".into() } else { String::new() },
                String::new(),
                s.prepared
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
                s.id.to_string(),
            ]);
        }
    }
    rs
}
