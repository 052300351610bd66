//! SHOW TENANT ACTIVITY <value> [TABLE <table>] and SHOW QUIET TENANTS: how busy tenants
//! were lately, from the activity sketches (`metrics::activity`), to pick the quiet ones.
//!
//! Rules:
//! - Counts are the sketches' estimates: never below the true number of tenant-routed
//!   transactions this pgtenant process ended in the window, above it by at most
//!   `error_bound` with probability ≥ 98.2 % (`metrics::activity`). A tenant is the
//!   (colocation group, value text) the router reported, as SHOW TENANTS lists it: the
//!   value as PostgreSQL prints it (`citus::hash::canonical_text`), so that the values
//!   the database lists and the ones typed here find the same counters.
//! - The sketches cannot list tenants. SHOW QUIET TENANTS reads the candidates from the
//!   database: the distinct values of the table's distribution column, on the primary
//!   cluster's coordinator, through a connection of its own (as the shard map refresher
//!   reads the catalog: no pool is created or borrowed), at most [`MAX_CANDIDATES`] values
//!   under a [`STATEMENT_TIMEOUT`] per fetch and [`TOTAL_TIMEOUT`] in all, through a
//!   read-only cursor [`BATCH`] values at a time.
//!   Reading and ranking run in this console client's own task, a batch between two
//!   reads: other console clients and sessions go on.
//! - Ranking: ascending by estimate over the window (as of the command's start), ties by
//!   value; LIMIT rows. Memory: one batch plus LIMIT rows, however many tenants.
//! - One SHOW QUIET TENANTS at a time per process; another one meanwhile gets an error.
use std::sync::Arc;
use std::time::Duration;

use super::parser::Quiet;
use super::show_citus::{map, table_names, value_groups};
use super::{format_time, AdminError, Reply, ResultSet};
use crate::citus::hash::{canonical_text, hash_value};
use crate::citus::{ShardMap, TableInfo};
use crate::context::Context;
use crate::metrics::activity::Window;

pub const ACTIVITY: &[&str] = &[
    "tenant",
    "colocation",
    "tables",
    "node",
    "xacts_1m",
    "xacts_1h",
    "xacts_24h",
    "error_bound_1m",
    "error_bound_1h",
    "error_bound_24h",
    "last_seen",
];

pub const QUIET: &[&str] = &[
    "tenant",
    "colocation",
    "table",
    "node",
    "window",
    "xacts",
    "error_bound",
    "last_seen",
];

/// Most distribution column values read for SHOW QUIET TENANTS.
pub const MAX_CANDIDATES: usize = 1_000_000;
/// The coordinator's statement_timeout for reading them (each fetch of the cursor).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// All the reading.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The home node of `value` in group `colocation` (None: not a valid key, or no shard).
fn home(m: &ShardMap, colocation: u32, dt: crate::citus::DistType, value: &str) -> Option<String> {
    let h = hash_value(dt, value).ok()?;
    m.locate(colocation, h).map(|(_, n)| n.name.to_string())
}

fn last_seen(ctx: &Context, hash: u64) -> Option<String> {
    ctx.activity.last_seen(hash).map(format_time)
}

/// One row per colocation group the value is a valid key of (or the table's group).
pub fn tenant_activity(
    ctx: &Context,
    value: &str,
    table: Option<&str>,
) -> Result<ResultSet, AdminError> {
    let m = map(ctx)?;
    let windows = [Window::Minutes(1), Window::Minutes(60), Window::Hours(24)]
        .map(|w| ctx.activity.window(w));
    let mut rs = ResultSet::new(ACTIVITY);
    for (id, tables, dt, hash) in value_groups(&m, value, table)? {
        // As the router records it: `042` is tenant 42 of an integer group.
        let value = canonical_text(dt, value);
        let h = ctx.tenants.hash(id, &value);
        let est = windows.each_ref().map(|w| w.estimate(h));
        let mut row = vec![
            Some(value.to_string()),
            Some(id.to_string()),
            Some(table_names(&tables)),
            m.locate(id, hash).map(|(_, n)| n.name.to_string()),
        ];
        row.extend(est.iter().map(|e| Some(e.count.to_string())));
        row.extend(est.iter().map(|e| Some(e.bound.to_string())));
        row.push(last_seen(ctx, h));
        rs.push(row);
    }
    Ok(rs)
}

/// `"name"`, with `"` doubled: always quoted, so any stored name reads back as itself.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The query reading the candidates: at most one value more than [`MAX_CANDIDATES`], so
/// that a cut is seen (read through a cursor, [`BATCH`] values at a time).
pub fn candidates_sql(t: &TableInfo) -> String {
    let col = quote_ident(&t.dist_column);
    format!(
        "SELECT DISTINCT {col}::text FROM {}.{} WHERE {col} IS NOT NULL LIMIT {}",
        quote_ident(&t.schema),
        quote_ident(&t.name),
        MAX_CANDIDATES + 1
    )
}

/// The named distributed table, or the first of the only colocation group that has any.
fn pick_table(m: &ShardMap, table: Option<&str>) -> Result<TableInfo, AdminError> {
    m.distributed_table(table).cloned().map_err(AdminError::new)
}

/// The quietest tenants found, at most `limit`, and how many candidates were read.
struct Ranked {
    /// (estimate, value, hash), ascending.
    rows: Vec<(u64, String, u64)>,
    read: usize,
    /// More than MAX_CANDIDATES values: the rest were not read.
    cut: bool,
}

