//! `pgtenant migrate …`: the command line's way to a cutover. It sends `MIGRATE …` (or
//! `SHOW MIGRATION`) to a running instance's admin console and prints the answer, so a
//! cutover from the command line is the very same as one from `psql`.
use crate::auth::{Secret, ServerCredential};
use crate::backend::{BackendError, ConnectParams};
use crate::config::{ServerTls, Upstream};
use crate::protocol::{ErrorFields, Reader};

/// Run `command` on the admin console at `url` (`postgres://user:password@host:port/pgtenant`)
/// and return what to print: the columns and rows as `name: value` blocks, and notices.
pub async fn run(url: &str, command: &str) -> Result<String, String> {
    let u = Upstream::parse(url).map_err(|e| format!("--admin: {e}"))?;
    let credential = u
        .password
        .as_deref()
        .and_then(|p| ServerCredential::from_secret(&Secret::parse(p), &u.user, None));
    let params = ConnectParams {
        host: u.host.clone(),
        port: u.port,
        user: u.user.clone(),
        database: u.database.clone(),
        credential,
        tls_mode: ServerTls::Disable,
        tls: None,
        connect_timeout: std::time::Duration::from_secs(10),
        max_message: 64 << 20,
        startup: vec![("application_name".into(), "pgtenant migrate".into())],
        keepalive: None,
    };
    let mut c = crate::backend::connect(&params).await.map_err(|e| {
        format!(
            "connecting to the admin console at {}:{}: {e}",
            u.host, u.port
        )
    })?;
    let err = |e: BackendError| e.to_string();
    c.conn
        .send(&crate::protocol::build::query(command))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut columns: Vec<String> = Vec::new();
    let mut failed = None;
    loop {
        let f = c
            .conn
            .read_frame()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| err(BackendError::Closed))?;
        match f.tag() {
            b'T' => {
                let mut r = Reader::new(f.body(), "RowDescription");
                let n = r.i16().map_err(|e| e.to_string())?;
                columns.clear();
                for _ in 0..n {
                    columns.push(r.cstr().map_err(|e| e.to_string())?.to_string());
                    r.bytes(18).map_err(|e| e.to_string())?;
                }
            }
            b'D' => {
                let row = crate::backend::data_row(f.body()).map_err(|e| e.to_string())?;
                for (i, v) in row.into_iter().enumerate() {
                    let name = columns.get(i).map(String::as_str).unwrap_or("?");
                    out.push_str(&format!("{name}: {}\n", v.unwrap_or_default()));
                }
                out.push('\n');
            }
            b'N' => {
                if let Ok(e) = ErrorFields::parse(f.body()) {
                    out.push_str(&format!("NOTICE: {}\n", e.message));
                }
            }
            b'E' => failed = ErrorFields::parse(f.body()).ok(),
            b'Z' => break,
            _ => {}
        }
    }
    c.terminate();
    match failed {
        Some(e) => Err(format!("ERROR: {} ({})", e.message, e.code)),
        None => Ok(out),
    }
}
