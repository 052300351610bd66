//! An emulated Citus cluster for routing tests: three plain PostgreSQL servers.
//!
//! [`CitusCluster::start`] starts a coordinator and two workers with the harness'
//! [`PgServer`] and fills them like a small Citus 13 cluster (decision 8 of DESIGN.md):
//!
//! - The **coordinator** carries, in schema `public` of database `app`, tables with the
//!   exact names and columns of the Citus catalog (`pg_dist_partition`, `pg_dist_shard`,
//!   `pg_dist_placement`, `pg_dist_node`, `pg_dist_colocation`) and the function
//!   `column_to_column_name(regclass, text)`. `partkey` is stored as Citus stores it, a
//!   serialized `Var` node (`{VAR :varno 1 :varattno 1 :vartype 20 ...}`).
//! - Every node has the same multi-tenant schema ([`TABLES`]). The coordinator holds
//!   **all** rows (it plays Citus' coordinator, which can answer every query); each worker
//!   holds **only** the rows of the tenants whose shards it owns, found with the server's
//!   own hash function (`hashint8`, `hashint4`, `hashtext`, `uuid_hash`) against the shard
//!   ranges. A statement routed to the wrong worker therefore misses rows.
//! - Node groups: 0 = coordinator (`shouldhaveshards = false`), 1 = `workers[0]`,
//!   2 = `workers[1]`. Shard `i` of every colocation group is placed on group `1 + i % 2`,
//!   as Citus' round-robin placement does; shard ids start at [`FIRST_SHARD_ID`].
//! - Like Citus, an INSERT on a worker that relies on an int/smallint sequence default
//!   fails (`worker_nextval`), and bigint sequences on a worker start at
//!   `(groupid << 48) + 1`.
//!
//! Nothing replicates: a write lands only on the node that receives it, which is how a
//! test sees where a statement went (and `inet_server_port()` tells which node answered).
//!
//! Every method is synchronous (like [`PgServer`]); the ones that talk SQL run
//! tokio-postgres on a private runtime in a scoped thread, so they can be called from
//! plain `#[test]`s and from inside `#[tokio::test]`s alike (they block the caller).
//! All connect as `app`/`secret` to database `app`.

use super::{try_connect, PgServer};
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The first shard id, as in a fresh Citus cluster.
pub const FIRST_SHARD_ID: i64 = 102008;
/// Colocation id of the reference table(s).
pub const REFERENCE_COLOCATION_ID: i32 = 5;
/// Rows of the reference table `plans` (on every node).
pub const PLAN_ROWS: i64 = 5;

/// What [`CitusCluster::start`] builds.
#[derive(Clone, Debug)]
pub struct CitusOptions {
    /// Shards per distributed table (every colocation group); Citus' default is 32.
    pub shard_count: u32,
    /// Tenants per distributed table (keys 1..=tenants, see [`KeyType::key`]).
    pub tenants: u32,
    /// Split the first uniform shard of each colocation group in two (as a shard split
    /// would), so there are `shard_count + 1` uneven ranges and a router that divides
    /// instead of searching the ranges picks the wrong worker.
    pub uneven_ranges: bool,
}

impl Default for CitusOptions {
    fn default() -> Self {
        CitusOptions {
            shard_count: 32,
            tenants: 1000,
            uneven_ranges: false,
        }
    }
}

/// Type of a distribution column in the sample schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Int4,
    Int8,
    Text,
    Uuid,
}

impl KeyType {
    /// The text form of tenant `i`'s key (1-based). Text keys are `tenant-<i>`, every
    /// tenth one multibyte (`tenant-ñ-<i>`); uuid keys are
    /// `00000000-0000-0000-0000-<i as 12 hex digits>`.
    pub fn key(self, i: u32) -> String {
        match self {
            KeyType::Int4 | KeyType::Int8 => i.to_string(),
            KeyType::Text if i.is_multiple_of(10) => format!("tenant-ñ-{i}"),
            KeyType::Text => format!("tenant-{i}"),
            KeyType::Uuid => format!("00000000-0000-0000-0000-{i:012x}"),
        }
    }

    /// SQL expression of the key of the tenant whose number is in column `var`
    /// (the same values as [`key`](Self::key)).
    fn sql_key(self, var: &str) -> String {
        match self {
            KeyType::Int4 => format!("{var}::int"),
            KeyType::Int8 => format!("{var}::bigint"),
            KeyType::Text => format!(
                "CASE WHEN {var} % 10 = 0 THEN 'tenant-ñ-' || {var} ELSE 'tenant-' || {var} END"
            ),
            KeyType::Uuid => {
                format!("('00000000-0000-0000-0000-' || lpad(to_hex({var}), 12, '0'))::uuid")
            }
        }
    }

    /// The type's standard 32-bit hash function (hash opclass support proc 1).
    pub fn hash_fn(self) -> &'static str {
        match self {
            KeyType::Int4 => "hashint4",
            KeyType::Int8 => "hashint8",
            KeyType::Text => "hashtext",
            KeyType::Uuid => "uuid_hash",
        }
    }

    /// `format_type` name.
    pub fn sql_type(self) -> &'static str {
        match self {
            KeyType::Int4 => "integer",
            KeyType::Int8 => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }

    fn type_oid(self) -> u32 {
        match self {
            KeyType::Int4 => 23,
            KeyType::Int8 => 20,
            KeyType::Text => 25,
            KeyType::Uuid => 2950,
        }
    }

    /// `distributioncolumncollation`: the default collation for text, none otherwise.
    fn collation_oid(self) -> u32 {
        match self {
            KeyType::Text => 100,
            _ => 0,
        }
    }
}

