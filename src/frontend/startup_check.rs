//! The startup packet's settings, checked and spelled as PostgreSQL checks and spells
//! them at connect. pgtenant answers a login itself (no server takes the startup packet),
//! yet a direct connection refuses `options=-c timezone=foo` with FATAL 22023 and reports
//! `datestyle=iso` as `ISO, MDY` (drivers read it: psycopg refuses to load dates under a
//! DateStyle that does not start with `ISO`).
//!
//! Rules:
//! - After authentication, before AuthenticationOk. Every startup setting is checked but
//!   `client_encoding` (checked and spelled by pgtenant itself), a plain
//!   `application_name` (printable ASCII under 64 bytes, which every PostgreSQL keeps as
//!   it is; clients vary it per process, so it would churn the cache; others are cleaned
//!   and cut by the server, differently by version) and custom names with a dot (a check
//!   would leave the placeholder defined on the server connection).
//! - A (name, value) pair not in the cache is tried on a server connection of the
//!   client's pool, all of the packet's new pairs in one Query that is its own implicit
//!   transaction: `SET LOCAL name TO DEFAULT` (so that another client's settings on that
//!   connection do not shape the answer: DateStyle keeps the order it had) then one
//!   `SELECT pg_catalog.set_config(name, value, true), …`. Nothing stays on the
//!   connection; it goes back to the pool.
//! - The check runs as the pool's role with no other client's timeout, role or message
//!   level in force (`SET LOCAL … TO DEFAULT` of those first).
//! - A value the server refuses as invalid (22023), a name it does not know (42704), a
//!   setting this role may not set (42501) or one that cannot change after connect
//!   (55P02, which pgtenant's replay could never apply: every statement of the client
//!   would fail) refuses the login with the server's own message as FATAL, as
//!   PostgreSQL refuses the first three at connect. Other refusals try each pair alone,
//!   so that such a setting beside them is still found; those keep their spelling and
//!   are replayed (and refused, logged) as before.
//! - Each accepted value is replaced by what the server shows for it: what the client is
//!   told in ParameterStatus, and what pgtenant replays on server connections.
//! - The check's notices (at most 16, as the server sent them: "identifier … will be
//!   truncated" for an application_name of 64 bytes or more) are the client's, shown
//!   after AuthenticationOk as a direct connection's login shows them. A check that
//!   raised one caches none of its pairs: the next login is checked, and shown it, again.
//! - The cache is kept per server role (whether a setting may be set depends on the role:
//!   one a superuser's client set is not thereby accepted for another role's) and holds at
//!   most [`CACHE_MAX`] pairs of names and values of at most [`CACHE_VALUE_MAX`] bytes,
//!   accepted ones only: a client that sends ever new values pays its own round trip each
//!   time and grows nothing. No server connection to be had refuses the login with the
//!   pool's error, as the first statement would have been refused.
//! - The login skips the check while its database is paused or pgtenant is suspended
//!   (neither may touch a server connection then).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::params::{ident, literal, ParamMap};
use crate::backend::BackendError;
use crate::net::Frame;
use crate::pool::{Pool, PoolError};
use crate::protocol::decode::ErrorFields;
use crate::protocol::sqlstate;
use crate::sync::lock;

/// Pairs kept at most.
pub const CACHE_MAX: usize = 4096;
/// Longer names and values are checked every time, not kept.
pub const CACHE_VALUE_MAX: usize = 256;

/// Accepted pairs and the server's spelling of the value: role → name → value → spelling
/// (looked up without copying anything).
#[derive(Default)]
pub struct StartupChecks {
    seen: Mutex<Seen>,
}

type Spellings = HashMap<String, HashMap<String, Arc<str>>>;

#[derive(Default)]
struct Seen {
    by_role: HashMap<Arc<str>, Spellings>,
    pairs: usize,
}

/// Why a login cannot go on.
#[derive(Debug)]
pub enum Refused {
    /// The server refused a setting (its SQLSTATE and message, sent as FATAL).
    Setting(ErrorFields),
    /// No server connection could be had.
    Pool(PoolError),
}

