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
LISTEN_PORT=${PGTENANT_DEMO_PORT:-6432}
SCRIPT_NAME=demo
# Helpers shared with loadbench.sh (as_pg, the cluster's functions, NODES, TENANTS…).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

# --- 1. packages -----------------------------------------------------------------------
need_postgres

# --- 2. build --------------------------------------------------------------------------
need_cargo
say "building pgtenant (release)"
cargo build --release
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtenant
[ -x "$BIN" ] || die "built binary not found at $BIN"

# --- 3. three private PostgreSQL servers in .demo/ --------------------------------------
T0=$SECONDS
pg_owned_dir "$ROOT/.demo" "/var/tmp/pgtenant-demo-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
DEMO=$PG_DIR

# One demo at a time per data directory.
claim_pidfile "$DEMO/demo.pid" 'demo\.sh' "another demo is running; stop it with Ctrl-C first"

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
TEMPLATE=$DEMO/template
pg_template "$TEMPLATE" "fsync = off" "full_page_writes = off" "synchronous_commit = off"

# Free ports from 55432 up, one per node.
cluster_init "$DEMO" 55432

PGT_PID=
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$PGT_PID" ] && kill -0 "$PGT_PID" 2>/dev/null; then
        kill -INT "$PGT_PID" 2>/dev/null || true
        wait "$PGT_PID" 2>/dev/null || true
    fi
    rm -f "$DEMO/pgtenant.pid" "$DEMO/demo.pid"
    echo
    say "stopping the three PostgreSQL servers in $DEMO"
    cluster_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say "creating coordinator + 2 workers"
cluster_create "$TEMPLATE"

# Example tenants, and the port of the node that owns each (owner_port: lib.sh).
A=42
A_PORT=$(owner_port orders "hashint8($A)")
B=1
while B_PORT=$(owner_port orders "hashint8($B)") && [ "$B_PORT" = "$A_PORT" ]; do B=$((B + 1)); done
T_PORT=$(owner_port events "hashtext('tenant-$A')")
say "cluster ready in $((SECONDS - T0)) s ($CLUSTER_MODE)"

# --- 4. pgtenant in the foreground -----------------------------------------------------
# pgtenant runs in its own session so that Ctrl-C reaches only this script, which then
# stops pgtenant once (gracefully) and the servers after it.
setsid "$BIN" run --listen "127.0.0.1:$LISTEN_PORT" \
    --upstream "postgres://app:secret@127.0.0.1:$COORD_PORT/app" &
PGT_PID=$!
echo "$PGT_PID" >"$DEMO/pgtenant.pid"
# shellcheck disable=SC2317 # run by the trap
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

pgtenant listens on 127.0.0.1:$LISTEN_PORT in front of a three-node $CLUSTER_MODE cluster:
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
