//! Session parameters that travel with a client in transaction mode: the startup packet's
//! settings plus whatever the client SET since, as PostgreSQL itself reports them
//! (`pg_settings.source = 'session'`). A server connection remembers what pgtenant set on
//! it, so a client that returns to "its" kind of server pays nothing.
use std::sync::Arc;

/// Setting name (lower case, as in pg_settings) → value.
pub use crate::backend::ParamMap;

/// Startup-packet keys that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// The settings a startup packet asks for, `options=-c a=b` included.
pub fn from_startup(params: &[(String, String)]) -> ParamMap {
    let mut out = ParamMap::new();
    for (k, v) in params {
        let lk = k.to_ascii_lowercase();
        if lk == "options" {
            for (ok, ov) in parse_options(v) {
                out.insert(ok.to_ascii_lowercase(), ov);
            }
        } else if !NOT_SETTINGS.contains(&lk.as_str()) && !lk.starts_with("_pq_.") {
            out.insert(lk, v.clone());
        }
    }
    out
}

/// `-c name=value`, `-cname=value` and `--name=value` from a libpq `options` string
/// (backslash escapes a space, as PostgreSQL's pg_split_opts does).
pub fn parse_options(s: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let kv = if w == "-c" {
            i += 1;
            words.get(i).map(|s| s.as_str())
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest)
        } else {
            w.strip_prefix("--")
        };
        if let Some((k, v)) = kv.and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
        i += 1;
    }
    out
}

/// startup values overlaid with session ones (a RESET returns to the startup value, as
/// in PostgreSQL, where startup settings are the session defaults).
pub fn merge(startup: &ParamMap, session: &ParamMap) -> Arc<ParamMap> {
    let mut m = startup.clone();
    for (k, v) in session {
        m.insert(k.clone(), v.clone());
    }
    Arc::new(m)
}

/// Startup settings shared between the clients that asked for the same ones: one copy in
/// memory per distinct set, and a server connection whose settings are a client's (the
/// same `Arc`) needs no comparison when the next client of that app gets it.
#[derive(Default)]
pub struct SharedParams {
    maps: std::sync::Mutex<std::collections::HashMap<ParamMap, std::sync::Weak<ParamMap>>>,
    /// Application names (SHOW CLIENTS), shared the same way.
    names: std::sync::Mutex<std::collections::HashMap<Box<str>, std::sync::Weak<str>>>,
}

/// Distinct sets remembered at most (beyond it, a new set gets a copy of its own).
const SHARED_PARAMS_MAX: usize = 1024;

impl SharedParams {
    /// The shared copy of `m` (made now if no client holds one).
    pub fn share(&self, m: ParamMap) -> Arc<ParamMap> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = maps.get(&m).and_then(std::sync::Weak::upgrade) {
            return a;
        }
        if maps.len() >= SHARED_PARAMS_MAX {
            maps.retain(|_, w| w.strong_count() > 0);
            if maps.len() >= SHARED_PARAMS_MAX {
                return Arc::new(m);
            }
        }
        let a = Arc::new(m.clone());
        maps.insert(m, Arc::downgrade(&a));
        a
    }

    /// The shared copy of an application name.
    pub fn share_name(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = names.get(name).and_then(std::sync::Weak::upgrade) {
            return a;
        }
        let a: Arc<str> = Arc::from(name);
        if names.len() >= SHARED_PARAMS_MAX {
            names.retain(|_, w| w.strong_count() > 0);
            if names.len() >= SHARED_PARAMS_MAX {
                return a;
            }
        }
        names.insert(name.into(), Arc::downgrade(&a));
        a
    }
}

/// The statements that bring a server from `from` to `to`, one per setting so that one
/// setting the server refuses does not stop the others. The identities come first and
/// in order: `session_authorization` (changing it also resets `role`), then `role`, then
/// the other settings (which may depend on the role's rights).
pub fn replay(from: &ParamMap, to: &ParamMap) -> Vec<String> {
    replay_steps(from, to).into_iter().map(|(q, _)| q).collect()
}

/// [`replay`]'s statements, each with the `RESET` that takes its setting back to the
/// server's default should the server refuse the value (`None` for a statement that is a
/// RESET already).
pub fn replay_steps(from: &ParamMap, to: &ParamMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut from = from.clone();
    // The timeouts before anything else: every statement here runs under the settings
    // the server has (another client's), and its `statement_timeout = 1` or
    // `lock_timeout = 1` could cancel the rest.
    for k in TIMEOUTS {
        if from.get(k) != to.get(k) {
            out.push(step(k, to.get(k)));
            match to.get(k) {
                Some(v) => from.insert(k.to_owned(), v.clone()),
                None => from.remove(k),
            };
        }
    }
    let sa = "session_authorization";
    if from.get(sa) != to.get(sa) {
        out.push(step(sa, to.get(sa)));
        // PostgreSQL resets the role with the session authorization.
        from.remove(sa);
        from.remove("role");
        if let Some(v) = to.get(sa) {
            from.insert(sa.to_owned(), v.clone());
        }
    }
    if from.get("role") != to.get("role") {
        if from.contains_key("role") && to.contains_key("role") {
            // Back to the login role first: if the new role cannot be taken (dropped,
            // membership revoked), the session is left with less, not the old role.
            out.push(("RESET \"role\"".to_owned(), None));
        }
        out.push(step("role", to.get("role")));
    }
    for k in from.keys() {
        if !to.contains_key(k) && !is_identity(k) {
            out.push((format!("RESET {}", ident(k)), None));
        }
    }
    for (k, v) in to {
        if from.get(k) != Some(v) && !is_identity(k) {
            out.push(step(k, Some(v)));
        }
    }
    out
}