/// One table of the sample schema.
#[derive(Clone, Copy, Debug)]
pub struct TableDef {
    pub name: &'static str,
    /// Distribution column and its type; `None` for a reference table.
    pub dist: Option<(&'static str, KeyType)>,
    pub colocation_id: i32,
    /// Rows per tenant (distributed) or in total (reference).
    pub rows_per_tenant: i64,
    pub ddl: &'static str,
    /// Rows as a SELECT over `generate_series(1, {n}) AS a` (tenant numbers); `{key}` is
    /// replaced by the tenant's key expression. Columns in table order.
    select: &'static str,
}

/// The sample schema, in creation order (shard ids are handed out in this order).
/// Colocation 1: bigint tenants (`accounts.id`, `orders.account_id`, `items.account_id`);
/// 2: text (`events.tenant`); 3: uuid (`devices.org`); 4: int (`sites.id`);
/// 5: the reference table `plans`. `items.id` is an int `serial` (Django's AutoField) on a
/// non-distribution column; `events.id` is a `bigserial`.
pub const TABLES: &[TableDef] = &[
    TableDef {
        name: "accounts",
        dist: Some(("id", KeyType::Int8)),
        colocation_id: 1,
        rows_per_tenant: 1,
        ddl: "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL)",
        select: "SELECT {key} AS id, 'account ' || a AS name FROM generate_series(1, {n}) AS a",
    },
    TableDef {
        name: "orders",
        dist: Some(("account_id", KeyType::Int8)),
        colocation_id: 1,
        rows_per_tenant: 3,
        ddl: "CREATE TABLE orders (account_id bigint NOT NULL, id bigint NOT NULL, \
              amount int NOT NULL, note text, PRIMARY KEY (account_id, id))",
        select: "SELECT {key} AS account_id, o::bigint AS id, (a * 10 + o)::int AS amount, \
                 'order ' || o || ' of account ' || a AS note \
                 FROM generate_series(1, {n}) AS a, generate_series(1, 3) AS o",
    },
    TableDef {
        name: "items",
        dist: Some(("account_id", KeyType::Int8)),
        colocation_id: 1,
        rows_per_tenant: 2,
        ddl: "CREATE TABLE items (account_id bigint NOT NULL, id serial, name text, \
              PRIMARY KEY (account_id, id))",
        select: "SELECT {key} AS account_id, ((a - 1) * 2 + k)::int AS id, 'item ' || k AS name \
                 FROM generate_series(1, {n}) AS a, generate_series(1, 2) AS k",
    },
    TableDef {
        name: "events",
        dist: Some(("tenant", KeyType::Text)),
        colocation_id: 2,
        rows_per_tenant: 3,
        ddl: "CREATE TABLE events (tenant text NOT NULL, id bigserial, payload text, \
              PRIMARY KEY (tenant, id))",
        select: "SELECT {key} AS tenant, ((a - 1) * 3 + k)::bigint AS id, \
                 'event ' || k || ' of tenant ' || a AS payload \
                 FROM generate_series(1, {n}) AS a, generate_series(1, 3) AS k",
    },
    TableDef {
        name: "devices",
        dist: Some(("org", KeyType::Uuid)),
        colocation_id: 3,
        rows_per_tenant: 2,
        ddl: "CREATE TABLE devices (org uuid NOT NULL, id int NOT NULL, name text, \
              PRIMARY KEY (org, id))",
        select: "SELECT {key} AS org, k AS id, 'device ' || k AS name \
                 FROM generate_series(1, {n}) AS a, generate_series(1, 2) AS k",
    },
    TableDef {
        name: "sites",
        dist: Some(("id", KeyType::Int4)),
        colocation_id: 4,
        rows_per_tenant: 1,
        ddl: "CREATE TABLE sites (id int PRIMARY KEY, name text NOT NULL)",
        select: "SELECT {key} AS id, 'site ' || a AS name FROM generate_series(1, {n}) AS a",
    },
    TableDef {
        name: "plans",
        dist: None,
        colocation_id: REFERENCE_COLOCATION_ID,
        rows_per_tenant: PLAN_ROWS,
        ddl: "CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL)",
        select: "SELECT a AS id, 'plan ' || a AS name FROM generate_series(1, 5) AS a",
    },
];

/// The sample table called `name` (panics if there is none).
pub fn table_def(name: &str) -> &'static TableDef {
    TABLES
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no table {name:?} in the emulated Citus schema"))
}

/// Hash ranges of `count` shards exactly as Citus creates them:
/// `step = 2^32 / count`, `min_i = INT32_MIN + i * step`, `max_i = min_i + step - 1`,
/// and the last max is `INT32_MAX`.
pub fn uniform_ranges(count: u32) -> Vec<(i32, i32)> {
    assert!(count > 0, "shard count must be positive");
    let step = (1i64 << 32) / i64::from(count);
    (0..i64::from(count))
        .map(|i| {
            let min = i64::from(i32::MIN) + i * step;
            let max = if i == i64::from(count) - 1 {
                i64::from(i32::MAX)
            } else {
                min + step - 1
            };
            (min as i32, max as i32)
        })
        .collect()
}

/// The ranges a cluster built with `opts` has (see [`CitusOptions::uneven_ranges`]).
pub fn cluster_ranges(opts: &CitusOptions) -> Vec<(i32, i32)> {
    let mut ranges = uniform_ranges(opts.shard_count);
    if opts.uneven_ranges {
        let (min, max) = ranges[0];
        let mid = ((i64::from(min) + i64::from(max)) / 2) as i32;
        ranges.splice(0..1, [(min, mid), (mid + 1, max)]);
    }
    ranges
}

