//! The session check: what a client's transaction left on its server connection, read
//! from the server itself when the transaction ends, so that nothing of one client's
//! session reaches the next client of that connection.
//!
//! Rules:
//! - It runs only after a transaction that may have changed the session (the
//!   `prepared::effect` bits its statements carry, a ParameterStatus, a pinned client's
//!   statement), or after every transaction with `session_check = always`.
//! - One simple query, every name qualified with `pg_catalog` and every operator written
//!   `OPERATOR(pg_catalog.…)`: a client's `search_path` cannot substitute a function or
//!   operator of its own.
//! - Settings (`effect::SETTINGS`): pg_settings' session entries, the custom settings the
//!   client named or the database's functions name (read by name: PostgreSQL lists no
//!   placeholder setting), and always `role` and `session_authorization` (pg_settings
//!   has no row for them). Replayed on the client's next server (`params::replay`).
//! - State (`effect::STATE`): temp relations, functions and types, held cursors, session advisory locks,
//!   channels listened to, and prepared statements (protocol-level and SQL-level). A
//!   client holding any of the first four is pinned to its server connection until a
//!   later check finds none; a protocol-level statement count that differs from what
//!   pgtenant prepared means someone dropped or replaced one of pgtenant's statements,
//!   and the server's statements are all dropped (`DEALLOCATE ALL`).
//! - It reads at most [`MAX_SETTINGS_BYTES`]: a session whose settings are larger cannot
//!   travel between server connections, so the connection is closed and the client's
//!   session ends with FATAL 54000 (pgtenant keeps and replays what it reads).
//! - A client's own `statement_timeout` that cancels the check (57014) is read, turned
//!   off for a second try and put back (`attach::check_rows`). If the check still
//!   fails, the server connection is closed rather than lent to anyone else, and the
//!   client's session ends with FATAL 08006: what its transaction left there is unknown.
use std::collections::BTreeSet;

use super::params::{self, ParamMap};

/// What the session check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The settings the server holds for this session (when settings were read), with
    /// `role` / `session_authorization` when set.
    pub settings: ParamMap,
    /// `role` and `session_authorization` (always read), when set.
    pub identity: ParamMap,
    /// Counts of state that cannot travel (when state was read).
    pub pins: Option<Pins>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pins {
    pub temp_relations: i64,
    pub held_cursors: i64,
    pub advisory_locks: i64,
    pub listening: i64,
    /// Statements prepared with SQL PREPARE (`from_sql`).
    pub sql_statements: i64,
    /// Statements prepared with the protocol (pgtenant's `pgt_N`, or a client's own when
    /// statement tracking is off).
    pub protocol_statements: i64,
}

impl Pins {
    /// State that ties the client to this server connection (statements aside).
    pub fn holds_state(&self) -> bool {
        self.temp_relations > 0
            || self.held_cursors > 0
            || self.advisory_locks > 0
            || self.listening > 0
    }
}

/// The most a session check may read (settings' names and values, with the rows' own
/// framing): a client's settings are kept in pgtenant and replayed on each server
/// connection it takes next, so their size is bounded as a client's prepared statements
/// are. A session over it ends with FATAL 54000 ([`TOO_LARGE`]).
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// How the client is told its settings are over [`MAX_SETTINGS_BYTES`].
pub const TOO_LARGE: &str = "the session's settings are larger than pgtenant keeps for a client";

/// Settings that are identities: replayed first, never listed in pg_settings.
pub const IDENTITY: [&str; 2] = ["session_authorization", "role"];

