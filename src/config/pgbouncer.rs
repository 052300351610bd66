//! A PgBouncer configuration (`pgbouncer.ini`), read as pgtenant settings.
//!
//! Rules:
//! - A file is a PgBouncer configuration when it has a `[pgbouncer]` section line; it is
//!   then read as PgBouncer reads it: `;` and `#` comment lines, `[section]` lines,
//!   `key = value` (keys case-insensitive, the value the rest of the line, trimmed),
//!   `%include FILE` (relative to the including file, at most 8 deep). A line that is
//!   none of these is an error with its file and line.
//! - Every key is classified (`translate`): *carried* (the same meaning as a pgtenant
//!   setting, converted), *ignored* (no effect on what clients see: log files, pid files,
//!   buffer sizes, …; noted), or *refused* (pgtenant cannot keep its meaning: running
//!   would silently differ, e.g. `auth_type = hba`). An unknown key is an error with its
//!   line, as PgBouncer refuses it. `run` fails on any error or refusal; `import` writes
//!   the carried settings as TOML with every note as a comment.
//! - `[databases]`: every entry is carried as a `[databases.NAME]` table (its own server,
//!   database, forced user and limits; `*` the fallback). The first named entry (else `*`)
//!   also becomes `upstream`: the server pgtenant reads the Citus catalog from, as the
//!   entry's user (else auth_user, else the first admin user). A connection string
//!   setting pgtenant cannot keep (several hosts, per-entry auth_query, …) is refused.
//! - `[users]`: `pool_mode`, `pool_size` and `max_user_connections` are carried.
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Deepest `%include` chain.
const MAX_INCLUDE_DEPTH: usize = 8;

/// One `key = value` line.
#[derive(Debug, Clone)]
pub struct Line {
    pub section: String,
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

impl Line {
    fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// What a PgBouncer configuration means for pgtenant.
#[derive(Debug, Default)]
pub struct Translation {
    /// pgtenant's settings, as the TOML file would hold them.
    pub table: Table,
    /// Keys read but not carried, with why (import writes them as comments).
    pub notes: Vec<String>,
    /// Unknown keys, bad values, refused meanings: each with file and line.
    pub errors: Vec<String>,
}

/// Does this text look like a PgBouncer configuration?
pub fn is_pgbouncer_ini(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim().eq_ignore_ascii_case("[pgbouncer]"))
}

/// Read `path` (and its includes) into lines. Errors name file and line.
pub fn read(path: &Path) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    let mut section = String::new();
    read_into(path, 0, &mut section, &mut out)?;
    Ok(out)
}

