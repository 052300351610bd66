//! Run-time tenant limits, shared by every instance: the table
//! `pgtenant.tenant_limits` on the upstream's coordinator (the primary cluster), and this
//! instance's copy of it.
//!
//! Rules:
//! - One row per tenant with a run-time override; a NULL column is a key not overridden
//!   (the configuration's, else the default, applies). Tenant values are canonical text
//!   ([`canonical_tenant`]), at most [`MAX_TENANT_CHARS`] characters.
//! - The schema and table are created by the first `SET TENANT` (not at start: an
//!   instance that never sets a limit writes nothing in the upstream's database), under
//!   `pgschema::LOCK` like the blue-green store's. A missing table reads as no overrides.
//! - Every change is one transaction that ends with a NOTIFY on [`CHANNEL`] (payload: the
//!   tenant); every instance's sync task (`sync.rs`) then re-reads the table.
//! - At most [`MAX_ROWS`] rows are loaded (by tenant order); more is logged. A row whose
//!   values do not read is skipped with a warning, never applied half.
//! - This instance's copy changes only whole ([`TenantLimits::set_runtime`]), under one
//!   lock: a write from the console applies its own row at once; a load that started
//!   before such a write is dropped and read again (it could undo it).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::TenantLimits;
use crate::config::tenant_limits::{parse_timeout, parse_tps};
use crate::config::{canonical_tenant, MaxActive, TenantOverride};
use crate::pgschema::lit;

/// The LISTEN/NOTIFY channel of the run-time limits: the payload is the tenant changed.
pub const CHANNEL: &str = "pgtenant_tenant_limits";

/// Most run-time overrides an instance loads.
pub const MAX_ROWS: usize = 100_000;

/// Longest tenant value `SET TENANT` accepts, in characters.
pub const MAX_TENANT_CHARS: usize = 200;

/// Creates the schema and the table if missing.
pub fn schema_sql() -> String {
    crate::pgschema::create_sql(
        "CREATE TABLE IF NOT EXISTS pgtenant.tenant_limits (
    tenant text PRIMARY KEY,
    max_active text,
    max_tps double precision,
    statement_timeout_ms bigint,
    set_by text,
    set_at timestamptz DEFAULT now());",
    )
}

/// Is the table there?
pub const EXISTS_SQL: &str = "SELECT to_regclass('pgtenant.tenant_limits') IS NOT NULL";

/// The columns every read selects, in [`Row::read`]'s order.
const COLUMNS: &str = "tenant, max_active, max_tps::text, statement_timeout_ms::text, set_by, \
     to_char(set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'";

/// Every override, by tenant, one more than [`MAX_ROWS`] (to know there are more).
pub fn load_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM pgtenant.tenant_limits ORDER BY tenant LIMIT {}",
        MAX_ROWS + 1
    )
}

/// A key of a tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    MaxActive,
    MaxTps,
    StatementTimeout,
}

impl Key {
    pub const ALL: [Key; 3] = [Key::MaxActive, Key::MaxTps, Key::StatementTimeout];

    pub fn parse(s: &str) -> Result<Key, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "max_active" => Ok(Key::MaxActive),
            "max_tps" => Ok(Key::MaxTps),
            "statement_timeout" => Ok(Key::StatementTimeout),
            _ => Err(format!(
                "unknown tenant limit '{s}' (expected max_active, max_tps, statement_timeout)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Key::MaxActive => "max_active",
            Key::MaxTps => "max_tps",
            Key::StatementTimeout => "statement_timeout",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Key::MaxActive => "max_active",
            Key::MaxTps => "max_tps",
            Key::StatementTimeout => "statement_timeout_ms",
        }
    }
}

/// One key's new value as the store's column holds it (`None`: back to the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    pub key: Key,
    /// `max_active` as [`MaxActive::show`], `max_tps` as a number, `statement_timeout` in
    /// whole milliseconds; an SQL literal already (no quoting needed but for max_active).
    pub column: Option<String>,
}

