//! The shard map: for each colocation group, its shard hash ranges and the node owning
//! each; plus the table catalog the router reads. Built complete from the coordinator's
//! metadata and swapped in whole: a statement in flight keeps the map it started with.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::catalog::{DistType, TableInfo, TableKind, Tables};
use crate::backend::{BackendError, ServerConn};
use crate::pool::Node;

/// Do the Citus catalog tables exist? (Unqualified: Citus keeps them in pg_catalog, an
/// emulation may keep them in public.)
pub const DETECT_SQL: &str = "SELECT (to_regclass('pg_dist_partition') IS NOT NULL \
     AND to_regclass('pg_dist_shard') IS NOT NULL \
     AND to_regclass('pg_dist_placement') IS NOT NULL \
     AND to_regclass('pg_dist_node') IS NOT NULL)::text";

/// A cheap summary of everything the map is built from; a full load runs only when it
/// changes. Checked every `shard_map_refresh_interval` (0.5 s by default) by every
/// pgtenant instance, so it avoids text: integer hashes (`hashint8`) of the columns that
/// change (a move updates a placement's group in place; a split makes new shard ids;
/// DDL adds columns or defaults, which get new `pg_attrdef` oids), summed per table (a
/// swap of two placements changes the sum, since the hash is not linear). The shard
/// bounds of a shard id never change, so they are not read. About half the cost of the
/// text-hashing version it replaced (2.4 ms against 4.8 ms with 3,200 shards on a busy
/// 2-core machine; see benches/RESULTS.md).
pub const FINGERPRINT_SQL: &str = "SELECT \
   (SELECT count(*)::text || ':' || coalesce(sum(hashint8(p.logicalrelid::oid::bigint # (p.colocationid::bigint << 32))::bigint \
        + hashtext(p.partmethod::text || coalesce(p.partkey, ''))::bigint \
        + hashint8(c.relnatts::bigint # ((SELECT coalesce(sum(d.oid::bigint), 0) FROM pg_attrdef d WHERE d.adrelid = c.oid)::bigint << 16))::bigint), 0)::text \
      FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid) \
   || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashint8(shardid # (logicalrelid::oid::bigint << 32))), 0)::text FROM pg_dist_shard) \
   || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashint8(shardid # (groupid::bigint << 32) # (shardstate::bigint << 56))), 0)::text FROM pg_dist_placement) \
   || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashtext(groupid::text || ':' || nodename || ':' || nodeport::text || ':' || isactive::text || ':' || noderole::text || ':' || hasmetadata::text || ':' || coalesce(metadatasynced, false)::text)), 0)::text FROM pg_dist_node)";

const TABLES_SQL: &str = "SELECT n.nspname, c.relname, p.partmethod::text, p.colocationid::text, \
   k.col, (SELECT a.atttypid::text FROM pg_attribute a WHERE a.attrelid = p.logicalrelid AND a.attname = k.col) \
   FROM pg_dist_partition p \
   JOIN pg_class c ON c.oid = p.logicalrelid \
   JOIN pg_namespace n ON n.oid = c.relnamespace \
   CROSS JOIN LATERAL (SELECT CASE WHEN p.partkey IS NULL OR p.partkey = '' THEN NULL \
        ELSE column_to_column_name(p.logicalrelid, p.partkey) END AS col) k";

/// int/smallint columns filled from a sequence (nextval default or identity): an INSERT
/// that leaves them out must run on the coordinator.
const SEQUENCE_COLUMNS_SQL: &str = "SELECT n.nspname, c.relname, a.attname \
   FROM pg_dist_partition p \
   JOIN pg_class c ON c.oid = p.logicalrelid \
   JOIN pg_namespace n ON n.oid = c.relnamespace \
   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
   LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
   WHERE a.atttypid IN (21, 23) \
     AND (a.attidentity IN ('a', 'd') OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%')";

const SHARDS_SQL: &str = "SELECT p.colocationid::text, s.shardid::text, s.shardminvalue, s.shardmaxvalue, pl.groupid::text \
   FROM pg_dist_shard s \
   JOIN pg_dist_partition p ON p.logicalrelid = s.logicalrelid \
   JOIN pg_dist_placement pl ON pl.shardid = s.shardid \
   WHERE p.partmethod = 'h' AND pl.shardstate = 1 \
   ORDER BY p.colocationid, s.shardid, pl.groupid";

/// With whether the node can plan and run distributed queries itself (Citus 11+: it has
/// the metadata, and it is in sync).
const NODES_SQL: &str = "SELECT groupid::text, nodename, nodeport::text, \
   (hasmetadata AND coalesce(metadatasynced, false))::text FROM pg_dist_node \
   WHERE isactive AND noderole::text = 'primary' ORDER BY groupid, nodeid";

/// One shard's hash range and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRange {
    pub min: i32,
    pub max: i32,
    pub shard_id: i64,
    /// Index into [`ShardMap::nodes`].
    pub node: usize,
}

