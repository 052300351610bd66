//! Per-tenant limits as the configuration states them (`crate::limits` enforces them):
//!
//! - `tenant_max_active` (global, and per `[databases.X]` entry): the server connections
//!   one tenant may hold at once in one pool, a number (`3`) or a share of the pool's
//!   pool_size (`"25%"`, at least 1); `0` or `"off"` = no limit (the default);
//! - `tenant_max_tps`: transactions per second one tenant may start through this
//!   instance (a token bucket holding one second's worth); `0` = no limit;
//! - `tenant_statement_timeout`: a statement of a tenant's transaction running longer is
//!   cancelled; `0` = none;
//! - `[tenant_limits]`: overrides for named tenants, `"42" = { max_active = 8, max_tps =
//!   50, statement_timeout = 30 }`; a key left out takes the default, `0` means "no limit
//!   for this tenant". Tenant values are written as text and compared canonically
//!   ([`canonical_tenant`]: `"042"` is tenant 42, uuids in lower case).
//!
//! Values given as text (the admin console's `SET TENANT`) go through the same readers as
//! the file's, so both say the same thing about a bad value.
use std::collections::BTreeMap;
use std::time::Duration;

use toml::Value;

use super::values::got;

/// Most tenants `[tenant_limits]` may name (the store's overrides are bounded apart).
pub const MAX_CONFIG_OVERRIDES: usize = 100_000;

/// A tenant's concurrency limit per pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxActive {
    /// No limit.
    #[default]
    Off,
    /// At most this many server connections (at least 1).
    Count(u32),
    /// At most this share of the pool's pool_size, in percent (1 to 100), rounded up.
    Percent(u32),
}

impl MaxActive {
    /// The limit in a pool of `pool_size` connections; 0 = none.
    pub fn of(self, pool_size: u32) -> u32 {
        match self {
            MaxActive::Off => 0,
            MaxActive::Count(n) => n,
            MaxActive::Percent(p) => {
                let n = (u64::from(pool_size) * u64::from(p)).div_ceil(100);
                (n as u32).max(1)
            }
        }
    }

    pub fn is_off(self) -> bool {
        self == MaxActive::Off
    }

    /// As SHOW CONFIG and SHOW TENANT LIMITS print it.
    pub fn show(self) -> String {
        match self {
            MaxActive::Off => "0".into(),
            MaxActive::Count(n) => n.to_string(),
            MaxActive::Percent(p) => format!("{p}%"),
        }
    }

    /// `3`, `"25%"`, `0`, `"off"`.
    pub fn parse(s: &str) -> Result<MaxActive, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(MaxActive::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MaxActive::Percent(p)),
                _ => Err(format!(
                    "expected a number of connections or a share of pool_size from 1% to 100%, got '{s}'"
                )),
            };
        }
        match t.parse::<u32>() {
            Ok(0) => Ok(MaxActive::Off),
            Ok(n) => Ok(MaxActive::Count(n)),
            Err(_) => Err(format!(
                "expected a number of connections (0 = no limit) or a share of pool_size such as \"25%\", got '{s}'"
            )),
        }
    }

    fn from_toml(v: &Value) -> Result<MaxActive, String> {
        match v {
            Value::Integer(i) if *i >= 0 && *i <= i64::from(u32::MAX) => {
                MaxActive::parse(&i.to_string())
            }
            Value::String(s) => MaxActive::parse(s),
            _ => Err(format!(
                "expected a number of connections (0 = no limit) or a share of pool_size such as \"25%\", got {}",
                got(v)
            )),
        }
    }
}

/// Largest `max_tps` accepted: beyond it a limit means nothing.
const MAX_TPS: f64 = 1_000_000.0;

/// Transactions per second: a non-negative number up to a million; 0 = no limit.
pub fn parse_tps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=MAX_TPS).contains(&x) => Ok(x),
        _ => Err(format!(
            "expected transactions per second from 0 (no limit) to 1000000, got '{s}'"
        )),
    }
}

fn tps_from_toml(v: &Value) -> Result<f64, String> {
    match v {
        Value::Integer(i) => parse_tps(&i.to_string()),
        Value::Float(f) => parse_tps(&f.to_string()),
        _ => Err(format!(
            "expected transactions per second from 0 (no limit) to 1000000, got {}",
            got(v)
        )),
    }
}

