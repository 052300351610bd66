//! `auth_type = hba`: which method a connection must log in with, from a file in
//! PostgreSQL's pg_hba.conf syntax (the subset PgBouncer supports).
//!
//! Rules:
//! - Lines: `host|hostssl|hostnossl DATABASE USER ADDRESS [MASK] METHOD` and
//!   `local DATABASE USER METHOD` (connections on `unix_socket_dir`). `#` starts a
//!   comment; fields may be double-quoted (a quoted `all` is a name, not the keyword);
//!   DATABASE and USER are comma lists of names, `all`, `sameuser` (database only), or
//!   `@file` (names in that file, relative to this one, separated by spaces, commas or
//!   newlines). ADDRESS is `all`, an IPv4/IPv6 address with a CIDR length, or an
//!   address followed by a separate MASK. METHOD is `trust`, `reject`, `md5`,
//!   `scram-sha-256` or `password`; options after it are refused.
//! - The first line whose type, database, user and address match decides; no match is a
//!   refusal (`28000 no pg_hba.conf entry for host …`, PostgreSQL's words).
//! - `+group` (role membership) cannot be known without the server's catalog: refused
//!   when the file is read, with its line, as is every other unknown keyword or bad
//!   address. A file with an error is never used (at start pgtenant does not start; at
//!   RELOAD the running rules are kept).
use std::net::IpAddr;
use std::path::Path;

/// The method a matching line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// Cleartext password (AuthenticationCleartextPassword).
    Password,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    SameUser,
    Is(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    All,
    Net(IpAddr, u8),
}

#[derive(Debug, Clone)]
struct Rule {
    conn: ConnType,
    databases: Vec<Name>,
    users: Vec<Name>,
    addr: Option<Addr>,
    method: HbaMethod,
}

/// The rules of one hba file.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

/// What the file says of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaDecision {
    Method(HbaMethod),
    NoEntry,
}

impl Hba {
    /// Read and check the whole file; the first error names its line.
    pub fn load(path: &Path) -> Result<Hba, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
        Hba::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Hba, String> {
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), i + 1);
            let fields = fields(raw).map_err(|e| format!("{at}: {e}"))?;
            if fields.is_empty() {
                continue;
            }
            rules.push(rule(&fields, dir).map_err(|e| format!("{at}: {e}"))?);
        }
        Ok(Hba { rules })
    }

    /// The method for a connection: on the unix socket (`local`) or by TCP from `addr`
    /// (`tls`: it negotiated TLS).
    pub fn decide(
        &self,
        local: bool,
        addr: Option<IpAddr>,
        tls: bool,
        database: &str,
        user: &str,
    ) -> HbaDecision {
        for r in &self.rules {
            let conn_ok = match r.conn {
                ConnType::Local => local,
                ConnType::Host => !local,
                ConnType::HostSsl => !local && tls,
                ConnType::HostNoSsl => !local && !tls,
            };
            if !conn_ok {
                continue;
            }
            let addr_ok = match (&r.addr, addr) {
                (None, _) => local,
                (Some(Addr::All), _) => true,
                (Some(Addr::Net(net, bits)), Some(a)) => in_net(a, *net, *bits),
                _ => false,
            };
            let db_ok = r.databases.iter().any(|d| match d {
                Name::All => true,
                Name::SameUser => database == user,
                Name::Is(n) => n == database,
            });
            let user_ok = r.users.iter().any(|u| match u {
                Name::All => true,
                Name::SameUser => false,
                Name::Is(n) => n == user,
            });
            if addr_ok && db_ok && user_ok {
                return HbaDecision::Method(r.method);
            }
        }
        HbaDecision::NoEntry
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// PostgreSQL's message for a connection no line matches (or that a line rejects).
pub fn refusal(
    decision: HbaDecision,
    addr: Option<IpAddr>,
    tls: bool,
    database: &str,
    user: &str,
) -> String {
    let host = addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "[local]".into());
    let enc = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    match decision {
        HbaDecision::Method(HbaMethod::Reject) => format!(
            "pg_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", {enc}"
        ),
        _ => format!(
            "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {enc}"
        ),
    }
}

/// A field and whether it was quoted.
type Field = (String, bool);

