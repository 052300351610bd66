//! pgtenant's own: SHOW NODES, SHARDS [table], TENANT <value> [table], ROUTES, PLAN_CACHE.
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{AdminError, ResultSet};
use crate::citus::hash::hash_value;
use crate::citus::{ShardMap, TableKind};
use crate::context::Context;
use crate::frontend::routing::RouteReason;
use crate::pool::Node;

pub const NODES: &[&str] = &[
    "node",
    "role",
    "host",
    "port",
    "group_id",
    "state",
    "pools",
    "sv_active",
    "sv_idle",
    "xact_count",
    "query_count",
];
pub const SHARDS: &[&str] = &[
    "colocation_id",
    "tables",
    "shard_id",
    "min_value",
    "max_value",
    "node",
    "host",
    "port",
];
pub const TENANT: &[&str] = &[
    "colocation_id",
    "tables",
    "type",
    "hash",
    "shard_id",
    "min_value",
    "max_value",
    "node",
    "host",
    "port",
];
pub const ROUTES: &[&str] = &[
    "reason",
    "to_coordinator",
    "to_worker",
    "total",
    "statements_to_coordinator",
    "statements_to_worker",
];
pub const PLAN_CACHE: &[&str] = &["plans", "hits", "misses", "hit_ratio"];

pub(super) fn map(ctx: &Context) -> Result<Arc<ShardMap>, AdminError> {
    ctx.shard_map.get().ok_or_else(|| {
        let why = ctx
            .shard_map
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        AdminError::new(format!(
            "no shard map loaded (the upstream is not a Citus coordinator, routing is off, or loading failed{why})"
        ))
    })
}

pub fn nodes(ctx: &Context) -> ResultSet {
    let coord = (**ctx.coordinator.load()).clone();
    let mut nodes: Vec<(Node, i32)> = vec![(coord.clone(), 0)];
    if let Some(m) = ctx.shard_map.get() {
        for (g, n) in &m.nodes {
            if *g != 0 && !nodes.iter().any(|(x, _)| x == n) {
                nodes.push((n.clone(), *g));
            }
        }
    }
    let pools = ctx.pools.all();
    // Worker pools of nodes no longer in the map still show up.
    for p in &pools {
        if !nodes.iter().any(|(x, _)| *x == p.key.node) {
            nodes.push((p.key.node.clone(), -1));
        }
    }
    // Removed pools' counts stay with their node (pool::Retired).
    let retired = ctx.pools.retired();
    let mut rs = ResultSet::new(NODES);
    for (n, group) in nodes {
        let mine: Vec<_> = pools.iter().filter(|p| p.key.node == n).collect();
        let gone = retired
            .iter()
            .find(|(name, _)| *name == n.name)
            .map(|(_, r)| *r)
            .unwrap_or_default();
        let active: u32 = mine.iter().map(|p| p.stats.active.get_gauge() as u32).sum();
        let idle: u32 = mine.iter().map(|p| p.counts().0).sum();
        let xacts: u64 = gone.xacts + mine.iter().map(|p| p.stats.xact_count.get()).sum::<u64>();
        let queries: u64 =
            gone.queries + mine.iter().map(|p| p.stats.query_count.get()).sum::<u64>();
        let role = if n == coord { "coordinator" } else { "worker" };
        let state = if ctx.node_health.is_down(&n) {
            "down"
        } else {
            "up"
        };
        rs.push(vec![
            Some(n.name.to_string()),
            Some(role.into()),
            Some(n.host.to_string()),
            Some(n.port.to_string()),
            (group >= 0).then(|| group.to_string()),
            Some(state.into()),
            Some(mine.len().to_string()),
            Some(active.to_string()),
            Some(idle.to_string()),
            Some(xacts.to_string()),
            Some(queries.to_string()),
        ]);
    }
    rs
}

/// Distributed tables by colocation group, names sorted.
pub(super) fn groups(m: &ShardMap) -> BTreeMap<u32, Vec<&crate::citus::TableInfo>> {
    let mut g: BTreeMap<u32, Vec<&crate::citus::TableInfo>> = BTreeMap::new();
    for t in m.tables.iter().filter(|t| t.kind == TableKind::Distributed) {
        g.entry(t.colocation_id).or_default().push(t);
    }
    for v in g.values_mut() {
        v.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    }
    g
}

