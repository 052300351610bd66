//! Process-wide registry of named prepared statements: each distinct statement (query
//! text + parameter types) is stored once and gets one server-side name, whichever client
//! or server connection uses it. Clients map their own names onto these.
//!
//! The registry shrinks: a statement is shared (`Arc`) by the registry and the client
//! views that name it, and [`StatementRegistry::sweep`] (every few seconds, from
//! `memory::spawn_trimmer`, which then gives the memory back to the OS) drops those only
//! the registry still holds — a client that closed it, deallocated it, or left. Server
//! connections keep only ids (bounded by `max_prepared_statements`), never the text.
//! Ids are never reused: a statement interned again after a sweep gets a new id and
//! server-side name, so a copy a server connection still has under the old name is
//! never mistaken for it (it is evicted from that connection's LRU in time).
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
    /// What the statement may do to the session ([`effect`] bits): read back afterwards.
    pub effects: u8,
    /// Its text (the router plans it when a Bind starts a transaction).
    pub query: Arc<str>,
    /// The custom settings its text names (`custom_setting_names`), found once here
    /// rather than at every Bind.
    pub custom: Box<[String]>,
    /// Its plan, when its text is too long for the shared plan cache.
    pub plan: crate::router::PlanMemo,
    /// `LISTEN` / `UNLISTEN`: the client's LISTEN hub answers its Bind and Execute (the
    /// tag), not a server.
    pub hub_tag: Option<&'static str>,
}

#[derive(Default)]
pub struct StatementRegistry {
    /// Key: query text + NUL + parameter-type block, exactly as in the Parse body.
    map: DashMap<Box<[u8]>, Arc<StatementDef>>,
    /// Statements of clients since their `DEALLOCATE ALL` / `DISCARD ALL`, by epoch.
    fresh: DashMap<(u32, Box<[u8]>), Arc<StatementDef>>,
    epochs: std::sync::atomic::AtomicU32,
    next: AtomicU64,
}

impl StatementRegistry {
    /// The definition for a client's Parse; `key` is the Parse body after the name.
    pub fn intern(&self, p: &Parse<'_>, key: &[u8]) -> Arc<StatementDef> {
        if let Some(d) = self.map.get(key) {
            return d.clone();
        }
        // Defined outside the shard's lock (a scan and copies of a text that may be
        // megabytes); a definition made twice by a race loses its id, never reused.
        let def = self.define(p);
        self.map.entry(key.into()).or_insert(def).clone()
    }

    /// [`Self::intern`] for a client that ran `DEALLOCATE ALL` / `DISCARD ALL` (its
    /// `epoch`, 0 if it never did): as on a direct connection, its statements are
    /// prepared afresh after that (psycopg deallocates after DDL so that a statement is
    /// not run with a plan on a dropped type), under ids no statement from before has.
    pub fn intern_at(&self, p: &Parse<'_>, key: &[u8], epoch: u32) -> Arc<StatementDef> {
        if epoch == 0 {
            return self.intern(p, key);
        }
        let k = (epoch, Box::<[u8]>::from(key));
        if let Some(d) = self.fresh.get(&k) {
            return d.clone();
        }
        let def = self.define(p);
        self.fresh.entry(k).or_insert(def).clone()
    }