impl Assign {
    /// `key = value` as the console gives it (`default` resets the key), checked by the
    /// same readers as the configuration file's.
    pub fn parse(key: &str, value: &str) -> Result<Assign, String> {
        let key = Key::parse(key)?;
        let mut o = TenantOverride::default();
        o.set(key.name(), value)
            .map_err(|e| format!("{}: {e}", key.name()))?;
        let column = match key {
            Key::MaxActive => o.max_active.map(MaxActive::show),
            Key::MaxTps => o.max_tps.map(|x| x.to_string()),
            Key::StatementTimeout => o.statement_timeout.map(|d| timeout_ms(d).to_string()),
        };
        Ok(Assign { key, column })
    }

    fn sql(&self) -> String {
        match (&self.column, self.key) {
            (None, _) => "NULL".into(),
            (Some(v), Key::MaxActive) => lit(v),
            (Some(v), _) => v.clone(),
        }
    }
}

/// A timeout in whole milliseconds; a positive one never rounds to 0 ("none").
fn timeout_ms(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    if ms == 0 && !d.is_zero() {
        1
    } else {
        ms
    }
}

/// A tenant value as `SET TENANT` and `RESET TENANT` take it: canonical, not empty, not
/// too long.
pub fn tenant_value(v: &str) -> Result<String, String> {
    let c = canonical_tenant(v);
    if c.is_empty() {
        return Err("the tenant value is empty".into());
    }
    let n = c.chars().count();
    if n > MAX_TENANT_CHARS {
        return Err(format!(
            "the tenant value has {n} characters; at most {MAX_TENANT_CHARS}"
        ));
    }
    if c.contains('\0') {
        return Err("the tenant value holds a zero byte".into());
    }
    Ok(c)
}

/// A change to one tenant's run-time override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SET TENANT`: these keys (each at most once) take these values.
    Set {
        tenant: String,
        assigns: Vec<Assign>,
    },
    /// `RESET TENANT`: one key back to the default, or the whole override (`None`).
    Reset { tenant: String, key: Option<Key> },
}

impl Change {
    pub fn tenant(&self) -> &str {
        match self {
            Change::Set { tenant, .. } | Change::Reset { tenant, .. } => tenant,
        }
    }

    /// Does it add a row (so counts against [`MAX_ROWS`])?
    pub fn may_add(&self) -> bool {
        matches!(self, Change::Set { assigns, .. } if assigns.iter().any(|a| a.column.is_some()))
    }

    /// The change as one transaction: returns an `existed` row (whether the tenant had a
    /// row before), then a `row` row with the tenant's row after (none when it has none).
    pub fn sql(&self, by: &str) -> String {
        let t = lit(self.tenant());
        let by = lit(by);
        let change = match self {
            Change::Set { assigns, .. } => {
                let cols: Vec<&str> = assigns.iter().map(|a| a.key.column()).collect();
                let vals: Vec<String> = assigns.iter().map(Assign::sql).collect();
                let updates: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect();
                format!(
                    "INSERT INTO pgtenant.tenant_limits AS l (tenant, {cols}, set_by) VALUES ({t}, {vals}, {by})
    ON CONFLICT (tenant) DO UPDATE SET {updates}, set_by = excluded.set_by, set_at = now();",
                    cols = cols.join(", "),
                    vals = vals.join(", "),
                    updates = updates.join(", ")
                )
            }
            Change::Reset { key: None, .. } => {
                format!("DELETE FROM pgtenant.tenant_limits WHERE tenant = {t};")
            }
            Change::Reset { key: Some(k), .. } => format!(
                "UPDATE pgtenant.tenant_limits SET {} = NULL, set_by = {by}, set_at = now() WHERE tenant = {t};",
                k.column()
            ),
        };
        format!(
            "BEGIN;
SELECT 'existed', count(*)::text FROM pgtenant.tenant_limits WHERE tenant = {t};
{change}
DELETE FROM pgtenant.tenant_limits WHERE tenant = {t}
    AND max_active IS NULL AND max_tps IS NULL AND statement_timeout_ms IS NULL;
NOTIFY {CHANNEL}, {t};
SELECT 'row', {COLUMNS} FROM pgtenant.tenant_limits WHERE tenant = {t};
COMMIT;"
        )
    }
}