/// One shard as the coordinator's catalog has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub shardid: i64,
    pub min: i32,
    pub max: i32,
    /// Group of its (one, active) placement.
    pub group: i32,
}

/// Where a key lives, per the coordinator's catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The key's 32-bit hash (server-computed); 0 for reference tables.
    pub hash: i32,
    /// The shard holding it.
    pub shardid: i64,
    /// The node group of its placement (0 for reference tables: the coordinator).
    pub group: i32,
    /// The port of that group's primary node.
    pub port: u16,
}

/// A shard move whose source rows are not deleted yet ([`CitusCluster::move_shard_keep_source`]).
#[derive(Clone, Debug)]
pub struct ShardMove {
    /// The moved shard and its colocated shards (same colocation group and range).
    pub shardids: Vec<i64>,
    pub from_group: i32,
    pub to_group: i32,
    /// Rows copied to the target (0 when the target is the coordinator).
    pub rows_copied: u64,
    from_port: u16,
    ranges: Vec<(DistInfo, i32, i32)>,
}

/// The coordinator, two workers and their emulated Citus metadata.
pub struct CitusCluster {
    /// Group 0: the catalog and every row.
    pub coordinator: PgServer,
    /// `workers[i]` is node group `i + 1` and holds only the rows of its shards.
    pub workers: Vec<PgServer>,
    pub opts: CitusOptions,
    /// How long [`start`](Self::start) took (servers started, schema and data loaded).
    pub startup: Duration,
}

impl CitusCluster {
    /// Start coordinator + 2 workers in parallel and load catalog, schema and data.
    pub fn start(opts: CitusOptions) -> CitusCluster {
        assert!(opts.tenants > 0, "need at least one tenant");
        let t0 = Instant::now();
        let (coordinator, w0, w1) = std::thread::scope(|s| {
            let c = s.spawn(PgServer::start);
            let a = s.spawn(PgServer::start);
            let b = s.spawn(PgServer::start);
            (join(c), join(a), join(b))
        });
        let cluster = CitusCluster {
            coordinator,
            workers: vec![w0, w1],
            opts,
            startup: Duration::ZERO,
        };
        let coord_sql = cluster.coordinator_script();
        let worker_sql: Vec<String> = (1..=2).map(|g| cluster.worker_script(g)).collect();
        block_on(async {
            let load = |server: &PgServer, sql: &str| {
                let url = app_url(server);
                let sql = sql.to_string();
                async move {
                    let c = app_connect_url(&url).await;
                    c.batch_execute(&sql)
                        .await
                        .unwrap_or_else(|e| panic!("loading {url}: {}", db_err(&e)));
                }
            };
            tokio::join!(
                load(&cluster.coordinator, &coord_sql),
                load(&cluster.workers[0], &worker_sql[0]),
                load(&cluster.workers[1], &worker_sql[1]),
            );
        });
        CitusCluster {
            startup: t0.elapsed(),
            ..cluster
        }
    }

    /// The coordinator as `postgres://app:secret@127.0.0.1:<port>/app` (pgtenant's
    /// `--upstream`).
    pub fn upstream_url(&self) -> String {
        app_url(&self.coordinator)
    }

    /// pgtenant in front of this cluster (`run --upstream … --pool-size 4` plus `extra`),
    /// returned once its shard map is loaded.
    pub fn start_pgtenant(&self, extra: &[&str]) -> super::Pgtenant {
        let up = self.upstream_url();
        let mut args = vec!["run", "--upstream", &up, "--pool-size", "4"];
        args.extend_from_slice(extra);
        let p = super::Pgtenant::start(&args, &[]);
        wait_for_shard_map(&p);
        p
    }

    /// Port of node group `group` (0 = coordinator, 1/2 = workers 0/1).
    pub fn group_port(&self, group: i32) -> u16 {
        self.group_server(group).port()
    }

    /// The server of node group `group` (0 = coordinator, 1/2 = workers 0/1).
    pub fn group_server(&self, group: i32) -> &PgServer {
        match group {
            0 => &self.coordinator,
            g if g >= 1 && (g as usize) <= self.workers.len() => &self.workers[g as usize - 1],
            g => panic!("no node group {g} in the emulated cluster"),
        }
    }

    /// The node group of `workers[i]`.
    pub fn worker_group(&self, i: usize) -> i32 {
        i as i32 + 1
    }

    /// "coordinator", "worker 0", "worker 1" or "port N" — for assertion messages.
    pub fn node_name(&self, port: u16) -> String {
        if port == self.coordinator.port() {
            return "coordinator".into();
        }
        match self.workers.iter().position(|w| w.port() == port) {
            Some(i) => format!("worker {i}"),
            None => format!("port {port}"),
        }
    }

    /// Key (text form) of tenant `i` (1-based) of distributed table `table`.
    pub fn tenant_key(&self, table: &str, i: u32) -> String {
        let (_, kt) = table_def(table)
            .dist
            .unwrap_or_else(|| panic!("{table} is a reference table"));
        kt.key(i)
    }

    /// Keys of all tenants of `table`, tenant 1 first.
    pub fn tenant_keys(&self, table: &str) -> Vec<String> {
        (1..=self.opts.tenants)
            .map(|i| self.tenant_key(table, i))
            .collect()
    }

    /// Port of the node that owns `key` of `table` (which server should answer),
    /// computed by the coordinator: the type's hash function over the key, searched in
    /// `pg_dist_shard`, through `pg_dist_placement` to `pg_dist_node`. Reference tables:
    /// the coordinator.
    pub fn owner_port(&self, table: &str, key: &str) -> u16 {
        self.locate(table, &[key.to_string()])[0].port
    }

