//! SHOW TENANTS (the heavy-hitters sketches) and SHOW LATENCY (the histograms).
use std::collections::HashSet;

use super::ResultSet;
use crate::context::Context;
use crate::metrics::latency::{self, Kind, Snapshot};
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
