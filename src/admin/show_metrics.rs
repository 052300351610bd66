//! SHOW TENANTS (the heavy-hitters sketches) and SHOW LATENCY (the histograms).
use std::collections::HashSet;
use std::time::Duration;

use super::ResultSet;
use crate::context::Context;
use crate::metrics::latency::{QUERY, TRANSACTION, WAIT};
use crate::metrics::tenants::Rank;

pub const TENANTS: &[&str] = &[
    "tenant",
    "colocation",
    "node",
    "statements",
    "time_us",
    "errors",
    "error_bound",
    "ranked_by",
];

/// Rows per ranking.
pub const TOP: usize = 50;

/// The top tenants by statements, then those of the top by time not already listed.
pub fn tenants(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(TENANTS);
    let mut seen = HashSet::new();
    for rank in [Rank::Statements, Rank::Time] {
        for r in ctx.tenants.top(rank, TOP) {
            if !seen.insert((r.colocation, r.tenant.clone())) {
                continue;
            }
            rs.push_values([
                r.tenant.to_string(),
                r.colocation.to_string(),
                r.node.to_string(),
                r.statements.to_string(),
                r.time_us.to_string(),
                r.errors.to_string(),
                r.error_bound.to_string(),
                rank.as_str().to_string(),
            ]);
        }
    }
    rs
}

pub const LATENCY: &[&str] = &[
    "metric", "node", "count", "p50_us", "p90_us", "p99_us", "p99_9_us", "avg_us",
];

fn us(d: Option<Duration>) -> Option<String> {
    d.map(|d| {
        if d == Duration::MAX {
            "inf".to_string()
        } else {
            d.as_micros().to_string()
        }
    })
}

/// Process-wide rows (`node` = `all`), then one row per metric and node (the node's pools
/// summed). Quantiles are bucket upper bounds (an over-estimate by at most one bucket),
/// NULL before any data.
pub fn latency(ctx: &crate::context::Context) -> ResultSet {
    let mut rs = ResultSet::new(LATENCY);
    let push =
        |rs: &mut ResultSet, name: &str, node: &str, s: &crate::metrics::latency::Snapshot| {
            let n = s.count();
            let mut row = vec![
                Some(name.to_string()),
                Some(node.to_string()),
                Some(n.to_string()),
            ];
            for q in [0.5, 0.9, 0.99, 0.999] {
                row.push(us(s.quantile(q)));
            }
            row.push(s.sum_us.checked_div(n).map(|a| a.to_string()));
            rs.push(row);
        };
    for (name, h) in [
        ("query", &QUERY),
        ("transaction", &TRANSACTION),
        ("wait", &WAIT),
    ] {
        push(&mut rs, name, "all", &h.snapshot());
    }
    let mut by_node: std::collections::BTreeMap<String, [crate::metrics::latency::Snapshot; 3]> =
        std::collections::BTreeMap::new();
    for p in ctx.pools.all() {
        let e = by_node
            .entry(p.key.node.name.to_string())
            .or_insert_with(|| {
                [
                    crate::metrics::latency::Snapshot::empty(),
                    crate::metrics::latency::Snapshot::empty(),
                    crate::metrics::latency::Snapshot::empty(),
                ]
            });
        e[0].merge(&p.stats.query_latency.snapshot());
        e[1].merge(&p.stats.xact_latency.snapshot());
        e[2].merge(&p.stats.wait_latency.snapshot());
    }
    for (i, name) in ["query", "transaction", "wait"].iter().enumerate() {
        for (node, snaps) in &by_node {
            push(&mut rs, name, node, &snaps[i]);
        }
    }
    rs
}
