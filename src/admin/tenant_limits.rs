//! SET TENANT, RESET TENANT and SHOW TENANT LIMITS: the console side of per-tenant
//! limits (`crate::limits`).
//!
//! Rules:
//! - SET and RESET write the store every instance reads (`limits::store`, on the
//!   upstream's coordinator) in one transaction that notifies the others, then apply the
//!   tenant's row at once here (this instance's next transaction of the tenant has it).
//!   When the store cannot be written the command fails and nothing changes anywhere.
//! - The command was checked whole by the parser (keys, values, tenant value) before
//!   anything is written.
//! - SHOW TENANT LIMITS reads only this instance's copy (stats users may poll it; it never
//!   opens a connection): the defaults (`*`), then one row per tenant with an override,
//!   configured or set at run time, with the effective value of each key (run time over
//!   configuration); NULL = not overridden, the default applies.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{AdminError, Reply, ResultSet};
use crate::config::TenantOverride;
use crate::context::Context;
use crate::limits::store::{self, Change, Row};
use crate::pgschema;

/// Longest a SET/RESET waits for the store, connection included.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Most tenant rows SHOW TENANT LIMITS lists (a NOTICE tells how many more there are).
pub const SHOW_MAX_ROWS: usize = 10_000;

pub const LIMITS: &[&str] = &[
    "tenant",
    "max_active",
    "max_tps",
    "statement_timeout",
    "source",
    "set_by",
    "set_at",
    "active",
    "waiting",
];

/// SET TENANT / RESET TENANT.
pub async fn change(ctx: &Arc<Context>, user: &str, change: Change) -> Result<Reply, AdminError> {
    let s = ctx.settings();
    let verb = match change {
        Change::Set { .. } => "SET",
        Change::Reset { .. } => "RESET",
    };
    let tenant = change.tenant().to_string();
    let by = format!("{user} on {}", s.instance_name);
    let (existed, row) = match tokio::time::timeout(WRITE_TIMEOUT, write(ctx, &change, &by)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(AdminError::new(format!(
                "{verb} TENANT {tenant}: nothing changed: {e}"
            )))
        }
        Err(_) => {
            return Err(AdminError::new(format!(
                "{verb} TENANT {tenant}: the tenant limits store did not answer within {} s; \
                 the change may or may not have been written (SHOW TENANT LIMITS shows it once \
                 the store answers again)",
                WRITE_TIMEOUT.as_secs()
            )))
        }
    };
    let now = row.as_ref().map(|r| r.limits).unwrap_or_default();
    tracing::info!(tenant = %crate::logging::Escaped(&tenant), by = %crate::logging::Escaped(&by), limits = %show_override(&now), "tenant limits changed from the admin console");
    ctx.tenant_limits.apply_written(&tenant, row);
    let notice = match &change {
        Change::Reset { .. } if !existed => Some(if s.tenant_limits.contains_key(&tenant) {
            format!("tenant {tenant} had no run-time override; its override from the configuration file ([tenant_limits]) stays")
        } else {
            format!("tenant {tenant} had no run-time override")
        }),
        _ => None,
    };
    Ok(match notice {
        Some(n) => Reply::TagNotice(verb, n),
        None => Reply::Tag(verb),
    })
}

/// Write `change` to the store: whether the tenant had a row before, and its row after.
async fn write(
    ctx: &Arc<Context>,
    change: &Change,
    by: &str,
) -> Result<(bool, Option<Row>), String> {
    let mut c = ctx
        .primary_cluster
        .open_own(
            ctx,
            "tenant limits",
            "the tenant limits store (the upstream's coordinator)",
        )
        .await?;
    let r = async {
        let store_err = |e: crate::backend::BackendError| {
            format!(
                "the tenant limits store (the upstream's coordinator): {}",
                pgschema::error_text(&e)
            )
        };
        // Created once (by the first SET anywhere); CREATE SCHEMA would need the
        // privilege even when the schema is there (made by a DBA, say).
        let exists = pgschema::run(&mut c, store::EXISTS_SQL)
            .await
            .map_err(store_err)?;
        if !matches!(exists.first().and_then(|r| r.first()), Some(Some(t)) if t == "t") {
            pgschema::run(&mut c, &store::schema_sql())
                .await
                .map_err(store_err)?;
        }
        if change.may_add() {
            let full = pgschema::run(&mut c, &store::full_sql(change.tenant()))
                .await
                .map_err(store_err)?;
            if matches!(full.first().and_then(|r| r.first()), Some(Some(t)) if t == "t") {
                return Err(format!(
                    "the store holds overrides for {} tenants already, the most pgtenant loads; RESET some first",
                    store::MAX_ROWS
                ));
            }
        }
        let rows = pgschema::run(&mut c, &change.sql(by))
            .await
            .map_err(store_err)?;
        let mut existed = false;
        let mut after = None;
        for r in rows {
            match r.first().cloned().flatten().as_deref() {
                Some("existed") => existed = r.get(1).cloned().flatten().as_deref() != Some("0"),
                Some("row") => match Row::read(&r[1..]) {
                    Ok((_, row)) => after = Some(row),
                    Err(e) => {
                        tracing::warn!(error = %e, "tenant limits: the row just written does not read back")
                    }
                },
                _ => {}
            }
        }
        Ok((existed, after))
    }
    .await;
    c.terminate();
    r
}

/// Where a tenant's override comes from.
fn source(runtime: bool, config: bool) -> &'static str {
    match (runtime, config) {
        (true, true) => "runtime+config",
        (true, false) => "runtime",
        _ => "config",
    }
}

/// Integers in numeric order first, then other values as text.
fn order(t: &str) -> (bool, i128, &str) {
    match t.parse::<i128>() {
        Ok(i) => (false, i, t),
        Err(_) => (true, 0, t),
    }
}

