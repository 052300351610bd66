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
    /// The statement changes session state (SET/RESET/…): re-read it afterwards.
    pub changes_session: bool,
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
                let changes_session = changes_session(p.query);
                Arc::new(StatementDef {
                    id,
                    server_name,
                    parse,
                    query: p.query.into(),
                    changes_session,
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

/// Does this SQL change session settings (so the client's state must be re-read)?
pub fn changes_session(sql: &str) -> bool {
    if crate::router::command::is_plain_dml(sql) {
        return calls_set_config(sql);
    }
    changes_session_of(sql, &classify(sql))
}

/// [`changes_session`] for SQL already classified into `cmds`.
pub fn changes_session_of(sql: &str, cmds: &[Command]) -> bool {
    calls_set_config(sql)
        || cmds
            .iter()
            .any(|c| matches!(c, Command::SessionChange | Command::DiscardAll))
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
