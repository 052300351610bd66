//! Text → [`Command`]: case-insensitive keywords, an optional trailing `;`, single-quoted
//! values (`SHOW TENANT 'acme' events`, `SET server_check_query = 'select 1'`).

/// What SHOW HELP lists (PgBouncer's "Console usage"), one line per command form:
/// `A|B` alternatives, `<x>` one argument, `[…]` optional words (`[<x>]`, `[TABLE <t>]`). [`parse`] accepts
/// exactly these forms (the fuzz target `admin` checks it).
pub const USAGE: &[&str] = &[
    "SHOW HELP|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|SERVERS|CLIENTS|DATABASES|USERS",
    "SHOW CONFIG|LISTS|VERSION|STATE|NODES|ROUTES|PLAN_CACHE|TENANTS|LATENCY",
    "SHOW SHARDS [<table>]",
    "SHOW TENANT <value> [<table>]",
    "SHOW TENANT ACTIVITY <value> [TABLE <table>]",
    "SHOW QUIET TENANTS [TABLE <table>] [WINDOW <window>] [LIMIT <n>]",
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
    "MIGRATE TENANT <values> [TABLE <table>] TO green|blue [TIMEOUT <duration>] [WAIT SYNC] [DATABASE <db>]",
    "SHOW MIGRATION",
    "SHOW TENANT LIMITS",
    "SET TENANT <value> <key> = <limit> [, <key> = <limit>] [, <key> = <limit>]",
    "RESET TENANT <value> [<key>]",
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
    /// One tenant's transactions over the last 1 m, 1 h, 24 h (`show_activity.rs`).
    TenantActivity {
        value: String,
        table: Option<String>,
    },
    /// The least active tenants of a table's colocation group over a window.
    QuietTenants(Quiet),
    Routes,
    PlanCache,
    Tenants,
    Latency,
    /// Blue-green: tenants outside their default home, cutovers, this instance's lease.
    Migration,
    /// Per-tenant limits: the defaults, and every tenant's override (configured or set at
    /// run time).
    TenantLimits,
}

/// SHOW QUIET TENANTS' options (each at most once, in any order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quiet {
    pub table: Option<String>,
    pub window: crate::metrics::activity::Window,
    pub limit: usize,
}

/// SHOW QUIET TENANTS' LIMIT when none is given, and the largest accepted.
pub const QUIET_LIMIT: usize = 100;
pub const QUIET_LIMIT_MAX: usize = 100_000;

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
    /// Blue-green cutover of one tenant or a list (`bluegreen::cutover`).
    Migrate(Migrate),
    /// `SET TENANT` / `RESET TENANT`: a change to a tenant's run-time limits, written to
    /// the store every instance reads (`limits::store`).
    TenantLimit(crate::limits::store::Change),
    /// An empty query string.
    Empty,
}

impl Command {
    /// SHOW commands are open to stats_users; everything else needs admin_users. SHOW
    /// QUIET TENANTS too: it scans a distributed table on the coordinator (as the
    /// upstream's user, for minutes) and lists its raw distribution values, which is
    /// neither a counter nor cheap.
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Show(Show::QuietTenants(_)) => false,
            Command::Show(_) | Command::Empty => true,
            _ => false,
        }
    }
}

/// `MIGRATE TENANT 42,43 [TABLE orders] TO green [TIMEOUT 5s] [WAIT SYNC] [DATABASE app]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrate {
    /// The tenant values, in order (one word, split at commas).
    pub values: Vec<String>,
    pub table: Option<String>,
    pub to: crate::config::Home,
    /// None: the default (5 s per phase).
    pub timeout: Option<std::time::Duration>,
    pub wait_sync: bool,
    /// None: the only blue-green entry.
    pub database: Option<String>,
}

/// Most tenants one MIGRATE may list.
pub const MIGRATE_MAX_VALUES: usize = 1000;