    /// A new epoch for a client's `DEALLOCATE ALL` / `DISCARD ALL`.
    pub fn next_epoch(&self) -> u32 {
        self.epochs
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1)
    }

    fn define(&self, p: &Parse<'_>) -> Arc<StatementDef> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let server_name = server_statement_name(id);
        let parse = p.encode_as(&server_name);
        // Classified once: what it does to the session, and whether the hub answers it.
        let cmds = classify(&p.query);
        let hub_tag = match &cmds[..] {
            [Command::Listen { .. }] => Some("LISTEN"),
            [Command::Unlisten { .. }] => Some("UNLISTEN"),
            _ => None,
        };
        Arc::new(StatementDef {
            id,
            server_name,
            parse,
            query: Arc::from(&*p.query),
            effects: effects_of(&p.query, &cmds),
            custom: crate::router::command::custom_setting_names(&p.query).into(),
            plan: Default::default(),
            hub_tag,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len() + self.fresh.len()
    }

    /// A client changed the schema (`router::command::Command::SchemaChange`): statements
    /// parsed from now on are defined afresh (new ids, so new server-side statements
    /// planned against the new schema), as on a direct connection that prepares them
    /// now. Those clients hold already stay theirs, stale or not, as on a direct
    /// connection.
    pub fn new_schema(&self) {
        self.map.clear();
        self.fresh.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forget statements no client refers to any more (server connections re-prepare on
    /// demand, and ids are never reused, so a stale server-side copy is harmless).
    /// Returns how many were dropped and roughly how many bytes they held.
    ///
    /// Each shard of the map is locked while it is walked: an `intern` clones under the
    /// same lock, so a statement a client is being handed is never dropped.
    pub fn sweep(&self) -> (usize, usize) {
        let (mut n, mut bytes) = (0, 0);
        self.map.retain(|k, d| {
            if Arc::strong_count(d) > 1 {
                return true;
            }
            n += 1;
            bytes += k.len() + d.parse.len() + d.query.len() + d.server_name.len();
            false
        });
        self.fresh.retain(|(_, k), d| {
            if Arc::strong_count(d) > 1 {
                return true;
            }
            n += 1;
            bytes += k.len() + d.parse.len() + d.query.len() + d.server_name.len();
            false
        });
        (n, bytes)
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

/// What plain DML (see `is_plain_dml`) may do to the session ([`effect`] bits; 0 for
/// nearly all of it).
pub fn dml_effects(sql: &str) -> u8 {
    if crate::router::effects::opaque(sql) {
        effect::ALL
    } else if calls_set_config(sql) {
        // Its name read back, unless the text does not show it as the server will.
        if crate::router::command::unreadable_setting_names(sql) {
            effect::SETTINGS | effect::HIDDEN
        } else {
            effect::SETTINGS
        }
    } else {
        0
    }
}

/// What SQL classified into `cmds` may do to the session ([`effect`] bits).
pub fn effects_of(sql: &str, cmds: &[Command]) -> u8 {
    let mut e = dml_effects(sql);
    for c in cmds {
        e |= match c {
            // A name not read back as the server spells it (`SET "app"."x"`,
            // `SET app /**/ .x`, `SET app.Ä`, a 65th name): cleared before another
            // client instead.
            Command::SessionChange if crate::router::command::unreadable_setting_names(sql) => {
                effect::SETTINGS | effect::HIDDEN
            }
            Command::SessionChange => effect::SETTINGS,
            // Statements on the server that the check counts (and a LISTEN that reached
            // the server connection itself, not the hub).
            Command::Prepare { .. }
            | Command::Deallocate { .. }
            | Command::Listen { .. }
            | Command::Unlisten { .. } => effect::STATE,
            // DISCARD ALL that reaches a server drops its statements too.
            Command::DiscardAll => effect::SETTINGS | effect::STATE,
            Command::Opaque | Command::SchemaChange { opaque: true } | Command::Execute { .. } => {
                effect::ALL
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(name: &str, query: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for s in [name, query] {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    fn intern(r: &StatementRegistry, name: &str, query: &str) -> Arc<StatementDef> {
        let body = parse_body(name, query);
        let p = Parse::decode(&body).unwrap();
        let key = &body[name.len() + 1..];
        r.intern(&p, key)
    }

    #[test]
    fn sweep_drops_what_no_client_holds() {
        let r = StatementRegistry::default();
        let a = intern(&r, "s1", "select 1");
        let b = intern(&r, "s2", "select 2");
        // Another client's name for the same statement shares it.
        let a2 = intern(&r, "other", "select 1");
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(r.len(), 2);
        assert_eq!(r.sweep(), (0, 0));
        drop(a);
        assert_eq!(r.sweep().0, 0, "still held by the other client");
        let (id_b, id_a) = (b.id, a2.id);
        drop((b, a2));
        let (n, bytes) = r.sweep();
        assert_eq!(n, 2);
        assert!(bytes > 2 * "select 1".len(), "{bytes}");
        assert!(r.is_empty());
        // Interned again: a new id, never an old one.
        let again = intern(&r, "s1", "select 1");
        assert!(again.id > id_a.max(id_b));
        assert_eq!(again.server_name, format!("pgt_{}", again.id));
    }
}
