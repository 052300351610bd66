//! Text → [`Command`]: case-insensitive keywords, an optional trailing `;`, single-quoted
//! values (`SHOW TENANT 'acme' events`, `SET server_check_query = 'select 1'`).

/// What SHOW HELP lists (PgBouncer's "Console usage"), one line per command form:
/// `A|B` alternatives, `<x>` one argument, `[<x>]` an optional one. [`parse`] accepts
/// exactly these forms (the fuzz target `admin` checks it).
pub const USAGE: &[&str] = &[
    "SHOW HELP|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|SERVERS|CLIENTS|DATABASES|USERS",
    "SHOW CONFIG|LISTS|VERSION|STATE|NODES|ROUTES|PLAN_CACHE|TENANTS|LATENCY",
    "SHOW SHARDS [<table>]",
    "SHOW TENANT <value> [<table>]",
    "SET <key> =|TO <value>",
    "RELOAD",
    "PAUSE [<db>]",
    "RESUME [<db>]",
    "RECONNECT [<db>]",
    "KILL [<db>]",
    "KILL_CLIENT <id>",
    "SUSPEND",
    "SHUTDOWN",
    "WAIT_CLOSE [<db>]",
];

/// What `SHOW x` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Show {
    /// The console usage ([`USAGE`]), as a NOTICE.
    Help,
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Servers,
    Clients,
    Databases,
    Users,
    Config,
    Lists,
    Version,
    State,
    Nodes,
    /// Shard ranges, of one table's colocation group or of all.
    Shards(Option<String>),
    /// Where one tenant value lives, in one table's group or in every group.
    Tenant {
        value: String,
        table: Option<String>,
    },
    Routes,
    PlanCache,
    Tenants,
    Latency,
}

/// One admin console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Reconnect(Option<String>),
    Kill(Option<String>),
    KillClient(u64),
    Suspend,
    Shutdown,
    WaitClose(Option<String>),
    Set {
        key: String,
        value: String,
    },
    /// An empty query string.
    Empty,
}

impl Command {
    /// SHOW commands are open to stats_users; everything else needs admin_users.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Show(_) | Command::Empty)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// PgBouncer's wording, so scripts that match on it keep working.
    #[error("invalid command '{0}', use SHOW HELP;")]
    Invalid(String),
    #[error("bad arguments: {0}")]
    BadArgs(String),
    #[error("unterminated quoted string")]
    Unterminated,
}