/// `5s`, `500ms`, `2m`, or a number of seconds; from 100 ms to 1 h.
fn duration(w: &str) -> Result<std::time::Duration, ParseError> {
    let w = w.to_ascii_lowercase();
    let (num, scale) = if let Some(n) = w.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = w.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = w.strip_suffix('m') {
        (n, 60.0)
    } else {
        (w.as_str(), 1.0)
    };
    let secs = num
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|s| (0.1..=3600.0).contains(s))
        .ok_or_else(|| {
            ParseError::BadArgs(format!(
                "TIMEOUT '{w}': expected a duration from 100ms to 1h such as 5s, 500ms or 2m"
            ))
        })?;
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The words after `MIGRATE`.
fn migrate(words: &[String]) -> Result<Command, ParseError> {
    const USAGE_MIGRATE: &str = "usage: MIGRATE TENANT <value>[,<value>…] [TABLE <table>] TO green|blue [TIMEOUT <duration>] [WAIT SYNC] [DATABASE <db>]";
    let bad = || ParseError::BadArgs(USAGE_MIGRATE.into());
    let kw = |i: usize| words.get(i).map(|w| w.to_ascii_lowercase());
    if kw(0).as_deref() != Some("tenant") {
        return Err(bad());
    }
    let values: Vec<String> = words
        .get(1)
        .ok_or_else(bad)?
        .split(',')
        .map(|v| v.trim().to_string())
        .collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(ParseError::BadArgs(
            "MIGRATE TENANT: an empty tenant value in the list".into(),
        ));
    }
    if values.len() > MIGRATE_MAX_VALUES {
        return Err(ParseError::BadArgs(format!(
            "MIGRATE TENANT: at most {MIGRATE_MAX_VALUES} tenants at once"
        )));
    }
    let mut i = 2;
    let mut table = None;
    if kw(i).as_deref() == Some("table") {
        table = Some(ident(words.get(i + 1).ok_or_else(bad)?));
        i += 2;
    }
    if kw(i).as_deref() != Some("to") {
        return Err(bad());
    }
    let to = kw(i + 1)
        .as_deref()
        .and_then(crate::config::Home::parse)
        .ok_or_else(bad)?;
    i += 2;
    let mut timeout = None;
    if kw(i).as_deref() == Some("timeout") {
        timeout = Some(duration(words.get(i + 1).ok_or_else(bad)?)?);
        i += 2;
    }
    let mut wait_sync = false;
    if kw(i).as_deref() == Some("wait") {
        if kw(i + 1).as_deref() != Some("sync") {
            return Err(bad());
        }
        wait_sync = true;
        i += 2;
    }
    let mut database = None;
    if kw(i).as_deref() == Some("database") {
        database = Some(ident(words.get(i + 1).ok_or_else(bad)?));
        i += 2;
    }
    if i != words.len() {
        return Err(bad());
    }
    Ok(Command::Migrate(Migrate {
        values,
        table,
        to,
        timeout,
        wait_sync,
        database,
    }))
}

const USAGE_SET_TENANT: &str = "usage: SET TENANT <value> <key> = <limit> [, <key> = <limit> …] \
     (keys max_active, max_tps, statement_timeout; <key> = default resets one)";