/// Largest statement timeout: a day (PostgreSQL's own limit is about 24.8 days).
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A statement timeout: seconds (`30`, `0.5`) or with a unit (`500ms`, `30s`, `2min`);
/// 0 = none.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || {
        format!("expected a duration such as 30 (seconds), 500ms, 30s or 2min (0 = none), up to a day, got '{s}'")
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "seconds" => 1.0,
        "ms" => 0.001,
        "min" | "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let d = Duration::try_from_secs_f64(n * scale).map_err(|_| bad())?;
    if d > MAX_TIMEOUT {
        return Err(bad());
    }
    Ok(d)
}

fn timeout_from_toml(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Integer(i) if *i >= 0 => parse_timeout(&i.to_string()),
        Value::Float(f) if *f >= 0.0 => parse_timeout(&f.to_string()),
        Value::String(s) => parse_timeout(s),
        _ => Err(format!(
            "expected a duration such as 30 (seconds) or \"500ms\", got {}",
            got(v)
        )),
    }
}

/// One tenant's limits where they differ from the defaults; `None` = the default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TenantOverride {
    pub max_active: Option<MaxActive>,
    /// 0 = no limit for this tenant.
    pub max_tps: Option<f64>,
    /// Zero = none for this tenant.
    pub statement_timeout: Option<Duration>,
}

impl TenantOverride {
    pub fn is_empty(&self) -> bool {
        self.max_active.is_none() && self.max_tps.is_none() && self.statement_timeout.is_none()
    }

    /// Set one key from text (`max_active`, `max_tps`, `statement_timeout`); `default`
    /// (or `reset`) takes the key back to the default.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let reset = value.trim().eq_ignore_ascii_case("default");
        match key.to_ascii_lowercase().as_str() {
            "max_active" => {
                self.max_active = if reset {
                    None
                } else {
                    Some(MaxActive::parse(value)?)
                }
            }
            "max_tps" => self.max_tps = if reset { None } else { Some(parse_tps(value)?) },
            "statement_timeout" => {
                self.statement_timeout = if reset {
                    None
                } else {
                    Some(parse_timeout(value)?)
                }
            }
            other => {
                return Err(format!(
                "unknown tenant limit '{other}' (expected max_active, max_tps, statement_timeout)"
            ))
            }
        }
        Ok(())
    }

    /// `self`'s keys where set, `under`'s otherwise.
    pub fn over(self, under: TenantOverride) -> TenantOverride {
        TenantOverride {
            max_active: self.max_active.or(under.max_active),
            max_tps: self.max_tps.or(under.max_tps),
            statement_timeout: self.statement_timeout.or(under.statement_timeout),
        }
    }
}

/// `[tenant_limits]`: tenant value → its override; errors as (key, message).
pub(super) fn parse(
    v: &Value,
    errs: &mut Vec<(String, String)>,
) -> BTreeMap<String, TenantOverride> {
    let mut out = BTreeMap::new();
    let Some(t) = v.as_table() else {
        errs.push((
            "tenant_limits".into(),
            "expected a table of tenant = { max_active, max_tps, statement_timeout }".into(),
        ));
        return out;
    };
    if t.len() > MAX_CONFIG_OVERRIDES {
        errs.push((
            "tenant_limits".into(),
            format!("{} tenants named; at most {MAX_CONFIG_OVERRIDES} (set the others at run time with SET TENANT)", t.len()),
        ));
        return out;
    }
    for (tenant, e) in t {
        let key = format!("tenant_limits.\"{tenant}\"");
        let value = canonical_tenant(tenant);
        if value.is_empty() {
            errs.push((key, "the tenant value is empty".into()));
            continue;
        }
        let Some(fields) = e.as_table() else {
            errs.push((key, "expected a table such as { max_active = 8 }".into()));
            continue;
        };
        let mut o = TenantOverride::default();
        for (k, v) in fields {
            let r = match k.as_str() {
                "max_active" => MaxActive::from_toml(v).map(|x| o.max_active = Some(x)),
                "max_tps" => tps_from_toml(v).map(|x| o.max_tps = Some(x)),
                "statement_timeout" => timeout_from_toml(v).map(|x| o.statement_timeout = Some(x)),
                other => Err(format!(
                    "unknown key '{other}' (expected max_active, max_tps, statement_timeout)"
                )),
            };
            if let Err(m) = r {
                errs.push((format!("{key}.{k}"), m));
            }
        }
        if out.insert(value.clone(), o).is_some() {
            errs.push((key, format!("names tenant {value} a second time")));
        }
    }
    out
}