/// Split into words; a single-quoted string is one word (quotes removed, `''` → `'`);
/// `=` is a word of its own.
fn tokens(s: &str) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        w.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => w.push(ch),
                    None => return Err(ParseError::Unterminated),
                }
            }
            out.push(w);
        } else if c == '=' {
            chars.next();
            out.push("=".into());
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '=' || ch == '\'' {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

/// A database name argument: unquoted identifiers fold to lower case, as in SQL.
fn ident(w: &str) -> String {
    w.trim_matches('"').to_string()
}

pub fn parse(text: &str) -> Result<Command, ParseError> {
    let trimmed = text.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Ok(Command::Empty);
    }
    let words = tokens(trimmed)?;
    let invalid = || ParseError::Invalid(trimmed.to_string());
    let kw: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let opt_db = |rest: &[String]| -> Result<Option<String>, ParseError> {
        match rest {
            [] => Ok(None),
            [db] => Ok(Some(ident(db))),
            _ => Err(ParseError::BadArgs(trimmed.to_string())),
        }
    };
    let no_args = |rest: &[String], c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::BadArgs(trimmed.to_string()))
        }
    };
    match kw[0].as_str() {
        "show" => {
            let Some(what) = kw.get(1) else {
                return Err(ParseError::BadArgs(trimmed.to_string()));
            };
            let rest = &words[2..];
            let show = match what.as_str() {
                "help" => Show::Help,
                "pools" => Show::Pools,
                "stats" => Show::Stats,
                "stats_totals" => Show::StatsTotals,
                "stats_averages" => Show::StatsAverages,
                "servers" => Show::Servers,
                "clients" => Show::Clients,
                "databases" => Show::Databases,
                "users" => Show::Users,
                "config" => Show::Config,
                "lists" => Show::Lists,
                "version" => Show::Version,
                "state" => Show::State,
                "nodes" => Show::Nodes,
                "routes" => Show::Routes,
                "plan_cache" => Show::PlanCache,
                "tenants" => Show::Tenants,
                "latency" => Show::Latency,
                "shards" => {
                    return match rest {
                        [] => Ok(Command::Show(Show::Shards(None))),
                        [t] => Ok(Command::Show(Show::Shards(Some(ident(t))))),
                        _ => Err(ParseError::BadArgs(trimmed.to_string())),
                    }
                }
                "tenant" => {
                    return match rest {
                        [v] => Ok(Command::Show(Show::Tenant {
                            value: v.clone(),
                            table: None,
                        })),
                        [v, t] => Ok(Command::Show(Show::Tenant {
                            value: v.clone(),
                            table: Some(ident(t)),
                        })),
                        _ => Err(ParseError::BadArgs(
                            "usage: SHOW TENANT <value> [table]".into(),
                        )),
                    }
                }
                _ => return Err(invalid()),
            };
            no_args(rest, Command::Show(show))
        }
        "reload" => no_args(&words[1..], Command::Reload),
        "suspend" => no_args(&words[1..], Command::Suspend),
        "shutdown" => no_args(&words[1..], Command::Shutdown),
        "pause" => opt_db(&words[1..]).map(Command::Pause),
        "resume" => opt_db(&words[1..]).map(Command::Resume),
        "reconnect" => opt_db(&words[1..]).map(Command::Reconnect),
        "kill" => opt_db(&words[1..]).map(Command::Kill),
        "wait_close" => opt_db(&words[1..]).map(Command::WaitClose),
        "kill_client" => match &words[1..] {
            [id] => id
                .parse()
                .map(Command::KillClient)
                .map_err(|_| ParseError::BadArgs(format!("'{id}' is not a client id"))),
            _ => Err(ParseError::BadArgs("usage: KILL_CLIENT <id>".into())),
        },
        "set" => match &words[1..] {
            [key, eq, value] if eq == "=" || eq.eq_ignore_ascii_case("to") => Ok(Command::Set {
                key: key.to_ascii_lowercase(),
                value: value.clone(),
            }),
            _ => Err(ParseError::BadArgs("usage: SET key = value".into())),
        },
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("show pools;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(
            parse("  SHOW Stats_Totals  "),
            Ok(Command::Show(Show::StatsTotals))
        );
        assert_eq!(parse("RELOAD;"), Ok(Command::Reload));
        assert_eq!(parse("kill_client 42"), Ok(Command::KillClient(42)));
        assert_eq!(
            parse("reconnect app"),
            Ok(Command::Reconnect(Some("app".into())))
        );
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(
            parse("set pool_size = 5"),
            Ok(Command::Set {
                key: "pool_size".into(),
                value: "5".into()
            })
        );
        assert_eq!(
            parse("SET server_check_query='select ''x'''"),
            Ok(Command::Set {
                key: "server_check_query".into(),
                value: "select 'x'".into()
            })
        );
        assert_eq!(
            parse("show tenant 'acme' events"),
            Ok(Command::Show(Show::Tenant {
                value: "acme".into(),
                table: Some("events".into())
            }))
        );
        assert_eq!(
            parse("show shards orders"),
            Ok(Command::Show(Show::Shards(Some("orders".into()))))
        );
        assert_eq!(parse(";"), Ok(Command::Empty));
    }

    #[test]
    fn refuses_unknown_and_bad_arguments() {
        assert_eq!(
            parse("frobnicate").unwrap_err().to_string(),
            "invalid command 'frobnicate', use SHOW HELP;"
        );
        assert!(matches!(parse("show nothing"), Err(ParseError::Invalid(_))));
        assert!(matches!(
            parse("show pools extra"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse("kill_client x"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(parse("show tenant"), Err(ParseError::BadArgs(_))));
        assert_eq!(parse("set a = 'b"), Err(ParseError::Unterminated));
        assert!(!parse("reload").unwrap().is_read_only());
        assert!(parse("show pools").unwrap().is_read_only());
    }

    /// The error message points at SHOW HELP: it exists, and every form it lists parses
    /// (found while writing the `admin` fuzz target: SHOW HELP itself was an invalid
    /// command).
    #[test]
    fn show_help_lists_what_parses() {
        assert_eq!(parse("SHOW HELP;"), Ok(Command::Show(Show::Help)));
        assert!(parse("show help").unwrap().is_read_only());
        for line in USAGE {
            let words: Vec<&str> = line.split(' ').collect();
            let alts: Vec<Vec<&str>> = words.iter().map(|w| w.split('|').collect()).collect();
            let n = alts.iter().map(Vec::len).max().unwrap();
            for i in 0..n {
                let text: Vec<&str> = alts
                    .iter()
                    .map(|a| {
                        let w = a[i % a.len()];
                        match w {
                            "<id>" => "7",
                            w if w.starts_with('<') || w.starts_with("[<") => "x",
                            w => w,
                        }
                    })
                    .collect();
                let text = text.join(" ");
                assert!(
                    parse(&text).is_ok(),
                    "{text:?} (from {line:?}) does not parse"
                );
            }
        }
    }
}
