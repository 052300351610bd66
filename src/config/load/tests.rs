use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

const UP: &str = "upstream = \"postgres://app:secret@127.0.0.1:5432/app\"\n";

/// A fresh directory per test (no tempfile dependency); left behind in /tmp.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgtenant-config-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load_str(text: &str, o: &Overrides) -> Result<Settings, ConfigError> {
    let p = write(&temp_dir(), "pgtenant.toml", text);
    load(Some(&p), o)
}

fn errors(text: &str) -> Vec<String> {
    load_str(text, &Overrides::default()).unwrap_err().errors
}

fn has(errs: &[String], want: &str) -> bool {
    errs.iter().any(|e| e.contains(want))
}

#[test]
fn defaults_match_pgbouncer() {
    let s = load_str(UP, &Overrides::default()).unwrap();
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.primary_listen(), "127.0.0.1:6432".parse().unwrap());
    assert_eq!(s.listeners[0].auth_type, AuthType::ScramSha256);
    assert_eq!(s.listeners[0].client_tls, ClientTls::Disable);
    assert_eq!(s.pool_mode, PoolMode::Transaction);
    assert_eq!(s.pool_size, 20);
    assert_eq!(s.min_pool_size, 0);
    assert_eq!(s.reserve_pool_size, 0);
    assert_eq!(s.reserve_pool_timeout, secs(5));
    assert_eq!(s.max_client_conn, 100);
    assert_eq!(s.max_startup_clients, 1000);
    assert_eq!(s.client_login_timeout, secs(15));
    assert_eq!(s.max_db_connections, 0);
    assert_eq!(s.query_wait_timeout, secs(120));
    assert_eq!(s.server_connect_timeout, secs(15));
    assert_eq!(s.server_idle_timeout, secs(600));
    assert_eq!(s.server_lifetime, secs(3600));
    assert_eq!(s.idle_transaction_timeout, secs(0));
    assert_eq!(s.server_reset_query, "DISCARD ALL");
    assert!(!s.server_reset_query_always);
    assert_eq!(s.server_check_query, "select 1");
    assert_eq!(s.server_check_delay, secs(30));
    assert_eq!(s.max_message_size, 64 * 1024 * 1024);
    assert_eq!(s.max_buffered_message_bytes, 64 * 1024 * 1024);
    assert_eq!(s.pool_idle_timeout, secs(60));
    assert_eq!(s.shutdown_timeout, secs(30));
    assert_eq!(s.server_tls, ServerTls::Disable);
    assert_eq!(s.log_format, LogFormat::Plain);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.workers, 0);
    assert_eq!(s.tcp_keepalive, secs(0));
    assert_eq!(s.auth_file, None);
    assert!(s.config_file.is_some());
}

