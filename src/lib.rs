//! pgtenant: a tenant-aware, SQL-routing PostgreSQL connection pooler.
//!
//! The way a statement travels:
//! `frontend` (client session) → `router` (pick a node) → `pool` (a server connection)
//! → `backend` (forward, relay, track state) → back to the client.
//! See DESIGN.md for the module map.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod bluegreen;
pub mod citus;
pub mod config;
pub mod context;
pub mod frontend;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod pgschema;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod runtime;
pub mod server;
pub mod sync;