/// Is this setting checked at login?
fn checked(name: &str, value: &str) -> bool {
    match name {
        "client_encoding" => false,
        "application_name" => {
            value.len() >= 64 || !value.bytes().all(|b| (b' '..=b'~').contains(&b))
        }
        _ => !name.contains('.'),
    }
}

/// Does this refusal mean the setting cannot be had (the rules above)?
fn wrong_setting(code: &str) -> bool {
    [
        sqlstate::INVALID_PARAMETER_VALUE,
        sqlstate::UNDEFINED_OBJECT,
        sqlstate::INSUFFICIENT_PRIVILEGE,
        sqlstate::CANT_CHANGE_RUNTIME_PARAM,
    ]
    .contains(&code)
}

/// Run first: no other client's role, timeout or message level shapes the check (a
/// connection another client left at `client_min_messages = warning` would hide the
/// notices this client's direct connection shows it).
const NEUTRAL: &str = "SET LOCAL SESSION AUTHORIZATION DEFAULT; SET LOCAL ROLE NONE; \
                       SET LOCAL statement_timeout = 0; \
                       SET LOCAL client_min_messages TO DEFAULT; ";

/// The Query that tries `pairs`: one row, the server's spelling of each value in order.
fn try_query(pairs: &[(&str, &str)]) -> String {
    let mut q = String::from(NEUTRAL);
    for (name, _) in pairs {
        q.push_str(&format!("SET LOCAL {} TO DEFAULT; ", ident(name)));
    }
    q.push_str("SELECT ");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            q.push_str(", ");
        }
        q.push_str(&format!(
            "pg_catalog.set_config({}, {}, true)",
            literal(name),
            literal(value)
        ));
    }
    q
}

impl StartupChecks {
    fn cached(&self, role: &str, name: &str, value: &str) -> Option<Arc<str>> {
        lock(&self.seen)
            .by_role
            .get(role)?
            .get(name)?
            .get(value)
            .cloned()
    }

    fn remember(&self, role: &Arc<str>, name: &str, value: &str, shown: &Arc<str>) {
        if [name.len(), value.len(), shown.len()]
            .iter()
            .any(|&n| n > CACHE_VALUE_MAX)
        {
            return;
        }
        let mut seen = lock(&self.seen);
        if seen.pairs >= CACHE_MAX {
            return;
        }
        let values = seen
            .by_role
            .entry(role.clone())
            .or_default()
            .entry(name.to_owned())
            .or_default();
        if values.insert(value.to_owned(), shown.clone()).is_none() {
            seen.pairs += 1;
        }
    }

    /// Pairs kept now (tests: the bound holds).
    pub fn len(&self) -> usize {
        lock(&self.seen).pairs
    }