#[test]
fn admin_and_stats_users() {
    let s = load_str(
        &format!("{UP}admin_users = [\"ops\"]\nstats_users = \"exp, mon\"\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.admin_users, vec!["ops".to_string()]);
    assert_eq!(s.stats_users, vec!["exp".to_string(), "mon".to_string()]);
    assert!(has(
        &errors(&format!("{UP}admin_users = 3\n")),
        "admin_users: expected an array of user names, got 3"
    ));
}

#[test]
fn upstream_user_is_added_to_users() {
    let s = load_str(UP, &Overrides::default()).unwrap();
    assert_eq!(s.users["app"].password.as_deref(), Some("secret"));
    // A user named in the file keeps its own password and gains nothing else.
    let s = load_str(
        &format!("{UP}[users.app]\npassword = \"other\"\npool_size = 3\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.users["app"].password.as_deref(), Some("other"));
    assert_eq!(s.limits("app", "app").pool_size, 3);
    // Named without a password: the URL's password is used.
    let s = load_str(
        &format!("{UP}[users.app]\npool_mode = \"session\"\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.users["app"].password.as_deref(), Some("secret"));
    assert_eq!(s.pool_mode_of("app", "app"), PoolMode::Session);
}

#[test]
fn precedence_file_then_overrides() {
    let text = format!("{UP}listen = \"127.0.0.1:7000\"\npool_mode = \"session\"\npool_size = 5\nlog_format = \"json\"\nworkers = 2\nauth_type = \"md5\"\nmax_client_conn = 50\nlog_level = \"debug\"\n");
    let s = load_str(&text, &Overrides::default()).unwrap();
    assert_eq!(s.primary_listen().port(), 7000);
    assert_eq!(s.pool_mode, PoolMode::Session);
    assert_eq!(s.pool_size, 5);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.workers, 2);
    assert_eq!(s.listeners[0].auth_type, AuthType::Md5);
    assert_eq!(s.max_client_conn, 50);

    let o = Overrides {
        config: None,
        listen: Some("0.0.0.0:7001".into()),
        upstream: Some("postgres://other:pw@db:6000/x".into()),
        pool_mode: Some("statement".into()),
        pool_size: Some(9),
        log_format: Some("plain".into()),
        log_level: Some("warn".into()),
        workers: Some(4),
        io_engine: Some("epoll".into()),
        auth_type: Some("trust".into()),
        max_client_conn: Some(7),
        max_startup_clients: None,
        client_login_timeout: None,
        http_listen: None,
        admin_users: Some("ops, root".into()),
        stats_users: None,
        server_pipelining: Some("auto".into()),
    };
    let s = load_str(&text, &o).unwrap();
    assert!(s.server_pipelining);
    assert_eq!(s.io_engine, crate::net::uring::IoEngine::Epoll);
    assert_eq!(s.admin_users, vec!["ops".to_string(), "root".to_string()]);
    assert_eq!(s.primary_listen(), "0.0.0.0:7001".parse().unwrap());
    assert_eq!(s.upstream.user, "other");
    assert_eq!(s.upstream.port, 6000);
    assert_eq!(s.pool_mode, PoolMode::Statement);
    assert_eq!(s.pool_size, 9);
    assert_eq!(s.log_format, LogFormat::Plain);
    assert_eq!(s.log_level, "warn");
    assert_eq!(s.workers, 4);
    assert_eq!(s.listeners[0].auth_type, AuthType::Trust);
    assert_eq!(s.max_client_conn, 7);
    // Both the file's upstream user and the override's are known? No: only the one in use.
    assert!(s.users.contains_key("other"));
    assert!(!s.users.contains_key("app"));
}

#[test]
fn login_limits() {
    let text = format!("{UP}max_startup_clients = 7\nclient_login_timeout = 2.5\n");
    let s = load_str(&text, &Overrides::default()).unwrap();
    assert_eq!(s.max_startup_clients, 7);
    assert_eq!(s.client_login_timeout, Duration::from_millis(2500));
    let o = Overrides {
        max_startup_clients: Some(9),
        client_login_timeout: Some(4.0),
        ..Default::default()
    };
    let s = load_str(&text, &o).unwrap();
    assert_eq!(s.max_startup_clients, 9);
    assert_eq!(s.client_login_timeout, secs(4));

    let e = errors("max_startup_clients = 0\nclient_login_timeout = 0\n");
    assert!(has(
        &e,
        "max_startup_clients: expected a positive integer, got 0"
    ));
    assert!(has(
        &e,
        "client_login_timeout: expected at least 1 second, got 0"
    ));
    assert!(has(
        &errors("client_login_timeout = 0.5\n"),
        "client_login_timeout: expected at least 1 second, got 0.5"
    ));
    assert!(has(
        &errors("client_login_timeout = -1\n"),
        "client_login_timeout: expected a non-negative number of seconds"
    ));
    let o = Overrides {
        max_startup_clients: Some(0),
        client_login_timeout: Some(-3.0),
        ..Default::default()
    };
    let e = load_str(UP, &o).unwrap_err().errors;
    assert!(has(
        &e,
        "max_startup_clients: expected a positive integer, got 0"
    ));
    assert!(has(
        &e,
        "client_login_timeout: expected a number of seconds, got -3"
    ));
}

#[test]
fn no_file_only_overrides() {
    let o = Overrides {
        upstream: Some("postgres://u@h".into()),
        ..Default::default()
    };
    let s = load(None, &o).unwrap();
    assert_eq!(s.config_file, None);
    assert_eq!(s.upstream.database, "u");
    assert_eq!(s.users["u"].password, None);
}

#[test]
fn missing_upstream_is_named() {
    let e = load(None, &Overrides::default()).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(e.errors[0].starts_with("upstream: missing"), "{e}");
    assert!(has(&errors("pool_size = 3\n"), "upstream: missing"));
    assert!(has(
        &errors("upstream = \"http://x\"\n"),
        "upstream: unsupported scheme"
    ));
}

#[test]
fn bad_override_values_are_named() {
    let o = Overrides {
        pool_mode: Some("nope".into()),
        log_format: Some("xml".into()),
        auth_type: Some("password".into()),
        listen: Some("nowhere".into()),
        pool_size: Some(0),
        max_client_conn: Some(0),
        workers: Some(5000),
        log_level: Some("=".into()),
        ..Default::default()
    };
    let e = load_str(UP, &o).unwrap_err().errors;
    assert!(has(
        &e,
        "pool_mode: expected one of session, transaction, statement, got 'nope' (from command line"
    ));
    assert!(has(&e, "log_format: expected one of plain, json"));
    assert!(has(
        &e,
        "auth_type: expected one of scram-sha-256, md5, trust"
    ));
    assert!(has(&e, "listen: expected an address"));
    assert!(has(&e, "pool_size: expected a positive integer, got 0"));
    assert!(has(
        &e,
        "max_client_conn: expected a positive integer, got 0"
    ));
    assert!(has(&e, "workers: expected at most 1024"));
    assert!(has(&e, "log_level: not a valid filter"));
    assert_eq!(e.len(), 8, "{e:?}");
}

#[test]
fn unknown_keys_are_named() {
    let e = errors(&format!("{UP}foo = 1\ndefault_pool_size = 3\n[users.x]\nbar = 2\n[[listener]]\nlisten = \"127.0.0.1:1\"\nbaz = 3\n"));
    assert!(has(&e, "foo: unknown key 'foo'"), "{e:?}");
    assert!(has(
        &e,
        "default_pool_size: unknown key 'default_pool_size' (did you mean 'pool_size'?)"
    ));
    assert!(has(&e, "users.x.bar: unknown key 'bar'"));
    assert!(has(&e, "listener[0].baz: unknown key 'baz'"));
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn every_error_is_collected() {
    let text = "pool_size = -1\nmin_pool_size = \"x\"\nreserve_pool_timeout = -2\nserver_reset_query_always = \"yes\"\n\
                pool_mode = \"sometimes\"\nlisten = \"nope\"\nmax_message_size = 100\nserver_lifetime = \"1h\"\nclient_tls = 3\n\
                log_level = 5\nauth_file = \"\"\n";
    let e = errors(text);
    for want in [
        "pool_size: expected a positive integer, got -1",
        "min_pool_size: expected a non-negative integer, got 'x'",
        "reserve_pool_timeout: expected a non-negative number of seconds, got -2",
        "server_reset_query_always: expected true or false, got 'yes'",
        "pool_mode: expected one of session, transaction, statement, got 'sometimes'",
        "listen: expected an address like 127.0.0.1:6432 or [::]:6432, got 'nope'",
        "max_message_size: expected 1024 to 1073741824 bytes, got 100",
        "server_lifetime: expected a non-negative number of seconds, got '1h'",
        "client_tls: expected one of disable, allow, require, got 3",
        "log_level: expected a string, got 5",
        "auth_file: expected a file path",
        "upstream: missing",
    ] {
        assert!(has(&e, want), "missing {want:?} in {e:?}");
    }
    assert_eq!(e.len(), 12, "{e:?}");
}

#[test]
fn cross_checks() {
    let e = errors(&format!("{UP}pool_size = 5\nmin_pool_size = 6\n"));
    assert!(
        has(&e, "min_pool_size: 6 is larger than pool_size (5)"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{UP}min_pool_size = 6\n[users.a]\npool_size = 2\n"
    ));
    assert!(
        has(&e, "users.a.pool_size: 2 is smaller than min_pool_size (6)"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{UP}[users.a]\npool_size = 0\npassword = 7\npool_mode = \"x\"\n"
    ));
    assert!(
        has(&e, "users.a.pool_size: expected a positive integer, got 0"),
        "{e:?}"
    );
    assert!(
        has(&e, "users.a.password: expected a string, got integer"),
        "{e:?}"
    );
    assert!(has(&e, "users.a.pool_mode: expected one of"), "{e:?}");
    // The budget of large messages must hold at least one message of the largest size.
    let e = errors(&format!(
        "{UP}max_message_size = 2097152\nmax_buffered_message_bytes = 1048576\n"
    ));
    assert!(
        has(
            &e,
            "max_buffered_message_bytes: 1048576 is smaller than max_message_size (2097152)"
        ),
        "{e:?}"
    );
    let s = load_str(
        &format!("{UP}max_buffered_message_bytes = 0\npool_idle_timeout = 0.5\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.max_buffered_message_bytes, 0);
    assert_eq!(s.pool_idle_timeout, Duration::from_millis(500));
}

#[test]
fn tls_requirements() {
    let e = errors(&format!("{UP}client_tls = \"require\"\n"));
    assert!(has(&e, "client_tls_cert_file: required because the listener on 127.0.0.1:6432 has client_tls = require"), "{e:?}");
    assert!(has(&e, "client_tls_key_file: required"), "{e:?}");
    // An extra listener offering TLS needs the files too.
    let e = errors(&format!(
        "{UP}[[listener]]\nlisten = \"127.0.0.1:6433\"\nclient_tls = \"allow\"\n"
    ));
    assert!(
        has(
            &e,
            "client_tls_cert_file: required because the listener on 127.0.0.1:6433"
        ),
        "{e:?}"
    );
    let e = errors(&format!("{UP}server_tls = \"verify-full\"\n"));
    assert_eq!(
        e,
        vec!["server_tls_ca_file: required because server_tls = verify-full"]
    );
    let e = errors(&format!("{UP}server_tls = \"verify-ca\"\n"));
    assert!(has(&e, "server_tls_ca_file: required"));
    assert!(load_str(
        &format!("{UP}server_tls = \"require\"\n"),
        &Overrides::default()
    )
    .is_ok());
}

#[test]
fn named_files_must_be_readable_and_are_relative_to_the_config() {
    let dir = temp_dir();
    write(&dir, "cert.pem", "x");
    write(&dir, "key.pem", "x");
    write(&dir, "userlist.txt", "\"a\" \"b\"\n");
    std::fs::create_dir_all(dir.join("adir")).unwrap();
    let text = format!(
        "{UP}client_tls = \"require\"\nclient_tls_cert_file = \"cert.pem\"\nclient_tls_key_file = \"key.pem\"\nauth_file = \"userlist.txt\"\n"
    );
    let p = write(&dir, "ok.toml", &text);
    let s = load(Some(&p), &Overrides::default()).unwrap();
    assert_eq!(s.client_tls_cert_file, Some(dir.join("cert.pem")));
    assert_eq!(s.auth_file, Some(dir.join("userlist.txt")));

    let text = format!("{UP}auth_file = \"missing.txt\"\nserver_tls = \"verify-ca\"\nserver_tls_ca_file = \"adir\"\n");
    let p = write(&dir, "bad.toml", &text);
    let e = load(Some(&p), &Overrides::default()).unwrap_err().errors;
    assert!(has(&e, "auth_file: cannot read '"), "{e:?}");
    assert!(has(&e, "missing.txt"), "{e:?}");
    assert!(
        has(&e, "server_tls_ca_file: '") && has(&e, "is not a regular file"),
        "{e:?}"
    );
}

#[test]
fn listeners() {
    let text = format!(
        "{UP}listen = \"*:6432\"\nauth_type = \"md5\"\n\
         [[listener]]\nlisten = \"[::1]:6433\"\nauth_type = \"trust\"\n\
         [[listener]]\nlisten = \"localhost:6434\"\n"
    );
    let s = load_str(&text, &Overrides::default()).unwrap();
    let got: Vec<_> = s
        .listeners
        .iter()
        .map(|l| (l.addr.to_string(), l.auth_type))
        .collect();
    assert_eq!(
        got,
        vec![
            ("0.0.0.0:6432".to_string(), AuthType::Md5),
            ("[::1]:6433".to_string(), AuthType::Trust),
            // Unset fields take the safe defaults, not the primary's.
            ("127.0.0.1:6434".to_string(), AuthType::ScramSha256),
        ]
    );

    let e = errors(&format!(
        "{UP}[[listener]]\nauth_type = \"md5\"\n[[listener]]\nlisten = \"127.0.0.1:6432\"\n[[listener]]\nlisten = \"bad\"\n"
    ));
    assert!(has(&e, "listener[0].listen: missing"), "{e:?}");
    assert!(
        has(
            &e,
            "listener[1].listen: 127.0.0.1:6432 is already used by another listener"
        ),
        "{e:?}"
    );
    assert!(has(&e, "listener[2].listen: expected an address"), "{e:?}");
    assert!(has(
        &errors(&format!("{UP}listener = 3\n")),
        "listener: expected an array of tables"
    ));
    assert!(has(
        &errors(&format!("{UP}users = 3\n")),
        "users: expected tables"
    ));
    assert!(has(
        &errors(&format!("{UP}users = {{ a = 1 }}\n")),
        "users.a: expected a table"
    ));
}

#[test]
fn auth_query_settings() {
    let s = load_str(UP, &Overrides::default()).unwrap();
    assert_eq!(s.auth_user, None);
    assert_eq!(s.auth_query, DEFAULT_AUTH_QUERY);
    assert_eq!(s.auth_dbname, None);
    assert_eq!(s.auth_query_cache_ttl, secs(5));
    let s = load_str(
        &format!(
            "{UP}auth_user = \"lookup\"\nauth_dbname = \"postgres\"\n\
             auth_query = \"SELECT usename, passwd FROM pgbouncer.get_auth($1)\"\n\
             auth_query_cache_ttl = 0.5\n"
        ),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.auth_user.as_deref(), Some("lookup"));
    assert_eq!(s.auth_dbname.as_deref(), Some("postgres"));
    assert_eq!(
        s.auth_query,
        "SELECT usename, passwd FROM pgbouncer.get_auth($1)"
    );
    assert_eq!(s.auth_query_cache_ttl, Duration::from_millis(500));
    // PgBouncer writes "unset" as an empty string.
    let s = load_str(
        &format!("{UP}auth_user = \"\"\nauth_dbname = \"\"\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!((s.auth_user, s.auth_dbname), (None, None));
    let errs = errors(&format!(
        "{UP}auth_query = \" \"\nauth_query_cache_ttl = -1\nauth_user = 1\n"
    ));
    assert!(has(&errs, "auth_query: expected a query"), "{errs:?}");
    assert!(has(&errs, "auth_query_cache_ttl: expected"), "{errs:?}");
    assert!(has(&errs, "auth_user: expected a string"), "{errs:?}");
}

#[test]
fn durations_accept_floats_and_integers() {
    let s = load_str(
        &format!("{UP}query_wait_timeout = 0.5\nserver_lifetime = 0\ntcp_keepalive = 60\nserver_reset_query_always = 1\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.query_wait_timeout, Duration::from_millis(500));
    assert_eq!(s.server_lifetime, Duration::ZERO);
    assert_eq!(s.tcp_keepalive, secs(60));
    assert!(s.server_reset_query_always);
    assert!(has(
        &errors(&format!("{UP}server_lifetime = nan\n")),
        "server_lifetime: expected"
    ));
    assert!(has(
        &errors(&format!("{UP}server_lifetime = 1e300\n")),
        "server_lifetime: expected"
    ));
}

#[test]
fn unreadable_and_malformed_files() {
    let e = load(
        Some(&PathBuf::from("/nonexistent/pgtenant.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0].starts_with("config: cannot read '/nonexistent/pgtenant.toml'"),
        "{e}"
    );

    let e = errors("pool_size = 3\npool_mode = \n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("config: '") && e[0].contains("is not valid TOML at line 2, column"),
        "{e:?}"
    );
    let e = errors("a = 1\na = 2\n");
    assert!(e[0].contains("is not valid TOML at line 2"), "{e:?}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let e = errors(
        "upstream = \"postgres://u:hunter2@h/d?x=1\"\n[users.a]\npassword = [\"hunter3\"]\n",
    );
    let all = e.join("\n");
    assert!(
        !all.contains("hunter2") && !all.contains("hunter3"),
        "{all}"
    );
    let s = load_str(
        &format!("{UP}[users.b]\npassword = \"hunter4\"\n"),
        &Overrides::default(),
    )
    .unwrap();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("hunter4") && !dbg.contains("secret"), "{dbg}");
}

#[test]
fn reload_rereads_the_file_and_keeps_overrides() {
    let dir = temp_dir();
    let p = write(
        &dir,
        "pgtenant.toml",
        &format!("{UP}pool_size = 5\nworkers = 1\n"),
    );
    let o = Overrides {
        workers: Some(3),
        ..Default::default()
    };
    let s = load(Some(&p), &o).unwrap();
    assert_eq!((s.pool_size, s.workers), (5, 3));
    write(
        &dir,
        "pgtenant.toml",
        &format!("{UP}pool_size = 8\nworkers = 1\n"),
    );
    let s2 = reload(&s, &o).unwrap();
    assert_eq!((s2.pool_size, s2.workers), (8, 3));
    assert_eq!(s2.config_file, Some(p.clone()));
    write(&dir, "pgtenant.toml", "pool_size = 0\n");
    let e = reload(&s2, &o).unwrap_err();
    assert!(
        has(&e.errors, "pool_size: expected a positive integer, got 0"),
        "{e}"
    );
}

#[test]
fn the_example_file_loads() {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgtenant.toml"));
    let s = load(Some(&p), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.upstream.redacted(),
        "postgres://app:***@127.0.0.1:5432/app"
    );
    assert_eq!(s.users["app"].password.as_deref(), Some("secret"));
    // The example spells out the defaults; it must not drift from them.
    let d = load(
        None,
        &Overrides {
            upstream: Some("postgres://app:secret@127.0.0.1:5432/app".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.pool_size, d.pool_size);
    assert_eq!(s.server_lifetime, d.server_lifetime);
    assert_eq!(s.max_message_size, d.max_message_size);
    assert_eq!(s.max_buffered_message_bytes, d.max_buffered_message_bytes);
    assert_eq!(s.max_listen_channels, d.max_listen_channels);
    assert_eq!(s.max_pool_listen_channels, d.max_pool_listen_channels);
    assert_eq!(s.pool_idle_timeout, d.pool_idle_timeout);
    assert_eq!(s.server_reset_query, d.server_reset_query);
    assert_eq!(s.listeners[0], d.listeners[0]);
    assert_eq!(s.auth_user, d.auth_user);
    assert_eq!(s.auth_query, d.auth_query);
    assert_eq!(s.auth_query_cache_ttl, d.auth_query_cache_ttl);
    assert_eq!(s.reference_reads, d.reference_reads);
    assert_eq!(s.multi_tenant_reads, d.multi_tenant_reads);
}

#[test]
fn multi_tenant_reads() {
    let s = load_str(UP, &Overrides::default()).unwrap();
    assert_eq!(s.multi_tenant_reads, MultiTenantReads::Coordinator);
    let s = load_str(
        &format!("{UP}multi_tenant_reads = \"any\"\nreference_reads = \"local_worker\"\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        (s.multi_tenant_reads, s.reference_reads),
        (MultiTenantReads::Any, ReferenceReads::LocalWorker)
    );
    let errs = errors(&format!("{UP}multi_tenant_reads = \"workers\"\n"));
    assert!(
        has(
            &errs,
            "multi_tenant_reads: expected one of coordinator, any"
        ),
        "{errs:?}"
    );
}

#[test]
fn databases_entries_resolve_with_their_defaults_and_precedence() {
    let s = load_str(
        &format!(
            "{UP}pool_size = 8\nmax_user_connections = 3\n\
             [users.rep]\npool_size = 2\nmax_user_connections = 1\n\
             [databases.app]\n\
             [databases.shop]\ndbname = \"shop_prod\"\npool_size = 5\npool_mode = \"session\"\n\
             [databases.billing]\nhost = \"10.0.0.9\"\nport = \"6543\"\nuser = \"owner\"\npassword = \"pw\"\n\
             timezone = \"UTC\"\nclient_encoding = \"utf8\"\n"
        ),
        &Overrides::default(),
    )
    .unwrap();
    // The upstream's database on the upstream's server: routed.
    let t = s.target("app").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.dbname.as_str()),
        ("127.0.0.1", 5432, "app")
    );
    assert!(t.routed && t.user.is_none());
    // An alias on the same server: not the map's database, not routed.
    let t = s.target("shop").unwrap();
    assert_eq!(t.dbname, "shop_prod");
    assert!(!t.routed);
    let t = s.target("billing").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("10.0.0.9", 6543));
    assert_eq!(t.dbname, "billing");
    assert_eq!(t.user.as_deref(), Some("owner"));
    assert_eq!(
        t.startup,
        vec![
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("TimeZone".to_string(), "UTC".to_string())
        ]
    );
    // No entry, no `*`: no such database.
    assert!(s.target("other").is_none());
    // [users] over the entry over the global value.
    assert_eq!(s.limits("shop", "app").pool_size, 5);
    assert_eq!(s.limits("shop", "rep").pool_size, 2);
    assert_eq!(s.limits("app", "app").pool_size, 8);
    assert_eq!(s.limits("app", "app").max_user_connections, 3);
    assert_eq!(s.limits("app", "rep").max_user_connections, 1);
    assert_eq!(s.pool_mode_of("shop", "app"), PoolMode::Session);
    assert_eq!(s.pool_mode_of("app", "app"), PoolMode::Transaction);
    // Without [databases] every name passes through; only the upstream's is routed.
    let s = load_str(UP, &Overrides::default()).unwrap();
    assert!(s.target("app").unwrap().routed);
    let t = s.target("anything").unwrap();
    assert_eq!(t.dbname, "anything");
    assert!(!t.routed);
}

#[test]
fn databases_entry_errors_name_their_key() {
    let err = load_str(
        &format!(
            "{UP}[databases.a]\nportt = 1\n\
             [databases.b]\nport = 70000\n\
             [databases.c]\npassword = \"x\"\n\
             [databases.pgbouncer]\n\
             [databases.d]\npool_size = 2\nmin_pool_size = 3\n\
             [databases.e]\nclient_encoding = \"klingon\"\n\
             [databases.f]\npool_mode = \"sometimes\"\n"
        ),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    for want in [
        "databases.a.portt: unknown key",
        "databases.b.port: expected a port from 1 to 65535",
        "databases.c.password: needs user",
        "databases.pgbouncer: is the admin console's name",
        "databases.d.min_pool_size: 3 is larger than the entry's pool_size (2)",
        "databases.e.client_encoding: unknown encoding 'klingon'",
        "databases.f.pool_mode:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The password is never echoed.
    let err = load_str(
        &format!("{UP}[databases.c]\npassword = \"hunter2\"\n"),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn an_entry_routed_on_another_server_needs_its_own_catalog_reader() {
    let err = load_str(
        &format!("{UP}[databases.eu]\nhost = \"10.1.0.5\"\nrouting = \"on\"\n"),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("databases.eu.routing: \"on\" on another server needs user or auth_user"),
        "{err}"
    );
    for ok in [
        "[databases.eu]\nhost = \"10.1.0.5\"\nrouting = \"on\"\nauth_user = \"reader\"\n",
        "[databases.eu]\nhost = \"10.1.0.5\"\nrouting = \"on\"\nuser = \"owner\"\n",
        // The upstream's own server: its user may read it.
        "[databases.eu]\ndbname = \"eu\"\nrouting = \"on\"\n",
    ] {
        load_str(&format!("{UP}{ok}"), &Overrides::default()).unwrap();
    }
}

#[test]
fn blue_green_entries() {
    // The upstream's database (routed) with an old database beside it.
    let s = load_str(
        &format!(
            "{UP}instance_name = \"pod-a\"\ntenant_homes_lease = 4\n\
             [databases.app]\nblue = {{ host = \"old-db\", port = 5433, slots = [\"green_sub\"] }}\n\
             default_home = \"green\"\n"
        ),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.instance_name, "pod-a");
    assert_eq!(s.tenant_homes_lease, std::time::Duration::from_secs(4));
    let t = s.target("app").unwrap();
    let b = t.blue.expect("blue");
    assert_eq!(
        (b.host.as_str(), b.port, b.dbname.as_str()),
        ("old-db", 5433, "app")
    );
    assert_eq!(b.slots, ["green_sub"]);
    assert_eq!(b.default_home, crate::config::Home::Green);
    // Defaults: blue's dbname is the entry's name, default_home blue, a unique name.
    let s = load_str(
        &format!("{UP}[databases.app]\nblue = {{ host = \"old-db\" }}\n"),
        &Overrides::default(),
    )
    .unwrap();
    let b = s.target("app").unwrap().blue.unwrap();
    assert_eq!((b.port, b.default_home), (5432, crate::config::Home::Blue));
    assert!(s
        .instance_name
        .ends_with(&format!(":{}", std::process::id())));

    let err = load_str(
        &format!(
            "{UP}tenant_homes_lease = 0.5\n\
             [databases.a]\nblue = {{ port = 5433 }}\n\
             [databases.b]\nblue = {{ host = \"x\", colour = \"teal\" }}\n\
             [databases.c]\ndefault_home = \"green\"\n\
             [databases.d]\nblue = {{ host = \"x\" }}\ndefault_home = \"purple\"\n\
             [databases.e]\nblue = {{ host = \"x\" }}\npool_mode = \"session\"\n\
             [databases.f]\nblue = {{ host = \"x\" }}\nhost = \"elsewhere\"\n\
             [databases.g]\nblue = \"old-db\"\n"
        ),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    for want in [
        "tenant_homes_lease: expected 1 to 3600 seconds",
        "databases.a.blue: needs host",
        "databases.b.blue: unknown key 'colour'",
        "databases.c.default_home: needs blue",
        "databases.d.default_home: expected \"blue\" or \"green\"",
        "databases.e.blue: a blue-green entry needs transaction or statement pooling",
        "databases.f.blue: green (the entry's own host, port and dbname) must be a routed Citus cluster",
        "databases.g.blue: expected a table",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn server_pipelining_settings() {
    const UP: &str = "upstream = \"postgres://app:pw@db:5433/app\"\n";
    let d = load_str(UP, &Overrides::default()).unwrap();
    assert!(!d.server_pipelining, "off by default");
    assert_eq!(d.server_pipeline_depth, 8);
    let s = load_str(
        &format!("{UP}server_pipelining = \"auto\"\nserver_pipeline_depth = 16\n"),
        &Overrides::default(),
    )
    .unwrap();
    assert!(s.server_pipelining);
    assert_eq!(s.server_pipeline_depth, 16);
    for bad in [
        "server_pipelining = \"on\"",
        "server_pipeline_depth = 1",
        "server_pipeline_depth = 65",
    ] {
        let e = load_str(&format!("{UP}{bad}\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
    }
    let o = Overrides {
        server_pipelining: Some("sometimes".into()),
        ..Overrides::default()
    };
    assert!(load_str(UP, &o).is_err());
}

#[test]
fn io_engine_setting() {
    use crate::net::uring::IoEngine;
    assert_eq!(
        load_str(UP, &Overrides::default()).unwrap().io_engine,
        IoEngine::Auto
    );
    for (v, want) in [
        ("auto", IoEngine::Auto),
        ("io_uring", IoEngine::IoUring),
        ("epoll", IoEngine::Epoll),
    ] {
        let s = load_str(&format!("{UP}io_engine = \"{v}\"\n"), &Overrides::default()).unwrap();
        assert_eq!(s.io_engine, want);
    }
    let e = load_str(
        &format!("{UP}io_engine = \"uring\"\n"),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("io_engine") && e.contains("auto, io_uring, epoll"),
        "{e}"
    );
    let o = Overrides {
        io_engine: Some("kqueue".into()),
        ..Overrides::default()
    };
    let e = load_str(UP, &o).unwrap_err().to_string();
    assert!(e.contains("io_engine"), "{e}");
}
