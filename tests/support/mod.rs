//! The one shared harness every integration test uses (`tests/it/main.rs` loads it as
//! `mod support`; a test file directly in `tests/` can too, with `mod support;`).
//!
//! It starts real PostgreSQL servers on free loopback ports, drives the `pgtenant`
//! binary as a child process, and makes temp dirs and TLS certificates. Everything
//! panics with a clear message on setup failure (this is test code), and every server or
//! process it starts has a `Drop` guard that stops it.
//!
//! Speed: `initdb` runs once into a template directory that every test process (every
//! test binary) shares while its inputs are unchanged; each [`PgServer::start`] copies
//! the template and starts it with `pg_ctl -w start`. Servers and temp dirs live under
//! [`tmp_root`]: a tmpfs (`/dev/shm`) when there is one, where the copy and PostgreSQL's
//! own writes cost a fraction of what they cost on disk.
//!
//! Roles in every server (loopback TCP, `pg_hba` method in brackets):
//! - `postgres` / `postgres` — superuser (scram-sha-256)
//! - `app` / `secret` — CREATEDB, owns database `app` (scram-sha-256)
//! - `md5user` / `md5pass` — password stored as md5 (md5)
//! - `plainuser` / `plainpass` — cleartext (password)
//! - `trustuser` — no password (trust)
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server commands
//! run as the `postgres` OS user (`runuser -u postgres --`) in dirs that user owns.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// OS user that owns and runs the PostgreSQL servers when the tests run as root.
pub const PG_OS_USER: &str = "postgres";
/// Superuser name and password in every test server.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres";

const DIR_PREFIX: &str = "pgtenant-test-";

// ---------------------------------------------------------------------------------------
// Small helpers: running commands, ownership, ports, binaries
// ---------------------------------------------------------------------------------------

/// True when this process runs with effective uid 0 (read from /proc, no libc needed).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(|euid| euid == "0")
            .unwrap_or(false)
    })
}

/// A command that runs as the PostgreSQL OS user (`runuser` when root, as-is otherwise).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Run a command to completion, panic with its output if it fails.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Give a path (recursively) to the PostgreSQL OS user. No-op unless root.
pub fn chown_to_postgres(path: &Path) {
    if is_root() {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{PG_OS_USER}:{PG_OS_USER}"))
                .arg(path),
            "chown to postgres",
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Path of a PostgreSQL binary: `$PGTENANT_TEST_PG_BIN/name`, then
/// /usr/lib/postgresql/15/bin, then the newest /usr/lib/postgresql/*/bin, then PATH.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PGTENANT_TEST_PG_BIN") {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return p;
        }
    }
    let p15 = Path::new("/usr/lib/postgresql/15/bin").join(name);
    if p15.exists() {
        return p15;
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.exists().then_some((v, p))
        })
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "PostgreSQL binary `{name}` not found in /usr/lib/postgresql/*/bin or PATH; \
         install the `postgresql` package (scripts/test.sh does this)"
    );
}

/// A free loopback TCP port (bind 127.0.0.1:0, then release). Never hands out the same
/// port twice in one process, so parallel tests do not collide with each other.
///
/// Taken below the kernel's range for outgoing connections (32768–60999 by default): a
/// port the kernel hands out for `bind(0)` is also one it may give to any outgoing
/// connection (a test opening hundreds of client connections) between the moment it was
/// picked here and the moment the server binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port: u16 = rng.gen_range(20_000..32_000);
        if given.lock().unwrap().contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && given.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port");
}

/// Wait until 127.0.0.1:port accepts TCP connections.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Where every server, template and [`TempDir`] of the harness goes:
/// `$PGTENANT_TEST_TMPDIR` when set; else `/dev/shm` when it is a tmpfs this process can
/// write with at least 1 GiB free (memory, not disk: the servers run with `fsync = off`
/// anyway, and copying a data directory there takes a tenth of the time); else
/// `std::env::temp_dir()`.
pub fn tmp_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGTENANT_TEST_TMPDIR") {
            let dir = PathBuf::from(dir);
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("PGTENANT_TEST_TMPDIR {}: {e}", dir.display()));
            return dir;
        }
        let shm = Path::new("/dev/shm");
        if is_writable_tmpfs(shm, 1 << 30) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
}