#[derive(Debug)]
pub struct ShardMap {
    /// Increases with every map built in this process.
    pub version: u64,
    pub loaded_at: Instant,
    pub fingerprint: String,
    pub tables: Tables,
    /// Colocation group → its shard ranges, sorted by `min`.
    pub groups: HashMap<u32, Vec<ShardRange>>,
    /// Active primary nodes, with their Citus group id.
    pub nodes: Vec<(i32, Node)>,
    /// Workers (group ≠ 0) that hold the Citus metadata, in sync: they plan and run
    /// distributed queries as the coordinator does (`multi_tenant_reads = any`).
    pub metadata_workers: Vec<Node>,
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("unexpected metadata: {0}")]
    Bad(String),
}

impl ShardMap {
    /// The distributed table an operator names (`orders`, `sales.orders`), or, with no
    /// name, the first (by schema and name) of the only colocation group that has
    /// distributed tables. Errors say why none fits.
    pub fn distributed_table(&self, name: Option<&str>) -> Result<&TableInfo, String> {
        use super::catalog::Catalog;
        if let Some(t) = name {
            let (schema, n) = match t.split_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, t),
            };
            return match self.tables.table(schema, n) {
                Some(i) if i.kind == TableKind::Distributed => Ok(i),
                Some(_) => Err(format!(
                    "{t} is a reference table: every node has all of it"
                )),
                None => Err(format!("{t} is not a distributed table in the shard map")),
            };
        }
        let distributed = || {
            self.tables
                .iter()
                .filter(|t| t.kind == TableKind::Distributed)
        };
        let mut groups: Vec<u32> = distributed().map(|t| t.colocation_id).collect();
        groups.sort_unstable();
        groups.dedup();
        match groups.as_slice() {
            [one] => distributed()
                .filter(|t| t.colocation_id == *one)
                .min_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)))
                .ok_or_else(|| "the shard map has no distributed table".to_string()),
            [] => Err("the shard map has no distributed table".into()),
            many => Err(format!(
                "{} colocation groups have distributed tables: name one with TABLE <table> (groups {})",
                many.len(),
                many.iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The shard of `colocation` whose range holds `hash`, and its node. Binary search:
    /// ranges may be uneven (tenant isolation, splits).
    pub fn locate(&self, colocation: u32, hash: i32) -> Option<(&ShardRange, &Node)> {
        let ranges = self.groups.get(&colocation)?;
        let i = ranges.partition_point(|r| r.max < hash);
        let r = ranges.get(i)?;
        if r.min <= hash && hash <= r.max {
            self.nodes.get(r.node).map(|(_, n)| (r, n))
        } else {
            None
        }
    }

    pub fn shard_count(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// Where Citus stores a node and where pgtenant should connect to it.
pub struct NodeResolver<'a> {
    pub rewrites: &'a std::collections::BTreeMap<String, String>,
    pub coordinator: &'a Node,
    /// How worker names begin: `worker-` (`worker-<group>`), a secondary cluster's
    /// `<entry>/worker-`.
    pub worker_prefix: &'a str,
}

impl NodeResolver<'_> {
    fn resolve(&self, group: i32, host: &str, port: u16) -> Node {
        if group == 0 {
            return self.coordinator.clone();
        }
        let key = format!("{host}:{port}");
        let (h, p) = match self.rewrites.get(&key).and_then(|to| to.rsplit_once(':')) {
            Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(port)),
            None => (host.to_owned(), port),
        };
        Node {
            name: format!("{}{group}", self.worker_prefix).into(),
            host: h.into(),
            port: p,
        }
    }
}

fn col(row: &[Option<String>], i: usize) -> Result<&str, MapError> {
    row.get(i)
        .and_then(|c| c.as_deref())
        .ok_or_else(|| MapError::Bad(format!("missing column {i}")))
}

fn num<T: std::str::FromStr>(row: &[Option<String>], i: usize) -> Result<T, MapError> {
    let s = col(row, i)?;
    s.trim()
        .parse()
        .map_err(|_| MapError::Bad(format!("'{s}' is not a number")))
}