/// Is the store full for a new tenant: at [`MAX_ROWS`] and `tenant` not among them.
pub fn full_sql(tenant: &str) -> String {
    format!(
        "SELECT (SELECT count(*) FROM pgtenant.tenant_limits) >= {MAX_ROWS} \
         AND NOT EXISTS (SELECT 1 FROM pgtenant.tenant_limits WHERE tenant = {})",
        lit(tenant)
    )
}

/// One tenant's run-time override as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub limits: TenantOverride,
    pub set_by: Option<String>,
    /// `2026-01-02 03:04:05 UTC`.
    pub set_at: Option<String>,
}

impl Row {
    /// A row of [`COLUMNS`]: the canonical tenant and the row, or why it does not read.
    pub fn read(r: &[Option<String>]) -> Result<(String, Row), String> {
        let [tenant, max_active, max_tps, timeout_ms, set_by, set_at] = r else {
            return Err(format!("{} columns, expected 6", r.len()));
        };
        let tenant = tenant_value(tenant.as_deref().unwrap_or(""))?;
        let mut limits = TenantOverride::default();
        if let Some(v) = max_active {
            limits.max_active = Some(MaxActive::parse(v).map_err(|e| format!("max_active: {e}"))?);
        }
        if let Some(v) = max_tps {
            limits.max_tps = Some(parse_tps(v).map_err(|e| format!("max_tps: {e}"))?);
        }
        if let Some(v) = timeout_ms {
            let ms: u64 = v
                .parse()
                .map_err(|_| format!("statement_timeout_ms: expected milliseconds, got '{v}'"))?;
            limits.statement_timeout = Some(
                parse_timeout(&format!("{ms}ms"))
                    .map_err(|e| format!("statement_timeout_ms: {e}"))?,
            );
        }
        Ok((
            tenant,
            Row {
                limits,
                set_by: set_by.clone(),
                set_at: set_at.clone(),
            },
        ))
    }
}

/// The rows of a load: the overrides by tenant; rows that did not read, as
/// (tenant as stored, why); whether there were more than [`MAX_ROWS`].
pub struct Loaded {
    pub rows: HashMap<Arc<str>, Row>,
    pub skipped: Vec<(String, String)>,
    pub truncated: bool,
}

pub fn read_rows(mut rows: Vec<Vec<Option<String>>>) -> Loaded {
    let truncated = rows.len() > MAX_ROWS;
    rows.truncate(MAX_ROWS);
    let mut out = Loaded {
        rows: HashMap::with_capacity(rows.len()),
        skipped: Vec::new(),
        truncated,
    };
    for r in rows {
        match Row::read(&r) {
            Ok((t, row)) => {
                if out.rows.insert(t.as_str().into(), row).is_some() {
                    out.skipped.push((
                        t.clone(),
                        format!("a second row for tenant {t} (written differently); the later one is used"),
                    ));
                }
            }
            Err(e) => {
                let t = r.first().cloned().flatten().unwrap_or_default();
                out.skipped.push((t, e));
            }
        }
    }
    out
}

/// What this instance knows of the store (SHOW TENANT LIMITS, metrics).
#[derive(Debug, Clone, Default)]
pub struct StoreStatus {
    /// The sync task holds a connection to the store now.
    pub connected: bool,
    /// When the last load succeeded.
    pub last_load: Option<SystemTime>,
    /// The last failure (None once a load succeeds again).
    pub last_error: Option<String>,
    /// Run-time overrides in effect after the last load.
    pub rows_loaded: usize,
    /// Rows of the last load that did not read.
    pub rows_skipped: usize,
    /// The last load met more than [`MAX_ROWS`] rows.
    pub truncated: bool,
    /// Loads since start.
    pub loads: u64,
}