pub(super) fn max_active(v: &Value) -> Result<MaxActive, String> {
    MaxActive::from_toml(v)
}

pub(super) fn max_tps(v: &Value) -> Result<f64, String> {
    tps_from_toml(v)
}

pub(super) fn timeout(v: &Value) -> Result<Duration, String> {
    timeout_from_toml(v)
}

/// A tenant value as the router reports it, without knowing the column's type: an
/// integer without sign noise or leading zeros, a uuid in lower case, anything else as
/// written (trimmed). The router's own text is already canonical for its type
/// (`citus::hash::canonical_text`), so both meet.
pub fn canonical_tenant(s: &str) -> String {
    let t = s.trim();
    if let Ok(i) = t.parse::<i128>() {
        return i.to_string();
    }
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    let braces = hex.trim_start_matches('{').trim_end_matches('}');
    if braces.len() == 32 && braces.chars().all(|c| c.is_ascii_hexdigit()) {
        let l = braces.to_ascii_lowercase();
        return format!(
            "{}-{}-{}-{}-{}",
            &l[0..8],
            &l[8..12],
            &l[12..16],
            &l[16..20],
            &l[20..32]
        );
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_active_reads_numbers_and_shares() {
        assert_eq!(MaxActive::parse("3"), Ok(MaxActive::Count(3)));
        assert_eq!(MaxActive::parse("0"), Ok(MaxActive::Off));
        assert_eq!(MaxActive::parse("off"), Ok(MaxActive::Off));
        assert_eq!(MaxActive::parse("25%"), Ok(MaxActive::Percent(25)));
        assert!(MaxActive::parse("0%").is_err());
        assert!(MaxActive::parse("101%").is_err());
        assert!(MaxActive::parse("-1").is_err());
        assert!(MaxActive::parse("many").is_err());
        assert_eq!(MaxActive::Percent(25).of(10), 3);
        assert_eq!(MaxActive::Percent(1).of(10), 1);
        assert_eq!(MaxActive::Percent(100).of(20), 20);
        assert_eq!(MaxActive::Count(4).of(20), 4);
        assert_eq!(MaxActive::Off.of(20), 0);
    }

    #[test]
    fn rates_and_timeouts_have_bounds() {
        assert_eq!(parse_tps("12.5"), Ok(12.5));
        assert!(parse_tps("-1").is_err());
        assert!(parse_tps("NaN").is_err());
        assert!(parse_tps("inf").is_err());
        assert!(parse_tps("1e9").is_err());
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("2 days").is_err());
        assert!(parse_timeout("100000").is_err());
    }

    #[test]
    fn tenant_values_meet_the_routers_text() {
        assert_eq!(canonical_tenant("042"), "42");
        assert_eq!(canonical_tenant(" -7 "), "-7");
        assert_eq!(canonical_tenant("+7"), "7");
        assert_eq!(
            canonical_tenant("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(canonical_tenant("acme"), "acme");
    }

    #[test]
    fn overrides_name_their_bad_keys() {
        let v: Value = toml::from_str(
            "\"042\" = { max_active = 8, max_tps = 50, statement_timeout = \"2s\" }\n\
             \"7\" = { max_active = \"x\" }\n\
             \"8\" = { color = 1 }\n\
             \"42\" = { max_active = 1 }\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        let m = parse(&v, &mut errs);
        assert!(m.contains_key("42"), "{m:?}");
        assert!(!m.contains_key("042"), "{m:?}");
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"tenant_limits.\"7\".max_active"), "{errs:?}");
        assert!(keys.contains(&"tenant_limits.\"8\".color"), "{errs:?}");
        assert!(
            errs.iter().any(|(_, m)| m.contains("a second time")),
            "042 and 42 are one tenant: {errs:?}"
        );
    }
}