    /// [`owner_port`](Self::owner_port) for many keys in one query.
    pub fn owner_ports(&self, table: &str, keys: &[String]) -> Vec<u16> {
        self.locate(table, keys)
            .into_iter()
            .map(|l| l.port)
            .collect()
    }

    /// Hash, shard, group and port of each key (in order), in one coordinator query.
    pub fn locate(&self, table: &str, keys: &[String]) -> Vec<Location> {
        block_on(async {
            let c = self.app_client(&self.coordinator).await;
            let info = dist_info(&c, table).await;
            locate(&c, &info, keys).await
        })
    }

    /// The shards of `table` in range order, per the coordinator's catalog.
    pub fn shards(&self, table: &str) -> Vec<ShardInfo> {
        block_on(async {
            let c = self.app_client(&self.coordinator).await;
            let rows = c
                .query(
                    "SELECT s.shardid, coalesce(s.shardminvalue, '0')::int4, \
                            coalesce(s.shardmaxvalue, '0')::int4, pl.groupid \
                     FROM pg_dist_shard s \
                     JOIN pg_dist_placement pl ON pl.shardid = s.shardid AND pl.shardstate = 1 \
                     WHERE s.logicalrelid = $1::text::regclass \
                     ORDER BY 2, 4",
                    &[&table],
                )
                .await
                .unwrap_or_else(|e| panic!("shards of {table}: {}", db_err(&e)));
            rows.iter()
                .map(|r| ShardInfo {
                    shardid: r.get(0),
                    min: r.get(1),
                    max: r.get(2),
                    group: r.get(3),
                })
                .collect()
        })
    }

    /// Move a shard (with its colocated shards, as Citus does) to node group `to_group`:
    /// copy the rows to the new node, switch the placement on the coordinator (a new
    /// placementid, as after a real move), then delete the rows from the old node.
    pub fn move_shard(&self, shardid: i64, to_group: i32) -> ShardMove {
        let m = self.move_shard_keep_source(shardid, to_group);
        self.finish_move(&m);
        m
    }

    /// The first two steps of [`move_shard`](Self::move_shard): rows copied, placement
    /// switched, but the old node keeps its copy until [`finish_move`](Self::finish_move)
    /// (a statement routed with a stale map still finds its rows meanwhile, as it would
    /// on real Citus, where every worker can answer every query).
    pub fn move_shard_keep_source(&self, shardid: i64, to_group: i32) -> ShardMove {
        block_on(async {
            let coord = self.app_client(&self.coordinator).await;
            let ctx = format!("move shard {shardid}");
            let row = coord
                .query_opt(
                    "SELECT p.colocationid, p.partmethod::text, s.shardminvalue, s.shardmaxvalue \
                     FROM pg_dist_shard s JOIN pg_dist_partition p ON p.logicalrelid = s.logicalrelid \
                     WHERE s.shardid = $1",
                    &[&shardid],
                )
                .await
                .unwrap_or_else(or_panic(&ctx))
                .unwrap_or_else(|| panic!("move shard {shardid}: no such shard"));
            let (colocation, method): (i32, String) = (row.get(0), row.get(1));
            assert_eq!(
                method, "h",
                "move shard {shardid}: not a hash-distributed shard"
            );
            let (min_text, max_text): (String, String) = (row.get(2), row.get(3));
            let groups: Vec<i32> = coord
                .query(
                    "SELECT groupid FROM pg_dist_placement WHERE shardid = $1 AND shardstate = 1",
                    &[&shardid],
                )
                .await
                .unwrap_or_else(or_panic(&ctx))
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(
                groups.len(),
                1,
                "shard {shardid}: active placements {groups:?}"
            );
            let from_group = groups[0];
            let colocated = coord
                .query(
                    "SELECT s.shardid, s.logicalrelid::text FROM pg_dist_shard s \
                     JOIN pg_dist_partition p ON p.logicalrelid = s.logicalrelid \
                     WHERE p.colocationid = $1 AND s.shardminvalue = $2 AND s.shardmaxvalue = $3 \
                     ORDER BY s.shardid",
                    &[&colocation, &min_text, &max_text],
                )
                .await
                .unwrap_or_else(or_panic(&ctx));
            let (min, max): (i32, i32) = (
                min_text.parse().expect("shardminvalue"),
                max_text.parse().expect("shardmaxvalue"),
            );
            let mut m = ShardMove {
                shardids: Vec::new(),
                from_group,
                to_group,
                rows_copied: 0,
                from_port: 0,
                ranges: Vec::new(),
            };
            for r in &colocated {
                m.shardids.push(r.get(0));
                let info = dist_info(&coord, r.get::<_, &str>(1)).await;
                m.ranges.push((info, min, max));
            }
            if from_group == to_group {
                return m;
            }
            m.from_port = catalog_group_port(&coord, from_group).await;
            let to_port = catalog_group_port(&coord, to_group).await;
            // The coordinator holds every row already: nothing to copy onto it.
            if to_port != self.coordinator.port() {
                let src = self.app_client(self.server_by_port(m.from_port)).await;
                let dst = self.app_client(self.server_by_port(to_port)).await;
                for (info, lo, hi) in &m.ranges {
                    m.rows_copied += copy_rows(&src, &dst, info, *lo, *hi).await;
                }
            }
            // Switch the placements in one transaction: a new placementid per shard.
            let mut sql = String::from("BEGIN;\n");
            for id in &m.shardids {
                sql.push_str(&format!(
                    "UPDATE pg_dist_placement SET groupid = {to_group}, \
                     placementid = (SELECT max(placementid) + 1 FROM pg_dist_placement) \
                     WHERE shardid = {id} AND groupid = {from_group};\n"
                ));
            }
            sql.push_str("COMMIT;");
            coord
                .batch_execute(&sql)
                .await
                .unwrap_or_else(or_panic(&ctx));
            m
        })
    }

