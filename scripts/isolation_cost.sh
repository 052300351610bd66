#!/usr/bin/env bash
# The CPU cost of client isolation in transaction mode: user-space instructions per
# transaction of two pgtenant binaries (before and after), each run under valgrind's
# callgrind, on pgbench -S (-M simple, extended, prepared) and on a Django-like mix
# (BEGIN; a SELECT by key with quoted names and LIMIT 21, a count(*), an UPDATE, an
# INSERT … RETURNING; COMMIT, extended protocol as psycopg sends it).
#
#   BEFORE=/path/to/old/pgtenant ./scripts/isolation_cost.sh
#
# AFTER defaults to target/release/pgtenant (built if missing). Starts its own PostgreSQL
# (as the postgres OS user, a free loopback port, a temp dir), never 5432. Instructions do
# not depend on how busy the machine is: each run is started afresh, a short and a long
# pgbench run, and (long − short) ÷ the extra transactions is the cost of one transaction.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_NAME=isolation_cost
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

BEFORE=${BEFORE:?set BEFORE to the pgtenant binary to compare against}
AFTER=${AFTER:-$ROOT/target/release/pgtenant}
CLIENTS=${ISOLATION_CLIENTS:-8}
# ISOLATION_ONLY: a comma list of workloads ("select simple", "mix extended", …).
SHORT=${ISOLATION_SHORT:-200}
LONG=${ISOLATION_LONG:-1200}
if [ ! -x "$AFTER" ]; then cargo build --release --bin pgtenant; fi
command -v valgrind >/dev/null || apt_install valgrind
need_postgres
BIN=$(pg_bindir)

WORK=$(mktemp -d /tmp/pgtenant-isolation-cost.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PG_PORT=$(free_port)
mkdir -p "$WORK/pg"
if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$WORK" "$WORK/pg"; fi
as_pg "$BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
"$BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE app OWNER app" postgres
"$BIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U app app >/dev/null 2>&1

cat >"$WORK/mix.sql" <<'EOF'
\set id random(1, 100000)
BEGIN;
SELECT "pgbench_accounts"."aid", "pgbench_accounts"."abalance" FROM "pgbench_accounts" WHERE "pgbench_accounts"."aid" = :id LIMIT 21;
SELECT COUNT(*) AS "__count" FROM "pgbench_accounts" WHERE ("pgbench_accounts"."bid" = 1 AND "pgbench_accounts"."aid" BETWEEN :id AND :id + 10);
UPDATE "pgbench_accounts" SET "abalance" = ("pgbench_accounts"."abalance" + 1) WHERE "pgbench_accounts"."aid" = :id;
INSERT INTO "pgbench_history" ("tid", "bid", "aid", "delta", "mtime") VALUES (1, 1, :id, 1, CURRENT_TIMESTAMP) RETURNING "pgbench_history"."aid";
COMMIT;
EOF
if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$WORK"; fi

total() { # binary workload mode transactions
    local bin=$1 workload=$2 mode=$3 n=$4 port out pid
    port=$(free_port)
    out=$WORK/cg-$RANDOM.out
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run \
        --listen "127.0.0.1:$port" --upstream "postgres://app@127.0.0.1:$PG_PORT/app" \
        --auth-type trust --pool-mode transaction --pool-size "$CLIENTS" --workers 1 \
        >"$WORK/pgtenant.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    local up=
    for _ in $(seq 1 600); do
        if "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U app -c "select 1" app >/dev/null 2>&1; then
            up=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    [ -n "$up" ] || die "pgtenant under valgrind did not take logins on port $port: $(tail -n 5 "$WORK/pgtenant.log")"
    local args=(-n -h 127.0.0.1 -p "$port" -U app -M "$mode" -c "$CLIENTS" -j 1 -t "$n")
    if [ "$workload" = select ]; then args+=(-S); else args+=(-f "$WORK/mix.sql"); fi
    "$BIN/pgbench" "${args[@]}" app >"$WORK/pgbench.log" 2>&1 || die "pgbench failed: $(tail -n 3 "$WORK/pgbench.log")"
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        grep -q '^summary: ' "$out" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^summary: \([0-9]*\)$/\1/p' "$out" | head -n1
}

per_xact() { # binary workload mode
    local s l
    s=$(total "$1" "$2" "$3" "$SHORT")
    l=$(total "$1" "$2" "$3" "$LONG")
    awk -v s="$s" -v l="$l" -v n=$((CLIENTS * (LONG - SHORT))) 'BEGIN { printf "%.0f", (l - s) / n }'
}

echo "| workload | before (instructions / transaction) | after | after ÷ before |"
echo "| --- | ---: | ---: | ---: |"
for w in "select simple" "select extended" "select prepared" "mix extended" "mix prepared"; do
    # ISOLATION_ONLY="mix extended,select simple" picks some.
    if [ -n "${ISOLATION_ONLY:-}" ] && [[ ",$ISOLATION_ONLY," != *",$w,"* ]]; then continue; fi
    set -- $w
    b=$(per_xact "$BEFORE" "$1" "$2")
    a=$(per_xact "$AFTER" "$1" "$2")
    label="pgbench -S -M $2"
    if [ "$1" = mix ]; then label="Django-like mix, -M $2"; fi
    echo "| $label | $b | $a | $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }') |"
done
