//! Process-wide registry of named prepared statements: each distinct statement (query
//! text + parameter types) is stored once and gets one server-side name, whichever client
//! or server connection uses it. Clients map their own names onto these.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::backend::server_statement_name;
use crate::net::Frame;
use crate::protocol::extended::Parse;
use crate::router::command::{classify, Command};

pub struct StatementDef {
    pub id: u64,
    pub server_name: String,
    /// The Parse to send a server that lacks the statement (under `server_name`).
    pub parse: Frame,
    /// What the statement may do to the session ([`effects`] bits): read back afterwards.
    pub effects: u8,
    /// Its text (the router plans it when a Bind starts a transaction).
    pub query: Arc<str>,
}

#[derive(Default)]
pub struct StatementRegistry {
    /// Key: query text + NUL + parameter-type block, exactly as in the Parse body.
    map: DashMap<Box<[u8]>, Arc<StatementDef>>,
    next: AtomicU64,
}

impl StatementRegistry {
    /// The definition for a client's Parse; `key` is the Parse body after the name.
    pub fn intern(&self, p: &Parse<'_>, key: &[u8]) -> Arc<StatementDef> {
        if let Some(d) = self.map.get(key) {
            return d.clone();
        }
        self.map
            .entry(key.into())
            .or_insert_with(|| {
                let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
                let server_name = server_statement_name(id);
                let parse = p.encode_as(&server_name);
                let effects = effects(&p.query);
                Arc::new(StatementDef {
                    id,
                    server_name,
                    parse,
                    query: Arc::from(&*p.query),
                    effects,
                })
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forget statements no client refers to any more (server connections re-prepare on
    /// demand, and ids are never reused, so a stale server-side copy is harmless).
    pub fn sweep(&self) {
        self.map.retain(|_, d| Arc::strong_count(d) > 1);
    }
}

/// What a statement may have done to the session, as bits: the session loop reads the
/// session back when a transaction that had any of them ends (see
/// `frontend::session::check`).
pub mod effect {
    /// Settings may have changed (SET, RESET, set_config, …): read pg_settings back.
    pub const SETTINGS: u8 = 1;
    /// State that cannot travel may exist (temp tables, held cursors, session advisory
    /// locks, LISTEN, prepared statements made or dropped out of sight): count it.
    pub const STATE: u8 = 2;
    /// Settings under names the text does not show may have changed (a function or DO
    /// block ran): the server connection gets `RESET ALL` before another client.
    pub const HIDDEN: u8 = 4;
    /// Everything: what a function of unknown effect may have done.
    pub const ALL: u8 = SETTINGS | STATE | HIDDEN;
}

/// What this SQL may do to the session ([`effect`] bits; 0 for nearly all DML).
pub fn effects(sql: &str) -> u8 {
    if crate::router::command::is_plain_dml(sql) {
        return dml_effects(sql);
    }
    effects_of(sql, &classify(sql))
}

/// [`effects`] for DML (a plain statement, see `is_plain_dml`).
pub fn dml_effects(sql: &str) -> u8 {
    if crate::router::effects::opaque(sql) {
        effect::ALL
    } else if calls_set_config(sql) {
        effect::SETTINGS
    } else {
        0
    }
}

/// [`effects`] for SQL already classified into `cmds`.
pub fn effects_of(sql: &str, cmds: &[Command]) -> u8 {
    let mut e = dml_effects(sql);
    for c in cmds {
        e |= match c {
            Command::SessionChange => effect::SETTINGS,
            // DISCARD ALL that reaches a server drops its statements too.
            Command::DiscardAll => effect::SETTINGS | effect::STATE,
            Command::Opaque | Command::Execute { .. } => effect::ALL,
            _ => 0,
        };
    }
    e
}

/// Does this SQL mention `set_config` (which changes settings without a SET, and only
/// reported ones show in a ParameterStatus)? A plain byte scan, case-insensitive.
pub fn calls_set_config(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr_iter(b'_', b).any(|i| {
        i >= 3
            && b.get(i - 3..i + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"set_config"))
    })
}
