//! The command line: `pgtenant run` (the default) and `pgtenant check`.
//!
//! Every setting flag also reads a `PGTENANT_*` environment variable; clap gives the flag
//! precedence over the variable, and `config::load` puts both above the file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pgtenant::config::{self, LogFormat, Overrides, Settings};
use pgtenant::logging;

#[derive(Debug, Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "Tenant-aware, SQL-routing PostgreSQL connection pooler for Citus",
    // `pgtenant --config f` means `pgtenant run --config f`: a sidecar's command line
    // stays short, and flags given before a subcommand are refused instead of ignored.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pooler (the default when no subcommand is given).
    Run(SettingsArgs),
    /// Validate the configuration (file, environment, flags) and exit: 0 and
    /// "configuration OK" if it is valid, 1 with every error otherwise.
    Check(SettingsArgs),
    /// Translate a PgBouncer configuration (pgbouncer.ini, with its %include files) to
    /// pgtenant's TOML on standard output, every setting it could not carry as a comment.
    /// Exit status 1 when a setting would make pgtenant run differently.
    Import {
        /// The pgbouncer.ini to read.
        #[arg(value_name = "PGBOUNCER_INI")]
        file: PathBuf,
    },
    /// Blue-green: move tenants between blue and green through a running instance's admin
    /// console, e.g. `pgtenant migrate TENANT 42 TABLE orders TO green WAIT SYNC`; with
    /// no words, SHOW MIGRATION. Exit status 1 when the command fails or a cutover aborts.
    Migrate {
        /// The admin console to send the command to.
        #[arg(
            long,
            env = "PGTENANT_ADMIN_URL",
            value_name = "URL",
            default_value = "postgres://pgtenant@127.0.0.1:6432/pgtenant",
            hide_env_values = true
        )]
        admin: String,
        /// What follows MIGRATE on the console: TENANT <values> [TABLE <t>] TO green|blue
        /// [TIMEOUT <duration>] [WAIT SYNC] [DATABASE <db>].
        #[arg(
            value_name = "WORDS",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        words: Vec<String>,
    },
}

/// The settings that can come from the command line or the environment.
#[derive(Debug, Default, Args)]
struct SettingsArgs {
    /// TOML configuration file.
    #[arg(short, long, env = "PGTENANT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the primary listener, e.g. 127.0.0.1:6432.
    #[arg(long, env = "PGTENANT_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Server to pool: postgres://user:password@host:port/database.
    // The value holds a password: never show it in --help.
    #[arg(
        long,
        env = "PGTENANT_UPSTREAM",
        value_name = "URL",
        hide_env_values = true
    )]
    upstream: Option<String>,
    /// session, transaction or statement.
    #[arg(long, env = "PGTENANT_POOL_MODE", value_name = "MODE")]
    pool_mode: Option<String>,
    /// Server connections per pool.
    #[arg(long, env = "PGTENANT_POOL_SIZE", value_name = "N")]
    pool_size: Option<u32>,
    /// plain or json.
    #[arg(long, env = "PGTENANT_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    /// tracing filter, e.g. info or pgtenant=debug,info (RUST_LOG wins if set).
    #[arg(long, env = "PGTENANT_LOG_LEVEL", value_name = "FILTER")]
    log_level: Option<String>,
    /// Runtime worker threads; 0 = one per core.
    #[arg(long, env = "PGTENANT_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// I/O engine: auto (io_uring when it works here, else epoll), io_uring or epoll.
    #[arg(long, env = "PGTENANT_IO_ENGINE", value_name = "ENGINE")]
    io_engine: Option<String>,
    /// Client auth on the primary listener: scram-sha-256, md5 or trust.
    #[arg(long, env = "PGTENANT_AUTH_TYPE", value_name = "TYPE")]
    auth_type: Option<String>,
    /// Largest number of client connections.
    #[arg(long, env = "PGTENANT_MAX_CLIENT_CONN", value_name = "N")]
    max_client_conn: Option<u32>,
    /// Largest number of connections still logging in.
    #[arg(long, env = "PGTENANT_MAX_STARTUP_CLIENTS", value_name = "N")]
    max_startup_clients: Option<u32>,
    /// Seconds a client may take from connect to authenticated (at least 1).
    #[arg(long, env = "PGTENANT_CLIENT_LOGIN_TIMEOUT", value_name = "SECONDS")]
    client_login_timeout: Option<f64>,
    /// Address for /metrics, /healthz and /readyz, e.g. 0.0.0.0:9930 ("" = off).
    #[arg(long, env = "PGTENANT_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<String>,
    /// Users allowed every admin console command, comma-separated.
    #[arg(long, env = "PGTENANT_ADMIN_USERS", value_name = "USERS")]
    admin_users: Option<String>,
    /// Users allowed the admin console's SHOW commands, comma-separated.
    #[arg(long, env = "PGTENANT_STATS_USERS", value_name = "USERS")]
    stats_users: Option<String>,
    /// Server-side pipelining while a pool is saturated: off or auto.
    #[arg(long, env = "PGTENANT_SERVER_PIPELINING", value_name = "MODE")]
    server_pipelining: Option<String>,
}

