//! pgtenant: a tenant-aware, SQL-routing PostgreSQL connection pooler.
//!
//! The way a statement travels:
//! `frontend` (client session) → `router` (pick a node) → `pool` (a server connection)
//! → `backend` (forward, relay, track state) → back to the client.
//! See DESIGN.md for the module map.

pub mod auth;
pub mod config;
pub mod logging;
pub mod net;
pub mod protocol;