/// `dir` is a tmpfs mount point with at least `min_free` bytes available, and this
/// process can create a directory in it.
fn is_writable_tmpfs(dir: &Path, min_free: u64) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tmpfs = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _source = f.next();
        f.next() == dir.to_str() && f.next() == Some("tmpfs")
    });
    if !tmpfs {
        return false;
    }
    // `df` rather than statvfs(3): no unsafe code in the harness.
    let free = Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    if free < min_free {
        return false;
    }
    let probe = dir.join(format!("{DIR_PREFIX}{}-probe", std::process::id()));
    let ok = fs::create_dir(&probe).is_ok();
    let _ = fs::remove_dir(&probe);
    ok
}

// ---------------------------------------------------------------------------------------
// TempDir
// ---------------------------------------------------------------------------------------

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique directory under [`tmp_root`] that removes itself on drop.
/// Named `pgtenant-test-<pid>-<n>-<label>`; leftovers of killed test processes are swept
/// (and any server in them stopped) the next time a test process starts a server.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = tmp_root().join(format!("{DIR_PREFIX}{}-{n}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        // Traversable by the postgres OS user (certs may live here).
        set_mode(&path, 0o755);
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write a file into this dir and return its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Write a pgtenant TOML config (`pgtenant.toml`) into this dir; rewrite it later
    /// with the same call (or `std::fs::write`) before sending SIGHUP.
    pub fn config_file(&self, contents: &str) -> PathBuf {
        self.write("pgtenant.toml", contents)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Sweep `pgtenant-test-<pid>-*` dirs of test processes that no longer exist, stopping
/// any PostgreSQL left running in them. Runs once per test process.
fn sweep_leftovers() {
    let mut roots = vec![tmp_root().to_path_buf()];
    if std::env::temp_dir() != roots[0] {
        roots.push(std::env::temp_dir());
    }
    for root in roots {
        sweep_leftovers_in(&root);
    }
}

fn sweep_leftovers_in(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = e.path().join("data");
        if data.join("postmaster.pid").exists() {
            let _ = pg_command(&pg_bin("pg_ctl"))
                .args(["stop", "-m", "immediate", "-D"])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// PEM files made by [`gen_certs`].
#[derive(Clone, Debug)]
pub struct Certs {
    /// CA certificate (trust root for clients).
    pub ca: PathBuf,
    /// Server certificate for CN/SAN `localhost` and IP 127.0.0.1, signed by `ca`.
    pub cert: PathBuf,
    /// Server private key (PKCS#8, mode 0600, owned by postgres when root).
    pub key: PathBuf,
}

/// Make a CA and a server certificate (ECDSA P-256) in `dir` with the openssl CLI.
pub fn gen_certs(dir: &Path) -> Certs {
    let openssl = |args: &[&str], what: &str| {
        run_ok(Command::new("openssl").current_dir(dir).args(args), what);
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=pgtenant test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca_args, "openssl: make test CA");
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr_args, "openssl: make server key/csr");
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
        ],
        "openssl: sign server cert",
    );
    let certs = Certs {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    set_mode(&certs.ca, 0o644);
    set_mode(&certs.cert, 0o644);
    set_mode(&certs.key, 0o600);
    for p in [&certs.ca, &certs.cert, &certs.key] {
        chown_to_postgres(p);
    }
    certs
}

// ---------------------------------------------------------------------------------------
// PostgreSQL template (initdb once per process)
// ---------------------------------------------------------------------------------------

/// Settings every test server gets (appended to the template's postgresql.conf).
const BASE_CONF: &str = "\n# --- pgtenant test harness ---\n\
listen_addresses = '127.0.0.1'\n\
max_connections = 300\n\
shared_buffers = 16MB\n\
fsync = off\n\
synchronous_commit = off\n\
full_page_writes = off\n\
log_min_messages = warning\n\
log_connections = off\n\
include_if_exists = 'pgtenant_test.conf'\n";

/// Default pg_hba rules; lines from [`PgServerBuilder::hba`] go before them (first match
/// wins). Unix-socket connections are trusted (only the harness uses the socket).
const BASE_HBA: &str = "local all all trust\n\
host all trustuser 127.0.0.1/32 trust\n\
host all md5user 127.0.0.1/32 md5\n\
host all plainuser 127.0.0.1/32 password\n\
host all all 127.0.0.1/32 scram-sha-256\n";

const SETUP_SQL: &[&str] = &[
    "ALTER ROLE postgres PASSWORD 'postgres';",
    "CREATE ROLE app LOGIN CREATEDB PASSWORD 'secret';",
    "SET password_encryption = 'md5';",
    "CREATE ROLE md5user LOGIN PASSWORD 'md5pass';",
    "RESET password_encryption;",
    "CREATE ROLE plainuser LOGIN PASSWORD 'plainpass';",
    "CREATE ROLE trustuser LOGIN;",
    "CREATE DATABASE app OWNER app;",
];

/// Every role may create objects in database `app`'s public schema.
const SETUP_APP_DB_SQL: &[&str] = &["GRANT ALL ON SCHEMA public TO PUBLIC;"];

struct Template {
    data: PathBuf,
}

/// What the template is made from: the PostgreSQL binaries (path, size, mtime), the
/// settings and setup SQL above, and who runs the servers. A change makes a new template.
fn template_key() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for bin in ["initdb", "postgres"] {
        let p = pg_bin(bin);
        p.hash(&mut h);
        if let Ok(m) = fs::metadata(&p) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    (BASE_CONF, BASE_HBA, SETUP_SQL, SETUP_APP_DB_SQL).hash(&mut h);
    (SUPERUSER, SUPERUSER_PASSWORD, is_root()).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The template data directory, `<tmp_root>/pgtenant-test-template-<key>/data`. The
/// first test process that needs it runs `initdb` and the setup into a directory of its
/// own and renames that into place (atomic: a template is whole or absent); the others,
/// in the same run or a later one, copy it as it is. Nothing ever starts a server on it.
fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        sweep_leftovers();
        let shared = tmp_root().join(format!("{DIR_PREFIX}template-{}", template_key()));
        let data = shared.join("data");
        if !data.join("PG_VERSION").exists() {
            make_template(&shared);
        }
        Template { data }
    })
}