/// Split a line into fields (double quotes group, `""` inside quotes is a quote; a `#`
/// outside quotes ends the line).
fn fields(line: &str) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut has = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '#' => break,
            '"' => {
                in_quotes = true;
                quoted = true;
                has = true;
            }
            c if c.is_whitespace() => {
                if has {
                    out.push((std::mem::take(&mut cur), quoted));
                    quoted = false;
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    if has {
        out.push((cur, quoted));
    }
    Ok(out)
}

fn rule(f: &[Field], dir: &Path) -> Result<Rule, String> {
    let conn = match f[0].0.as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => {
            return Err(format!("'{}' (GSSAPI) is not supported", f[0].0))
        }
        other => return Err(format!("unknown connection type '{}'", clip(other))),
    };
    let need = if conn == ConnType::Local { 4 } else { 5 };
    if f.len() < need {
        return Err(format!(
            "expected {} fields (type, database, user,{} method), got {}",
            need,
            if conn == ConnType::Local {
                ""
            } else {
                " address,"
            },
            f.len()
        ));
    }
    let databases = names(&f[1], dir, true)?;
    let users = names(&f[2], dir, false)?;
    let (addr, method_at) = if conn == ConnType::Local {
        (None, 3)
    } else {
        let a = &f[3].0;
        if a == "all" && !f[3].1 {
            (Some(Addr::All), 4)
        } else if a.contains('/') {
            (Some(cidr(a)?), 4)
        } else {
            // address + separate mask
            let ip: IpAddr = a.parse().map_err(|_| {
                format!(
                    "'{}' is not an IP address (host names are not supported)",
                    clip(a)
                )
            })?;
            let mask_field = f
                .get(4)
                .ok_or("an address without /length needs a mask field")?;
            let mask: IpAddr = mask_field
                .0
                .parse()
                .map_err(|_| format!("'{}' is not a netmask", clip(&mask_field.0)))?;
            let bits = mask_bits(mask)?;
            if ip.is_ipv4() != mask.is_ipv4() {
                return Err("address and mask are of different IP versions".into());
            }
            (Some(Addr::Net(ip, bits)), 5)
        }
    };
    let m = f
        .get(method_at)
        .ok_or("the authentication method is missing")?;
    let method = match m.0.as_str() {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Md5,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "password" => HbaMethod::Password,
        "peer" | "ident" | "cert" | "ldap" | "pam" | "radius" | "gss" | "sspi" | "bsd" => {
            return Err(format!(
                "method '{}' is not supported (trust, reject, md5, scram-sha-256, password)",
                m.0
            ))
        }
        other => return Err(format!("unknown authentication method '{}'", clip(other))),
    };
    if let Some(extra) = f.get(method_at + 1) {
        return Err(format!(
            "authentication options ('{}') are not supported",
            clip(&extra.0)
        ));
    }
    Ok(Rule {
        conn,
        databases,
        users,
        addr,
        method,
    })
}

fn names(f: &Field, dir: &Path, database: bool) -> Result<Vec<Name>, String> {
    let mut out = Vec::new();
    // A quoted field is one name (commas included), keywords lose their meaning.
    if f.1 {
        out.push(Name::Is(f.0.clone()));
        return Ok(out);
    }
    for item in f.0.split(',').filter(|s| !s.is_empty()) {
        match item {
            "all" => out.push(Name::All),
            "sameuser" if database => out.push(Name::SameUser),
            "samerole" | "samegroup" | "replication" if database => {
                return Err(format!("'{item}' is not supported"))
            }
            i if i.starts_with('+') => {
                return Err(format!(
                    "'{}': group membership (+role) cannot be known by pgtenant; list the users",
                    clip(i)
                ))
            }
            i if i.starts_with('@') => {
                let p = dir.join(&i[1..]);
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read '{}': {e}", p.display()))?;
                for n in text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or(""))
                    .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
                    .filter(|s| !s.is_empty())
                {
                    out.push(Name::Is(n.to_string()));
                }
            }
            i => out.push(Name::Is(i.to_string())),
        }
    }
    if out.is_empty() {
        return Err("an empty name list".into());
    }
    Ok(out)
}

fn cidr(a: &str) -> Result<Addr, String> {
    let (ip, len) = a.split_once('/').unwrap_or((a, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("'{}' is not an IP address", clip(ip)))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits: u8 = len
        .parse()
        .ok()
        .filter(|b| *b <= max)
        .ok_or_else(|| format!("'/{}' is not a prefix length (0 to {max})", clip(len)))?;
    Ok(Addr::Net(ip, bits))
}

fn mask_bits(mask: IpAddr) -> Result<u8, String> {
    let (v, width) = match mask {
        IpAddr::V4(m) => (u128::from(u32::from(m)) << 96, 32u32),
        IpAddr::V6(m) => (u128::from(m), 128u32),
    };
    let ones = v.leading_ones();
    if v.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("'{mask}' is not a contiguous netmask"));
    }
    Ok(ones.min(width) as u8)
}

