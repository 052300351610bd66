# Shell helpers shared by scripts/demo.sh and scripts/loadbench.sh. Sourced, not run:
#
#   SCRIPT_NAME=demo          # prefix of error messages
#   . scripts/lib.sh
#
# General: say, die, as_root, as_pg, claim_pidfile, port_in_use, free_port, need_postgres
# (sets PGBIN and PSQL), need_cargo, pg_owned_dir (sets PG_DIR), pg_template, stop_server.
# The demo's three-node cluster (a coordinator and two workers, real Citus when the
# extension is installed, else emulated as tests/support/citus.rs does): cluster_init,
# cluster_create, cluster_stop, su_sql, app_psql, owner_port. SQL: deploy/demo/.
# shellcheck shell=bash

LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SQL_DIR=$LIB_ROOT/deploy/demo

say() { printf '==> %s\n' "$*"; }
die() {
    echo "${SCRIPT_NAME:-script}: $*" >&2
    exit 1
}

# A script that takes no arguments (its knobs are environment variables): --help prints
# its header comment (from line 2 to `set -euo`), anything else is refused.
no_args_or_help() {
    case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "no arguments expected (knobs are environment variables; see --help)" ;;
    esac
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

# claim_pidfile FILE SCRIPT MESSAGE: one run at a time. Dies with MESSAGE if FILE holds
# the pid of a live process running SCRIPT (a pattern for its command line), else
# writes this shell's pid into FILE.
claim_pidfile() {
    local f=$1 script=$2 msg=$3 other
    if [ -f "$f" ]; then
        other=$(cat "$f")
        if [ -n "$other" ] && [ "$other" != $$ ] && kill -0 "$other" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$other/cmdline" 2>/dev/null | grep -q "$script"; then
            die "$msg (pid $other)"
        fi
    fi
    echo $$ >"$f"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A loopback port nobody listens on, picked at random from 20000 up to the ephemeral
# range (where the ports of outgoing connections come from: one may hold a port that
# nobody listens on).
free_port() {
    local p lo=32768 span
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    span=$((lo - 20000))
    [ "$span" -ge 1000 ] || span=10000
    while :; do
        p=$((20000 + RANDOM % span))
        port_in_use "$p" || { echo "$p"; return; }
    done
}

pg_bindir() {
    if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    local d
    # shellcheck disable=SC2012 # the names are PostgreSQL versions
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# apt-get install PACKAGE… (quietly, without recommends).
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* missing and there is no apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Installs PostgreSQL if it is missing; sets PGBIN and PSQL.
need_postgres() {
    if [ -z "$(pg_bindir)" ]; then
        say "installing PostgreSQL"
        apt_install postgresql
    fi
    PGBIN=$(pg_bindir) || die "PostgreSQL binaries not found under /usr/lib/postgresql"
    PSQL=$PGBIN/psql
}

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
}

# pg_owned_dir DIR FALLBACK: creates DIR for PostgreSQL's files (mode 0700, owned by the
# postgres OS user when run as root) and sets PG_DIR to it. If the postgres user cannot
# write there (e.g. the checkout is under /root), FALLBACK is used instead.
pg_owned_dir() {
    PG_DIR=$1
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$PG_DIR"
        chmod 0700 "$PG_DIR"
        if ! runuser -u postgres -- test -w "$PG_DIR"; then
            PG_DIR=$2
            mkdir -p "$PG_DIR"
            chown postgres:postgres "$PG_DIR"
            chmod 0700 "$PG_DIR"
            say "postgres user cannot reach $1; using $PG_DIR"
        fi
    fi
}

stop_server() { # data dir
    [ -f "$1/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" stop -D "$1" -m fast -w >/dev/null 2>&1 || true
}

# pg_template DIR [SETTING…]: initdb into DIR once (superuser postgres with password
# "postgres", peer auth locally, scram-sha-256 over TCP), with the settings appended to
# postgresql.conf followed by an include of each copy's own pgtenant_demo.conf (see
# node_conf). Kept while its PostgreSQL major version matches; DIR's parent must be a
# pg_owned_dir.
pg_template() {
    local template=$1 major pwfile
    shift
    major=$("$PGBIN/pg_ctl" --version | sed -E 's/.* ([0-9]+).*/\1/')
    if [ -f "$template/PG_VERSION" ] && [ "$(cat "$template/PG_VERSION")" = "$major" ]; then
        return 0
    fi
    say "initdb (template in $template)"
    rm -rf "$template" "$template.tmp"
    pwfile=$(dirname "$template")/pwfile
    echo postgres >"$pwfile"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$pwfile"; fi
    as_pg "$PGBIN/initdb" -D "$template.tmp" -U postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        --no-instructions >/dev/null
    rm -f "$pwfile"
    {
        if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
        echo "include_if_exists = 'pgtenant_demo.conf'"
    } | as_pg tee -a "$template.tmp/postgresql.conf" >/dev/null
    as_pg mv "$template.tmp" "$template"
}

# As the postgres superuser (password "postgres") on one server.
su_sql() { # port database sql
    PGPASSWORD=postgres "$PSQL" -X -q -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"
}

# --- the demo's cluster ------------------------------------------------------------------
NODES=(coordinator worker1 worker2)
TENANTS=1000
SHARD_COUNT=32
declare -A PORT DIR

# cluster_init HOME FIRST_PORT: node data directories HOME/<node> (logs HOME/<node>.log),
# ports: the free ones from FIRST_PORT up. Sets PORT[node], DIR[node], COORD_PORT.
cluster_init() {
    CLUSTER_HOME=$1
    local next_port=$2 n
    for n in "${NODES[@]}"; do
        while port_in_use "$next_port"; do next_port=$((next_port + 1)); done
        PORT[$n]=$next_port
        DIR[$n]=$CLUSTER_HOME/$n
        next_port=$((next_port + 1))
    done
    COORD_PORT=${PORT[coordinator]}
}

# node_conf NODE [SETTING…]: the node's own settings (port, loopback only, no socket).
node_conf() {
    local n=$1
    shift
    {
        printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" "${PORT[$n]}"
        if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
    } | as_pg tee "${DIR[$n]}/pgtenant_demo.conf" >/dev/null
}

# pg_ctl (start|restart) on every node at once.
pg_ctl_all() {
    local n p pids=() failed=0
    for n in "${NODES[@]}"; do
        as_pg "$PGBIN/pg_ctl" "$1" -D "${DIR[$n]}" -l "$CLUSTER_HOME/$n.log" -w -t 60 >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    if [ "$failed" -ne 0 ]; then
        for n in "${NODES[@]}"; do tail -n 5 "$CLUSTER_HOME/$n.log" >&2 || true; done
        die "PostgreSQL did not $1 (logs: $CLUSTER_HOME/*.log)"
    fi
}

cluster_stop() {
    local n
    for n in "${NODES[@]}"; do stop_server "$CLUSTER_HOME/$n" & done
    wait
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

# cluster_create TEMPLATE [SETTING…]: fresh nodes copied from TEMPLATE (a pg_template) with
# the settings, started; role app (password "secret") and database app on each; the demo
# schema and data loaded as real Citus (when the extension is there) or emulated Citus.
# Sets CLUSTER_MODE ("Citus" or "emulated Citus").
# shellcheck disable=SC2034 # CLUSTER_MODE is for the caller
cluster_create() {
    local template=$1 n p0 p1 p2
    local -a common
    shift
    for n in "${NODES[@]}"; do
        rm -rf "${DIR[$n]}"
        as_pg cp -a "$template" "${DIR[$n]}"
        node_conf "$n" "$@"
    done
    pg_ctl_all start

    for n in "${NODES[@]}"; do
        su_sql "${PORT[$n]}" postgres "CREATE ROLE app LOGIN PASSWORD 'secret'"
        su_sql "${PORT[$n]}" postgres "CREATE DATABASE app OWNER app"
    done

    if [ "$(su_sql "$COORD_PORT" postgres "SELECT count(*) FROM pg_available_extensions WHERE name = 'citus'")" != 0 ]; then
        # --- real Citus ----------------------------------------------------------------
        # UNTESTED: Citus is not packaged by Debian, so this path has not been run. It
        # follows the Citus documentation: preload the extension, create it on every node,
        # register the workers, distribute the schema with create_distributed_table.
        CLUSTER_MODE="Citus"
        say "Citus is available: building a real Citus cluster (untested path)"
        for n in "${NODES[@]}"; do
            node_conf "$n" "$@" "shared_preload_libraries = 'citus'" "citus.node_conninfo = 'sslmode=prefer'"
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
        # --- emulated Citus (what runs on Debian) ---------------------------------------
        CLUSTER_MODE="emulated Citus"
        say "no Citus extension here: emulating its catalog (as tests/support/citus.rs does)"
        say "loading schema, catalog and $TENANTS tenants"
        common=(-f "$SQL_DIR/schema.sql" -f "$SQL_DIR/data.sql" -f "$SQL_DIR/emulated-ranges.sql")
        app_psql "$COORD_PORT" "${common[@]}" -f "$SQL_DIR/emulated-coordinator.sql" >/dev/null &
        p0=$!
        app_psql "${PORT[worker1]}" -v group=1 "${common[@]}" -f "$SQL_DIR/emulated-worker.sql" >/dev/null &
        p1=$!
        app_psql "${PORT[worker2]}" -v group=2 "${common[@]}" -f "$SQL_DIR/emulated-worker.sql" >/dev/null &
        p2=$!
        if ! { wait "$p0" && wait "$p1" && wait "$p2"; }; then die "loading the demo data failed"; fi
    fi
}

# The port of the node that owns a tenant, from the coordinator's catalog (the same
# unqualified query works on the emulation and on real Citus).
owner_port() { # table key-expression
    app_psql "$COORD_PORT" -c "SELECT n.nodeport FROM pg_dist_shard s
        JOIN pg_dist_placement pl ON pl.shardid = s.shardid AND pl.shardstate = 1
        JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary'
        WHERE s.logicalrelid = '$1'::regclass
          AND $2 BETWEEN s.shardminvalue::int AND s.shardmaxvalue::int"
}
