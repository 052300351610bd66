use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pgbouncer_ini")
        .join(name)
}

fn translated(name: &str) -> Translation {
    translate(&read(&fixture(name)).unwrap())
}

fn s<'a>(t: &'a Translation, k: &str) -> &'a str {
    t.table
        .get(k)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{k} missing: {:?}", t.table))
}

#[test]
fn the_quick_start_sample_is_carried() {
    let t = translated("quickstart.ini");
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(s(&t, "listen"), "127.0.0.1:6432");
    assert_eq!(s(&t, "auth_type"), "md5");
    assert!(s(&t, "auth_file").ends_with("tests/pgbouncer_ini/users.txt"));
    assert!(Path::new(s(&t, "auth_file")).is_absolute());
    assert_eq!(
        s(&t, "upstream"),
        "postgres://someuser@localhost:5432/template1"
    );
    // logfile and pidfile are noted, not carried.
    assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
    assert!(t.notes[0].contains("quickstart.ini:10: logfile"));
}

#[test]
fn a_production_sidecar_file_is_carried_with_notes() {
    let t = translated("sidecar.ini");
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(s(&t, "listen"), "0.0.0.0:6432");
    assert_eq!(s(&t, "auth_type"), "scram-sha-256");
    assert_eq!(s(&t, "pool_mode"), "transaction");
    assert_eq!(t.table["pool_size"].as_integer(), Some(20));
    assert_eq!(t.table["max_db_connections"].as_integer(), Some(50));
    assert_eq!(t.table["server_lifetime"].as_float(), Some(3600.0));
    assert_eq!(t.table["reserve_pool_timeout"].as_float(), Some(3.0));
    assert_eq!(t.table["tcp_keepalive"].as_float(), Some(60.0));
    assert_eq!(s(&t, "server_reset_query"), "DISCARD ALL");
    assert_eq!(s(&t, "client_tls"), "require");
    assert_eq!(s(&t, "server_tls"), "verify-full");
    assert_eq!(s(&t, "server_tls_ca_file"), "/etc/pgbouncer/tls/ca.crt");
    // `unix_socket_dir =` (empty): no socket; absent: PgBouncer's /tmp (quick start).
    assert!(!t.table.contains_key("unix_socket_dir"));
    assert_eq!(s(&translated("quickstart.ini"), "unix_socket_dir"), "/tmp");
    let stats: Vec<&str> = t.table["stats_users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(stats, ["datadog", "prometheus"]);
    assert_eq!(
        s(&t, "upstream"),
        "postgres://pgbouncer_admin@postgres-primary.db.svc.cluster.local:5432/pgbouncer_admin"
    );
    for noted in [
        "ignore_startup_parameters",
        "track_extra_parameters",
        "logfile",
        "client_tls_protocols",
    ] {
        assert!(
            t.notes.iter().any(|n| n.contains(noted)),
            "{noted} not noted: {:?}",
            t.notes
        );
    }
}

#[test]
fn includes_users_and_quoted_passwords() {
    let t = translated("with_include.ini");
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    // From common.ini, with PgBouncer's time units.
    assert_eq!(s(&t, "pool_mode"), "session");
    assert_eq!(t.table["pool_size"].as_integer(), Some(7));
    assert_eq!(t.table["server_lifetime"].as_float(), Some(3600.0));
    assert_eq!(t.table["query_wait_timeout"].as_float(), Some(0.5));
    assert_eq!(s(&t, "listen"), "127.0.0.1:7432");
    assert_eq!(s(&t, "auth_type"), "trust");
    assert_eq!(
        s(&t, "upstream"),
        "postgres://app:s3cr%27et%20x@10.0.0.5:5433/app"
    );
    let lines = read(&fixture("with_include.ini")).unwrap();
    let mut unix = lines.clone();
    for l in &mut unix {
        if l.section == "databases" {
            l.value = "host=/var/run/postgresql port=5433 dbname=app user=app".into();
        }
    }
    assert_eq!(
        s(&translate(&unix), "upstream"),
        "postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/app"
    );
    let users = t.table["users"].as_table().unwrap();
    assert_eq!(users["reporting"]["pool_mode"].as_str(), Some("session"));
    assert_eq!(users["reporting"]["pool_size"].as_integer(), Some(3));
    assert_eq!(users["app"]["pool_mode"].as_str(), Some("transaction"));
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let t = translated("unknown_key.ini");
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert!(
        t.errors[0].ends_with("unknown_key.ini:7: unknown PgBouncer setting 'default_pool_sise'"),
        "{}",
        t.errors[0]
    );
}

#[test]
fn meanings_pgtenant_cannot_keep_are_refused() {
    let t = translated("refused.ini");
    let all = t.errors.join("\n");
    for want in [
        "refused.ini:2: [databases] app: host=10.0.0.5,10.0.0.7: several hosts",
        "refused.ini:3: [databases] other: auth_dbname: not supported per database",
        "refused.ini:6: auth_type = pam",
        "refused.ini:8: client_idle_timeout = 600",
        "refused.ini:9: query_timeout = 30",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn malformed_lines_name_file_and_line() {
    let dir = std::env::temp_dir().join(format!("pgtenant-ini-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[pgbouncer]\nlisten_port 6432\n",
            ":2: expected 'key = value'",
        ),
        (
            "listen_port = 1\n[pgbouncer]\n",
            ":1: 'listen_port' is outside any [section]",
        ),
        ("[pgbouncer]\n%include nosuch.ini\n", "cannot read"),
        ("[pgbouncer]\n = 3\n", ":2: a key is missing"),
        (
            "[pgbouncer]\n%include self.ini\n",
            "nested more than 8 deep",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let name = if text.contains("self.ini") {
            "self.ini".to_string()
        } else {
            format!("bad{i}.ini")
        };
        let p = dir.join(&name);
        std::fs::write(&p, text).unwrap();
        let e = read(&p).expect_err(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn conninfo_values() {
    assert_eq!(
        conninfo("host=a  port = 5 password='it''s \\'x\\'' dbname=d").unwrap(),
        vec![
            ("host".to_string(), "a".to_string()),
            ("port".to_string(), "5".to_string()),
            ("password".to_string(), "it's 'x'".to_string()),
            ("dbname".to_string(), "d".to_string()),
        ]
    );
    assert!(conninfo("host").is_err());
    assert!(conninfo("password='open").is_err());
    assert_eq!(secs("2min").unwrap(), 120.0);
    assert!(secs("3 fortnights").is_err());
}

#[test]
fn detection_and_import_text() {
    assert!(is_pgbouncer_ini("; c\n[PgBouncer]\nx = 1\n"));
    assert!(!is_pgbouncer_ini("pool_size = 3\n[users.app]\n"));
    let t = translated("sidecar.ini");
    let text = to_toml(Path::new("sidecar.ini"), &t);
    assert!(text.contains("# Not carried"));
    // The settings part is TOML pgtenant reads.
    let parsed: Table = text.parse().expect("valid TOML");
    assert_eq!(parsed["pool_size"].as_integer(), Some(20));
}

/// `[databases]` details as PgBouncer reads them: quoted names, the default host (a unix
/// socket in unix_socket_dir, /tmp unless set), a password without user (not used).
#[test]
fn database_entries_keep_pgbouncers_defaults() {
    let dir = std::env::temp_dir().join(format!("pgtenant-ini-dbs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let entry = |t: &Translation, name: &str| -> Table {
        t.table["databases"][name].as_table().unwrap().clone()
    };
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        translate(&read(&p).unwrap())
    };
    let t = write(
        "a.ini",
        "[databases]\n\"my-db\" = dbname=mine user=u\nplain = password=p\n[pgbouncer]\nauth_user = u\n",
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let mine = entry(&t, "my-db");
    assert_eq!(mine["host"].as_str(), Some("/tmp"));
    assert_eq!(mine["dbname"].as_str(), Some("mine"));
    assert!(entry(&t, "plain").get("password").is_none());
    assert!(t.notes.iter().any(|n| n.contains("password without user")));
    let t = write(
        "b.ini",
        "[databases]\nx = dbname=x user=u\n[pgbouncer]\nunix_socket_dir = /run/pg\n",
    );
    assert_eq!(entry(&t, "x")["host"].as_str(), Some("/run/pg"));
    let t = write(
        "c.ini",
        "[databases]\nx = dbname=x user=u\n[pgbouncer]\nunix_socket_dir =\n",
    );
    assert_eq!(entry(&t, "x")["host"].as_str(), Some("127.0.0.1"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by the `pgbouncer_ini` fuzz target: a control character (here NUL) in an unknown
/// key went into a comment of the imported TOML as it was, and TOML refuses that.
#[test]
fn import_escapes_control_characters_in_comments() {
    let t = Translation {
        table: Table::new(),
        notes: vec!["a\u{7f}note\twith tab".into()],
        errors: vec!["x.ini:3: unknown key 'a\0b\u{1b}'".into()],
    };
    let text = to_toml(Path::new("x.ini"), &t);
    text.parse::<Table>().expect("valid TOML");
    assert!(text.contains("unknown key 'a\\u{0}b\\u{1b}'"), "{text}");
    assert!(text.contains("a\\u{7f}note\twith tab"), "{text}");
}