/// `2s`, `500ms`, `0.5ms`, `0`.
pub fn show_timeout(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0".into()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ms", d.as_secs_f64() * 1000.0)
    }
}

fn show_override(o: &TenantOverride) -> String {
    if o.is_empty() {
        return "none".into();
    }
    let mut parts = Vec::new();
    if let Some(m) = o.max_active {
        parts.push(format!("max_active = {}", m.show()));
    }
    if let Some(t) = o.max_tps {
        parts.push(format!("max_tps = {t}"));
    }
    if let Some(d) = o.statement_timeout {
        parts.push(format!("statement_timeout = {}", show_timeout(d)));
    }
    parts.join(", ")
}

/// One line of SHOW TENANT LIMITS.
pub struct Line {
    pub tenant: String,
    /// Effective: run time over configuration, key by key.
    pub limits: TenantOverride,
    pub source: &'static str,
    pub set_by: Option<String>,
    pub set_at: Option<String>,
}

/// Every tenant with an override (run time ∪ configuration), in tenant order, the first
/// `max` of them; and how many there are in all.
pub fn lines(ctx: &Context, max: usize) -> (Vec<Line>, usize) {
    let s = ctx.settings();
    let runtime = ctx.tenant_limits.store_rows();
    let mut names: Vec<&str> = runtime.keys().map(|k| &**k).collect();
    let seen: HashSet<&str> = names.iter().copied().collect();
    names.extend(
        s.tenant_limits
            .keys()
            .map(String::as_str)
            .filter(|t| !seen.contains(t)),
    );
    let total = names.len();
    if total > max {
        names.select_nth_unstable_by(max, |a, b| order(a).cmp(&order(b)));
        names.truncate(max);
    }
    names.sort_unstable_by(|a, b| order(a).cmp(&order(b)));
    let lines = names
        .into_iter()
        .map(|t| {
            let run = runtime.get(t);
            let conf = s.tenant_limits.get(t);
            Line {
                tenant: t.to_string(),
                limits: run
                    .map(|r| r.limits)
                    .unwrap_or_default()
                    .over(conf.copied().unwrap_or_default()),
                source: source(run.is_some(), conf.is_some()),
                set_by: run.and_then(|r| r.set_by.clone()),
                set_at: run.and_then(|r| r.set_at.clone()),
            }
        })
        .collect();
    (lines, total)
}

/// SHOW TENANT LIMITS.
pub fn show(ctx: &Context) -> Reply {
    let s = ctx.settings();
    let mut rs = ResultSet::new(LIMITS);
    // Connections counted for tenants under a limit, and waiting transactions, now (over
    // every pool); the `*` row has the totals.
    let load = ctx.pools.tenant_load();
    let (active, waiting) = load.values().fold((0u64, 0u64), |(a, w), (x, y)| {
        (a + u64::from(*x), w + u64::from(*y))
    });
    rs.push(vec![
        Some("*".into()),
        Some(s.tenant_max_active.show()),
        Some(s.tenant_max_tps.to_string()),
        Some(show_timeout(s.tenant_statement_timeout)),
        Some("default".into()),
        None,
        None,
        Some(active.to_string()),
        Some(waiting.to_string()),
    ]);
    let (lines, total) = lines(ctx, SHOW_MAX_ROWS);
    for l in lines {
        let (a, w) = load.get(l.tenant.as_str()).copied().unwrap_or_default();
        rs.push(vec![
            Some(l.tenant),
            l.limits.max_active.map(|m| m.show()),
            l.limits.max_tps.map(|t| t.to_string()),
            l.limits.statement_timeout.map(show_timeout),
            Some(l.source.into()),
            l.set_by,
            l.set_at,
            Some(a.to_string()),
            Some(w.to_string()),
        ]);
    }
    let mut notes = Vec::new();
    if total > SHOW_MAX_ROWS {
        notes.push(format!(
            "{total} tenants have overrides; the first {SHOW_MAX_ROWS} by tenant are shown"
        ));
    }
    let st = ctx.tenant_limits.store_status();
    if let Some(e) = &st.last_error {
        notes.push(format!(
            "the tenant limits store is unreachable ({e}); the run-time overrides shown are those last loaded{}",
            st.last_load
                .map(|t| format!(", at {}", super::format_time(t)))
                .unwrap_or_else(|| " (none yet)".into())
        ));
    }
    if st.truncated {
        notes.push(format!(
            "the store holds more than {} run-time overrides; only the first {} by tenant are loaded",
            store::MAX_ROWS,
            store::MAX_ROWS
        ));
    }
    if st.rows_skipped > 0 {
        notes.push(format!(
            "{} rows of pgtenant.tenant_limits were skipped: their values do not read (see the log)",
            st.rows_skipped
        ));
    }
    if notes.is_empty() {
        Reply::Rows(rs)
    } else {
        Reply::RowsNotice(rs, notes.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_show_in_their_unit() {
        assert_eq!(show_timeout(Duration::ZERO), "0");
        assert_eq!(show_timeout(Duration::from_secs(2)), "2s");
        assert_eq!(show_timeout(Duration::from_millis(500)), "500ms");
        assert_eq!(show_timeout(Duration::from_millis(2500)), "2500ms");
        assert_eq!(show_timeout(Duration::from_micros(500)), "0.5ms");
    }

    #[test]
    fn tenants_sort_numbers_first() {
        let mut v = vec!["b", "10", "9", "a", "-1"];
        v.sort_by(|a, b| order(a).cmp(&order(b)));
        assert_eq!(v, ["-1", "9", "10", "a", "b"]);
        assert_eq!(source(true, true), "runtime+config");
        assert_eq!(source(false, true), "config");
    }
}
