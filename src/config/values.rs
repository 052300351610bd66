//! Value readers for the configuration: each takes a TOML value and returns the value or
//! the message that follows "key: " (`expected a positive integer, got -1`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

/// `admin_users = ["a", "b"]` (a single "a,b" string is accepted too, as PgBouncer writes it).
pub(super) fn user_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(split_users(s)),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("expected an array of user names, got {}", got(i)))
            })
            .collect(),
        _ => Err(format!("expected an array of user names, got {}", got(v))),
    }
}

/// "a, b,c" → ["a", "b", "c"].
pub(crate) fn split_users(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// A short rendering of a bad value for error messages.
pub(super) fn got(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 40 => {
            format!("'{}…'", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("'{s}'"),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => v.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

pub(super) fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, got {}", got(v)))
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    // PgBouncer writes booleans as 0/1; accept both spellings.
    match v {
        Value::Boolean(b) => Ok(*b),
        Value::Integer(0) => Ok(false),
        Value::Integer(1) => Ok(true),
        _ => Err(format!("expected true or false, got {}", got(v))),
    }
}

/// A u32 greater than zero.
pub(super) fn positive(v: &Value) -> Result<u32, String> {
    match v.as_integer().map(u32::try_from) {
        Some(Ok(n)) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got {}", got(v))),
    }
}

/// A u32, zero allowed.
pub(super) fn count(v: &Value) -> Result<u32, String> {
    match v.as_integer().map(u32::try_from) {
        Some(Ok(n)) => Ok(n),
        _ => Err(format!("expected a non-negative integer, got {}", got(v))),
    }
}

/// Seconds as an integer or a float, as PgBouncer; 0 means "disabled" where it says so.
pub(super) fn seconds(v: &Value) -> Result<Duration, String> {
    let n = match v {
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    };
    if n.is_finite() && n >= 0.0 {
        if let Ok(d) = Duration::try_from_secs_f64(n) {
            return Ok(d);
        }
    }
    Err(format!(
        "expected a non-negative number of seconds, got {}",
        got(v)
    ))
}

pub(super) fn path(v: &Value, base: &Path) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("expected a file path, got ''".into());
    }
    Ok(base.join(s))
}

pub(super) fn choice<T: Copy>(v: &Value, options: &[(&str, T)]) -> Result<T, String> {
    match v.as_str() {
        Some(s) => choice_str(s, options),
        None => Err(format!(
            "expected one of {}, got {}",
            names(options),
            got(v)
        )),
    }
}

pub(super) fn choice_str<T: Copy>(s: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, x)| *x)
        .ok_or_else(|| format!("expected one of {}, got '{s}'", names(options)))
}

pub(super) fn names<T>(options: &[(&str, T)]) -> String {
    options
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn name_of<T: Copy + PartialEq>(x: T, options: &[(&'static str, T)]) -> &'static str {
    options
        .iter()
        .find(|(_, v)| *v == x)
        .map_or("?", |(n, _)| n)
}

/// `host:port` with an IP address; `*` and `localhost` are accepted as PgBouncer users
/// write them (`*` = every IPv4 interface).
pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let named = s.rsplit_once(':').and_then(|(host, port)| {
        let ip = match host {
            "*" => Ipv4Addr::UNSPECIFIED,
            "localhost" => Ipv4Addr::LOCALHOST,
            _ => return None,
        };
        port.parse::<u16>().ok().map(|p| SocketAddr::from((ip, p)))
    });
    named.ok_or_else(|| format!("expected an address like 127.0.0.1:6432 or [::]:6432, got '{s}'"))
}

pub(super) fn readable_file(p: &Path) -> Result<(), String> {
    let shown = p.display();
    // Opening proves readability; a directory opens too on Linux, hence the metadata check.
    let f = std::fs::File::open(p).map_err(|e| format!("cannot read '{shown}': {e}"))?;
    match f.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("'{shown}' is not a regular file")),
        Err(e) => Err(format!("cannot read '{shown}': {e}")),
    }
}