    /// Delete the moved rows from the old node (no-op for the coordinator, which keeps
    /// every row, and for a move to the same group).
    pub fn finish_move(&self, m: &ShardMove) {
        if m.from_group == m.to_group || m.from_port == self.coordinator.port() {
            return;
        }
        block_on(async {
            let c = self.app_client(self.server_by_port(m.from_port)).await;
            for (info, lo, hi) in &m.ranges {
                c.execute(
                    &format!(
                        "DELETE FROM {} WHERE {}({}) BETWEEN {lo} AND {hi}",
                        info.qualified, info.hash_fn, info.column
                    ),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("delete moved rows: {}", db_err(&e)));
            }
        });
    }

    /// Stop `workers[i]` (immediate shutdown; its port stays reserved). What it committed
    /// comes back when it starts again, as on a real server: the test servers run with
    /// `synchronous_commit = off`, so its WAL is flushed (CHECKPOINT) first — without that,
    /// a DELETE committed just before (e.g. `finish_move`'s) was lost now and then.
    pub fn stop_worker(&mut self, i: usize) {
        // Best effort: a worker that is already down has nothing to flush.
        let _ = self.workers[i].psql(&["-c", "CHECKPOINT"]);
        self.workers[i].stop();
    }

    /// Start `workers[i]` again on the same port, with its data.
    pub fn start_worker(&mut self, i: usize) {
        self.workers[i].start_again();
    }