/// Read the whole map from a coordinator connection.
pub async fn load(
    conn: &mut ServerConn,
    version: u64,
    fingerprint: String,
    nodes: &NodeResolver<'_>,
) -> Result<ShardMap, MapError> {
    let table_rows = conn.query_rows(TABLES_SQL).await?;
    let seq_rows = conn.query_rows(SEQUENCE_COLUMNS_SQL).await?;
    let shard_rows = conn.query_rows(SHARDS_SQL).await?;
    let node_rows = conn.query_rows(NODES_SQL).await?;
    build(
        version,
        fingerprint,
        &table_rows,
        &seq_rows,
        &shard_rows,
        &node_rows,
        nodes,
    )
}

/// Build a map from the metadata rows (separate from I/O so it can be tested and timed).
pub fn build(
    version: u64,
    fingerprint: String,
    table_rows: &[Vec<Option<String>>],
    seq_rows: &[Vec<Option<String>>],
    shard_rows: &[Vec<Option<String>>],
    node_rows: &[Vec<Option<String>>],
    resolver: &NodeResolver<'_>,
) -> Result<ShardMap, MapError> {
    let mut seq_cols: HashMap<(String, String), Vec<String>> = HashMap::new();
    for r in seq_rows {
        seq_cols
            .entry((col(r, 0)?.to_owned(), col(r, 1)?.to_owned()))
            .or_default()
            .push(col(r, 2)?.to_owned());
    }
    let mut tables = Tables::new();
    for r in table_rows {
        let schema = col(r, 0)?.to_owned();
        let name = col(r, 1)?.to_owned();
        let kind = match col(r, 2)? {
            "h" => TableKind::Distributed,
            "n" => TableKind::Reference,
            // Append/range distribution: not routable; the coordinator handles it.
            _ => continue,
        };
        let colocation_id: u32 = num(r, 3)?;
        let dist_column = r.get(4).cloned().flatten().unwrap_or_default();
        let dist_type = match r.get(5).cloned().flatten() {
            Some(oid) => DistType::from_oid(oid.parse().unwrap_or(0)),
            None => DistType::Other(0),
        };
        let int_sequence_columns = seq_cols
            .remove(&(schema.clone(), name.clone()))
            .unwrap_or_default();
        tables.insert(TableInfo {
            schema,
            name,
            kind,
            dist_column,
            dist_type,
            colocation_id,
            int_sequence_columns,
        });
    }

    let mut node_index: HashMap<i32, usize> = HashMap::new();
    let mut nodes: Vec<(i32, Node)> = Vec::new();
    let mut metadata_workers = Vec::new();
    for r in node_rows {
        let group: i32 = num(r, 0)?;
        if node_index.contains_key(&group) {
            continue;
        }
        let port: u16 = num(r, 2)?;
        let node = resolver.resolve(group, col(r, 1)?, port);
        // An older catalog query (no fourth column) says nothing: no metadata.
        if group != 0 && r.get(3).and_then(|c| c.as_deref()) == Some("true") {
            metadata_workers.push(node.clone());
        }
        node_index.insert(group, nodes.len());
        nodes.push((group, node));
    }

    let mut groups: HashMap<u32, Vec<ShardRange>> = HashMap::new();
    // Colocated tables repeat the same ranges: keep one entry per (group, range).
    let mut seen: std::collections::HashSet<(u32, i32, i32)> = std::collections::HashSet::new();
    for r in shard_rows {
        let colocation: u32 = num(r, 0)?;
        let shard_id: i64 = num(r, 1)?;
        let min: i32 = num(r, 2)?;
        let max: i32 = num(r, 3)?;
        let group: i32 = num(r, 4)?;
        let Some(&node) = node_index.get(&group) else {
            continue;
        };
        if !seen.insert((colocation, min, max)) {
            continue;
        }
        groups.entry(colocation).or_default().push(ShardRange {
            min,
            max,
            shard_id,
            node,
        });
    }
    for ranges in groups.values_mut() {
        ranges.sort_by_key(|r| r.min);
    }
    Ok(ShardMap {
        version,
        loaded_at: Instant::now(),
        fingerprint,
        tables,
        groups,
        nodes,
        metadata_workers,
    })
}

/// Shared handle: the current map (if any) and what the refresher last saw.
#[derive(Default)]
pub struct ShardMapHandle {
    pub current: arc_swap::ArcSwapOption<ShardMap>,
    /// The upstream is a Citus coordinator (catalog found).
    pub is_citus: std::sync::atomic::AtomicBool,
    pub last_error: std::sync::Mutex<Option<String>>,
    pub refresh_failures: std::sync::atomic::AtomicU64,
    /// Ask the refresher to check now (admin RELOAD, errors that smell of a moved shard).
    pub wake: tokio::sync::Notify,
}