fn in_net(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    // An IPv4 client seen as IPv4-mapped IPv6 (a dual-stack listener) matches IPv4 lines.
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    };
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hba(text: &str) -> Hba {
        Hba::parse(text, Path::new("/etc/pgtenant/pg_hba.conf")).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn first_match_wins() {
        let h = hba("# TYPE  DATABASE  USER  ADDRESS  METHOD\n\
             local   all       all             trust\n\
             host    all       evil  0.0.0.0/0  reject\n\
             hostssl app       app   10.0.0.0/8  scram-sha-256\n\
             hostnossl app     app   10.0.0.0 255.0.0.0  md5   # plain TCP\n\
             host    sameuser  all   192.168.1.0/24  password\n\
             host    \"all\"   bob   ::1/128  trust\n\
             host    all       all   all  reject\n");
        assert_eq!(h.len(), 7);
        let m = |a: &str, tls, db, u| h.decide(false, ip(a), tls, db, u);
        use HbaDecision::*;
        use HbaMethod::*;
        assert_eq!(m("10.1.2.3", true, "app", "app"), Method(ScramSha256));
        assert_eq!(m("10.1.2.3", false, "app", "app"), Method(Md5));
        assert_eq!(m("10.1.2.3", true, "app", "evil"), Method(Reject));
        assert_eq!(m("192.168.1.7", false, "carol", "carol"), Method(Password));
        assert_eq!(m("192.168.1.7", false, "app", "carol"), Method(Reject));
        // A quoted "all" is a database named all.
        assert_eq!(m("::1", false, "all", "bob"), Method(Trust));
        assert_eq!(m("::1", false, "app", "bob"), Method(Reject));
        // IPv4-mapped IPv6 matches IPv4 lines.
        assert_eq!(
            m("::ffff:10.0.0.1", true, "app", "app"),
            Method(ScramSha256)
        );
        let none = hba("host app app 127.0.0.1/32 trust\n");
        assert_eq!(
            none.decide(false, ip("127.0.0.2"), false, "app", "app"),
            NoEntry
        );
        assert_eq!(
            refusal(NoEntry, ip("127.0.0.2"), false, "app", "app"),
            "no pg_hba.conf entry for host \"127.0.0.2\", user \"app\", database \"app\", no encryption"
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, want) in [
            (
                "host all all 10.0.0.0/33 trust\n",
                ":1: '/33' is not a prefix length",
            ),
            (
                "\nhost all all 10.0.0.0 255.0.255.0 trust\n",
                ":2: '255.0.255.0' is not a contiguous netmask",
            ),
            ("host all +admins all trust\n", "group membership"),
            (
                "host all all all ldap ldapserver=x\n",
                "method 'ldap' is not supported",
            ),
            (
                "host all all all md5 clientcert=verify-ca\n",
                "options ('clientcert=verify-ca')",
            ),
            ("hots all all all trust\n", "unknown connection type 'hots'"),
            ("host all all trust\n", "expected 5 fields"),
            (
                "host all all db.example.com trust\n",
                "host names are not supported",
            ),
            (
                "host \"all all 1.2.3.4/32 trust\n",
                "unterminated quoted field",
            ),
            ("host @nosuchfile all all trust\n", "cannot read"),
        ] {
            let e = Hba::parse(text, Path::new("/x/pg_hba.conf")).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("/x/pg_hba.conf:"), "{e}");
        }
    }

    #[test]
    fn name_files() {
        let dir = std::env::temp_dir().join(format!("pgtenant-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admins"), "alice, bob\n# c\ncarol\n").unwrap();
        let h = Hba::parse(
            "host all @admins 0.0.0.0/0 trust\nhost all all 0.0.0.0/0 reject\n",
            &dir.join("pg_hba.conf"),
        )
        .unwrap();
        assert_eq!(
            h.decide(false, ip("1.2.3.4"), false, "x", "carol"),
            HbaDecision::Method(HbaMethod::Trust)
        );
        assert_eq!(
            h.decide(false, ip("1.2.3.4"), false, "x", "dave"),
            HbaDecision::Method(HbaMethod::Reject)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