    /// Check that every row of every distributed table is on the coordinator and on the
    /// worker that owns its key (per the coordinator's catalog) and on no other worker,
    /// and that every node has the same reference-table rows. `Err` lists what differs.
    pub fn check_rows_on_owners(&self) -> Result<(), String> {
        block_on(async {
            let coord = self.app_client(&self.coordinator).await;
            let mut workers = Vec::new();
            for w in &self.workers {
                workers.push(
                    try_connect(&app_url(w))
                        .await
                        .map_err(|e| format!("worker on port {}: {e}", w.port()))?,
                );
            }
            let tables: Vec<(String, String)> = coord
                .query(
                    "SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition \
                     ORDER BY logicalrelid::oid",
                    &[],
                )
                .await
                .map_err(|e| db_err(&e))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut problems = Vec::new();
            for (table, method) in &tables {
                if method != "h" {
                    // Reference table: the same rows everywhere.
                    let sql = format!(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') \
                         FROM {table} AS t"
                    );
                    let want = digest(&coord, &sql).await?;
                    for (i, w) in workers.iter().enumerate() {
                        let got = digest(w, &sql).await?;
                        if got != want {
                            problems.push(format!(
                                "{table}: worker {i} has {got:?}, the coordinator {want:?}"
                            ));
                        }
                    }
                    continue;
                }
                let info = dist_info(&coord, table).await;
                let sql = format!(
                    "SELECT {}::text, count(*) FROM {} GROUP BY 1",
                    info.column, info.qualified
                );
                let all = key_counts(&coord, &sql).await?;
                let keys: Vec<String> = all.keys().cloned().collect();
                let owners = locate(&coord, &info, &keys).await;
                for (i, w) in workers.iter().enumerate() {
                    let port = self.workers[i].port();
                    let want: BTreeMap<String, i64> = keys
                        .iter()
                        .zip(&owners)
                        .filter(|(_, l)| l.port == port)
                        .map(|(k, _)| (k.clone(), all[k]))
                        .collect();
                    let got = key_counts(w, &sql).await?;
                    if got != want {
                        let missing: Vec<_> = want
                            .iter()
                            .filter(|(k, n)| got.get(*k) != Some(n))
                            .take(5)
                            .collect();
                        let extra: Vec<_> = got
                            .iter()
                            .filter(|(k, n)| want.get(*k) != Some(n))
                            .take(5)
                            .collect();
                        problems.push(format!(
                            "{table} on worker {i}: {} keys, expected {}; \
                             missing or short (key, rows): {missing:?}; \
                             unexpected (key, rows): {extra:?}",
                            got.len(),
                            want.len()
                        ));
                    }
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        })
    }

    /// A client as `app` on `server` (database `app`), on the caller's runtime.
    pub async fn app_client(&self, server: &PgServer) -> Client {
        app_connect_url(&app_url(server)).await
    }

    fn server_by_port(&self, port: u16) -> &PgServer {
        std::iter::once(&self.coordinator)
            .chain(&self.workers)
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of the cluster listens on port {port}"))
    }

    // -----------------------------------------------------------------------------------
    // Setup scripts
    // -----------------------------------------------------------------------------------

    fn schema_ddl() -> String {
        let mut sql = String::new();
        for t in TABLES {
            sql.push_str(t.ddl);
            sql.push_str(";\n");
        }
        sql
    }

    /// `INSERT` of `t`'s rows; on a worker only those whose hash falls in `ranges`.
    fn data_sql(&self, t: &TableDef, ranges: Option<&[(i32, i32)]>) -> String {
        let key = match t.dist {
            Some((_, kt)) => kt.sql_key("a"),
            None => String::new(),
        };
        let select = t
            .select
            .replace("{key}", &key)
            .replace("{n}", &self.opts.tenants.to_string());
        let filter = match (t.dist, ranges) {
            (Some((col, kt)), Some(ranges)) if !ranges.is_empty() => {
                let values: Vec<String> = ranges
                    .iter()
                    .map(|(lo, hi)| format!("({lo}, {hi})"))
                    .collect();
                format!(
                    "EXISTS (SELECT 1 FROM (VALUES {}) AS s(lo, hi) \
                     WHERE {}(r.{col}) BETWEEN s.lo AND s.hi)",
                    values.join(", "),
                    kt.hash_fn()
                )
            }
            (Some(_), Some(_)) => "false".into(),
            _ => "true".into(),
        };
        format!(
            "INSERT INTO {} SELECT * FROM ({select}) AS r WHERE {filter};\n",
            t.name
        )
    }

    fn coordinator_script(&self) -> String {
        let ranges = cluster_ranges(&self.opts);
        let mut sql = Self::schema_ddl();
        sql.push_str(CATALOG_DDL);

        // Nodes: the coordinator is group 0 and has no shards.
        let node = |id: i32, group: i32, port: u16, shards: bool| {
            format!("({id}, {group}, '127.0.0.1', {port}, 'default', true, true, 'primary', 'default', true, {shards})")
        };
        sql.push_str(&format!(
            "INSERT INTO pg_dist_node VALUES {}, {}, {};\n",
            node(1, 0, self.coordinator.port(), false),
            node(2, 1, self.workers[0].port(), true),
            node(3, 2, self.workers[1].port(), true)
        ));

        // Colocation groups, in order of first use.
        let mut colocations: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        for t in TABLES {
            if seen.contains(&t.colocation_id) {
                continue;
            }
            seen.push(t.colocation_id);
            colocations.push(match t.dist {
                Some((_, kt)) => format!(
                    "({}, {}, 1, {}, {})",
                    t.colocation_id,
                    ranges.len(),
                    kt.type_oid(),
                    kt.collation_oid()
                ),
                None => format!("({}, 1, -1, 0, 0)", t.colocation_id),
            });
        }
        sql.push_str(&format!(
            "INSERT INTO pg_dist_colocation VALUES {};\n",
            colocations.join(", ")
        ));

        // Tables, shards and placements.
        let mut shardid = FIRST_SHARD_ID;
        let mut placementid = 1i64;
        let mut shards = Vec::new();
        let mut placements = Vec::new();
        for t in TABLES {
            let rel = format!("'public.{}'::regclass", t.name);
            match t.dist {
                Some((col, _)) => {
                    sql.push_str(&format!(
                        "INSERT INTO pg_dist_partition \
                         SELECT a.attrelid, 'h', format('{{VAR :varno 1 :varattno %s :vartype %s \
                         :vartypmod %s :varcollid %s :varlevelsup 0 :varnosyn 1 :varattnosyn %s \
                         :location -1}}', a.attnum, a.atttypid, a.atttypmod, a.attcollation, a.attnum), \
                         {}, 's' FROM pg_attribute a WHERE a.attrelid = {rel} AND a.attname = '{col}';\n",
                        t.colocation_id
                    ));
                    for (i, (lo, hi)) in ranges.iter().enumerate() {
                        shards.push(format!("({rel}, {shardid}, 't', '{lo}', '{hi}')"));
                        placements.push(format!(
                            "({placementid}, {shardid}, 1, 0, {})",
                            placement_group(i)
                        ));
                        placementid += 1;
                        shardid += 1;
                    }
                }
                None => {
                    sql.push_str(&format!(
                        "INSERT INTO pg_dist_partition VALUES ({rel}, 'n', NULL, {}, 't');\n",
                        t.colocation_id
                    ));
                    shards.push(format!("({rel}, {shardid}, 't', NULL, NULL)"));
                    for group in 0..=2 {
                        placements.push(format!("({placementid}, {shardid}, 1, 0, {group})"));
                        placementid += 1;
                    }
                    shardid += 1;
                }
            }
        }
        sql.push_str(&format!(
            "INSERT INTO pg_dist_shard VALUES {};\n",
            shards.join(",\n")
        ));
        sql.push_str(&format!(
            "INSERT INTO pg_dist_placement VALUES {};\n",
            placements.join(",\n")
        ));

        // Every row.
        for t in TABLES {
            sql.push_str(&self.data_sql(t, None));
        }
        // Sequences continue after the loaded ids.
        sql.push_str(
            "SELECT setval(pg_get_serial_sequence('items', 'id'), (SELECT max(id) FROM items));\n\
             SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events));\n",
        );
        sql.push_str(GRANTS_AND_ANALYZE);
        sql
    }

    fn worker_script(&self, group: i32) -> String {
        let ranges = cluster_ranges(&self.opts);
        let own: Vec<(i32, i32)> = ranges
            .iter()
            .enumerate()
            .filter(|(i, _)| placement_group(*i) == group)
            .map(|(_, r)| *r)
            .collect();
        let mut sql = Self::schema_ddl();
        for t in TABLES {
            sql.push_str(&self.data_sql(t, Some(&own)));
        }
        let lo = (i64::from(group) << 48) + 1;
        let hi = (i64::from(group) + 1) << 48;
        sql.push_str(
            &WORKER_SEQUENCES
                .replace("{lo}", &lo.to_string())
                .replace("{hi}", &hi.to_string()),
        );
        sql.push_str(GRANTS_AND_ANALYZE);
        sql
    }
}

/// Group of shard index `i`: round robin over the two workers, first worker first.
pub fn placement_group(i: usize) -> i32 {
    1 + (i % 2) as i32
}

/// The Citus catalog (as the issue lists it) and `column_to_column_name`, in schema
/// `public` (also used alone, e.g. by `tests/it/scale.rs`).
pub const CATALOG_DDL: &str = r#"
CREATE TABLE pg_dist_partition (
    logicalrelid regclass NOT NULL PRIMARY KEY,
    partmethod "char" NOT NULL,
    partkey text,
    colocationid integer NOT NULL DEFAULT 0,
    repmodel "char" NOT NULL DEFAULT 'c'
);
CREATE TABLE pg_dist_shard (
    logicalrelid regclass NOT NULL,
    shardid bigint NOT NULL PRIMARY KEY,
    shardstorage "char" NOT NULL,
    shardminvalue text,
    shardmaxvalue text
);
CREATE TABLE pg_dist_placement (
    placementid bigint NOT NULL PRIMARY KEY,
    shardid bigint NOT NULL,
    shardstate integer NOT NULL,
    shardlength bigint NOT NULL,
    groupid integer NOT NULL
);
CREATE TABLE pg_dist_node (
    nodeid integer NOT NULL PRIMARY KEY,
    groupid integer NOT NULL,
    nodename text NOT NULL,
    nodeport integer NOT NULL DEFAULT 5432,
    noderack text NOT NULL DEFAULT 'default',
    hasmetadata boolean NOT NULL DEFAULT false,
    isactive boolean NOT NULL DEFAULT true,
    noderole text NOT NULL DEFAULT 'primary'
        CHECK (noderole IN ('primary', 'secondary', 'unavailable')),
    nodecluster name NOT NULL DEFAULT 'default',
    metadatasynced boolean DEFAULT false,
    shouldhaveshards boolean NOT NULL DEFAULT true
);
CREATE TABLE pg_dist_colocation (
    colocationid integer NOT NULL PRIMARY KEY,
    shardcount integer NOT NULL,
    replicationfactor integer NOT NULL,
    distributioncolumntype oid NOT NULL,
    distributioncolumncollation oid NOT NULL
);
-- partkey is a serialized Var node; its varattno names the column.
CREATE FUNCTION column_to_column_name(table_name regclass, column_var_text text)
RETURNS text LANGUAGE sql STABLE STRICT AS $$
    SELECT a.attname::text FROM pg_attribute a
    WHERE a.attrelid = table_name
      AND a.attnum = substring(column_var_text FROM ':varattno (-?[0-9]+)')::int2
      AND NOT a.attisdropped
$$;
"#;

/// Worker sequences as Citus sets them up: int/smallint defaults call `worker_nextval`,
/// which refuses; bigint sequences get the node's own range.
const WORKER_SEQUENCES: &str = r#"
CREATE FUNCTION worker_nextval(sequence regclass) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'nextval(sequence) calls in worker nodes are not supported for column defaults of type int or smallint'
        USING ERRCODE = 'feature_not_supported';
END
$$;
DO $$
DECLARE r record;
BEGIN
    FOR r IN
        SELECT a.attrelid::regclass::text AS rel, a.attname, a.atttypid,
               pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) AS seq
        FROM pg_attribute a
        JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'
    LOOP
        IF r.atttypid IN ('int2'::regtype, 'int4'::regtype) THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT worker_nextval(%L::regclass)',
                           r.rel, r.attname, r.seq);
        ELSE
            EXECUTE format('ALTER SEQUENCE %s MINVALUE {lo} MAXVALUE {hi} START WITH {lo} RESTART', r.seq);
        END IF;
    END LOOP;
