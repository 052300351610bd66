//! The PgBouncer auth file (`userlist.txt`) and the in-memory user store.
//!
//! ```text
//! ; comment
//! "alice" "SCRAM-SHA-256$4096:…"
//! "bob"   "md5…"
//! "carol" "plain ""quoted"" password"
//! ```

use std::collections::HashMap;
use std::path::Path;

use super::{AuthError, Secret};

/// Parse userlist.txt text: `"user" "secret"` per line; `""` inside quotes is a quote;
/// lines starting with `;` or `#` are comments; blank lines are fine; anything after the
/// second field is ignored, as PgBouncer does. Errors name the line, never its content.
pub fn parse_auth_file(text: &str) -> Result<Vec<(String, Secret)>, AuthError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let err = |message| AuthError::AuthFileSyntax {
            line: line_no,
            message,
        };
        let rest = line.trim_start();
        if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
            continue;
        }
        let (user, rest) = quoted(rest).ok_or_else(|| err("expected a quoted user name"))?;
        if user.is_empty() {
            return Err(err("empty user name"));
        }
        let rest = rest.trim_start();
        let (secret, _ignored) = quoted(rest).ok_or_else(|| err("expected a quoted secret"))?;
        out.push((user, Secret::parse(&secret)));
    }
    Ok(out)
}

/// Read `"…"` at the start of `s` (with `""` as an escaped quote); return the unquoted
/// value and what follows the closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            let after = body.get(i + 1..)?;
            if after.starts_with('"') {
                value.push('"');
                chars.next();
            } else {
                return Some((value, after));
            }
        } else {
            value.push(c);
        }
    }
    None // no closing quote
}

/// Read and parse an auth file.
pub fn load_auth_file(path: impl AsRef<Path>) -> Result<Vec<(String, Secret)>, AuthError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::AuthFileIo {
        path: path.to_owned(),
        source,
    })?;
    parse_auth_file(&text).map_err(|e| match e {
        AuthError::AuthFileSyntax { line, message } => AuthError::AuthFileSyntaxAt {
            path: path.to_owned(),
            line,
            message,
        },
        other => other,
    })
}

/// Users and their secrets. Later entries for the same user replace earlier ones.
#[derive(Debug, Clone, Default)]
pub struct UserStore {
    users: HashMap<String, Secret>,
}

impl UserStore {
    pub fn new() -> UserStore {
        UserStore::default()
    }

    /// Add or replace a user's secret.
    pub fn insert(&mut self, user: impl Into<String>, secret: Secret) {
        self.users.insert(user.into(), secret);
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// User names, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}

impl FromIterator<(String, Secret)> for UserStore {
    fn from_iter<I: IntoIterator<Item = (String, Secret)>>(iter: I) -> Self {
        let mut store = UserStore::new();
        store.extend(iter);
        store
    }
}

impl Extend<(String, Secret)> for UserStore {
    fn extend<I: IntoIterator<Item = (String, Secret)>>(&mut self, iter: I) {
        for (user, secret) in iter {
            self.insert(user, secret);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_userlist() {
        let text = "; PgBouncer userlist\n\
                    # another comment\n\
                    \n\
                    \"alice\" \"md56a422f785c9e20873908ce25d1736ae2\"\n\
                    \"bob\"\t\"pa\"\"ss word\" extra fields \"ignored\"\r\n\
                    \x20 \"we\"\"ird\" \"SCRAM-SHA-256$4096:c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
                    \"alice\" \"override\"\n";
        let entries = parse_auth_file(text).expect("parse");
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "alice");
        assert!(matches!(entries[0].1, Secret::Md5(_)));
        assert_eq!(
            entries[1],
            ("bob".to_owned(), Secret::Plain("pa\"ss word".into()))
        );
        assert_eq!(entries[2].0, "we\"ird");
        assert!(matches!(entries[2].1, Secret::Scram(_)));

        let store: UserStore = entries.into_iter().collect();
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("alice"), Some(&Secret::Plain("override".into())));
        assert!(store.get("nobody").is_none());
    }

    #[test]
    fn empty_secret_and_file() {
        assert!(parse_auth_file("").expect("empty").is_empty());
        let e = parse_auth_file("\"u\" \"\"").expect("parse");
        assert_eq!(e, vec![("u".to_owned(), Secret::Plain(String::new()))]);
    }

    #[test]
    fn errors_name_the_line_not_the_secret() {
        for (text, line) in [
            ("\"ok\" \"x\"\nalice \"hunter2\"", 2),
            ("\"alice\" hunter2", 1),
            ("\n\n\"alice\" \"hunter2", 3),
            ("\"alice", 1),
            ("\"alice\"", 1),
            ("\"\" \"hunter2\"", 1),
        ] {
            match parse_auth_file(text) {
                Err(e @ AuthError::AuthFileSyntax { line: l, .. }) => {
                    assert_eq!(l, line, "{text}");
                    assert!(!e.to_string().contains("hunter2"));
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn load_from_disk() {
        let dir = std::env::temp_dir().join(format!("pgtenant-authfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let good = dir.join("userlist.txt");
        std::fs::write(&good, "\"app\" \"secret\"\n").expect("write");
        let entries = load_auth_file(&good).expect("load");
        assert_eq!(
            entries,
            vec![("app".to_owned(), Secret::Plain("secret".into()))]
        );
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "\n\"app\" secret\n").expect("write");
        let e = load_auth_file(&bad).expect_err("bad");
        let msg = e.to_string();
        assert!(msg.contains("bad.txt") && msg.contains("line 2"), "{msg}");
        let e = load_auth_file(dir.join("missing.txt")).expect_err("missing");
        assert!(e.to_string().contains("missing.txt"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