/// The `limit` smallest (estimate, value) seen so far, in a max-heap: memory is one
/// batch of candidates plus `limit` rows, whatever the table holds.
struct Quietest {
    heap: std::collections::BinaryHeap<(u64, String, u64)>,
    limit: usize,
}

impl Quietest {
    fn offer(&mut self, count: u64, value: String, hash: u64) {
        if self.heap.len() == self.limit {
            match self.heap.peek() {
                Some((c, v, _)) if (count, &value) < (*c, v) => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push((count, value, hash));
    }
}

/// Read the distinct values of the table's distribution column on the coordinator, a
/// cursor batch at a time, and keep the `limit` with the smallest estimate over `window`.
async fn rank_candidates(
    ctx: &Arc<Context>,
    t: &TableInfo,
    window: Window,
    limit: usize,
) -> Result<(Ranked, u64), AdminError> {
    let s = ctx.settings();
    let l = ctx.primary_cluster.login(ctx, &s);
    let params =
        ctx.pools
            .own_connect_params(&l.node, &l.dbname, &l.user, l.credential, "quiet tenants");
    let mut c = tokio::time::timeout(CONNECT_TIMEOUT, crate::backend::connect(&params))
        .await
        .map_err(|_| AdminError::new("connecting to the coordinator timed out"))?
        .map_err(|e| AdminError::new(format!("connecting to the coordinator: {e}")))?;
    // The counts as of the start; ranking a batch is ~50 ns a value, between reads.
    let w = ctx.activity.window(window);
    let mut best = Quietest {
        heap: std::collections::BinaryHeap::with_capacity(limit + 1),
        limit,
    };
    let mut read = 0usize;
    let mut cut = false;
    let result = tokio::time::timeout(TOTAL_TIMEOUT, async {
        c.query_rows(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; DECLARE pgtenant_quiet NO SCROLL CURSOR FOR {}",
            STATEMENT_TIMEOUT.as_millis(),
            candidates_sql(t)
        ))
        .await?;
        loop {
            let rows = c
                .query_rows(&format!("FETCH FORWARD {BATCH} FROM pgtenant_quiet"))
                .await?;
            let n = rows.len();
            for v in rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
                if read == MAX_CANDIDATES {
                    cut = true;
                    break;
                }
                read += 1;
                let h = ctx.tenants.hash(t.colocation_id, &v);
                best.offer(w.estimate(h).count, v, h);
            }
            if n < BATCH || cut {
                break;
            }
        }
        c.query_rows("COMMIT").await
    })
    .await;
    c.terminate();
    let what = format!("reading the tenants of {}.{}", t.schema, t.name);
    result
        .map_err(|_| AdminError::new(format!("{what}: over {TOTAL_TIMEOUT:?}")))?
        .map_err(|e| AdminError::new(format!("{what}: {e}")))?;
    let rows = best.heap.into_sorted_vec();
    Ok((Ranked { rows, read, cut }, w.bound))
}

/// Values fetched from the cursor at a time.
const BATCH: usize = 10_000;

/// One SHOW QUIET TENANTS at a time in the process: each reads a whole column on the
/// coordinator.
static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn quiet_tenants(ctx: &Arc<Context>, q: Quiet) -> Result<Reply, AdminError> {
    let m = map(ctx)?;
    let t = pick_table(&m, q.table.as_deref())?;
    let _turn = ONE_AT_A_TIME.try_acquire().map_err(|_| {
        AdminError::new("another SHOW QUIET TENANTS is running: try again when it is done")
    })?;
    let (ranked, bound) = rank_candidates(ctx, &t, q.window, q.limit).await?;
    let colocation = t.colocation_id;
    let label = q.window.label();
    let name = table_names(&[&t]);
    let mut rs = ResultSet::new(QUIET);
    for (count, v, h) in ranked.rows {
        rs.push(vec![
            Some(v.clone()),
            Some(colocation.to_string()),
            Some(name.clone()),
            home(&m, colocation, t.dist_type, &v),
            Some(label.clone()),
            Some(count.to_string()),
            Some(bound.to_string()),
            last_seen(ctx, h),
        ]);
    }
    if ranked.cut {
        return Ok(Reply::RowsNotice(
            rs,
            format!(
                "{name} has more than {MAX_CANDIDATES} tenants: only the first {} the coordinator returned were ranked",
                ranked.read
            ),
        ));
    }
    Ok(Reply::Rows(rs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::citus::TableKind;

    #[test]
    fn keeps_the_quietest_in_order_ties_by_value() {
        let mut q = Quietest {
            heap: Default::default(),
            limit: 3,
        };
        for (c, v) in [
            (5, "e"),
            (0, "z"),
            (9, "a"),
            (0, "b"),
            (5, "c"),
            (1, "y"),
            (0, "q"),
        ] {
            q.offer(c, v.to_string(), 0);
        }
        let got: Vec<(u64, String)> = q
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|(c, v, _)| (c, v))
            .collect();
        assert_eq!(got, [(0, "b".into()), (0, "q".into()), (0, "z".into())]);
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let t = TableInfo {
            schema: "my schema".into(),
            name: "Orders".into(),
            kind: TableKind::Distributed,
            dist_column: "account\"id".into(),
            dist_type: crate::citus::DistType::Int8,
            colocation_id: 3,
            int_sequence_columns: vec![],
        };
        assert_eq!(
            candidates_sql(&t),
            "SELECT DISTINCT \"account\"\"id\"::text FROM \"my schema\".\"Orders\" \
             WHERE \"account\"\"id\" IS NOT NULL LIMIT 1000001"
        );
    }
}
