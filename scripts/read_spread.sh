#!/usr/bin/env bash
# multi_tenant_reads = "coordinator" vs "any" (issue 13): cross-tenant read workloads through
# one pgtenant in front of the three-node cluster of demo.sh (emulated Citus unless the
# extension is installed), switching the setting with the admin console's SET between runs
# (coordinator, any, coordinator, any, …: same pgtenant, same pools, same data).
#
#   ./scripts/read_spread.sh
#   READ_SPREAD_DURATION=10 READ_SPREAD_ROUNDS=2 ./scripts/read_spread.sh
#
# Workloads (pgbench -M extended, one statement per transaction):
#   cross      SELECT count(*), sum(amount) FROM orders WHERE account_id IN (:a, :b): two
#              random tenants of 1000 (an index lookup; on the emulated workers, which hold
#              only their own tenants' rows, it finds fewer rows, at about the same cost)
#   reference  a read of the reference table `plans` with a fixed amount of work (a join
#              with generate_series(1, 2000)): the same rows and the same work on every
#              node, standing in for a distributed query's planning and execution
# Per run: tps, mean latency, and for each node the transactions it committed
# (pg_stat_database.xact_commit in database app, read after the statistics were flushed)
# and the CPU time of its backends (utime+stime of the postmaster's children, /proc).
# Writes a markdown report to target/read_spread/results.md. Everything it starts is
# stopped on exit. On Debian, as root or with sudo (PostgreSQL runs as the postgres user).
#
# Also pgtenant's own CPU (utime+stime) per transaction. The pool is as large as the
# number of clients, so that no client waits for a server connection in either mode (with
# "any" there is a pool per node: three times the connections).
#
# Knobs (environment): READ_SPREAD_DURATION seconds per run (15), READ_SPREAD_ROUNDS (3),
# READ_SPREAD_CLIENTS pgbench clients (32), READ_SPREAD_POOL pgtenant pool_size (the
# number of clients).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_NAME=read_spread
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

DURATION=${READ_SPREAD_DURATION:-15}
ROUNDS=${READ_SPREAD_ROUNDS:-3}
CLIENTS=${READ_SPREAD_CLIENTS:-32}
POOL=${READ_SPREAD_POOL:-$CLIENTS}
for v in "$DURATION" "$ROUNDS" "$CLIENTS" "$POOL"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "knobs must be positive numbers (got '$v')"
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/read_spread
mkdir -p "$WORK/bin" "$WORK/runs"
claim_pidfile "$WORK/read_spread.pid" 'read_spread\.sh' "another read_spread run is going on"

need_postgres
PGBENCH=$PGBIN/pgbench
need_cargo
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
    COMMIT+=" (with uncommitted changes)"
fi
say "building pgtenant (release)"
cargo build --release --bin pgtenant
cp "$TARGET/release/pgtenant" "$WORK/bin/pgtenant.new"
mv -f "$WORK/bin/pgtenant.new" "$WORK/bin/pgtenant"
BIN=$WORK/bin/pgtenant

pg_owned_dir "$WORK/pg" "/var/tmp/pgtenant-read-spread-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
PGHOME=$PG_DIR
for n in "${NODES[@]}"; do stop_server "$PGHOME/$n"; done
pg_template "$PGHOME/template" "fsync = off" "full_page_writes = off" "synchronous_commit = off"
cluster_init "$PGHOME" 27432

PGT_PID=
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$PGT_PID" ] && kill -0 "$PGT_PID" 2>/dev/null; then
        kill -INT "$PGT_PID" 2>/dev/null || true
        wait "$PGT_PID" 2>/dev/null || true
    fi
    say "stopping the three PostgreSQL servers"
    cluster_stop
    rm -f "$WORK/read_spread.pid"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say "cluster: three PostgreSQL servers in $PGHOME"
cluster_create "$PGHOME/template" "max_connections = 200"
say "cluster: $CLUSTER_MODE, coordinator ${PORT[coordinator]}, workers ${PORT[worker1]} ${PORT[worker2]}"