fn read_into(
    path: &Path,
    depth: usize,
    section: &mut String,
    out: &mut Vec<Line>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
            continue;
        }
        if let Some(rest) = l.strip_prefix("%include") {
            let name = rest.trim();
            if name.is_empty() || !rest.starts_with(char::is_whitespace) {
                return Err(format!("{}:{n}: expected %include FILE", path.display()));
            }
            if depth + 1 > MAX_INCLUDE_DEPTH {
                return Err(format!(
                    "{}:{n}: %include nested more than {MAX_INCLUDE_DEPTH} deep",
                    path.display()
                ));
            }
            let inc = path.parent().unwrap_or(Path::new("")).join(name);
            read_into(&inc, depth + 1, section, out)
                .map_err(|e| format!("{e} (included from {}:{n})", path.display()))?;
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            *section = name.trim().to_ascii_lowercase();
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            return Err(format!(
                "{}:{n}: expected 'key = value', a [section] or %include, got '{}'",
                path.display(),
                clip(l)
            ));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(format!(
                "{}:{n}: a key is missing before '='",
                path.display()
            ));
        }
        if section.is_empty() {
            return Err(format!(
                "{}:{n}: '{}' is outside any [section]",
                path.display(),
                clip(key)
            ));
        }
        out.push(Line {
            section: section.clone(),
            // Database and user names keep their case; setting names do not matter.
            key: if section == "pgbouncer" {
                key.to_ascii_lowercase()
            } else {
                // A database or user name may be written in double quotes ("my-db").
                key.strip_prefix('"')
                    .and_then(|k| k.strip_suffix('"'))
                    .unwrap_or(key)
                    .to_string()
            },
            value: v.trim().to_string(),
            file: path.to_path_buf(),
            line: n,
        });
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// How a `[pgbouncer]` key is carried.
enum Kind {
    /// The same name and meaning in pgtenant, of this value type.
    Same(Ty),
    /// Another name in pgtenant.
    Renamed(&'static str, Ty),
    /// Read together with other keys (listen_addr/port, tcp_keepalive/keepidle, TLS).
    Special,
    /// No effect on what clients see; why it is not carried.
    Ignored(&'static str),
    /// pgtenant cannot keep the meaning unless the value is this default.
    RefusedUnless(&'static str, &'static str),
}

#[derive(Clone, Copy)]
enum Ty {
    /// A file name, relative to the file that names it.
    Path,
    Int,
    Secs,
    Str,
    Bool,
    List,
}

fn kind(key: &str) -> Option<Kind> {
    use Kind::*;
    use Ty::*;
    Some(match key {
        "pool_mode" | "server_reset_query" | "server_check_query" => Same(Str),
        "auth_file" => Same(Path),
        "auth_user" | "auth_query" | "auth_dbname" => Same(Str),
        "min_pool_size"
        | "reserve_pool_size"
        | "max_client_conn"
        | "max_db_connections"
        | "max_user_connections"
        | "max_prepared_statements" => Same(Int),
        "reserve_pool_timeout"
        | "server_check_delay"
        | "server_lifetime"
        | "server_idle_timeout"
        | "query_wait_timeout"
        | "idle_transaction_timeout"
        | "server_connect_timeout"
        | "stats_period" => Same(Secs),
        "server_reset_query_always" => Same(Bool),
        "admin_users" | "stats_users" => Same(List),
        "default_pool_size" => Renamed("pool_size", Int),
        "max_packet_size" => Renamed("max_message_size", Int),
        "autodb_idle_timeout" => Renamed("pool_idle_timeout", Secs),
        "listen_addr"
        | "listen_port"
        | "tcp_keepalive"
        | "tcp_keepidle"
        | "auth_type"
        | "client_tls_sslmode"
        | "client_tls_key_file"
        | "client_tls_cert_file"
        | "client_tls_ca_file"
        | "server_tls_sslmode"
        | "server_tls_ca_file"
        | "server_tls_key_file"
        | "server_tls_cert_file"
        | "auth_hba_file" => Special,
        "logfile" | "pidfile" | "syslog" | "syslog_ident" | "syslog_facility"
        | "log_connections" | "log_disconnections" | "log_pooler_errors" | "log_stats"
        | "verbose" | "stats_users_prefix" => {
            Ignored("logging: pgtenant logs to stdout (log_level, log_format)")
        }
        "user" => Ignored("pgtenant does not switch its OS user (run it as the user you want)"),
        "so_reuseport"
        | "pkt_buf"
        | "sbuf_loopcnt"
        | "tcp_defer_accept"
        | "tcp_socket_buffer"
        | "tcp_keepcnt"
        | "tcp_keepintvl"
        | "tcp_user_timeout"
        | "listen_backlog"
        | "dns_max_ttl"
        | "dns_nxdomain_ttl"
        | "dns_zone_check_period"
        | "resolv_conf"
        | "server_round_robin"
        | "server_fast_close"
        | "server_login_retry"
        | "suspend_timeout"
        | "cancel_wait_timeout"
        | "peer_id"
        | "service_name"
        | "job_name"
        | "conffile"
        | "application_name_add_host"
        | "disable_pqexec" => Ignored(
            "a process or socket tuning knob pgtenant does not have; no effect on what clients see",
        ),
        "unix_socket_dir" | "unix_socket_mode" => Special,
        "unix_socket_group" => {
            Ignored("the socket file keeps pgtenant's group (set unix_socket_mode)")
        }
        "client_tls_protocols"
        | "client_tls_ciphers"
        | "client_tls_ecdhcurve"
        | "client_tls_dheparams"
        | "server_tls_protocols"
        | "server_tls_ciphers" => {
            Ignored("pgtenant uses rustls' defaults (TLS 1.2 and 1.3, modern ciphers)")
        }
        "ignore_startup_parameters" => {
            Ignored("pgtenant accepts every startup parameter and carries it to the server")
        }
        "track_extra_parameters" => Ignored("pgtenant tracks every setting a client changes"),
        "max_db_client_connections" | "max_user_client_connections" => RefusedUnless(
            "0",
            "per-database/user client limits are not enforced by pgtenant",
        ),
        "client_idle_timeout" => RefusedUnless("0", "pgtenant does not disconnect idle clients"),
        "query_timeout" => RefusedUnless("0", "use statement_timeout on the server instead"),
        "server_check_query_timeout" => Ignored("server checks use server_connect_timeout"),
        _ => return None,
    })
}

/// Translate the lines of a PgBouncer configuration.
pub fn translate(lines: &[Line]) -> Translation {
    let mut t = Translation::default();
    let mut special: std::collections::BTreeMap<&str, &Line> = Default::default();
    let mut databases: Vec<&Line> = Vec::new();
    for l in lines {
        match l.section.as_str() {
            "pgbouncer" => {}
            "databases" => {
                databases.push(l);
                continue;
            }
            "users" => {
                user_entry(l, &mut t);
                continue;
            }
            "peers" => {
                t.errors.push(format!(
                    "{}: [peers] ({}): peering is not supported by pgtenant",
                    l.at(),
                    l.key
                ));
                continue;
            }
            other => {
                t.errors
                    .push(format!("{}: unknown section [{other}]", l.at()));
                continue;
            }
        }
        match kind(&l.key) {
            None => t
                .errors
                .push(format!("{}: unknown PgBouncer setting '{}'", l.at(), l.key)),
            Some(Kind::Same(ty)) => put(&mut t, l, &l.key, ty),
            Some(Kind::Renamed(to, ty)) => put(&mut t, l, to, ty),
            Some(Kind::Special) => {
                special.insert(l.key.as_str(), l);
            }
            Some(Kind::Ignored(why)) => t.notes.push(format!(
                "{}: {} = {}: not carried: {why}",
                l.at(),
                l.key,
                l.value
            )),
            Some(Kind::RefusedUnless(default, why)) => {
                if l.value.trim() != default {
                    t.errors
                        .push(format!("{}: {} = {}: {why}", l.at(), l.key, l.value));
                }
            }
        }
    }
    specials(&special, &mut t);
    databases_section(&databases, &special, &mut t);
    t
}

fn put(t: &mut Translation, l: &Line, key: &str, ty: Ty) {
    if let Ty::Path = ty {
        t.table.insert(key.to_string(), file_value(l));
        return;
    }
    match convert(&l.value, ty) {
        Ok(v) => {
            t.table.insert(key.to_string(), v);
        }
        Err(e) => t.errors.push(format!("{}: {}: {e}", l.at(), l.key)),
    }
}

fn convert(v: &str, ty: Ty) -> Result<Value, String> {
    let v = v.trim();
    match ty {
        Ty::Str | Ty::Path => Ok(Value::String(v.to_string())),
        Ty::Int => v
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected a whole number, got '{}'", clip(v))),
        Ty::Secs => secs(v).map(Value::Float),
        Ty::Bool => match v.to_ascii_lowercase().as_str() {
            "1" | "on" | "yes" | "true" => Ok(Value::Boolean(true)),
            "0" | "off" | "no" | "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected 0 or 1, got '{}'", clip(v))),
        },
        Ty::List => Ok(Value::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
    }
}

/// A file name as an absolute path: relative names are relative to the file that holds
/// them (so an imported TOML written elsewhere still finds them).
fn file_value(l: &Line) -> Value {
    let p = Path::new(l.value.trim());
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        let dir = l.file.parent().unwrap_or(Path::new(""));
        std::path::absolute(dir.join(p)).unwrap_or_else(|_| dir.join(p))
    };
    Value::String(full.display().to_string())
}