    /// Is nothing kept?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check `startup` (the rules above) and put the server's spelling of each accepted
    /// value in it. Answers the notices the check raised (the client is shown them after
    /// AuthenticationOk, as a direct connection shows those of its startup settings).
    pub async fn check(
        &self,
        pool: &Arc<Pool>,
        startup: &mut ParamMap,
    ) -> Result<Vec<Frame>, Refused> {
        let role = &pool.key.user;
        let mut new: Vec<(String, String)> = Vec::new();
        for (name, value) in startup.iter_mut() {
            if !checked(name, value) {
                continue;
            }
            match self.cached(role, name, value) {
                Some(shown) => *value = shown.to_string(),
                None => new.push((name.clone(), value.clone())),
            }
        }
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut server = Box::pin(pool.acquire(None)).await.map_err(Refused::Pool)?;
        let pairs: Vec<(&str, &str)> = new.iter().map(|(n, v)| (&**n, &**v)).collect();
        let mut found = Vec::with_capacity(pairs.len());
        let mut notices = Vec::new();
        let result = match server
            .query_rows_noting(&try_query(&pairs), &mut notices)
            .await
        {
            Ok(rows) => {
                found.extend(pairs.iter().zip(first_row(rows)).map(|(p, v)| (*p, v)));
                Ok(())
            }
            Err(BackendError::Server(e)) if wrong_setting(&e.code) => Err(Refused::Setting(e)),
            Err(BackendError::Server(_)) => {
                // Something else refused (a setting that cannot change now): each alone.
                notices.clear();
                let mut r = Ok(());
                for p in &pairs {
                    match server
                        .query_rows_noting(&try_query(&[*p]), &mut notices)
                        .await
                    {
                        Ok(rows) => found.extend(first_row(rows).map(|v| (*p, v))),
                        Err(BackendError::Server(e)) if wrong_setting(&e.code) => {
                            r = Err(Refused::Setting(e));
                            break;
                        }
                        Err(BackendError::Server(_)) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "startup settings not checked: the server connection failed");
                            break;
                        }
                    }
                }
                r
            }
            Err(e) => {
                // The connection broke: the login goes on unchecked (as before the check).
                tracing::debug!(error = %e, "startup settings not checked: the server connection failed");
                Ok(())
            }
        };
        let clean = server.tx_status == b'I' && server.conn.buffered_input() == 0;
        pool.release(server, clean);
        // Pairs that raised a notice are not kept: their next login is checked again and
        // shown it again, as every direct connection is.
        let keep = notices.is_empty();
        for ((name, value), shown) in found {
            let shown: Arc<str> = shown.into();
            if keep {
                self.remember(role, name, value, &shown);
            }
            if let Some(v) = startup.get_mut(name) {
                *v = shown.to_string();
            }
        }
        result.map(|()| notices)
    }
}

/// The values of the first row (NULLs and missing rows give nothing).
fn first_row(rows: Vec<Vec<Option<String>>>) -> impl Iterator<Item = String> {
    rows.into_iter()
        .next()
        .into_iter()
        .flatten()
        .map(|v| v.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_resets_then_sets_locally_with_quoted_names_and_values() {
        assert_eq!(
            try_query(&[("datestyle", "iso"), ("time\"zone", "it's")]),
            "SET LOCAL SESSION AUTHORIZATION DEFAULT; SET LOCAL ROLE NONE; \
             SET LOCAL statement_timeout = 0; SET LOCAL client_min_messages TO DEFAULT; \
             SET LOCAL \"datestyle\" TO DEFAULT; SET LOCAL \"time\"\"zone\" TO DEFAULT; \
             SELECT pg_catalog.set_config('datestyle', 'iso', true), \
             pg_catalog.set_config('time\"zone', 'it''s', true)"
        );
        assert!(try_query(&[("a", "b\\c")]).contains("E'b\\\\c'"));
    }

    #[test]
    fn what_is_checked() {
        assert!(checked("datestyle", "iso") && checked("search_path", "x"));
        assert!(!checked("client_encoding", "latin1"));
        assert!(!checked("application_name", "psql") && !checked("myapp.tenant", "7"));
        assert!(checked("application_name", "héllo") && checked("application_name", "a\tb"));
        assert!(checked("application_name", &"x".repeat(64)));
        assert!(!checked("application_name", &"x".repeat(63)));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_short_pairs_only() {
        let c = StartupChecks::default();
        let shown: Arc<str> = "x".into();
        let app: Arc<str> = "app".into();
        c.remember(&app, "timezone", &"a".repeat(CACHE_VALUE_MAX + 1), &shown);
        c.remember(&app, &"n".repeat(CACHE_VALUE_MAX + 1), "1", &shown);
        assert!(c.is_empty());
        for i in 0..CACHE_MAX + 10 {
            c.remember(&app, "timezone", &i.to_string(), &shown);
        }
        assert_eq!(c.len(), CACHE_MAX);
        assert_eq!(c.cached("app", "timezone", "7").as_deref(), Some("x"));
        assert_eq!(
            c.cached("app", "timezone", &(CACHE_MAX + 5).to_string()),
            None
        );
        // What one role was allowed is not thereby another's.
        assert_eq!(c.cached("other", "timezone", "7"), None);
    }
}
