#!/usr/bin/env bash
# Try pgtenant in one command on a fresh Debian/Ubuntu machine.
#
#   ./scripts/demo.sh
#
# Installs PostgreSQL if missing, builds pgtenant (release) and starts a local three-node
# cluster in ./.demo/ (coordinator + 2 workers, three PostgreSQL servers on free loopback
# ports from 55432 up; never 5432). With the Citus extension installed it is a real Citus
# cluster; without it (Debian does not package Citus) it is emulated as the tests do it
# (tests/support/citus.rs): the coordinator carries the Citus catalog tables and every row,
# each worker only the rows of the tenants whose shards it owns. SQL: deploy/demo/.
# Then it runs pgtenant in the foreground on 127.0.0.1:6432 (PGTENANT_DEMO_PORT to change)
# and prints queries to try in psql. Ctrl-C stops pgtenant and the three servers.
# Every run recreates the cluster and its data.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SQL_DIR=$ROOT/deploy/demo
LISTEN_PORT=${PGTENANT_DEMO_PORT:-6432}
TENANTS=1000
SHARD_COUNT=32
NODES=(coordinator worker1 worker2)

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
PSQL=$PGBIN/psql

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

# --- 3. three private PostgreSQL servers in .demo/ --------------------------------------
T0=$SECONDS
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

