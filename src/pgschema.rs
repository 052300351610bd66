//! pgtenant's own schema `pgtenant` on a coordinator: what the blue-green homes store
//! (`bluegreen::store`, on green's coordinator) and the run-time tenant limits
//! (`limits::store`, on the upstream's) share.
//!
//! Rules:
//! - Values are sent as quoted literals built by [`lit`] (a name or a tenant value never
//!   reads as SQL): statements that must be one transaction are sent as one simple Query
//!   and run with [`run`], which rolls back whatever a failure left open.
//! - Every creation of the schema or of one of its tables takes [`LOCK`] exclusively in
//!   its transaction (`CREATE … IF NOT EXISTS` is not safe against a concurrent creation):
//!   instances starting together, or one creating the homes while another creates the
//!   limits, never race.
use crate::backend::{BackendError, ServerConn};

/// The advisory lock key of pgtenant's schema (`hashtext('pgtenant.tenant_homes')` would
/// do; a constant is simpler to find in pg_locks). The homes' lease renewals also take it
/// shared and their flips exclusively (`bluegreen::store`).
pub const LOCK: i64 = 0x7067_7465_6e61_6e74; // "pgtenant"

/// One transaction that creates the schema and then what `ddl` creates (`CREATE … IF NOT
/// EXISTS` statements), under [`LOCK`].
pub fn create_sql(ddl: &str) -> String {
    format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock({LOCK});\nCREATE SCHEMA IF NOT EXISTS pgtenant;\n{ddl}\nCOMMIT;"
    )
}

/// A string as an SQL literal: `'…'` with quotes doubled, `E'…'` when it holds a
/// backslash (then doubled too), so it reads the same whatever standard_conforming_strings
/// says.
pub fn lit(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// A server's first error, or the connection's, as one line.
pub fn error_text(e: &BackendError) -> String {
    match e {
        BackendError::Server(f) => format!("{} ({})", f.message, f.code),
        e => e.to_string(),
    }
}

/// Is this the server's "relation does not exist" (the schema or table not created yet)?
pub fn is_undefined_table(e: &BackendError) -> bool {
    matches!(e, BackendError::Server(f) if f.code == "42P01" || f.code == "3F000")
}

/// Run `sql` (one simple Query); on failure roll back whatever it left open.
pub async fn run(c: &mut ServerConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, BackendError> {
    let r = c.query_rows(sql).await;
    if r.is_err() && c.tx_status != b'I' {
        c.query_rows("ROLLBACK").await?;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_end_early() {
        assert_eq!(lit("app"), "'app'");
        assert_eq!(lit("o'brien"), "'o''brien'");
        assert_eq!(lit("a\\'; DROP"), "E'a\\\\''; DROP'");
    }
}
