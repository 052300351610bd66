//! Citus metadata: which node owns tenant X of table T.
//!
//! - [`hash`]: PostgreSQL-identical 32-bit hash functions of the distribution column types.
//! - [`catalog`]: the tables pgtenant knows (distribution column, type, colocation group).
//! - `shard_map` (loader, refresher): shard ranges and placements, swapped whole (arc-swap).
pub mod catalog;
pub mod cluster;
pub mod hash;
mod refresher;
pub mod shard_map;

pub use catalog::{Catalog, DistType, TableInfo, TableKind, Tables};
pub use cluster::{Cluster, ClusterKey};
pub use refresher::spawn_refresher;
pub use shard_map::{ShardMap, ShardMapHandle};