stop_server() { # data dir
    [ -f "$1/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" stop -D "$1" -m fast -w >/dev/null 2>&1 || true
}

# One demo at a time per data directory.
if [ -f "$DEMO/demo.pid" ]; then
    other=$(cat "$DEMO/demo.pid")
    if [ -n "$other" ] && [ "$other" != $$ ] && kill -0 "$other" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$other/cmdline" 2>/dev/null | grep -q 'demo\.sh'; then
        die "another demo is running (pid $other); stop it with Ctrl-C first"
    fi
fi
echo $$ >"$DEMO/demo.pid"

# A pgtenant left running by a killed run of this script (it runs in its own session).
if [ -f "$DEMO/pgtenant.pid" ]; then
    old=$(cat "$DEMO/pgtenant.pid")
    if [ -n "$old" ] && [ "$(readlink "/proc/$old/exe" 2>/dev/null | sed 's/ (deleted)$//')" = "$(readlink -f "$BIN")" ]; then
        say "stopping the pgtenant of an earlier run (pid $old)"
        kill -INT "$old" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DEMO/pgtenant.pid"
fi
port_in_use "$LISTEN_PORT" && die "port $LISTEN_PORT is busy; set PGTENANT_DEMO_PORT=<port>"

# Servers left running by a killed run (and the single server of older versions of this
# script): stop them, everything is recreated below.
for d in "${NODES[@]}" pgdata; do stop_server "$DEMO/$d"; done
rm -rf "$DEMO/pgdata"

# initdb once into a template that every node copies (fsync, checkpoints: demo settings).
PG_MAJOR=$("$PGBIN/pg_ctl" --version | sed -E 's/.* ([0-9]+).*/\1/')
TEMPLATE=$DEMO/template
if [ ! -f "$TEMPLATE/PG_VERSION" ] || [ "$(cat "$TEMPLATE/PG_VERSION")" != "$PG_MAJOR" ]; then
    say "initdb (template in $TEMPLATE)"
    rm -rf "$TEMPLATE" "$TEMPLATE.tmp"
    pwfile=$DEMO/pwfile
    echo postgres >"$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$pwfile"
    as_pg "$PGBIN/initdb" -D "$TEMPLATE.tmp" -U postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        --no-instructions >/dev/null
    rm -f "$pwfile"
    printf "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\ninclude_if_exists = 'pgtenant_demo.conf'\n" |
        as_pg tee -a "$TEMPLATE.tmp/postgresql.conf" >/dev/null
    as_pg mv "$TEMPLATE.tmp" "$TEMPLATE"
fi

# Free ports from 55432 up, one per node.
declare -A PORT DIR
next_port=55432
for n in "${NODES[@]}"; do
    while port_in_use "$next_port"; do next_port=$((next_port + 1)); done
    PORT[$n]=$next_port
    DIR[$n]=$DEMO/$n
    next_port=$((next_port + 1))
done
COORD_PORT=${PORT[coordinator]}

node_conf() { # node [extra settings…]
    local n=$1
    shift
    {
        printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" "${PORT[$n]}"
        printf '%s\n' "$@"
    } | as_pg tee "${DIR[$n]}/pgtenant_demo.conf" >/dev/null
}

# pg_ctl (start|restart) on every node at once.
pg_ctl_all() {
    local n pids=() failed=0
    for n in "${NODES[@]}"; do
        as_pg "$PGBIN/pg_ctl" "$1" -D "${DIR[$n]}" -l "$DEMO/$n.log" -w -t 60 >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    if [ "$failed" -ne 0 ]; then
        for n in "${NODES[@]}"; do tail -n 5 "$DEMO/$n.log" >&2 || true; done
        die "PostgreSQL did not $1 (logs: $DEMO/*.log)"
    fi
}

PGT_PID=
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$PGT_PID" ] && kill -0 "$PGT_PID" 2>/dev/null; then
        kill -INT "$PGT_PID" 2>/dev/null || true
        wait "$PGT_PID" 2>/dev/null || true
    fi
    rm -f "$DEMO/pgtenant.pid" "$DEMO/demo.pid"
    echo
    say "stopping the three PostgreSQL servers in $DEMO"
    for n in "${NODES[@]}"; do stop_server "$DEMO/$n" & done
    wait
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say "creating coordinator + 2 workers"
for n in "${NODES[@]}"; do
    rm -rf "${DIR[$n]}"
    as_pg cp -a "$TEMPLATE" "${DIR[$n]}"
    node_conf "$n"
done
pg_ctl_all start

# As the postgres superuser (password "postgres") on one node.
su_sql() { # port database sql
    PGPASSWORD=postgres "$PSQL" -X -q -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"
}
# As app/secret in database app on one node, with the demo's psql variables.
app_psql() { # port psql-args…
    local port=$1
    shift
    PGPASSWORD=secret "$PSQL" -X -q -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$port" -U app -d app \
        -v tenants="$TENANTS" -v shard_count="$SHARD_COUNT" \
        -v coordinator_port="$COORD_PORT" \
        -v worker1_port="${PORT[worker1]}" -v worker2_port="${PORT[worker2]}" "$@"
}

for n in "${NODES[@]}"; do
    su_sql "${PORT[$n]}" postgres "CREATE ROLE app LOGIN PASSWORD 'secret'"
    su_sql "${PORT[$n]}" postgres "CREATE DATABASE app OWNER app"
done

if [ "$(su_sql "$COORD_PORT" postgres "SELECT count(*) FROM pg_available_extensions WHERE name = 'citus'")" != 0 ]; then
    # --- real Citus --------------------------------------------------------------------
    # UNTESTED: Citus is not packaged by Debian, so this path has not been run. It follows
    # the Citus documentation: preload the extension, create it on every node, register
    # the workers, distribute the schema with create_distributed_table.
    MODE="Citus"
    say "Citus is available: building a real Citus cluster (untested path)"
    for n in "${NODES[@]}"; do
        node_conf "$n" "shared_preload_libraries = 'citus'" "citus.node_conninfo = 'sslmode=prefer'"
    done
    pg_ctl_all restart
    for n in "${NODES[@]}"; do
        su_sql "${PORT[$n]}" app "CREATE EXTENSION citus"
        # Passwords Citus uses for its own connections between the nodes.
        su_sql "${PORT[$n]}" app "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
            VALUES (0, 'postgres', 'password=postgres'), (0, 'app', 'password=secret')"
    done
    su_sql "$COORD_PORT" app "SELECT citus_set_coordinator_host('127.0.0.1', $COORD_PORT)" >/dev/null
    su_sql "$COORD_PORT" app "SELECT citus_add_node('127.0.0.1', ${PORT[worker1]})" >/dev/null
    su_sql "$COORD_PORT" app "SELECT citus_add_node('127.0.0.1', ${PORT[worker2]})" >/dev/null
    say "loading schema and $TENANTS tenants"
    app_psql "$COORD_PORT" -f "$SQL_DIR/schema.sql" -f "$SQL_DIR/citus.sql" -f "$SQL_DIR/data.sql" >/dev/null
else
    # --- emulated Citus (what runs on Debian) -------------------------------------------
    MODE="emulated Citus"
    say "no Citus extension here: emulating its catalog (as tests/support/citus.rs does)"
    say "loading schema, catalog and $TENANTS tenants"
    common=(-f "$SQL_DIR/schema.sql" -f "$SQL_DIR/data.sql" -f "$SQL_DIR/emulated-ranges.sql")
    app_psql "$COORD_PORT" "${common[@]}" -f "$SQL_DIR/emulated-coordinator.sql" >/dev/null &
    p0=$!
    app_psql "${PORT[worker1]}" -v group=1 "${common[@]}" -f "$SQL_DIR/emulated-worker.sql" >/dev/null &
    p1=$!
    app_psql "${PORT[worker2]}" -v group=2 "${common[@]}" -f "$SQL_DIR/emulated-worker.sql" >/dev/null &
    p2=$!
    wait "$p0" && wait "$p1" && wait "$p2" || die "loading the demo data failed"
fi

# Example tenants, and the port of the node that owns each, from the coordinator's catalog
# (the same unqualified query works on the emulation and on real Citus).
owner_port() { # table key-expression
    app_psql "$COORD_PORT" -c "SELECT n.nodeport FROM pg_dist_shard s
        JOIN pg_dist_placement pl ON pl.shardid = s.shardid AND pl.shardstate = 1
        JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary'
        WHERE s.logicalrelid = '$1'::regclass
          AND $2 BETWEEN s.shardminvalue::int AND s.shardmaxvalue::int"
}
A=42
A_PORT=$(owner_port orders "hashint8($A)")
B=1
while B_PORT=$(owner_port orders "hashint8($B)") && [ "$B_PORT" = "$A_PORT" ]; do B=$((B + 1)); done
T_PORT=$(owner_port events "hashtext('tenant-$A')")
say "cluster ready in $((SECONDS - T0)) s ($MODE)"

# --- 4. pgtenant in the foreground -----------------------------------------------------
# pgtenant runs in its own session so that Ctrl-C reaches only this script, which then
# stops pgtenant once (gracefully) and the servers after it.
setsid "$BIN" run --listen "127.0.0.1:$LISTEN_PORT" \
    --upstream "postgres://app:secret@127.0.0.1:$COORD_PORT/app" &
PGT_PID=$!
echo "$PGT_PID" >"$DEMO/pgtenant.pid"
on_signal() {
    trap - INT TERM HUP
    [ -n "$PGT_PID" ] && kill -INT "$PGT_PID" 2>/dev/null
    wait "$PGT_PID" 2>/dev/null || true
    PGT_PID=
    exit 130
}
trap on_signal INT TERM HUP

# Wait until pgtenant answers and routes (its shard map is loaded).
routed=no
for _ in $(seq 1 100); do
    kill -0 "$PGT_PID" 2>/dev/null || break
    got=$(PGPASSWORD=secret "$PSQL" -X -At -h 127.0.0.1 -p "$LISTEN_PORT" -U app -d app \
        -c "select inet_server_port() from orders where account_id = $A limit 1" 2>/dev/null || true)
    if [ "$got" = "$A_PORT" ]; then
        routed=yes
        break
    fi
    sleep 0.2
done
kill -0 "$PGT_PID" 2>/dev/null || {
    wait "$PGT_PID" || true
    PGT_PID=
    die "pgtenant exited"
}
[ "$routed" = yes ] || say "warning: pgtenant does not route tenant $A to its owner (port $A_PORT) yet"

cat <<EOF

pgtenant listens on 127.0.0.1:$LISTEN_PORT in front of a three-node $MODE cluster:
    coordinator  127.0.0.1:$COORD_PORT   every row (and the Citus catalog)
    worker 1     127.0.0.1:${PORT[worker1]}   shards 0, 2, 4, …: only their tenants' rows
    worker 2     127.0.0.1:${PORT[worker2]}   shards 1, 3, 5, …: only their tenants' rows
$TENANTS tenants; accounts(id) and orders(account_id) are colocated (bigint keys),
events(tenant) has text keys ('tenant-1' …), plans is a reference table.

In another terminal:

    PGPASSWORD=secret psql -h 127.0.0.1 -p $LISTEN_PORT -U app app

and try (inet_server_port() says which node answered):

    -- one tenant: the worker that owns its shard ($A -> $A_PORT, $B -> $B_PORT, 'tenant-$A' -> $T_PORT)
    select inet_server_port(), count(*) from orders where account_id = $A;
    select inet_server_port(), count(*) from orders where account_id = $B;
    select inet_server_port(), count(*) from events where tenant = 'tenant-$A';
    select inet_server_port(), a.name, sum(o.amount) from accounts a
        join orders o on o.account_id = a.id where a.id = $A group by 1, 2;

    -- several tenants or none: the coordinator ($COORD_PORT)
    select inet_server_port(), count(*) from orders;
    select inet_server_port(), count(*) from orders where account_id in ($A, $B);

    -- no key in the statement: a sqlcommenter hint names the tenant ($A_PORT)
    select inet_server_port(), * from accounts where name = 'account $A' /* tenant_id=$A */;

    -- a transaction runs where its first routable statement goes ($A_PORT)
    begin;
    update accounts set plan_id = 5 where id = $A;
    select inet_server_port(), plan_id from accounts where id = $A;
    commit;

Ctrl-C stops pgtenant and the three servers.

EOF
status=0
wait "$PGT_PID" || status=$?
PGT_PID=
exit "$status"