/// Build a template in `<tmp_root>/pgtenant-test-<pid>-template` (swept if this process
/// dies) and rename it to `shared`, unless another process got there first.
fn make_template(shared: &Path) {
    let dir = tmp_root().join(format!("{DIR_PREFIX}{}-template", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create template dir");
    set_mode(&dir, 0o700);
    chown_to_postgres(&dir);
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
    chown_to_postgres(&pwfile);

    run_ok(
        pg_command(&pg_bin("initdb"))
            .current_dir(&dir)
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--encoding=UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--no-sync", "--no-instructions", "--wal-segsize=1"])
            .arg(format!("--pwfile={}", pwfile.display())),
        "initdb (template)",
    );
    let _ = fs::remove_file(&pwfile);
    single_user(&dir, &data, "postgres", SETUP_SQL);
    single_user(&dir, &data, "app", SETUP_APP_DB_SQL);

    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("open template postgresql.conf");
    conf.write_all(BASE_CONF.as_bytes())
        .expect("write postgresql.conf");
    fs::write(data.join("pg_hba.conf"), BASE_HBA).expect("write pg_hba.conf");
    chown_to_postgres(&data);
    remove_old_templates(shared);
    if fs::rename(&dir, shared).is_err() {
        // Another process renamed its template into place first: use that one.
        let _ = fs::remove_dir_all(&dir);
        assert!(
            shared.join("data").join("PG_VERSION").exists(),
            "could not put the PostgreSQL template in place at {}",
            shared.display()
        );
    }
}

/// Remove templates made from other inputs (see [`template_key`]) more than an hour ago,
/// so that /dev/shm does not collect one per edit of the settings above.
fn remove_old_templates(keep: &Path) {
    let prefix = format!("{DIR_PREFIX}template-");
    let Ok(entries) = fs::read_dir(tmp_root()) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if e.file_name().to_string_lossy().starts_with(&prefix) && e.path() != keep && old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Run SQL in single-user mode (no server, no auth needed), one statement per line.
fn single_user(cwd: &Path, data: &Path, db: &str, sql: &[&str]) {
    let mut child = pg_command(&pg_bin("postgres"))
        .current_dir(cwd)
        .arg("--single")
        .arg("-D")
        .arg(data)
        .args(["-F", "-c", "log_min_messages=warning", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postgres --single");
    {
        let mut stdin = child.stdin.take().unwrap();
        for s in sql {
            writeln!(stdin, "{s}").expect("write to postgres --single");
        }
    }
    let out = child.wait_with_output().expect("wait postgres --single");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") || stderr.contains("FATAL") {
        panic!(
            "template setup SQL failed in db {db} ({}):\n{stderr}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

// ---------------------------------------------------------------------------------------
// PgServer
// ---------------------------------------------------------------------------------------

/// Options for a test PostgreSQL server. `PgServer::builder().conf(..).start()`.
#[derive(Default, Clone)]
pub struct PgServerBuilder {
    conf: Vec<String>,
    hba: Vec<String>,
    ssl: Option<Certs>,
    standby: bool,
}

impl PgServerBuilder {
    /// An extra postgresql.conf line, e.g. `"log_statement = 'all'"`.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// An extra pg_hba.conf line, placed before the defaults (so it wins).
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }

    /// Turn on server-side TLS with this cert/key (and CA as `ssl_ca_file`).
    pub fn ssl(mut self, certs: &Certs) -> Self {
        self.ssl = Some(certs.clone());
        self
    }

    /// Start it as a hot standby (`standby.signal`, no primary: it stays in recovery
    /// and answers read-only statements, refusing writes and LISTEN as a replica does).
    pub fn standby(mut self) -> Self {
        self.standby = true;
        self
    }

    pub fn start(self) -> PgServer {
        PgServer::start_with(self)
    }
}

/// A running PostgreSQL server on a free loopback port, in its own temp dir.
/// Dropping it stops the server (`pg_ctl stop -m immediate`) and removes the dir.
pub struct PgServer {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    running: bool,
}

impl PgServer {
    /// A server with the default roles, database `app` and pg_hba (see module docs).
    pub fn start() -> PgServer {
        PgServerBuilder::default().start()
    }

    pub fn builder() -> PgServerBuilder {
        PgServerBuilder::default()
    }

    fn start_with(opts: PgServerBuilder) -> PgServer {
        let tpl = template();
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tmp_root().join(format!("{DIR_PREFIX}{}-{n}-pg", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create server dir");
        set_mode(&dir, 0o700);
        chown_to_postgres(&dir);
        let data = dir.join("data");
        run_ok(
            pg_command(Path::new("cp"))
                .current_dir(&dir)
                .arg("-a")
                .arg(&tpl.data)
                .arg(&data),
            "copy template data dir",
        );

        let mut hba = String::new();
        for l in &opts.hba {
            hba.push_str(l);
            hba.push('\n');
        }
        hba.push_str(BASE_HBA);
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if opts.standby {
            fs::write(data.join("standby.signal"), "").expect("write standby.signal");
        }

        let mut conf = format!("unix_socket_directories = '{}'\n", dir.display());
        if let Some(certs) = &opts.ssl {
            for (src, name, mode) in [
                (&certs.cert, "server.crt", 0o644),
                (&certs.key, "server.key", 0o600),
                (&certs.ca, "ca.crt", 0o644),
            ] {
                let dst = data.join(name);
                fs::copy(src, &dst)
                    .unwrap_or_else(|e| panic!("copy {} into data dir: {e}", src.display()));
                set_mode(&dst, mode);
            }
            conf.push_str(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'ca.crt'\n",
            );
        }
        for l in &opts.conf {
            conf.push_str(l);
            conf.push('\n');
        }

        let mut server = PgServer {
            dir,
            data,
            port: 0,
            running: false,
        };
        // Pick a port and start; another process may grab the port in between: retry.
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            fs::write(
                server.data.join("pgtenant_test.conf"),
                format!("port = {port}\n{conf}"),
            )
            .expect("write pgtenant_test.conf");
            chown_to_postgres(&server.data);
            server.port = port;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.running = true;
                    return server;
                }
                Err(e) => {
                    let log = server.log();
                    if log.contains("could not bind") || log.contains("Address already in use") {
                        last_err = e;
                        let _ = fs::remove_file(server.log_path());
                        continue;
                    }
                    panic!("PostgreSQL failed to start: {e}\n--- server log ---\n{log}");
                }
            }
        }
        panic!("PostgreSQL failed to start after 5 port attempts: {last_err}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let out = pg_command(&pg_bin("pg_ctl"))
            .current_dir(&self.dir)
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the unix socket (and the server log).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://user:password@127.0.0.1:port/db` (empty password: no `:password`).
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        if password.is_empty() {
            format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
        } else {
            format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A tokio-postgres client as `user` over TCP (no TLS). Panics on failure.
    pub async fn client(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        connect(&self.url(user, password, db)).await
    }

    /// A superuser tokio-postgres client over TCP, database `postgres`.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        self.client(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await
    }

    /// A superuser tokio-postgres client on database `app`, after it ran `setup` there
    /// (the tables a test reads behind pgtenant's back).
    pub async fn app_admin(&self, setup: &str) -> tokio_postgres::Client {
        let c = self.client(SUPERUSER, SUPERUSER_PASSWORD, "app").await;
        c.batch_execute(setup)
            .await
            .unwrap_or_else(|e| panic!("{setup}: {e}"));
        c
    }

    /// Run psql against this server as the superuser over TCP, database `postgres`
    /// (`-X -v ON_ERROR_STOP=1` added; later `-d`/`-U` in `args` override).
    pub fn psql(&self, args: &[&str]) -> Output {
        Command::new(pg_bin("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(args)
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// Run one SQL string with psql (`-Atc`), panic on failure, return trimmed stdout.
    pub fn psql_ok(&self, sql: &str) -> String {
        let out = self.psql(&["-At", "-c", sql]);
        if !out.status.success() {
            panic!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Number of client backends of `user` in database `db` (not counting the
    /// connection that asks).
    pub async fn count_backends(&self, user: &str, db: &str) -> i64 {
        let c = self.admin_client().await;
        let row = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND datname = $2 \
                 AND backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %' AND pid <> pg_backend_pid()",
                &[&user, &db],
            )
            .await
            .expect("count backends");
        row.get(0)
    }

    /// Poll [`count_backends`](Self::count_backends) until it equals `expected`;
    /// return the last count seen.
    pub async fn wait_for_backends(
        &self,
        user: &str,
        db: &str,
        expected: i64,
        timeout: Duration,
    ) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_backends(user, db).await;
            if n == expected || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Poll until no session of `user` is idle in a transaction (an aborted one
    /// included); return how many were left at `timeout`.
    pub async fn wait_none_idle_in_transaction(&self, user: &str, timeout: Duration) -> i64 {
        let admin = self.admin_client().await;
        let deadline = Instant::now() + timeout;
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE usename = $1 AND state LIKE 'idle in transaction%'",
                    &[&user],
                )
                .await
                .expect("count idle-in-transaction sessions")
                .get(0);
            if n == 0 || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stop the server (immediate mode); it keeps its dir and port for [`start_again`].
    ///
    /// [`start_again`]: Self::start_again
    pub fn stop(&mut self) {
        if self.running {
            let _ = pg_command(&pg_bin("pg_ctl"))
                .current_dir(&self.dir)
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .stdin(Stdio::null())
                .output();
            self.running = false;
        }
    }

    /// Stop the server in fast mode (`pg_ctl stop -m fast`: every backend gets SIGTERM
    /// and sends its client `FATAL 57P01`); it keeps its dir and port for
    /// [`start_again`](Self::start_again).
    pub fn stop_fast(&mut self) {
        if self.running {
            run_ok(
                pg_command(&pg_bin("pg_ctl"))
                    .current_dir(&self.dir)
                    .args(["stop", "-w", "-t", "60", "-m", "fast", "-D"])
                    .arg(&self.data),
                "pg_ctl stop -m fast",
            );
            self.running = false;
        }
    }

    /// `kill -9` one backend of this server. PostgreSQL then ends every other backend
    /// (they send a `WARNING 57P02`, "crash of another server process", and close) and
    /// restarts after crash recovery; meanwhile logins get `57P03`.
    pub fn kill_backend(&self, pid: i32) {
        assert!(pid > 0, "not a backend pid: {pid}");
        assert_eq!(
            self.psql_ok(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            )),
            "1",
            "pid {pid} is not a backend of the server on port {}",
            self.port
        );
        run_ok(
            Command::new("kill").args(["-9", &pid.to_string()]),
            "kill -9 a backend",
        );
    }

    /// Start a stopped server again on the same port.
    pub fn start_again(&mut self) {
        if !self.running {
            if let Err(e) = self.pg_ctl_start() {
                panic!(
                    "PostgreSQL restart failed: {e}\n--- server log ---\n{}",
                    self.log()
                );
            }
            self.running = true;
        }
    }

    /// Re-read postgresql.conf / pg_hba.conf (`pg_ctl reload`).
    pub fn reload(&self) {
        run_ok(
            pg_command(&pg_bin("pg_ctl"))
                .current_dir(&self.dir)
                .args(["reload", "-D"])
                .arg(&self.data),
            "pg_ctl reload",
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The first column of the first row of a simple query, as text (NULL as "<null>").
/// Panics on an error or when there is no row.
pub async fn scalar(c: &tokio_postgres::Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", &sql[..sql.len().min(60)]));
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("<null>").to_string();
        }
    }
    panic!("{sql}: no row");
}

/// Connect with tokio-postgres (no TLS), spawning the connection task. Panics on failure.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", redact(url)));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Try to connect with tokio-postgres (no TLS), returning the error instead of panicking.
pub async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `postgres://user:***@host/db` for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Pgtenant process
// ---------------------------------------------------------------------------------------

/// Signals [`Pgtenant::signal`] can send.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Kill,
    /// Freeze the process (SIGSTOP); `Cont` resumes it.
    Stop,
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// A running `pgtenant` binary. Its stdout and stderr go to one log file
/// ([`logs`](Self::logs)). Dropping it kills the process and removes its temp dir.
pub struct Pgtenant {
    child: Child,
    port: u16,
    dir: TempDir,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Pgtenant {
    /// Wait until the log contains `needle` (e.g. "shard map loaded"); panic with the
    /// logs after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in the logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawn `pgtenant <args>` with `env` added, and wait (10 s) until it accepts TCP.
    ///
    /// If neither `args` has `--listen` nor `env` has `PGTENANT_LISTEN`, appends
    /// `--listen 127.0.0.1:<free port>`. Panics with the logs on timeout or early exit.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Pgtenant {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let port = match listen_port(&args, env) {
            Some(p) => p,
            None => {
                let p = free_port();
                args.push("--listen".into());
                args.push(format!("127.0.0.1:{p}"));
                p
            }
        };
        let mut p = Self::spawn_owned(args, env, port, false);
        p.wait_ready(Duration::from_secs(10));
        p
    }

    /// [`Pgtenant::start`] of `pgtenant run --config <cfg>` with its /metrics endpoint on
    /// `127.0.0.1:<http>`.
    pub fn start_with_metrics(cfg: &Path, http: u16) -> Pgtenant {
        let addr = format!("127.0.0.1:{http}");
        let cfg = cfg.to_str().expect("a UTF-8 config path");
        Self::start(&["run", "--config", cfg, "--http-listen", &addr], &[])
    }

    /// Spawn `pgtenant <args>` exactly as given (no `--listen` added, no waiting); for
    /// tests that expect it to fail, or that set `listen` in a config file
    /// (then call [`wait_ready`](Self::wait_ready) with the port in `expect_port`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)], expect_port: Option<u16>) -> Pgtenant {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let port = expect_port.or_else(|| listen_port(&args, env)).unwrap_or(0);
        Self::spawn_owned(args, env, port, false)
    }

    /// [`Pgtenant::spawn`] under a seccomp filter that refuses the io_uring system calls
    /// with EPERM, as Docker's and containerd's default profiles do.
    pub fn spawn_without_io_uring(
        args: &[&str],
        env: &[(&str, &str)],
        expect_port: Option<u16>,
    ) -> Pgtenant {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let port = expect_port.or_else(|| listen_port(&args, env)).unwrap_or(0);
        Self::spawn_owned(args, env, port, true)
    }

    fn spawn_owned(
        args: Vec<String>,
        env: &[(&str, &str)],
        port: u16,
        deny_io_uring: bool,
    ) -> Pgtenant {
        let dir = TempDir::new("pgtenant");
        let log_path = dir.path().join("pgtenant.log");
        let log = fs::File::create(&log_path).expect("create pgtenant log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtenant"));
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Do not let the developer's environment leak into the test.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PGTENANT_") {
                cmd.env_remove(k);
            }
        }
        // Many pgtenants run in parallel: none may take the default metrics port
        // (127.0.0.1:9930). A test that wants the endpoints passes `--http-listen`
        // (or sets PGTENANT_HTTP_LISTEN in `env`, which wins over this).
        cmd.env("PGTENANT_HTTP_LISTEN", "127.0.0.1:0");
        // The whole suite can run under one I/O engine or with pipelining on:
        // PGTENANT_TEST_IO_ENGINE / PGTENANT_TEST_SERVER_PIPELINING reach every pgtenant
        // started here (a test's own `env` still wins).
        for (from, to) in [
            ("PGTENANT_TEST_IO_ENGINE", "PGTENANT_IO_ENGINE"),
            (
                "PGTENANT_TEST_SERVER_PIPELINING",
                "PGTENANT_SERVER_PIPELINING",
            ),
        ] {
            if let Some(v) = std::env::var_os(from) {
                cmd.env(to, v);
            }
        }
        if deny_io_uring {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl calls between fork and exec (async-signal-safe).
            unsafe { cmd.pre_exec(seccomp::deny_io_uring) };
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pgtenant {args:?}: {e}"));
        Pgtenant {
            child,
            port,
            dir,
            log_path,
            exit: None,
        }
    }

    /// Wait until the listen port accepts TCP; panic with the logs on timeout or exit.
    pub fn wait_ready(&mut self, timeout: Duration) {
        assert!(self.port != 0, "Pgtenant::wait_ready: no listen port known");
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "pgtenant exited early ({status}) before listening on {addr}\n\
                     --- pgtenant logs ---\n{}",
                    self.logs()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pgtenant did not listen on {addr} within {timeout:?}\n\
                     --- pgtenant logs ---\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port pgtenant listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `postgres://user:password@127.0.0.1:<pgtenant port>/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        if password.is_empty() {
            format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
        } else {
            format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
        }
    }

    /// This process's own temp dir (its cwd; holds the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything pgtenant wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send a signal with the `kill` command.
    pub fn signal(&self, sig: Signal) {
        run_ok(
            Command::new("kill")
                .arg(format!("-{}", sig.name()))
                .arg(self.child.id().to_string()),
            "kill",
        );
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait pgtenant");
        }
        self.exit
    }

    /// Wait up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Pgtenant {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A startup packet: protocol `version` and NUL-terminated (name, value) pairs.
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = version.to_be_bytes().to_vec();
    for (k, v) in params {
        for s in [k, v] {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
    }
    b.push(0);
    let mut pkt = ((b.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend(b);
    pkt
}

/// A protocol 3.0 startup packet for `user` and `db`.
pub fn startup_v3(user: &str, db: &str) -> Vec<u8> {
    startup_packet(196608, &[("user", user), ("database", db)])
}

/// Run `pgtenant <args>` to completion (e.g. `check --config FILE`); returns the exit
/// status and combined stdout+stderr. Panics if it runs longer than `timeout`.
pub fn pgtenant_run(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut p = Pgtenant::spawn(args, env, None);
    match p.wait_exit(timeout) {
        Some(status) => (status, p.logs()),
        None => panic!(
            "pgtenant {args:?} still running after {timeout:?}\n--- logs ---\n{}",
            p.logs()
        ),
    }
}

/// The port in `--listen HOST:PORT` / `--listen=HOST:PORT` or `PGTENANT_LISTEN`.
fn listen_port(args: &[String], env: &[(&str, &str)]) -> Option<u16> {
    let parse = |v: &str| v.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--listen" {
            return it.next().and_then(|v| parse(v));
        }
        if let Some(v) = a.strip_prefix("--listen=") {
            return parse(v);
        }
    }
    env.iter()
        .find(|(k, _)| *k == "PGTENANT_LISTEN")
        .and_then(|(_, v)| parse(v))
}

// The emulated Citus cluster (coordinator + 2 workers): see citus.rs.
pub mod citus;
pub mod proxy;
pub mod seccomp;
pub mod wire;