/// PgBouncer's time values: seconds, fractions allowed, or a number with a unit
/// (`us`, `ms`, `s`, `min`, `h`, `d`).
fn secs(v: &str) -> Result<f64, String> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a time in seconds, got '{}'", clip(v)))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "us" => 1e-6,
        "ms" => 1e-3,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        u => return Err(format!("unknown time unit '{}' in '{}'", clip(u), clip(v))),
    };
    Ok(n * scale)
}

/// Settings read together: the listen address, keepalive, auth_type, TLS.
fn specials(s: &std::collections::BTreeMap<&str, &Line>, t: &mut Translation) {
    let get = |k: &str| s.get(k).map(|l| l.value.trim());
    // listen_addr / listen_port
    let port = match s.get("listen_port") {
        Some(l) => match l.value.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                t.errors
                    .push(format!("{}: listen_port: expected a port number", l.at()));
                6432
            }
        },
        None => 6432,
    };
    match s.get("listen_addr") {
        Some(l) if !l.value.trim().is_empty() => {
            let addrs: Vec<&str> = l.value.split(',').map(str::trim).collect();
            let host = match addrs[0] {
                "*" => "0.0.0.0".to_string(),
                "localhost" => "127.0.0.1".to_string(),
                a if a.contains(':') => format!("[{a}]"),
                a => a.to_string(),
            };
            if addrs.len() > 1 {
                t.notes.push(format!(
                    "{}: listen_addr = {}: only the first address is carried (add [listener.NAME] tables for the others)",
                    l.at(),
                    l.value
                ));
            }
            t.table
                .insert("listen".into(), Value::String(format!("{host}:{port}")));
        }
        other => {
            if let Some(l) = other {
                t.notes.push(format!(
                    "{}: listen_addr is empty: PgBouncer would listen on its unix socket only; pgtenant listens on 127.0.0.1:{port}",
                    l.at()
                ));
            }
            t.table
                .insert("listen".into(), Value::String(format!("127.0.0.1:{port}")));
        }
    }
    // unix_socket_dir: PgBouncer's default is /tmp; empty turns it off.
    match s.get("unix_socket_dir") {
        Some(l) if l.value.trim().is_empty() => {}
        Some(l) => {
            t.table.insert("unix_socket_dir".into(), file_value(l));
        }
        None => {
            t.table
                .insert("unix_socket_dir".into(), Value::String("/tmp".into()));
        }
    }
    if let Some(l) = s.get("unix_socket_mode") {
        t.table.insert(
            "unix_socket_mode".into(),
            Value::String(l.value.trim().to_string()),
        );
    }
    // tcp_keepalive (on/off) and tcp_keepidle (seconds) → tcp_keepalive (seconds, 0 off)
    match get("tcp_keepalive") {
        Some("0") => {
            t.table.insert("tcp_keepalive".into(), Value::Float(0.0));
        }
        _ => {
            if let Some(l) = s.get("tcp_keepidle") {
                match secs(l.value.trim()) {
                    Ok(x) if x > 0.0 => {
                        t.table.insert("tcp_keepalive".into(), Value::Float(x));
                    }
                    Ok(_) => {}
                    Err(e) => t.errors.push(format!("{}: tcp_keepidle: {e}", l.at())),
                }
            }
        }
    }
    // auth_type
    let auth_type = get("auth_type").unwrap_or("md5");
    match auth_type {
        "trust" | "md5" | "scram-sha-256" | "hba" => {
            t.table
                .insert("auth_type".into(), Value::String(auth_type.into()));
        }
        other => {
            let at = s.get("auth_type").map(|l| l.at()).unwrap_or_default();
            let why = match other {
                "plain" => "cleartext passwords between client and pooler are not supported (use scram-sha-256)",
                "any" => "auth_type = any (no password, any user) is not supported; trust checks the user name",
                _ => "this authentication method is not supported (trust, md5, scram-sha-256)",
            };
            t.errors.push(format!("{at}: auth_type = {other}: {why}"));
        }
    }
    if let Some(l) = s.get("auth_hba_file") {
        if auth_type == "hba" {
            t.table.insert("auth_hba_file".into(), file_value(l));
        } else {
            t.notes.push(format!(
                "{}: auth_hba_file: not carried (PgBouncer uses it only with auth_type = hba)",
                l.at()
            ));
        }
    }
    // client TLS
    if let Some(l) = s.get("client_tls_sslmode") {
        match l.value.trim() {
            m @ ("disable" | "allow" | "require") => {
                t.table.insert("client_tls".into(), Value::String(m.into()));
            }
            "prefer" => {
                t.table
                    .insert("client_tls".into(), Value::String("allow".into()));
            }
            m => t.errors.push(format!(
                "{}: client_tls_sslmode = {m}: client certificates are not verified by pgtenant (disable, allow, prefer, require)",
                l.at()
            )),
        }
    }
    for (from, to) in [
        ("client_tls_key_file", "client_tls_key_file"),
        ("client_tls_cert_file", "client_tls_cert_file"),
        ("server_tls_ca_file", "server_tls_ca_file"),
    ] {
        if let Some(l) = s.get(from) {
            t.table.insert(to.into(), file_value(l));
        }
    }
    if let Some(l) = s.get("client_tls_ca_file") {
        t.notes.push(format!(
            "{}: client_tls_ca_file: not carried (client certificates are not verified)",
            l.at()
        ));
    }
    if let Some(l) = s.get("server_tls_sslmode") {
        match l.value.trim() {
            "allow" => {
                t.table
                    .insert("server_tls".into(), Value::String("prefer".into()));
            }
            m @ ("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => {
                t.table.insert("server_tls".into(), Value::String(m.into()));
            }
            m => t.errors.push(format!(
                "{}: server_tls_sslmode = {m}: unknown mode",
                l.at()
            )),
        }
    }
    for k in ["server_tls_key_file", "server_tls_cert_file"] {
        if let Some(l) = s.get(k) {
            t.errors.push(format!(
                "{}: {k}: client certificates towards the server are not supported yet",
                l.at()
            ));
        }
    }
}