/// The words after `SET TENANT`: a tenant value (quoted or not), then `key = value` pairs
/// separated by commas (outside quotes; `8,max_tps` is two words), each key at most once.
fn set_tenant(words: &[String], quoted: &[bool]) -> Result<Command, ParseError> {
    use crate::limits::store::{tenant_value, Assign, Change};
    let bad = || ParseError::BadArgs(USAGE_SET_TENANT.into());
    let Some(value) = words.first() else {
        return Err(bad());
    };
    let tenant =
        tenant_value(value).map_err(|e| ParseError::BadArgs(format!("SET TENANT: {e}")))?;
    /// A word, `=` or `,`.
    #[derive(PartialEq)]
    enum Tok<'a> {
        Word(&'a str),
        Eq,
        Comma,
    }
    let mut toks = Vec::new();
    for (w, q) in words[1..].iter().zip(&quoted[1..]) {
        if *q {
            toks.push(Tok::Word(w));
        } else if w == "=" {
            toks.push(Tok::Eq);
        } else {
            for (i, piece) in w.split(',').enumerate() {
                if i > 0 {
                    toks.push(Tok::Comma);
                }
                if !piece.is_empty() {
                    toks.push(Tok::Word(piece));
                }
            }
        }
    }
    let mut assigns: Vec<Assign> = Vec::new();
    let mut it = toks.into_iter();
    loop {
        let (Some(Tok::Word(k)), Some(Tok::Eq), Some(Tok::Word(v))) =
            (it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let a = Assign::parse(k, v)
            .map_err(|e| ParseError::BadArgs(format!("SET TENANT {tenant}: {e}")))?;
        if assigns.iter().any(|b| b.key == a.key) {
            return Err(ParseError::BadArgs(format!(
                "SET TENANT {tenant}: {} given twice",
                a.key.name()
            )));
        }
        assigns.push(a);
        match it.next() {
            None => break,
            Some(Tok::Comma) => {}
            Some(_) => return Err(bad()),
        }
    }
    Ok(Command::TenantLimit(Change::Set { tenant, assigns }))
}

/// The words after `RESET`: `TENANT <value> [<key>]`.
fn reset_tenant(words: &[String], quoted: &[bool]) -> Result<Command, ParseError> {
    use crate::limits::store::{tenant_value, Change, Key};
    let bad = || ParseError::BadArgs("usage: RESET TENANT <value> [<key>]".into());
    if !words
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("tenant"))
        || quoted[0]
    {
        return Err(bad());
    }
    let (value, key) = match &words[1..] {
        [v] => (v, None),
        [v, k] => (v, Some(k)),
        _ => return Err(bad()),
    };
    let tenant =
        tenant_value(value).map_err(|e| ParseError::BadArgs(format!("RESET TENANT: {e}")))?;
    let key = key
        .map(|k| Key::parse(k))
        .transpose()
        .map_err(|e| ParseError::BadArgs(format!("RESET TENANT {tenant}: {e}")))?;
    Ok(Command::TenantLimit(Change::Reset { tenant, key }))
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
/// `=` is a word of its own. Also which words were quoted (a quoted word is never a
/// keyword).
fn tokens(s: &str) -> Result<(Vec<String>, Vec<bool>), ParseError> {
    let mut out = Vec::new();
    let mut quoted = Vec::new();
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
            quoted.push(true);
        } else if c == '=' {
            chars.next();
            out.push("=".into());
            quoted.push(false);
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
            quoted.push(false);
        }
    }
    Ok((out, quoted))
}

