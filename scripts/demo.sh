#!/usr/bin/env bash
# Try pgtenant in one command on a fresh Debian/Ubuntu machine.
#
#   ./scripts/demo.sh
#
# Installs PostgreSQL if missing, builds pgtenant (release), starts a private
# PostgreSQL in ./.demo/ on a free loopback port (55432 or the first free one above;
# never 5432), creates role app (password "secret") and database app, then runs
# pgtenant in the foreground on 127.0.0.1:6432 (PGTENANT_DEMO_PORT to change).
# Ctrl-C stops pgtenant and the PostgreSQL this script started. Safe to re-run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
LISTEN_PORT=${PGTENANT_DEMO_PORT:-6432}

say() { printf '==> %s\n' "$*"; }
die() {
    echo "demo: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# PostgreSQL refuses to run as root: run server commands as the postgres OS user then.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bindir() {
    if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# --- 1. packages -----------------------------------------------------------------------
if [ -z "$(pg_bindir)" ]; then
    say "installing PostgreSQL"
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is missing and there is no apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi
PGBIN=$(pg_bindir) || die "PostgreSQL binaries not found under /usr/lib/postgresql"

# --- 2. build --------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
say "building pgtenant (release)"
cargo build --release
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtenant
[ -x "$BIN" ] || die "built binary not found at $BIN"

port_in_use "$LISTEN_PORT" && die "port $LISTEN_PORT is busy; set PGTENANT_DEMO_PORT=<port>"

# --- 3. private PostgreSQL in .demo/ ----------------------------------------------------
DEMO=$ROOT/.demo
mkdir -p "$DEMO"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$DEMO"
    chmod 0700 "$DEMO"
    if ! runuser -u postgres -- test -w "$DEMO"; then
        # The checkout is not reachable by the postgres user (e.g. under /root).
        DEMO=/var/tmp/pgtenant-demo-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
        mkdir -p "$DEMO"
        chown postgres:postgres "$DEMO"
        chmod 0700 "$DEMO"
        say "postgres user cannot reach $ROOT/.demo; using $DEMO"
    fi
fi
PGDATA=$DEMO/pgdata
PGLOG=$DEMO/postgres.log

# A demo server left running by a killed run: stop it, we start it again below.
if [ -f "$PGDATA/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w >/dev/null 2>&1 || true
fi

init_cluster() {
    say "initdb in $PGDATA"
    rm -rf "$PGDATA"
    local pwfile=$DEMO/pwfile
    echo postgres >"$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$pwfile"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        --no-instructions >/dev/null
    rm -f "$pwfile"
    echo "include_if_exists = 'pgtenant_demo.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
}

start_cluster() {
    PGPORT=55432
    while port_in_use "$PGPORT"; do PGPORT=$((PGPORT + 1)); done
    printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" "$PGPORT" |
        as_pg tee "$PGDATA/pgtenant_demo.conf" >/dev/null
    as_pg "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PGLOG" -w -t 60 >/dev/null
}

if [ ! -f "$PGDATA/PG_VERSION" ] || [ "$(cat "$PGDATA/PG_VERSION")" != "$("$PGBIN/pg_ctl" --version | sed -E 's/.* ([0-9]+).*/\1/')" ]; then
    init_cluster
fi
if ! start_cluster; then
    say "could not start the existing cluster; recreating it"
    init_cluster
    start_cluster || {
        tail -n 20 "$PGLOG" >&2 || true
        die "PostgreSQL did not start (log: $PGLOG)"
    }
fi

cleanup() {
    trap - EXIT INT TERM
    echo
    say "stopping PostgreSQL in $PGDATA"
    as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "PostgreSQL $(cat "$PGDATA/PG_VERSION") on 127.0.0.1:$PGPORT (log: $PGLOG)"

sql() {
    PGPASSWORD=postgres "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "$1"
}
if [ -z "$(sql "SELECT 1 FROM pg_roles WHERE rolname = 'app'")" ]; then
    sql "CREATE ROLE app LOGIN CREATEDB PASSWORD 'secret'"
else
    sql "ALTER ROLE app LOGIN PASSWORD 'secret'"
fi
if [ -z "$(sql "SELECT 1 FROM pg_database WHERE datname = 'app'")" ]; then
    sql "CREATE DATABASE app OWNER app"
fi

# --- 4. pgtenant in the foreground -----------------------------------------------------
cat <<EOF

pgtenant listens on 127.0.0.1:$LISTEN_PORT. In another terminal:

    PGPASSWORD=secret psql -h 127.0.0.1 -p $LISTEN_PORT -U app app

Ctrl-C stops pgtenant and this PostgreSQL.

EOF
status=0
"$BIN" run --listen "127.0.0.1:$LISTEN_PORT" \
    --upstream "postgres://app:secret@127.0.0.1:$PGPORT/app" || status=$?
exit "$status"