/// `[users]` entries: `name = pool_mode=… pool_size=… max_user_connections=…`.
fn user_entry(l: &Line, t: &mut Translation) {
    let pairs = match conninfo(&l.value) {
        Ok(p) => p,
        Err(e) => {
            t.errors.push(format!("{}: [users] {}: {e}", l.at(), l.key));
            return;
        }
    };
    let mut user = Table::new();
    for (k, v) in pairs {
        match k.as_str() {
            "pool_mode" => {
                user.insert("pool_mode".into(), Value::String(v));
            }
            "pool_size" => match v.parse::<i64>() {
                Ok(n) => {
                    user.insert("pool_size".into(), Value::Integer(n));
                }
                Err(_) => t.errors.push(format!(
                    "{}: [users] {}: pool_size: expected a number",
                    l.at(),
                    l.key
                )),
            },
            "max_user_connections" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => {
                    user.insert("max_user_connections".into(), Value::Integer(n));
                }
                _ => t.errors.push(format!(
                    "{}: [users] {}: max_user_connections: expected a number",
                    l.at(),
                    l.key
                )),
            },
            other => t.errors.push(format!(
                "{}: [users] {}: unknown parameter '{other}'",
                l.at(),
                l.key
            )),
        }
    }
    let users = t
        .table
        .entry("users")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(users) = users {
        users.insert(l.key.clone(), Value::Table(user));
    }
}

