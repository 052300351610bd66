//! SHOW CLIENTS and SHOW SERVERS (same columns, as in PgBouncer).
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

fn addr_parts(a: Option<std::net::SocketAddr>) -> (String, String) {
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
        let t = format_time(c.connect_time);
        // PgBouncer: active (linked to a server, or idle in a session-mode session),
        // waiting (for a server), idle (transaction mode, no server). The console's own
        // sessions are active.
        let state = c.state.as_ref().map_or("active", |s| s.kind().as_str());
        let waited = c
            .state
            .as_ref()
            .and_then(|s| s.waited())
            .unwrap_or_default();
        rs.push_values([
            "C".to_string(),
            c.user.clone(),
            c.database.clone(),
            "none".into(),
            state.into(),
            addr,
            port,
            laddr,
            lport,
            t.clone(),
            t,
            waited.as_secs().to_string(),
            waited.subsec_micros().to_string(),
            "0".into(),
            format!("{:x}", c.id),
            String::new(),
            "0".into(),
            if c.tls { "TLS".into() } else { String::new() },
            c.application_name.clone(),
            "0".into(),
            c.id.to_string(),
        ]);
    }
    rs
}

pub fn servers(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(SOCKETS);
    for p in super::show_pools::sorted_pools(ctx) {
        for (s, state, close_needed) in p.servers() {
            let (laddr, lport) = addr_parts(s.local_addr);
            let t = format_time(s.created);
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
                t.clone(),
                t,
                "0".into(),
                "0".into(),
                u8::from(close_needed).to_string(),
                format!("{:x}", s.id),
                String::new(),
                s.remote_pid.to_string(),
                if s.tls { "TLS".into() } else { String::new() },
                String::new(),
                "0".into(),
                s.id.to_string(),
            ]);
        }
    }
    rs
}