/// Settings that can make the replay's own statements fail (see [`replay_steps`]).
const TIMEOUTS: [&str; 2] = ["statement_timeout", "lock_timeout"];

fn is_identity(name: &str) -> bool {
    name == "role" || name == "session_authorization"
}

fn step(name: &str, value: Option<&String>) -> (String, Option<String>) {
    let reset = value.map(|_| format!("RESET {}", ident(name)));
    (set_or_reset(name, value), reset)
}

fn set_or_reset(name: &str, value: Option<&String>) -> String {
    match value {
        Some(v) => format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            literal(name),
            literal(v)
        ),
        None => format!("RESET {}", ident(name)),
    }
}

/// A SQL string literal, correct whatever standard_conforming_strings says.
pub fn literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// A SQL identifier, quoted (settings, channels, statement names pgtenant sends).
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The value a server would report for a startup setting (ParameterStatus), where it
/// normalises it.
pub fn reported_value(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("client_encoding") {
        // PostgreSQL's canonical spelling of every name and alias it accepts.
        if let Some(v) = crate::protocol::encodings::reported_client_encoding(value) {
            return v.to_owned();
        }
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_startup_settings_share_one_copy() {
        let shared = SharedParams::default();
        let m = |v: &str| ParamMap::from([("application_name".to_string(), v.to_string())]);
        let a = shared.share(m("app"));
        let b = shared.share(m("app"));
        let c = shared.share(m("other"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, m("other"));
        // Once no client holds it, a new copy is made (nothing kept alive by the cache).
        drop((a, b));
        let d = shared.share(m("app"));
        assert_eq!(Arc::strong_count(&d), 1);
        let (x, y) = (shared.share_name("pgbench"), shared.share_name("pgbench"));
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(&*shared.share_name("psql"), "psql");
    }

    #[test]
    fn startup_and_options() {
        let p = vec![
            ("user".to_string(), "app".to_string()),
            ("TimeZone".to_string(), "UTC".to_string()),
            (
                "options".to_string(),
                "-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB".to_string(),
            ),
        ];
        let m = from_startup(&p);
        assert_eq!(m.get("timezone").map(String::as_str), Some("UTC"));
        assert_eq!(m.get("search_path").map(String::as_str), Some("a,b"));
        assert_eq!(m.get("statement_timeout").map(String::as_str), Some("5s"));
        assert_eq!(m.get("work_mem").map(String::as_str), Some("64MB"));
        assert!(!m.contains_key("user"));
    }

    #[test]
    fn replay_diff_and_quoting() {
        let mut a = ParamMap::new();
        a.insert("timezone".into(), "UTC".into());
        a.insert("search_path".into(), "x".into());
        let mut b = ParamMap::new();
        b.insert("timezone".into(), "Europe/Paris".into());
        b.insert("application_name".into(), "it's".into());
        let r = replay(&a, &b);
        assert_eq!(
            r,
            vec![
                "RESET \"search_path\"".to_string(),
                "SELECT pg_catalog.set_config('application_name', 'it''s', false)".to_string(),
                "SELECT pg_catalog.set_config('timezone', 'Europe/Paris', false)".to_string(),
            ]
        );
        assert!(replay(&b, &b).is_empty());
        // Identities first, the role after the session authorization that resets it.
        let mut c = ParamMap::new();
        c.insert("role".into(), "priv".into());
        c.insert("session_authorization".into(), "other".into());
        assert_eq!(
            replay(&ParamMap::new(), &c),
            vec![
                "SELECT pg_catalog.set_config('session_authorization', 'other', false)".to_string(),
                "SELECT pg_catalog.set_config('role', 'priv', false)".to_string(),
            ]
        );
        assert_eq!(
            replay(&c, &ParamMap::new()),
            vec!["RESET \"session_authorization\"".to_string()]
        );
        let mut d = c.clone();
        d.remove("session_authorization");
        assert_eq!(
            replay(&c, &d),
            vec![
                "RESET \"session_authorization\"".to_string(),
                "SELECT pg_catalog.set_config('role', 'priv', false)".to_string(),
            ]
        );
        // Another client's timeouts go first, whatever their place in the map.
        let mut e = ParamMap::new();
        e.insert("application_name".into(), "a".into());
        e.insert("statement_timeout".into(), "1ms".into());
        let mut f = ParamMap::new();
        f.insert("lock_timeout".into(), "5s".into());
        assert_eq!(
            replay(&e, &f),
            vec![
                "RESET \"statement_timeout\"".to_string(),
                "SELECT pg_catalog.set_config('lock_timeout', '5s', false)".to_string(),
                "RESET \"application_name\"".to_string(),
            ]
        );
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
        assert_eq!(reported_value("client_encoding", "utf-8"), "UTF8");
        assert_eq!(reported_value("client_encoding", "euc-jp"), "EUC_JP");
        assert_eq!(reported_value("client_encoding", "iso-8859-1"), "LATIN1");
    }
}