/// `SHOW QUIET TENANTS` options after its keywords.
fn quiet(rest: &[String]) -> Result<Quiet, ParseError> {
    let usage = || {
        ParseError::BadArgs(
            "usage: SHOW QUIET TENANTS [TABLE <table>] [WINDOW <window>] [LIMIT <n>]".into(),
        )
    };
    let mut q = Quiet {
        table: None,
        window: crate::metrics::activity::Window::Hours(24),
        limit: QUIET_LIMIT,
    };
    let mut seen = Vec::new();
    for pair in rest.chunks(2) {
        let [k, v] = pair else {
            return Err(usage());
        };
        let k = k.to_ascii_lowercase();
        if seen.contains(&k) {
            return Err(usage());
        }
        match k.as_str() {
            "table" => q.table = Some(ident(v)),
            "window" => {
                q.window = crate::metrics::activity::Window::parse(v).ok_or_else(|| {
                    ParseError::BadArgs(format!(
                        "window '{v}': 1m to 60m (minutes) or 1h to 24h (hours)"
                    ))
                })?
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=QUIET_LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        ParseError::BadArgs(format!("limit '{v}': 1 to {QUIET_LIMIT_MAX}"))
                    })?
            }
            _ => return Err(usage()),
        }
        seen.push(k);
    }
    Ok(q)
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
    let (words, quoted) = tokens(trimmed)?;
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
                "migration" => Show::Migration,
                "shards" => {
                    return match rest {
                        [] => Ok(Command::Show(Show::Shards(None))),
                        [t] => Ok(Command::Show(Show::Shards(Some(ident(t))))),
                        _ => Err(ParseError::BadArgs(trimmed.to_string())),
                    }
                }
                "tenant"
                    if rest.len() >= 2
                        && rest[0].eq_ignore_ascii_case("activity")
                        && !quoted[2] =>
                {
                    return match &rest[1..] {
                        [v] => Ok(Command::Show(Show::TenantActivity {
                            value: v.clone(),
                            table: None,
                        })),
                        [v, kw, t] if kw.eq_ignore_ascii_case("table") => {
                            Ok(Command::Show(Show::TenantActivity {
                                value: v.clone(),
                                table: Some(ident(t)),
                            }))
                        }
                        _ => Err(ParseError::BadArgs(
                            "usage: SHOW TENANT ACTIVITY <value> [TABLE <table>]".into(),
                        )),
                    };
                }
                "tenant" if rest.len() == 1 && kw[2] == "limits" && !quoted[2] => {
                    return Ok(Command::Show(Show::TenantLimits));
                }
                "quiet" if kw.get(2).is_some_and(|w| w == "tenants") => {
                    return quiet(&words[3..]).map(|q| Command::Show(Show::QuietTenants(q)));
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
        "migrate" => migrate(&words[1..]),
        "kill_client" => match &words[1..] {
            [id] => id
                .parse()
                .map(Command::KillClient)
                .map_err(|_| ParseError::BadArgs(format!("'{id}' is not a client id"))),
            _ => Err(ParseError::BadArgs("usage: KILL_CLIENT <id>".into())),
        },
        // `SET tenant = x` is the generic SET (of a setting that does not exist).
        "set"
            if kw.get(1).is_some_and(|w| w == "tenant")
                && !quoted[1]
                && !(words.len() == 4 && !quoted[2] && (kw[2] == "=" || kw[2] == "to")) =>
        {
            set_tenant(&words[2..], &quoted[2..])
        }
        "reset" => reset_tenant(&words[1..], &quoted[1..]),
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
        assert_eq!(parse("show migration"), Ok(Command::Show(Show::Migration)));
        assert_eq!(
            parse(
                "MIGRATE TENANT 42,43 TABLE orders TO Green TIMEOUT 2500ms WAIT SYNC DATABASE app;"
            ),
            Ok(Command::Migrate(Migrate {
                values: vec!["42".into(), "43".into()],
                table: Some("orders".into()),
                to: crate::config::Home::Green,
                timeout: Some(std::time::Duration::from_millis(2500)),
                wait_sync: true,
                database: Some("app".into()),
            }))
        );
        assert_eq!(
            parse("migrate tenant 'a b' to blue"),
            Ok(Command::Migrate(Migrate {
                values: vec!["a b".into()],
                table: None,
                to: crate::config::Home::Blue,
                timeout: None,
                wait_sync: false,
                database: None,
            }))
        );
        assert!(!parse("migrate tenant 1 to green").unwrap().is_read_only());
    }

    #[test]
    fn migrate_refuses_what_it_cannot_read() {
        for bad in [
            "migrate",
            "migrate tenant",
            "migrate tenant 42",
            "migrate tenant 42 to purple",
            "migrate tenant 42 to green timeout",
            "migrate tenant 42 to green timeout 0s",
            "migrate tenant 42 to green timeout 2h",
            "migrate tenant 42 to green timeout soon",
            "migrate tenant 42 to green wait",
            "migrate tenant 42 to green wait later",
            "migrate tenant 42 to green database",
            "migrate tenant 42 to green database app extra",
            "migrate tenant 42 to green wait sync timeout 5s",
            "migrate tenant 42,,43 to green",
            "migrate tenant 42 table to green",
            "migrate tenants 42 to green",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::BadArgs(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        let many = (0..=MIGRATE_MAX_VALUES)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse(&format!("migrate tenant {many} to green")).is_err());
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

    #[test]
    fn parses_tenant_activity_and_quiet_tenants() {
        use crate::metrics::activity::Window;
        let activity = |value: &str, table: Option<&str>| {
            Ok(Command::Show(Show::TenantActivity {
                value: value.into(),
                table: table.map(Into::into),
            }))
        };
        assert_eq!(parse("SHOW TENANT ACTIVITY 42"), activity("42", None));
        assert_eq!(
            parse("show tenant activity 'acme' table events;"),
            activity("acme", Some("events"))
        );
        assert_eq!(
            parse("show tenant Activity 7 TABLE \"Orders\""),
            activity("7", Some("Orders"))
        );
        // A quoted 'activity' is a tenant value: SHOW TENANT's own form.
        assert_eq!(
            parse("show tenant 'activity' events"),
            Ok(Command::Show(Show::Tenant {
                value: "activity".into(),
                table: Some("events".into())
            }))
        );
        assert_eq!(
            parse("show tenant activity"),
            Ok(Command::Show(Show::Tenant {
                value: "activity".into(),
                table: None
            }))
        );
        for bad in [
            "show tenant activity 42 events",
            "show tenant activity 42 table",
            "show tenant activity 42 table a b",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::BadArgs(_))), "{bad}");
        }

        let quiet = |table: Option<&str>, window, limit| {
            Ok(Command::Show(Show::QuietTenants(Quiet {
                table: table.map(Into::into),
                window,
                limit,
            })))
        };
        assert_eq!(
            parse("SHOW QUIET TENANTS"),
            quiet(None, Window::Hours(24), QUIET_LIMIT)
        );
        assert_eq!(
            parse("show quiet tenants limit 10 table orders window 5m;"),
            quiet(Some("orders"), Window::Minutes(5), 10)
        );
        assert_eq!(
            parse("show quiet tenants WINDOW '1h'"),
            quiet(None, Window::Minutes(60), QUIET_LIMIT)
        );
        // It reads a table on the server: admin_users only.
        assert!(!parse("show quiet tenants").unwrap().is_read_only());
        assert!(parse("show tenant activity").unwrap().is_read_only());
        for bad in [
            "show quiet tenants limit",
            "show quiet tenants limit 0",
            "show quiet tenants limit 100001",
            "show quiet tenants limit x",
            "show quiet tenants window 2d",
            "show quiet tenants window 61m",
            "show quiet tenants table a table b",
            "show quiet tenants sort asc",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::BadArgs(_))), "{bad}");
        }
        assert!(matches!(parse("show quiet"), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn parses_tenant_limits() {
        use crate::limits::store::{Assign, Change, Key};
        let set = |tenant: &str, kv: &[(&str, &str)]| {
            Ok(Command::TenantLimit(Change::Set {
                tenant: tenant.into(),
                assigns: kv
                    .iter()
                    .map(|(k, v)| Assign::parse(k, v).unwrap())
                    .collect(),
            }))
        };
        assert_eq!(
            parse("SET TENANT 42 max_active = 8"),
            set("42", &[("max_active", "8")])
        );
        assert_eq!(
            parse("set tenant '042' MAX_ACTIVE = '25%', max_tps = 50, statement_timeout = 2s;"),
            set(
                "42",
                &[
                    ("max_active", "25%"),
                    ("max_tps", "50"),
                    ("statement_timeout", "2s")
                ]
            )
        );
        // Commas glued to either side, or on their own.
        for text in [
            "set tenant acme max_active=8,max_tps=default",
            "set tenant acme max_active = 8 , max_tps = default",
            "set tenant acme max_active = 8 ,max_tps = DEFAULT",
        ] {
            assert_eq!(
                parse(text),
                set("acme", &[("max_active", "8"), ("max_tps", "default")]),
                "{text}"
            );
        }
        assert_eq!(
            parse("set tenant 'a b,c' statement_timeout = 500ms"),
            set("a b,c", &[("statement_timeout", "500ms")])
        );
        assert!(!parse("set tenant 1 max_tps = 1").unwrap().is_read_only());
        // SET of a setting named tenant stays the generic SET.
        assert_eq!(
            parse("set tenant = 5"),
            Ok(Command::Set {
                key: "tenant".into(),
                value: "5".into()
            })
        );
        assert_eq!(
            parse("reset tenant 042"),
            Ok(Command::TenantLimit(Change::Reset {
                tenant: "42".into(),
                key: None
            }))
        );
        assert_eq!(
            parse("RESET TENANT 'x' Max_Tps;"),
            Ok(Command::TenantLimit(Change::Reset {
                tenant: "x".into(),
                key: Some(Key::MaxTps)
            }))
        );
        assert!(!parse("reset tenant 1").unwrap().is_read_only());
        assert_eq!(
            parse("show tenant limits"),
            Ok(Command::Show(Show::TenantLimits))
        );
        assert!(parse("SHOW TENANT LIMITS").unwrap().is_read_only());
        // Quoted, it is a tenant value; with a table, SHOW TENANT's own form.
        assert!(matches!(
            parse("show tenant 'limits'"),
            Ok(Command::Show(Show::Tenant { .. }))
        ));
        assert!(matches!(
            parse("show tenant limits orders"),
            Ok(Command::Show(Show::Tenant { .. }))
        ));
    }

    #[test]
    fn tenant_limits_name_what_is_wrong() {
        let err = |t: &str| match parse(t) {
            Err(ParseError::BadArgs(m)) => m,
            other => panic!("{t}: {other:?}"),
        };
        assert!(err("set tenant 42 color = red").contains("unknown tenant limit 'color'"));
        assert!(err("set tenant 42 max_active = lots").contains("max_active: expected"));
        assert!(err("set tenant 42 max_tps = -1").contains("max_tps"));
        assert!(err("set tenant 42 statement_timeout = 2days").contains("statement_timeout"));
        assert!(err("set tenant '' max_active = 1").contains("empty"));
        assert!(err("set tenant '  ' max_active = 1").contains("empty"));
        let long = "x".repeat(201);
        assert!(err(&format!("set tenant '{long}' max_active = 1")).contains("201 characters"));
        assert!(err("set tenant 42 max_active = 1, max_active = 2").contains("given twice"));
        for bad in [
            "set tenant",
            "set tenant 42",
            "set tenant 42 max_active",
            "set tenant 42 max_active =",
            "set tenant 42 max_active = 1,",
            "set tenant 42 max_active = 1 max_tps = 2",
            "set tenant 42 max_active = 1,, max_tps = 2",
            "set tenant 42 = 1",
            "set tenant 42 max_active 1",
            "set tenant 42 max_active to 1",
            "reset",
            "reset tenant",
            "reset tenant 42 max_active extra",
            "reset tenants 42",
            "reset 'tenant' 42",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::BadArgs(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert!(err("reset tenant 42 color").contains("unknown tenant limit"));
        assert!(err("reset tenant '' ").contains("empty"));
    }

    /// The error message points at SHOW HELP: it exists, and every form it lists parses
    /// (found while writing the `admin` fuzz target: SHOW HELP itself was an invalid
    /// command).
    #[test]
    fn show_help_lists_what_parses() {
        assert_eq!(parse("SHOW HELP;"), Ok(Command::Show(Show::Help)));
        assert!(parse("show help").unwrap().is_read_only());
        for line in USAGE {
            // Every optional group in, and every one out; alternatives taken in turn.
            for with_optional in [true, false] {
                let mut words: Vec<&str> = Vec::new();
                let mut in_group = false;
                for w in line.split(' ') {
                    let opens = w.starts_with('[');
                    let closes = w.ends_with(']');
                    if opens {
                        in_group = true;
                    }
                    if !in_group || with_optional {
                        words.push(w.trim_start_matches('[').trim_end_matches(']'));
                    }
                    if closes {
                        in_group = false;
                    }
                }
                let alts: Vec<Vec<&str>> = words.iter().map(|w| w.split('|').collect()).collect();
                let n = alts.iter().map(Vec::len).max().unwrap_or(1);
                for i in 0..n {
                    // SET TENANT names each key once.
                    let mut keys = ["max_active", "max_tps", "statement_timeout"].into_iter();
                    let text: Vec<&str> = alts
                        .iter()
                        .map(|a| match a[i % a.len()] {
                            "<id>" | "<n>" | "<limit>" => "7",
                            "<key>" => keys.next().unwrap_or("x"),
                            "<window>" => "24h",
                            "<duration>" => "5s",
                            w if w.starts_with('<') => "x",
                            w => w,
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
}