impl SettingsArgs {
    fn into_overrides(self) -> Overrides {
        Overrides {
            config: self.config,
            listen: self.listen,
            upstream: self.upstream,
            pool_mode: self.pool_mode,
            pool_size: self.pool_size,
            log_format: self.log_format,
            log_level: self.log_level,
            workers: self.workers,
            io_engine: self.io_engine,
            auth_type: self.auth_type,
            max_client_conn: self.max_client_conn,
            max_startup_clients: self.max_startup_clients,
            client_login_timeout: self.client_login_timeout,
            http_listen: self.http_listen,
            admin_users: self.admin_users,
            stats_users: self.stats_users,
            server_pipelining: self.server_pipelining,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => check(args.into_overrides()),
        Some(Command::Run(args)) => run(args.into_overrides()),
        Some(Command::Import { file }) => import(&file),
        Some(Command::Migrate { admin, words }) => migrate(&admin, &words),
        None => run(cli.settings.into_overrides()),
    }
}

/// `pgtenant migrate [--admin URL] WORDS…`: MIGRATE WORDS (or SHOW MIGRATION) on the
/// console.
fn migrate(admin: &str, words: &[String]) -> ExitCode {
    let command = if words.is_empty() {
        "SHOW MIGRATION".to_string()
    } else {
        // Each word quoted as the console reads it: a value with spaces or quotes stays
        // one word.
        let quoted: Vec<String> = words
            .iter()
            .map(|w| {
                if w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ",._-".contains(c))
                {
                    w.clone()
                } else {
                    format!("'{}'", w.replace('\'', "''"))
                }
            })
            .collect();
        format!("MIGRATE {}", quoted.join(" "))
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgtenant migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(pgtenant::bluegreen::console::run(admin, &command)) {
        Ok(out) => {
            print!("{out}");
            if out
                .lines()
                .any(|l| l == "result: aborted" || l == "result: refused")
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("pgtenant migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pgtenant import pgbouncer.ini > pgtenant.toml`.
fn import(file: &std::path::Path) -> ExitCode {
    let lines = match config::pgbouncer::read(file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let t = config::pgbouncer::translate(&lines);
    print!("{}", config::pgbouncer::to_toml(file, &t));
    for e in &t.errors {
        eprintln!("{e}");
    }
    if t.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `pgtenant check`: every error on its own line on stderr, "key: message".
fn check(overrides: Overrides) -> ExitCode {
    match config::load(overrides.config.as_ref(), &overrides) {
        Ok(_) => {
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in &e.errors {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `pgtenant run`: load, set up logging, start.
fn run(overrides: Overrides) -> ExitCode {
    match config::load(overrides.config.as_ref(), &overrides) {
        Ok(settings) => {
            logging::init(settings.log_format, &settings.log_level);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                config = ?settings.config_file,
                upstream = %settings.upstream.redacted(),
                "configuration loaded"
            );
            for n in &settings.notes {
                tracing::warn!(note = %n, "configuration: not carried");
            }
            start(settings, overrides)
        }
        Err(e) => {
            // Log through tracing in the format asked for, so a JSON log pipeline sees
            // why the pod is crash-looping.
            let format = match overrides.log_format.as_deref() {
                Some(f) if f.eq_ignore_ascii_case("json") => LogFormat::Json,
                _ => LogFormat::Plain,
            };
            logging::init(format, "info");
            for line in &e.errors {
                tracing::error!(error = %line, "configuration error");
            }
            ExitCode::FAILURE
        }
    }
}

/// Hand over to the server. Replaced by `pgtenant::server::run(settings, overrides)` when
/// the server module is merged.
fn start(settings: Settings, overrides: Overrides) -> ExitCode {
    pgtenant::server::run(settings, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_overrides() {
        let cli = Cli::try_parse_from([
            "pgtenant",
            "run",
            "--config",
            "f.toml",
            "--listen",
            "0.0.0.0:1",
            "--upstream",
            "postgres://a@b",
            "--pool-mode",
            "session",
            "--pool-size",
            "3",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--workers",
            "2",
            "--auth-type",
            "md5",
            "--max-client-conn",
            "9",
            "--max-startup-clients",
            "11",
            "--client-login-timeout",
            "2.5",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected run")
        };
        let o = args.into_overrides();
        assert_eq!(o.config, Some(PathBuf::from("f.toml")));
        assert_eq!(o.listen.as_deref(), Some("0.0.0.0:1"));
        assert_eq!(o.upstream.as_deref(), Some("postgres://a@b"));
        assert_eq!(o.pool_mode.as_deref(), Some("session"));
        assert_eq!(o.pool_size, Some(3));
        assert_eq!(o.log_format.as_deref(), Some("json"));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.workers, Some(2));
        assert_eq!(o.auth_type.as_deref(), Some("md5"));
        assert_eq!(o.max_client_conn, Some(9));
        assert_eq!(o.max_startup_clients, Some(11));
        assert_eq!(o.client_login_timeout, Some(2.5));
    }

    #[test]
    fn run_is_the_default_and_check_takes_a_config() {
        let cli = Cli::try_parse_from(["pgtenant", "--pool-size", "4"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.pool_size, Some(4));
        let cli = Cli::try_parse_from(["pgtenant", "check", "--config", "x.toml"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Check(ref a)) if a.config == Some("x.toml".into()))
        );
        assert!(Cli::try_parse_from(["pgtenant", "--pool-size", "x"]).is_err());
    }
}
