//! SHOW TENANTS (the heavy-hitters sketches) and SHOW LATENCY (the histograms).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::ResultSet;
use crate::context::Context;
use crate::metrics::latency::{self, Kind, Snapshot};
use crate::metrics::tenants::{Rank, Tenants};

pub const TENANTS: &[&str] = &[
    "tenant",
    "colocation",
    "node",
    "statements",
    "time_us",
    "errors",
    "throttled",
    "waiting",
    "error_bound",
    "ranked_by",
];

/// Rows per ranking.
pub const TOP: usize = 50;

/// The top tenants by statements, then those of the top by time not already listed, then
/// those of the top by throttled transactions not already listed. `waiting`: transactions
/// of each tenant value waiting in the pools now (`Pools::tenant_waiting`), 0 when absent.
/// Rows of the throttled ranking have NULL statements, time_us and errors: that sketch
/// counts only throttled transactions.
pub fn tenants(ctx: &Context, waiting: &HashMap<Arc<str>, u32>) -> ResultSet {
    tenant_rows(&ctx.tenants, waiting)
}

fn tenant_rows(tenants: &Tenants, waiting: &HashMap<Arc<str>, u32>) -> ResultSet {
    let mut rs = ResultSet::new(TENANTS);
    let mut seen = HashSet::new();
    for rank in [Rank::Statements, Rank::Time, Rank::Throttled] {
        for r in tenants.top(rank, TOP) {
            if !seen.insert((r.colocation, r.tenant.clone())) {
                continue;
            }
            let counted = |v: u64| (rank != Rank::Throttled).then(|| v.to_string());
            rs.push(vec![
                Some(r.tenant.to_string()),
                Some(r.colocation.to_string()),
                Some(r.node.to_string()),
                counted(r.statements),
                counted(r.time_us),
                counted(r.errors),
                Some(r.throttled.to_string()),
                Some(waiting.get(&*r.tenant).copied().unwrap_or(0).to_string()),
                Some(r.error_bound.to_string()),
                Some(rank.as_str().to_string()),
            ]);
        }
    }
    rs
}

pub const LATENCY: &[&str] = &[
    "metric", "node", "count", "p50_us", "p90_us", "p99_us", "p99_9_us", "avg_us",
];

/// Process-wide rows (`node` = `all`), then one row per metric and node (every pool and
/// thread of the node merged). Quantiles are HdrHistogram values at 2 significant digits
/// (less than 1 % over), NULL before any data.
pub fn latency() -> ResultSet {
    let mut rs = ResultSet::new(LATENCY);
    let push = |rs: &mut ResultSet, kind: Kind, node: &str, s: &Snapshot| {
        let n = s.count();
        let mut row = vec![
            Some(kind.as_str().to_string()),
            Some(node.to_string()),
            Some(n.to_string()),
        ];
        for q in [0.5, 0.9, 0.99, 0.999] {
            row.push(s.quantile(q).map(|d| d.as_micros().to_string()));
        }
        row.push(s.sum_us().checked_div(n).map(|a| a.to_string()));
        rs.push(row);
    };
    let m = latency::merged();
    for kind in Kind::ALL {
        push(&mut rs, kind, "all", &m.all(kind));
    }
    for kind in Kind::ALL {
        for node in m.nodes() {
            if let Some(s) = m.node(node, kind) {
                push(&mut rs, kind, node, s);
            }
        }
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tenants_lists_throttled_and_waiting() {
        let t = Tenants::default();
        let node: Arc<str> = Arc::from("worker-1");
        let busy = t.key(1, "42", node.clone());
        for _ in 0..3 {
            t.transaction(&busy, Duration::from_micros(10));
        }
        t.throttled(&busy, Duration::from_millis(2));
        // Throttled, never finished a transaction: listed by the throttled ranking only.
        let held = t.key(1, "7", node.clone());
        t.throttled(&held, Duration::from_millis(5));
        t.throttled(&held, Duration::from_millis(5));
        let waiting = HashMap::from([(Arc::from("7"), 4), (Arc::from("99"), 1)]);
        let rs = tenant_rows(&t, &waiting);
        let rows: Vec<Vec<Option<&str>>> = rs
            .rows
            .iter()
            .map(|r| r.iter().map(|c| c.as_deref()).collect())
            .collect();
        assert_eq!(
            rows,
            [
                [
                    Some("42"),
                    Some("1"),
                    Some("worker-1"),
                    Some("3"),
                    Some("30"),
                    Some("0"),
                    Some("1"),
                    Some("0"),
                    Some("0"),
                    Some("statements")
                ],
                [
                    Some("7"),
                    Some("1"),
                    Some("worker-1"),
                    None,
                    None,
                    None,
                    Some("2"),
                    Some("4"),
                    Some("0"),
                    Some("throttled")
                ],
            ]
        );
    }
}