impl ShardMapHandle {
    pub fn get(&self) -> Option<Arc<ShardMap>> {
        self.current.load_full()
    }

    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn builds_and_locates_uneven_ranges() {
        let coord = Node {
            name: "coordinator".into(),
            host: "c".into(),
            port: 5432,
        };
        let rw = std::collections::BTreeMap::from([(
            "10.0.0.5:5432".to_string(),
            "w1.svc:6000".to_string(),
        )]);
        let resolver = NodeResolver {
            rewrites: &rw,
            coordinator: &coord,
            worker_prefix: "worker-",
        };
        let tables = vec![
            vec![
                s("public"),
                s("orders"),
                s("h"),
                s("1"),
                s("account_id"),
                s("20"),
            ],
            vec![s("public"), s("plans"), s("n"), s("0"), None, None],
        ];
        let seqs = vec![vec![s("public"), s("orders"), s("id")]];
        let shards = vec![
            vec![s("1"), s("1"), s("-2147483648"), s("-1"), s("1")],
            vec![s("1"), s("2"), s("0"), s("9"), s("2")],
            vec![s("1"), s("3"), s("10"), s("2147483647"), s("1")],
            vec![s("1"), s("2"), s("0"), s("9"), s("1")],
        ];
        let nodes = vec![
            vec![s("0"), s("coordinator.host"), s("5432"), s("true")],
            vec![s("1"), s("10.0.0.5"), s("5432"), s("true")],
            vec![s("2"), s("10.0.0.6"), s("5432"), s("false")],
        ];
        let m = build(1, "f".into(), &tables, &seqs, &shards, &nodes, &resolver).unwrap();
        // Only workers whose metadata is synced run distributed queries themselves.
        let readers: Vec<(&str, &str, u16)> = m
            .metadata_workers
            .iter()
            .map(|n| (&*n.name, &*n.host, n.port))
            .collect();
        assert_eq!(readers, vec![("worker-1", "w1.svc", 6000)]);
        let (r, n) = m.locate(1, 5).unwrap();
        assert_eq!(
            (r.shard_id, &*n.name, &*n.host, n.port),
            (2, "worker-2", "10.0.0.6", 5432)
        );
        let (r, n) = m.locate(1, i32::MIN).unwrap();
        assert_eq!((r.shard_id, &*n.host, n.port), (1, "w1.svc", 6000));
        assert_eq!(m.locate(1, i32::MAX).unwrap().0.shard_id, 3);
        assert!(m.locate(2, 0).is_none());
        use crate::citus::Catalog;
        let t = m.tables.table(None, "orders").unwrap();
        assert_eq!(
            (t.dist_type, t.int_sequence_columns.clone()),
            (DistType::Int8, vec!["id".to_string()])
        );
        assert_eq!(
            m.tables.table(Some("public"), "plans").unwrap().kind,
            TableKind::Reference
        );
        assert_eq!(m.shard_count(), 3);
    }

    #[test]
    fn builds_100k_shards_fast() {
        let coord = Node {
            name: "coordinator".into(),
            host: "c".into(),
            port: 5432,
        };
        let rw = std::collections::BTreeMap::new();
        let resolver = NodeResolver {
            rewrites: &rw,
            coordinator: &coord,
            worker_prefix: "worker-",
        };
        let n: i64 = 100_000;
        let step = (1i64 << 32) / n;
        let shards: Vec<_> = (0..n)
            .map(|i| {
                let min = i32::MIN as i64 + i * step;
                let max = if i == n - 1 {
                    i32::MAX as i64
                } else {
                    min + step - 1
                };
                vec![
                    s("1"),
                    Some(i.to_string()),
                    Some(min.to_string()),
                    Some(max.to_string()),
                    Some((1 + i % 2).to_string()),
                ]
            })
            .collect();
        let nodes = vec![vec![s("1"), s("a"), s("1")], vec![s("2"), s("b"), s("2")]];
        let t = Instant::now();
        let m = build(1, String::new(), &[], &[], &shards, &nodes, &resolver).unwrap();
        assert!(
            t.elapsed().as_secs_f64() < 5.0,
            "debug build took {:?}",
            t.elapsed()
        );
        for h in [i32::MIN, -1, 0, 1, 12345, i32::MAX] {
            let (r, _) = m.locate(1, h).unwrap();
            assert!(r.min <= h && h <= r.max);
        }
    }
}