pub(super) fn table_names(ts: &[&crate::citus::TableInfo]) -> String {
    ts.iter()
        .map(|t| {
            if t.schema == "public" {
                t.name.clone()
            } else {
                format!("{}.{}", t.schema, t.name)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `schema.table` or `table` (public) → its colocation group.
pub(super) fn table_group(m: &ShardMap, table: &str) -> Result<u32, AdminError> {
    m.distributed_table(Some(table))
        .map(|t| t.colocation_id)
        .map_err(AdminError::new)
}

/// One colocation group a value is a key of: the group, its tables, key type, the hash.
pub(super) type ValueGroup<'m> = (
    u32,
    Vec<&'m crate::citus::TableInfo>,
    crate::citus::DistType,
    i32,
);

/// The colocation groups (only `table`'s, if named) whose key type accepts `value`: (group,
/// its tables, key type, hash). An error when no group accepts it, naming why each refused.
pub(super) fn value_groups<'m>(
    m: &'m ShardMap,
    value: &str,
    table: Option<&str>,
) -> Result<Vec<ValueGroup<'m>>, AdminError> {
    let only = table.map(|t| table_group(m, t)).transpose()?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (id, tables) in groups(m) {
        if only.is_some_and(|o| o != id) {
            continue;
        }
        let Some(dt) = tables.first().map(|t| t.dist_type) else {
            continue;
        };
        match hash_value(dt, value) {
            Ok(h) => out.push((id, tables, dt, h)),
            Err(e) => errors.push(format!("colocation group {id} ({dt:?}): {e}")),
        }
    }
    if out.is_empty() && !errors.is_empty() {
        return Err(AdminError::new(format!(
            "'{value}' is not a valid key: {}",
            errors.join("; ")
        )));
    }
    Ok(out)
}

pub fn shards(ctx: &Context, table: Option<&str>) -> Result<ResultSet, AdminError> {
    let m = map(ctx)?;
    let only = table.map(|t| table_group(&m, t)).transpose()?;
    let by_group = groups(&m);
    let mut rs = ResultSet::new(SHARDS);
    let mut ids: Vec<&u32> = m.groups.keys().collect();
    ids.sort();
    for id in ids {
        if only.is_some_and(|o| o != *id) {
            continue;
        }
        let names = by_group.get(id).map(|t| table_names(t)).unwrap_or_default();
        for r in &m.groups[id] {
            let node = m.nodes.get(r.node).map(|(_, n)| n);
            rs.push(vec![
                Some(id.to_string()),
                Some(names.clone()),
                Some(r.shard_id.to_string()),
                Some(r.min.to_string()),
                Some(r.max.to_string()),
                node.map(|n| n.name.to_string()),
                node.map(|n| n.host.to_string()),
                node.map(|n| n.port.to_string()),
            ]);
        }
    }
    Ok(rs)
}

pub fn tenant(ctx: &Context, value: &str, table: Option<&str>) -> Result<ResultSet, AdminError> {
    let m = map(ctx)?;
    let mut rs = ResultSet::new(TENANT);
    for (id, tables, dt, hash) in value_groups(&m, value, table)? {
        let located = m.locate(id, hash);
        rs.push(vec![
            Some(id.to_string()),
            Some(table_names(&tables)),
            Some(format!("{dt:?}").to_ascii_lowercase()),
            Some(hash.to_string()),
            located.map(|(r, _)| r.shard_id.to_string()),
            located.map(|(r, _)| r.min.to_string()),
            located.map(|(r, _)| r.max.to_string()),
            located.map(|(_, n)| n.name.to_string()),
            located.map(|(_, n)| n.host.to_string()),
            located.map(|(_, n)| n.port.to_string()),
        ]);
    }
    Ok(rs)
}

pub fn routes(ctx: &Context) -> ResultSet {
    let r = &ctx.routes;
    let mut rs = ResultSet::new(ROUTES);
    for reason in RouteReason::ALL {
        let (c, w) = (r.get_to(reason, false), r.get_to(reason, true));
        rs.push_values([
            reason.as_str().to_string(),
            c.to_string(),
            w.to_string(),
            (c + w).to_string(),
            r.statements_to(reason, false).to_string(),
            r.statements_to(reason, true).to_string(),
        ]);
    }
    let statements = |to_worker| {
        RouteReason::ALL
            .iter()
            .map(|&x| r.statements_to(x, to_worker))
            .sum::<u64>()
    };
    rs.push_values([
        "total".to_string(),
        r.total_to(false).to_string(),
        r.total_to(true).to_string(),
        (r.total_to(false) + r.total_to(true)).to_string(),
        statements(false).to_string(),
        statements(true).to_string(),
    ]);
    rs
}

pub fn plan_cache(ctx: &Context) -> ResultSet {
    let (hits, misses, len) = ctx.router.planner().stats();
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    };
    let mut rs = ResultSet::new(PLAN_CACHE);
    rs.push_values([
        len.to_string(),
        hits.to_string(),
        misses.to_string(),
        format!("{ratio:.4}"),
    ]);
    rs
}
