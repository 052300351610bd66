//! The router's view of the schema: for each table Citus knows, how it is distributed.
//! Built from the coordinator's metadata by the shard-map loader; the router only reads it.
use std::collections::HashMap;

/// The type of a distribution column, as far as hashing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DistType {
    Int2,
    Int4,
    Int8,
    Text,
    Varchar,
    Bpchar,
    Uuid,
    /// Any other type (by OID): statements on it go to the coordinator.
    Other(u32),
}

impl DistType {
    /// From a PostgreSQL type OID.
    pub fn from_oid(oid: u32) -> DistType {
        match oid {
            21 => DistType::Int2,
            23 => DistType::Int4,
            20 => DistType::Int8,
            25 => DistType::Text,
            1043 => DistType::Varchar,
            1042 => DistType::Bpchar,
            2950 => DistType::Uuid,
            o => DistType::Other(o),
        }
    }

    /// Can pgtenant hash values of this type?
    pub fn is_hashable(self) -> bool {
        !matches!(self, DistType::Other(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Hash-distributed (`partmethod = 'h'`).
    Distributed,
    /// Reference table or Citus local table (`partmethod = 'n'`): a copy on every node.
    Reference,
}

/// One table Citus knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub kind: TableKind,
    /// Distribution column (lower case as stored); empty for reference tables.
    pub dist_column: String,
    pub dist_type: DistType,
    pub colocation_id: u32,
    /// int/smallint columns whose default calls nextval(): an INSERT that leaves them to
    /// their default must go to the coordinator.
    pub int_sequence_columns: Vec<String>,
}

/// Lookup of tables by (schema, name). Names are matched as PostgreSQL folds them: the
/// router passes identifiers already folded (unquoted → lower case).
pub trait Catalog {
    /// `schema: None` means "not schema-qualified in the statement": resolve it as
    /// search_path would, i.e. `public` (pgtenant does not follow per-client search_path).
    fn table(&self, schema: Option<&str>, name: &str) -> Option<&TableInfo>;
}

/// A simple in-memory catalog (also what the shard map holds).
#[derive(Debug, Clone, Default)]
pub struct Tables {
    by_name: HashMap<(String, String), TableInfo>,
}

impl Tables {
    pub fn new() -> Tables {
        Tables::default()
    }

    pub fn insert(&mut self, t: TableInfo) {
        self.by_name.insert((t.schema.clone(), t.name.clone()), t);
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TableInfo> {
        self.by_name.values()
    }
}

impl Catalog for Tables {
    fn table(&self, schema: Option<&str>, name: &str) -> Option<&TableInfo> {
        self.by_name
            .get(&(schema.unwrap_or("public").to_owned(), name.to_owned()))
    }
}