END
$$;
"#;

const GRANTS_AND_ANALYZE: &str = "GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;\n\
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;\n\
ANALYZE;\n";

// ---------------------------------------------------------------------------------------
// SQL helpers (async, on whatever runtime runs them)
// ---------------------------------------------------------------------------------------

/// How a table is distributed, read from the coordinator's catalog.
#[derive(Clone, Debug)]
struct DistInfo {
    /// `schema.name`, quoted as needed.
    qualified: String,
    /// `h` (hash) or `n` (reference / local).
    method: String,
    /// Distribution column, quoted as needed (empty for reference tables).
    column: String,
    /// `format_type` of the column.
    type_name: String,
    /// The type's default hash opclass support function 1 (e.g. `hashint8`).
    hash_fn: String,
}

async fn dist_info(c: &Client, table: &str) -> DistInfo {
    let row = c
        .query_opt(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(cl.relname), p.partmethod::text, \
                    coalesce(quote_ident(a.attname), ''), \
                    coalesce(format_type(a.atttypid, NULL), ''), \
                    coalesce((SELECT ap.amproc::regproc::text \
                      FROM pg_opclass oc \
                      JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash' \
                      JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 1 \
                           AND ap.amproclefttype = oc.opcintype AND ap.amprocrighttype = oc.opcintype \
                      WHERE oc.opcdefault AND (oc.opcintype = a.atttypid OR EXISTS ( \
                            SELECT 1 FROM pg_cast k WHERE k.castsource = a.atttypid \
                            AND k.casttarget = oc.opcintype AND k.castmethod = 'b')) \
                      ORDER BY oc.opcintype = a.atttypid DESC LIMIT 1), '') \
             FROM pg_dist_partition p \
             JOIN pg_class cl ON cl.oid = p.logicalrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = p.logicalrelid \
                  AND a.attname = column_to_column_name(p.logicalrelid, p.partkey) \
             WHERE p.logicalrelid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("catalog entry of {table}: {}", db_err(&e)))
        .unwrap_or_else(|| panic!("{table} is not in pg_dist_partition"));
    let info = DistInfo {
        qualified: row.get(0),
        method: row.get(1),
        column: row.get(2),
        type_name: row.get(3),
        hash_fn: row.get(4),
    };
    if info.method == "h" {
        assert!(
            !info.column.is_empty() && !info.hash_fn.is_empty(),
            "{table}: no distribution column or hash function: {info:?}"
        );
    }
    info
}

async fn locate(c: &Client, info: &DistInfo, keys: &[String]) -> Vec<Location> {
    if info.method != "h" {
        let port = c
            .query_one(
                "SELECT nodeport FROM pg_dist_node WHERE groupid = 0 AND noderole = 'primary'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("coordinator in pg_dist_node: {}", db_err(&e)))
            .get::<_, i32>(0);
        return keys
            .iter()
            .map(|_| Location {
                hash: 0,
                shardid: 0,
                group: 0,
                port: port as u16,
            })
            .collect();
    }
    let sql = format!(
        "SELECT u.ord, h.hash, s.shardid, pl.groupid, n.nodeport \
         FROM unnest($1::text[]) WITH ORDINALITY AS u(k, ord) \
         CROSS JOIN LATERAL (SELECT {}(u.k::{}) AS hash) AS h \
         JOIN pg_dist_shard s ON s.logicalrelid = $2::text::regclass \
              AND h.hash BETWEEN s.shardminvalue::int4 AND s.shardmaxvalue::int4 \
         JOIN pg_dist_placement pl ON pl.shardid = s.shardid AND pl.shardstate = 1 \
         JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary' \
         ORDER BY u.ord",
        info.hash_fn, info.type_name
    );
    let rows = c
        .query(&sql, &[&keys, &info.qualified])
        .await
        .unwrap_or_else(|e| panic!("locate keys of {}: {}", info.qualified, db_err(&e)));
    let ords: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let want: Vec<i64> = (1..=keys.len() as i64).collect();
    assert_eq!(
        ords, want,
        "{}: every key must have exactly one owning shard placement",
        info.qualified
    );
    rows.iter()
        .map(|r| Location {
            hash: r.get(1),
            shardid: r.get(2),
            group: r.get(3),
            port: r.get::<_, i32>(4) as u16,
        })
        .collect()
}

/// Copy the rows of `info`'s table whose key hashes into [lo, hi] from `src` to `dst`.
async fn copy_rows(src: &Client, dst: &Client, info: &DistInfo, lo: i32, hi: i32) -> u64 {
    let ctx = format!("copy rows of {}", info.qualified);
    let out = src
        .copy_out(&format!(
            "COPY (SELECT * FROM {} WHERE {}({}) BETWEEN {lo} AND {hi}) TO STDOUT",
            info.qualified, info.hash_fn, info.column
        ))
        .await
        .unwrap_or_else(or_panic(&ctx));
    let mut out = std::pin::pin!(out);
    let mut chunks = Vec::new();
    while let Some(chunk) = out.next().await {
        chunks.push(chunk.unwrap_or_else(or_panic(&ctx)));
    }
    let sink = dst
        .copy_in(&format!("COPY {} FROM STDIN", info.qualified))
        .await
        .unwrap_or_else(or_panic(&ctx));
    let mut sink = std::pin::pin!(sink);
    for chunk in chunks {
        sink.send(chunk).await.unwrap_or_else(or_panic(&ctx));
    }
    sink.as_mut().finish().await.unwrap_or_else(or_panic(&ctx))
}

/// The port of node group `g`'s primary, per `pg_dist_node`.
async fn catalog_group_port(c: &Client, g: i32) -> u16 {
    let r = c
        .query_one(
            "SELECT nodeport FROM pg_dist_node WHERE groupid = $1 AND noderole = 'primary'",
            &[&g],
        )
        .await
        .unwrap_or_else(or_panic(&format!("pg_dist_node group {g}")));
    u16::try_from(r.get::<_, i32>(0)).expect("nodeport")
}

async fn key_counts(c: &Client, sql: &str) -> Result<BTreeMap<String, i64>, String> {
    Ok(c.query(sql, &[])
        .await
        .map_err(|e| db_err(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn digest(c: &Client, sql: &str) -> Result<(i64, String), String> {
    let r = c.query_one(sql, &[]).await.map_err(|e| db_err(&e))?;
    Ok((r.get(0), r.get(1)))
}

fn app_url(server: &PgServer) -> String {
    server.url("app", "secret", "app")
}

async fn app_connect_url(url: &str) -> Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", db_err(&e)))
}

/// A tokio-postgres error with the server's message, detail and position when it has them.
pub fn db_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} ({}){}{}",
            db.severity(),
            db.message(),
            db.code().code(),
            db.detail()
                .map(|d| format!("; detail: {d}"))
                .unwrap_or_default(),
            db.position()
                .map(|p| format!("; position: {p:?}"))
                .unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// A `unwrap_or_else` handler that panics with `what` and the server's message.
fn or_panic<T>(what: &str) -> impl FnOnce(tokio_postgres::Error) -> T {
    let what = what.to_string();
    move |e| panic!("{what}: {}", db_err(&e))
}

/// Run a future to completion on a private current-thread runtime in a scoped thread,
/// so that synchronous helpers work both outside and inside a tokio runtime.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        join(s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build tokio runtime")
                .block_on(fut)
        }))
    })
}

/// Join a scoped thread, re-raising its panic with the original message.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Wait until pgtenant logged that it loaded the shard map.
pub fn wait_for_shard_map(p: &super::Pgtenant) {
    p.wait_for_log("shard map loaded", Duration::from_secs(30));
}