/// (host, port, user, password, dbname) of the entry that becomes the upstream.
type UpstreamEntry = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// `[databases]`: every entry as a `[databases.NAME]` table; the first named entry (else
/// `*`) is also the upstream.
fn databases_section(
    entries: &[&Line],
    special: &std::collections::BTreeMap<&str, &Line>,
    t: &mut Translation,
) {
    let mut server: Option<UpstreamEntry> = None;
    let mut fallback = None;
    let mut tables = Table::new();
    for l in entries {
        let pairs = match conninfo(&l.value) {
            Ok(p) => p,
            Err(e) => {
                t.errors
                    .push(format!("{}: [databases] {}: {e}", l.at(), l.key));
                continue;
            }
        };
        // PgBouncer's default host: a unix socket in unix_socket_dir (/tmp unless set;
        // the loopback when it is set empty, as sockets are then off).
        let mut host = match special.get("unix_socket_dir") {
            Some(d) if d.value.trim().is_empty() => "127.0.0.1".to_string(),
            Some(d) => d.value.trim().to_string(),
            None => "/tmp".to_string(),
        };
        let mut port = "5432".to_string();
        let mut dbname = None;
        let mut user = None;
        let mut password = None;
        let mut entry = Table::new();
        let mut bad = false;
        for (k, v) in pairs {
            let int = |v: &str| v.parse::<i64>().ok().filter(|n| *n >= 0);
            match k.as_str() {
                "host" if v.contains(',') => {
                    t.errors.push(format!(
                        "{}: [databases] {}: host={v}: several hosts (load balancing) are not supported",
                        l.at(),
                        l.key
                    ));
                    bad = true;
                }
                "host" => host = v,
                "port" => port = v,
                "dbname" => dbname = Some(v),
                "user" => user = Some(v),
                "password" => password = Some(v),
                "pool_size" | "min_pool_size" | "reserve_pool" | "reserve_pool_size"
                | "max_db_connections" => match int(&v) {
                    Some(n) => {
                        let key = if k == "reserve_pool" {
                            "reserve_pool_size"
                        } else {
                            k.as_str()
                        };
                        entry.insert(key.into(), Value::Integer(n));
                    }
                    None => {
                        t.errors.push(format!(
                            "{}: [databases] {}: {k}={v}: expected a number",
                            l.at(),
                            l.key
                        ));
                        bad = true;
                    }
                },
                "pool_mode" | "connect_query" | "auth_user" | "client_encoding" | "datestyle"
                | "timezone" | "application_name" => {
                    entry.insert(k.clone(), Value::String(v));
                }
                "auth_query"
                | "auth_dbname"
                | "server_lifetime"
                | "load_balance_hosts"
                | "max_db_client_connections" => {
                    t.errors.push(format!(
                        "{}: [databases] {}: {k}: not supported per database (set it globally)",
                        l.at(),
                        l.key
                    ));
                    bad = true;
                }
                other => {
                    t.errors.push(format!(
                        "{}: [databases] {}: unknown parameter '{other}'",
                        l.at(),
                        l.key
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        entry.insert("host".into(), Value::String(host.clone()));
        match port.parse::<i64>() {
            Ok(p) if (1..=65535).contains(&p) => {
                entry.insert("port".into(), Value::Integer(p));
            }
            _ => {
                t.errors.push(format!(
                    "{}: [databases] {}: port={port}: expected a port number",
                    l.at(),
                    l.key
                ));
                continue;
            }
        }
        if password.is_some() && user.is_none() {
            // PgBouncer uses an entry's password only for its forced user.
            t.notes.push(format!(
                "{}: [databases] {}: password without user: not carried (it is only used with user=)",
                l.at(),
                l.key
            ));
            password = None;
        }
        for (k, v) in [
            ("dbname", &dbname),
            ("user", &user),
            ("password", &password),
        ] {
            if let Some(v) = v {
                entry.insert(k.into(), Value::String(v.clone()));
            }
        }
        let this = (
            host,
            port,
            user,
            password,
            dbname.or_else(|| (l.key != "*").then(|| l.key.clone())),
        );
        if l.key == "*" {
            fallback = Some(this);
        } else if server.is_none() {
            server = Some(this);
        }
        tables.insert(l.key.clone(), Value::Table(entry));
    }
    if !tables.is_empty() {
        t.table.insert("databases".into(), Value::Table(tables));
    }
    let server = server.or(fallback);
    let Some((host, port, user, password, first_db)) = server else {
        t.errors.push(
            "[databases]: no entry: pgtenant needs the server to pool (e.g. * = host=… port=…)"
                .into(),
        );
        return;
    };
    let user = user
        .or_else(|| {
            t.table
                .get("auth_user")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| {
            t.table
                .get("admin_users")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let Some(user) = user else {
        t.errors.push("[databases]: pgtenant reads the Citus catalog (and checks the server) as one user: give user= in the entry, or set auth_user or admin_users".into());
        return;
    };
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let host = if host.starts_with('/') {
        // A socket directory (libpq's host=/path), percent-encoded in the URL.
        enc(&host)
    } else if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let auth = match password {
        Some(p) => format!("{}:{}", enc(&user), enc(&p)),
        None => enc(&user),
    };
    let db = first_db
        .or_else(|| {
            t.table
                .get("auth_dbname")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| user.clone());
    t.table.insert(
        "upstream".into(),
        Value::String(format!("postgres://{auth}@{host}:{port}/{}", enc(&db))),
    );
}

/// libpq-style `key=value key='quoted value'` pairs.
fn conninfo(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected '=' after '{}'", clip(&key)));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in '{}'", clip(&key))),
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

/// A message as a TOML comment may hold it: control characters (but tab), which the ini
/// may carry in a key or value and a TOML comment may not, are written escaped (found by
/// the `pgbouncer_ini` fuzz target: a NUL in a key made the output unreadable).
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The TOML text `pgtenant import` writes: a header, every note and error as a comment,
/// then the settings.
pub fn to_toml(source: &Path, t: &Translation) -> String {
    let mut out = format!(
        "# pgtenant configuration imported from {} by `pgtenant import`.\n",
        source.display()
    );
    if !t.errors.is_empty() {
        out.push_str("#\n# NOT CARRIED, and pgtenant would run differently (fix before use):\n");
        for e in &t.errors {
            out.push_str(&format!("#   {}\n", comment_text(e)));
        }
    }
    if !t.notes.is_empty() {
        out.push_str("#\n# Not carried (no effect on what clients see):\n");
        for n in &t.notes {
            out.push_str(&format!("#   {}\n", comment_text(n)));
        }
    }
    out.push('\n');
    out.push_str(&toml::to_string(&t.table).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests;
