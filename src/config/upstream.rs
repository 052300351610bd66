//! The upstream URL: `postgres://user:password@host:port/database`.

use url::{Host, Url};

/// The server pgtenant pools connections to, and the login it accepts from clients.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// A host name or an IP address; IPv6 addresses are kept without brackets so that
    /// `(host, port)` can be handed straight to a socket connect.
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

/// Default PostgreSQL port, as in libpq.
const DEFAULT_PORT: u16 = 5432;

impl Upstream {
    /// The URL with the password replaced, safe for logs.
    pub fn redacted(&self) -> String {
        let pw = if self.password.is_some() { ":***" } else { "" };
        format!(
            "postgres://{}{}@{}:{}/{}",
            self.user,
            pw,
            self.host_for_url(),
            self.port,
            self.database
        )
    }

    /// The host as it is written in a URL or `host:port` pair: IPv6 gets its brackets back.
    pub fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// Parse a `postgres://` or `postgresql://` URL. Port defaults to 5432, database to the
    /// user name (as libpq does). User, password and database are percent-decoded, so a
    /// password may hold `@`, `:` or `/` when written as `%40`, `%3A`, `%2F`.
    ///
    /// Error strings never contain the password.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty URL; expected postgres://user:password@host:port/database".into());
        }
        // The url crate's own messages are terse ("relative URL without a base") and may
        // not say what was expected, so wrap them. Never echo the input: it holds a secret.
        let url = Url::parse(s).map_err(|e| match e {
            url::ParseError::EmptyHost => {
                "missing host; expected postgres://user:password@host:port/database".to_string()
            }
            url::ParseError::InvalidPort => {
                "invalid port; expected a number from 1 to 65535".to_string()
            }
            e => format!(
                "not a valid URL ({e}); expected postgres://user:password@host:port/database"
            ),
        })?;
        match url.scheme() {
            "postgres" | "postgresql" => {}
            other => {
                return Err(format!(
                    "unsupported scheme '{other}'; expected postgres:// or postgresql://"
                ))
            }
        }

        let host = match url.host() {
            Some(Host::Domain(d)) => decode(d, "host")?,
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => {
                return Err(
                    "missing host; expected postgres://user:password@host:port/database".into(),
                )
            }
        };
        if host.is_empty() {
            return Err(
                "missing host; expected postgres://user:password@host:port/database".into(),
            );
        }
        if host.contains(',') {
            return Err("several hosts are not supported; give one host".into());
        }

        let user = decode(url.username(), "user name")?;
        if user.is_empty() {
            return Err(
                "missing user name; expected postgres://user:password@host:port/database".into(),
            );
        }
        let password = match url.password() {
            Some(p) => Some(decode(p, "password")?),
            None => None,
        };

        let port = url.port().unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err("port 0 is not a valid server port".into());
        }

        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        if path.contains('/') {
            return Err("the database name may not contain '/' (write it as %2F)".into());
        }
        let database = match decode(path, "database name")? {
            d if d.is_empty() => user.clone(),
            d => d,
        };

        // Silently ignoring `?sslmode=require` would connect in plain text against the
        // operator's intent, so query parameters are refused; TLS has its own settings.
        if url.query().is_some_and(|q| !q.is_empty()) {
            return Err("query parameters (e.g. ?sslmode=) are not supported in the upstream URL; use the server_tls setting".into());
        }
        if url.fragment().is_some() {
            return Err(
                "unexpected '#' fragment in the upstream URL (write '#' in a password as %23)"
                    .into(),
            );
        }

        Ok(Upstream {
            host,
            port,
            user,
            password,
            database,
        })
    }
}

/// Percent-decode one URL component into UTF-8.
fn decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = percent_decode(s).ok_or_else(|| format!("bad percent-encoding in the {what}"))?;
    String::from_utf8(bytes)
        .map_err(|_| format!("the {what} is not valid UTF-8 after percent-decoding"))
}

/// `%XX` decoding; None on a truncated or non-hex escape. (url does not expose a decoder
/// and percent-encoding is not a direct dependency; this is ten lines.)
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u = Upstream::parse("postgres://app:secret@db.example:6543/appdb").unwrap();
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, 6543);
        assert_eq!(u.user, "app");
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.database, "appdb");
    }

    #[test]
    fn postgresql_scheme_and_defaults() {
        let u = Upstream::parse("postgresql://bob@localhost").unwrap();
        assert_eq!(u.port, 5432);
        assert_eq!(u.database, "bob");
        assert_eq!(u.password, None);
        let u = Upstream::parse("postgres://bob@localhost/").unwrap();
        assert_eq!(u.database, "bob");
    }

    #[test]
    fn percent_decoding() {
        let u = Upstream::parse("postgres://us%40er:p%40ss%3Aw%2Frd%23@h/my%20db").unwrap();
        assert_eq!(u.user, "us@er");
        assert_eq!(u.password.as_deref(), Some("p@ss:w/rd#"));
        assert_eq!(u.database, "my db");
    }

    #[test]
    fn ipv6_and_ipv4() {
        let u = Upstream::parse("postgres://a:b@[::1]:5433/d").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5433);
        assert_eq!(u.redacted(), "postgres://a:***@[::1]:5433/d");
        let u = Upstream::parse("postgres://a@127.0.0.1/d").unwrap();
        assert_eq!(u.host, "127.0.0.1");
    }

    #[test]
    fn errors_are_clear_and_never_show_the_password() {
        let cases = [
            ("", "empty URL"),
            ("mysql://a:hunter2@h/d", "unsupported scheme 'mysql'"),
            ("postgres://:hunter2@h/d", "missing user name"),
            ("postgres://a:hunter2@/d", "missing host"),
            ("postgres://a:hunter2@h:99999/d", "invalid port"),
            ("postgres://a:hunter2@h/d/e", "may not contain '/'"),
            (
                "postgres://a:hunter2@h/d?sslmode=require",
                "query parameters",
            ),
            (
                "postgres://a:hunter%zz@h/d",
                "bad percent-encoding in the password",
            ),
            ("postgres://a:%ff@h/d", "not valid UTF-8"),
            ("not a url hunter2", "not a valid URL"),
            ("postgres://a:hunter2@h1,h2/d", "several hosts"),
        ];
        for (input, want) in cases {
            let err = Upstream::parse(input).unwrap_err();
            assert!(err.contains(want), "{input:?}: got {err:?}, want {want:?}");
            assert!(
                !err.contains("hunter2"),
                "{input:?}: error leaks the password: {err}"
            );
        }
    }

    #[test]
    fn debug_redacts() {
        let u = Upstream::parse("postgres://app:secret@h/d").unwrap();
        let dbg = format!("{u:?}");
        assert!(!dbg.contains("secret"));
        assert!(dbg.contains("***"));
    }
}

#[cfg(test)]
mod unix_socket_tests {
    use super::*;

    #[test]
    fn a_socket_directory_as_host() {
        let u = Upstream::parse("postgres://app:pw@%2Fvar%2Frun%2Fpostgresql:5433/app").unwrap();
        assert_eq!(u.host, "/var/run/postgresql");
        assert_eq!(u.port, 5433);
    }
}