/// This instance's copy of the store and what it knows about it (in [`TenantLimits`]).
#[derive(Default)]
pub struct Store {
    rows: ArcSwap<HashMap<Arc<str>, Row>>,
    status: Mutex<StoreStatus>,
    /// Changes applied from this instance's console (a load begun before one is stale).
    writes: AtomicU64,
    /// Held while the copy changes.
    apply: Mutex<()>,
}

impl TenantLimits {
    /// The run-time overrides with who set them and when, as last loaded or written.
    pub fn store_rows(&self) -> Arc<HashMap<Arc<str>, Row>> {
        self.store.rows.load_full()
    }

    pub fn store_status(&self) -> StoreStatus {
        self.store
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn with_status(&self, f: impl FnOnce(&mut StoreStatus)) {
        f(&mut self.store.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A mark to give [`Self::replace_rows`]: loads read after it.
    pub(crate) fn writes_mark(&self) -> u64 {
        self.store.writes.load(Ordering::Acquire)
    }

    /// Replace the copy with a load read after `mark`; false (nothing changed) when this
    /// instance wrote a change since (the load may not hold it: read again).
    pub(crate) fn replace_rows(&self, rows: HashMap<Arc<str>, Row>, mark: u64) -> bool {
        let _g = self.store.apply.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.writes.load(Ordering::Acquire) != mark {
            return false;
        }
        self.install(rows);
        true
    }

    /// A change written from this instance's console: the tenant's row as the store holds
    /// it after the change (None: no row left), applied at once.
    pub(crate) fn apply_written(&self, tenant: &str, row: Option<Row>) {
        let _g = self.store.apply.lock().unwrap_or_else(|p| p.into_inner());
        self.store.writes.fetch_add(1, Ordering::AcqRel);
        let mut rows = (**self.store.rows.load()).clone();
        match row {
            Some(r) => {
                rows.insert(tenant.into(), r);
            }
            None => {
                rows.remove(tenant);
            }
        }
        let n = rows.len();
        self.install(rows);
        self.with_status(|s| s.rows_loaded = n);
    }

    fn install(&self, rows: HashMap<Arc<str>, Row>) {
        let overrides = rows
            .iter()
            .filter(|(_, r)| !r.limits.is_empty())
            .map(|(t, r)| (t.clone(), r.limits))
            .collect();
        self.store.rows.store(Arc::new(rows));
        self.set_runtime(overrides);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
        cells.iter().map(|c| c.map(String::from)).collect()
    }

    #[test]
    fn assignments_read_like_the_file_and_name_the_problem() {
        let a = Assign::parse("MAX_ACTIVE", "25%").unwrap();
        assert_eq!((a.key, a.column.as_deref()), (Key::MaxActive, Some("25%")));
        assert_eq!(a.sql(), "'25%'");
        assert_eq!(
            Assign::parse("max_tps", "12.5").unwrap().column.as_deref(),
            Some("12.5")
        );
        let t = Assign::parse("statement_timeout", "2s").unwrap();
        assert_eq!(t.column.as_deref(), Some("2000"));
        assert_eq!(t.sql(), "2000");
        assert_eq!(
            Assign::parse("statement_timeout", "0.0001")
                .unwrap()
                .column
                .as_deref(),
            Some("1"),
            "a positive timeout never becomes none"
        );
        assert_eq!(Assign::parse("max_tps", "DEFAULT").unwrap().column, None);
        assert_eq!(Assign::parse("max_tps", "default").unwrap().sql(), "NULL");
        let e = Assign::parse("color", "red").unwrap_err();
        assert!(e.contains("unknown tenant limit 'color'"), "{e}");
        let e = Assign::parse("max_active", "lots").unwrap_err();
        assert!(e.starts_with("max_active: "), "{e}");
        assert!(Assign::parse("max_tps", "-1").is_err());
        assert!(Assign::parse("statement_timeout", "2 days").is_err());
    }

    #[test]
    fn tenant_values_are_canonical_and_bounded() {
        assert_eq!(tenant_value(" 042 ").unwrap(), "42");
        assert!(tenant_value("  ").unwrap_err().contains("empty"));
        assert!(tenant_value(&"x".repeat(200)).is_ok());
        let e = tenant_value(&"é".repeat(201)).unwrap_err();
        assert!(e.contains("201 characters"), "{e}");
    }

    #[test]
    fn changes_are_one_transaction_that_notifies() {
        let c = Change::Set {
            tenant: "o'brien".into(),
            assigns: vec![
                Assign::parse("max_active", "8").unwrap(),
                Assign::parse("max_tps", "default").unwrap(),
            ],
        };
        let sql = c.sql("admin on a");
        assert!(
            sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"),
            "{sql}"
        );
        assert!(
            sql.contains("VALUES ('o''brien', '8', NULL, 'admin on a')"),
            "{sql}"
        );
        assert!(
            sql.contains("max_active = excluded.max_active, max_tps = excluded.max_tps,"),
            "{sql}"
        );
        assert!(!sql.contains("statement_timeout_ms = "), "{sql}");
        assert!(
            sql.contains("NOTIFY pgtenant_tenant_limits, 'o''brien';"),
            "{sql}"
        );
        assert!(c.may_add());
        let r = Change::Reset {
            tenant: "7".into(),
            key: Some(Key::MaxTps),
        };
        assert!(r.sql("x").contains("SET max_tps = NULL"));
        assert!(!r.may_add());
        let all = Change::Reset {
            tenant: "7".into(),
            key: None,
        };
        assert!(all
            .sql("x")
            .contains("DELETE FROM pgtenant.tenant_limits WHERE tenant = '7';"));
    }

    #[test]
    fn rows_that_do_not_read_are_skipped_not_applied_half() {
        let l = read_rows(vec![
            row(&[
                Some("042"),
                Some("8"),
                None,
                Some("2000"),
                Some("a"),
                Some("t"),
            ]),
            row(&[Some("7"), None, Some("12.5"), None, None, None]),
            row(&[Some("8"), Some("lots"), Some("1"), None, None, None]),
            row(&[Some("9"), None, None, Some("-5"), None, None]),
            row(&[Some("10"), None, Some("NaN"), None, None, None]),
            row(&[Some(""), Some("1"), None, None, None, None]),
            row(&[Some("11"), None, None, Some("999999999"), None, None]),
        ]);
        assert_eq!(l.rows.len(), 2, "{:?}", l.rows.keys().collect::<Vec<_>>());
        let r = &l.rows["42"];
        assert_eq!(r.limits.max_active, Some(MaxActive::Count(8)));
        assert_eq!(r.limits.statement_timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.set_by.as_deref(), Some("a"));
        assert_eq!(l.rows["7"].limits.max_tps, Some(12.5));
        let skipped: Vec<&str> = l.skipped.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(skipped, ["8", "9", "10", "", "11"]);
        assert!(!l.truncated);
    }

    #[test]
    fn loads_are_bounded() {
        let rows: Vec<_> = (0..=MAX_ROWS)
            .map(|i| row(&[Some(&i.to_string()), Some("1"), None, None, None, None]))
            .collect();
        let l = read_rows(rows);
        assert!(l.truncated);
        assert_eq!(l.rows.len(), MAX_ROWS);
    }

    #[test]
    fn a_load_older_than_a_local_write_is_dropped() {
        let limits = TenantLimits::default();
        let mark = limits.writes_mark();
        let (_, r) = Row::read(&row(&[Some("1"), Some("3"), None, None, None, None])).unwrap();
        limits.apply_written("1", Some(r.clone()));
        assert_eq!(limits.runtime()["1"].max_active, Some(MaxActive::Count(3)));
        // A load read before the write (it has no row for tenant 1) would undo it.
        assert!(!limits.replace_rows(HashMap::new(), mark));
        assert!(limits.runtime().contains_key("1"));
        let mark = limits.writes_mark();
        assert!(limits.replace_rows(HashMap::new(), mark));
        assert!(limits.runtime().is_empty());
        assert!(limits.store_rows().is_empty());
        limits.apply_written("2", Some(r));
        limits.apply_written("2", None);
        assert!(limits.runtime().is_empty());
    }
}
