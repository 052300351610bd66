//! Every integration test of pgtenant, in one test binary: `cargo test --test it`.
//!
//! Each file here is a module of its own (`admin`, `routing`, …) holding the tests of
//! one area; select them by name, e.g. `cargo test --test it routing::` or
//! `cargo test --test it -- --exact django::requirements_are_pinned`. One binary instead
//! of one per file: the shared harness (`tests/support`, used by every file) and the
//! dependencies are compiled and linked once instead of thirty times, the PostgreSQL
//! template is made once per run, and the test threads keep busy across files instead
//! of waiting for the slowest test of each file.
//!
//! A new file here needs a `mod` line below (and `use crate::support;` in the file). A
//! file directly in `tests/` (with `mod support;`) still builds as a test binary of its
//! own.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod auth;
mod auth_query;
mod backend_pid;
mod bluegreen;
mod cancel;
mod citus_cluster;
mod cli;
mod databases;
mod django;
mod django_multitenant;
mod driver_suite;
mod failures;
mod fidelity;
mod harness_smoke;
mod hash;
mod hba;
mod io_engine;
mod isolation;
mod lifecycle;
mod listen;
mod login_limits;
mod memory;
mod metrics;
mod parking;
mod pgbouncer_ini;
mod pipelining;
mod pipelining_attack;
mod pooling;
mod protocol;
mod read_spread;
mod routing;
mod routing_smoke;
mod scale;
mod schema_change;
mod server_lost;
mod session_drop;
mod session_state;
mod startup_settings;
mod tenant_activity;
mod tenant_limits;
mod tenant_limits_attack;
mod tenant_limits_store;
mod tls;
mod unix_socket;
mod unnamed_statement;
