//! Custom setting names a database's own code uses (`set_config('app.tenant', …)`,
//! `current_setting('app.tenant')`, `SET app.tenant …` in functions and row-level
//! security policies), learned from its catalog.
//!
//! PostgreSQL lists no custom (placeholder) setting in pg_settings, so the session check
//! reads them by name; a client that sets one through a function (`select
//! use_tenant('acme')`, the usual RLS pattern) never shows the name in its SQL. These
//! names are read back too, so the client keeps its tenant on the next server.
//!
//! Rules: learned on a server connection the session check already holds, at most once
//! per `REFRESH` per database; bounded (`MAX_NAMES` per database, `MAX_DATABASES`
//! databases); a failed read leaves the old names. Names set under a computed name
//! (`set_config('app.' || x, …)`) stay unknown: they are cleared with `RESET ALL` before
//! another client gets the connection, and do not travel with their client.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long learned names are trusted before they are read again.
const REFRESH: Duration = Duration::from_secs(60);
const MAX_NAMES: usize = 256;
const MAX_DATABASES: usize = 1024;

/// The catalog query: dotted names in function bodies and policy expressions.
pub const LEARN_SQL: &str = "SELECT DISTINCT pg_catalog.lower(COALESCE(m[1], m[2])) FROM (\
     SELECT pg_catalog.regexp_matches(p.prosrc, E'(?:set_config|current_setting)\\\\s*\\\\(\\\\s*''([A-Za-z_][A-Za-z0-9_$]*\\\\.[A-Za-z0-9_$.]+)''|\\\\mset\\\\s+(?:session\\\\s+)?([A-Za-z_][A-Za-z0-9_$]*\\\\.[A-Za-z0-9_$.]+)', 'gi') \
     FROM pg_catalog.pg_proc p \
     WHERE p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
     AND p.pronamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace \
     UNION ALL \
     SELECT pg_catalog.regexp_matches(pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), E'current_setting\\\\s*\\\\(\\\\s*''([A-Za-z_][A-Za-z0-9_$]*\\\\.[A-Za-z0-9_$.]+)''()', 'gi') \
     FROM pg_catalog.pg_policy pol WHERE pol.polqual IS NOT NULL\
     ) s(m) LIMIT 256";

#[derive(Default)]
pub struct SettingNames {
    dbs: Mutex<HashMap<Arc<str>, Entry>>,
}

struct Entry {
    names: Arc<BTreeSet<String>>,
    loaded: Instant,
}

impl SettingNames {
    /// The names learned for `database` (empty if none yet).
    pub fn names(&self, database: &str) -> Arc<BTreeSet<String>> {
        let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        dbs.get(database)
            .map(|e| e.names.clone())
            .unwrap_or_default()
    }

    /// Should the names of `database` be (re)read now? Marks them as being read, so that
    /// one session does it per period.
    pub fn due(&self, database: &Arc<str>) -> bool {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match dbs.get_mut(database) {
            Some(e) if now.duration_since(e.loaded) < REFRESH => false,
            Some(e) => {
                e.loaded = now;
                true
            }
            None => {
                if dbs.len() >= MAX_DATABASES {
                    dbs.clear();
                }
                dbs.insert(
                    database.clone(),
                    Entry {
                        names: Arc::default(),
                        loaded: now,
                    },
                );
                true
            }
        }
    }

    /// Keep what the catalog query returned for `database`.
    pub fn store(&self, database: &str, rows: Vec<Vec<Option<String>>>) {
        let names: BTreeSet<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .filter(|n| n.contains('.') && n.len() <= 128)
            .take(MAX_NAMES)
            .collect();
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = dbs.get_mut(database) {
            e.names = Arc::new(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period_and_bounded() {
        let s = SettingNames::default();
        let db: Arc<str> = "app".into();
        assert!(s.due(&db));
        assert!(!s.due(&db));
        s.store(
            "app",
            vec![
                vec![Some("app.tenant".into())],
                vec![Some("nodot".into())],
                vec![None],
            ],
        );
        assert_eq!(*s.names("app"), BTreeSet::from(["app.tenant".to_string()]));
        assert!(s.names("other").is_empty());
    }
}