/// The check query: identities, the settings when `settings`, and always what pins (a
/// few catalog counts in the same query: what the text scan missed still pins the
/// client). `login`: the server connection's login role (its session_authorization at
/// connect); `custom`: custom setting names to read.
pub fn sql(settings: bool, login: &str, custom: &BTreeSet<String>) -> String {
    let cs = "pg_catalog.current_setting";
    let ne = "OPERATOR(pg_catalog.<>)";
    let eq = "OPERATOR(pg_catalog.=)";
    let mut parts = vec![
        format!("SELECT 'i', 'role', {cs}('role') WHERE {cs}('role') {ne} 'none'"),
        format!(
            "SELECT 'i', 'session_authorization', {cs}('session_authorization') \
             WHERE {cs}('session_authorization') {ne} {}",
            params::literal(login)
        ),
    ];
    if settings {
        parts.push(format!(
            "SELECT 's', pg_catalog.lower(name), setting FROM pg_catalog.pg_settings \
             WHERE source {eq} 'session'"
        ));
        if !custom.is_empty() {
            let names: Vec<String> = custom
                .iter()
                .map(|n| format!("({})", params::literal(n)))
                .collect();
            parts.push(format!(
                "SELECT 's', n, {cs}(n, true) FROM (VALUES {}) v(n) \
                 WHERE {cs}(n, true) IS NOT NULL AND {cs}(n, true) {ne} ''",
                names.join(", ")
            ));
        }
    }
    parts.push(format!(
        "SELECT 'p', 'pins', pg_catalog.concat_ws(',', \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class \
          WHERE relnamespace {eq} pg_catalog.pg_my_temp_schema()) \
         OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc \
          WHERE pronamespace {eq} pg_catalog.pg_my_temp_schema()) \
         OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_type \
          WHERE typnamespace {eq} pg_catalog.pg_my_temp_schema()), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype {eq} 'advisory' \
          AND pid {eq} pg_catalog.pg_backend_pid()), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql))"
    ));
    parts.join(" UNION ALL ")
}

/// Read the check query's rows.
pub fn parse(rows: Vec<Vec<Option<String>>>) -> Result<Checked, String> {
    let mut out = Checked::default();
    for r in rows {
        let [Some(kind), Some(name), value] = &r[..] else {
            return Err("the session check returned a malformed row".into());
        };
        let value = value.clone().unwrap_or_default();
        match kind.as_str() {
            "i" => {
                out.identity.insert(name.clone(), value.clone());
                out.settings.insert(name.clone(), value);
            }
            "s" => {
                out.settings.insert(name.clone(), value);
            }
            "p" => {
                let n: Vec<i64> = value
                    .split(',')
                    .map(|x| x.parse::<i64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "the session check returned malformed counts".to_string())?;
                let [t, c, a, l, s, p] = n[..] else {
                    return Err("the session check returned malformed counts".into());
                };
                out.pins = Some(Pins {
                    temp_relations: t,
                    held_cursors: c,
                    advisory_locks: a,
                    listening: l,
                    sql_statements: s,
                    protocol_statements: p,
                });
            }
            _ => return Err("the session check returned an unknown row".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_sql_qualifies_everything_and_parses() {
        let custom: BTreeSet<String> = ["app.tenant".to_string()].into();
        let q = sql(true, "app", &custom);
        assert!(q.contains("'app.tenant'") && q.contains("pg_my_temp_schema"));
        // No unqualified operator a search_path could replace.
        for op in [" = ", " <> ", " != "] {
            assert!(!q.contains(op), "{op} in {q}");
        }
        assert!(!sql(false, "app", &custom).contains("pg_settings"));
        let rows = vec![
            vec![Some("i".into()), Some("role".into()), Some("priv".into())],
            vec![
                Some("s".into()),
                Some("timezone".into()),
                Some("UTC".into()),
            ],
            vec![
                Some("p".into()),
                Some("pins".into()),
                Some("1,0,2,0,0,3".into()),
            ],
        ];
        let c = parse(rows).unwrap();
        assert_eq!(c.identity.get("role").map(String::as_str), Some("priv"));
        assert_eq!(c.settings.len(), 2);
        let p = c.pins.unwrap();
        assert!(p.holds_state() && p.protocol_statements == 3);
        assert!(parse(vec![vec![
            Some("p".into()),
            Some("pins".into()),
            Some("1".into())
        ]])
        .is_err());
    }
}