PGT_PORT=$((PORT[worker2] + 1))
while port_in_use "$PGT_PORT"; do PGT_PORT=$((PGT_PORT + 1)); done
cat >"$WORK/pgtenant.toml" <<EOF
listen = "127.0.0.1:$PGT_PORT"
upstream = "postgres://app:secret@127.0.0.1:$COORD_PORT/app"
pool_mode = "transaction"
pool_size = $POOL
max_client_conn = 500
admin_users = ["app"]
http_listen = ""
multi_tenant_reads = "coordinator"
EOF
setsid "$BIN" run --config "$WORK/pgtenant.toml" >"$WORK/pgtenant.log" 2>&1 &
PGT_PID=$!
for _ in $(seq 1 150); do
    grep -q "shard map loaded" "$WORK/pgtenant.log" && break
    kill -0 "$PGT_PID" 2>/dev/null || die "pgtenant exited: $(tail -n 5 "$WORK/pgtenant.log")"
    sleep 0.2
done
grep -q "shard map loaded" "$WORK/pgtenant.log" || die "pgtenant loaded no shard map: $(tail -n 5 "$WORK/pgtenant.log")"
say "pgtenant: 127.0.0.1:$PGT_PORT, pid $PGT_PID"

through() { # sql: through pgtenant, database app
    PGPASSWORD=secret "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGT_PORT" -U app -d app -c "$1"
}
admin() { # command: pgtenant's admin console
    PGPASSWORD=secret "$PSQL" -X -q -At -F ' ' -h 127.0.0.1 -p "$PGT_PORT" -U app -d pgtenant -c "$1"
}
# Transactions committed in database app, per node (coordinator worker1 worker2).
commits() {
    local n out=()
    for n in "${NODES[@]}"; do
        out+=("$(su_sql "${PORT[$n]}" postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'")")
    done
    echo "${out[*]}"
}
# CPU ticks (utime+stime) of each node's backends, per node.
node_cpu() {
    local n pm c total out=()
    for n in "${NODES[@]}"; do
        pm=$(head -n1 "${DIR[$n]}/postmaster.pid")
        total=0
        for c in $(pgrep -P "$pm" || true); do
            total=$((total + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
        done
        out+=("$total")
    done
    echo "${out[*]}"
}

# The setting does what it says before anything is measured.
admin "SET multi_tenant_reads = any" >/dev/null
seen=$(for _ in $(seq 1 9); do through "select inet_server_port() from plans limit 1"; done | sort -u | wc -l)
[ "$seen" = 3 ] || die "with multi_tenant_reads = any, 9 reference reads reached $seen node(s), not 3"
admin "SET multi_tenant_reads = coordinator" >/dev/null
seen=$(for _ in $(seq 1 6); do through "select inet_server_port() from plans limit 1"; done | sort -u)
[ "$seen" = "$COORD_PORT" ] || die "with multi_tenant_reads = coordinator, reads reached $seen"

cat >"$WORK/cross.sql" <<EOF
\\set a random(1, $TENANTS)
\\set b random(1, $TENANTS)
SELECT count(*), sum(amount) FROM orders WHERE account_id IN (:a, :b);
EOF
cat >"$WORK/reference.sql" <<'EOF'
\set p random(1, 5)
SELECT count(*), min(p.name) FROM plans p CROSS JOIN generate_series(1, 2000) AS g WHERE p.id = :p AND g % 7 <> 0;
EOF

TICK=$(getconf CLK_TCK)
RUNS=$WORK/runs.tsv
: >"$RUNS"
pgt_cpu() { awk '{ print $14 + $15 }' "/proc/$PGT_PID/stat"; }
run() { # workload mode round
    local w=$1 mode=$2 round=$3 out c0 c1 u0 u1 p0 p1 tps lat xacts
    out=$WORK/runs/$w-$mode-$round.log
    admin "SET multi_tenant_reads = $mode" >/dev/null
    # Statistics of idle backends reach pg_stat_database within 10 s (PGSTAT_IDLE_INTERVAL).
    sleep 11
    c0=$(commits)
    u0=$(node_cpu)
    p0=$(pgt_cpu)
    PGPASSWORD=secret "$PGBENCH" -n -M extended -f "$WORK/$w.sql" -c "$CLIENTS" -j 2 -T "$DURATION" \
        -h 127.0.0.1 -p "$PGT_PORT" -U app app >"$out" 2>&1 || die "pgbench failed: $(tail -n 5 "$out")"
    p1=$(pgt_cpu)
    u1=$(node_cpu)
    sleep 11
    c1=$(commits)
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
    xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    awk -v w="$w" -v m="$mode" -v r="$round" -v tps="$tps" -v lat="$lat" -v tick="$TICK" \
        -v c0="$c0" -v c1="$c1" -v u0="$u0" -v u1="$u1" -v p0="$p0" -v p1="$p1" -v xacts="$xacts" 'BEGIN {
        split(c0, a, " "); split(c1, b, " "); split(u0, x, " "); split(u1, y, " ")
        printf "%s\t%s\t%s\t%.0f\t%s", w, m, r, tps, lat
        for (i = 1; i <= 3; i++) printf "\t%d", b[i] - a[i]
        for (i = 1; i <= 3; i++) printf "\t%.1f", (y[i] - x[i]) / tick
        printf "\t%.1f\n", (xacts > 0 ? (p1 - p0) / tick * 1e6 / xacts : 0)
    }' >>"$RUNS"
    say "$(tail -n1 "$RUNS" | tr '\t' ' ')"
}

say "runs: ${DURATION}s each, $CLIENTS clients, pool $POOL, $ROUNDS rounds, modes alternating"
say "columns: workload mode round tps latency_ms commits(coordinator worker1 worker2) cpu_s(…) pgtenant_cpu_us/xact"
for w in cross reference; do
    for r in $(seq 1 "$ROUNDS"); do
        run "$w" coordinator "$r"
        run "$w" any "$r"
    done
done
ROUTES=$(admin "SHOW ROUTES" | awk '$1 == "read_spread" || $1 == "multi_tenant" || $1 == "reference_read" || $1 == "total"')

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { # workload mode column
    awk -F '\t' -v w="$1" -v m="$2" -v c="$3" '$1 == w && $2 == m { print $c }' "$RUNS" | median
}
{
    echo "# multi_tenant_reads: coordinator vs any"
    echo
    echo "- $(date -u +%Y-%m-%d) · pgtenant $COMMIT · $("$PGBIN/postgres" --version) · $CLUSTER_MODE"
    echo "- $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- pgbench -M extended -c $CLIENTS -j 2 -T $DURATION, pgtenant pool_size $POOL, $ROUNDS rounds, medians"
    echo
    echo "| workload | multi_tenant_reads | tps | latency ms | commits coordinator | worker 1 | worker 2 | CPU s coordinator | worker 1 | worker 2 | pgtenant CPU µs/xact |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for w in cross reference; do
        for m in coordinator any; do
            echo "| $w | $m | $(col $w $m 4) | $(col $w $m 5) | $(col $w $m 6) | $(col $w $m 7) | $(col $w $m 8) | $(col $w $m 9) | $(col $w $m 10) | $(col $w $m 11) | $(col $w $m 12) |"
        done
    done
    echo
    echo "SHOW ROUTES at the end (reason, to_coordinator, to_worker, total, statements):"
    echo
    echo '```'
    echo "$ROUTES"
    echo '```'
    echo
    echo "Every run (workload mode round tps latency commits×3 cpu×3 pgtenant-µs/xact):"
    echo
    echo '```'
    cat "$RUNS"
    echo '```'
} >"$WORK/results.md"
cat "$WORK/results.md"
