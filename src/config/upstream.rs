//! The upstream URL: `postgres://user:password@host:port/database`.

/// The server pgtenant pools connections to, and the login it accepts from clients.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never printed.
        write!(f, "{}", self.redacted())
    }
}

impl Upstream {
    /// The URL with the password replaced, safe for logs.
    pub fn redacted(&self) -> String {
        let pw = if self.password.is_some() { ":***" } else { "" };
        format!("postgres://{}{}@{}:{}/{}", self.user, pw, self.host, self.port, self.database)
    }

    /// Parse a `postgres://` or `postgresql://` URL. Port defaults to 5432, database to the
    /// user name (as libpq does).
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let _ = s;
        Err("not yet implemented".into())
    }
}
