#!/usr/bin/env bash
# The django-multitenant example under load, through pgtenant and through PgBouncer:
#
#   examples/django-multitenant/load/run.sh
#   LOAD_USERS=50 LOAD_DURATION=60 examples/django-multitenant/load/run.sh
#
# On Debian, as root or with sudo. Starts, all on loopback ports it picks (never 5432):
#   - ONE PostgreSQL server (as the postgres OS user, data in target/django-load/pg) that
#     plays a Citus coordinator and two workers: it listens on 127.0.0.1, 127.0.0.2 and
#     127.0.0.3, with the example's citus_emulation.sql (pg_dist_node: 127.0.0.1 the
#     coordinator, .2 and .3 the workers). The app's migrations distribute its tables;
#     `manage.py seed` makes LOAD_ACCOUNTS accounts (1,000) with their rows;
#   - pgtenant (release build) and PgBouncer in front of it, both in transaction mode with
#     the same pool size (LOAD_POOL) and SCRAM client auth;
#   - the app under gunicorn (LOAD_GUNICORN_WORKERS sync workers), DATABASE_URL pointing
#     at one pooler, then the other;
#   - Locust, headless: LOAD_USERS users (each of one random account) for LOAD_DURATION
#     seconds against each, in LOAD_ROUNDS rounds (pgtenant, PgBouncer, pgtenant, …).
# Prints requests/s, p50/p95/p99 and failures per run and the median of the rounds, and
# pgtenant's SHOW ROUTES; writes them to target/django-load/results.md. The Python packages
# come from load/requirements.txt into target/django-load-venv. Everything started here is
# stopped on exit.
#
# Knobs (environment): LOAD_USERS (50), LOAD_DURATION seconds (60), LOAD_ROUNDS (1),
# LOAD_ACCOUNTS (1000), LOAD_POOL (8), LOAD_GUNICORN_WORKERS (4), LOAD_THINK_MS (100).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=$(dirname "$HERE")
ROOT=$(cd "$APP/../.." && pwd)
SCRIPT_NAME=django-load
# shellcheck source-path=SCRIPTDIR source=../../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

no_args_or_help "$@"

USERS=${LOAD_USERS:-50}
DURATION=${LOAD_DURATION:-60}
ROUNDS=${LOAD_ROUNDS:-1}
ACCOUNTS=${LOAD_ACCOUNTS:-1000}
POOL=${LOAD_POOL:-8}
GWORKERS=${LOAD_GUNICORN_WORKERS:-4}
THINK_MS=${LOAD_THINK_MS:-100}
for v in USERS DURATION ROUNDS ACCOUNTS POOL GWORKERS THINK_MS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, not '${!v}'"
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/django-load
VENV=$TARGET/django-load-venv
mkdir -p "$WORK/runs"
claim_pidfile "$WORK/run.pid" 'load/run\.sh' "another load run is going on"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- packages, build ---------------------------------------------------------------------
need_postgres
PGBOUNCER=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
if [ ! -x "$PGBOUNCER" ]; then
    say "installing PgBouncer"
    apt_install pgbouncer
    PGBOUNCER=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
fi
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.stamp" ||
    ! cmp -s "$APP/requirements.txt" "$VENV/app-requirements.stamp"; then
    say "making $VENV (pip install -r load/requirements.txt)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.stamp"
    cp "$APP/requirements.txt" "$VENV/app-requirements.stamp"
fi
PY=$VENV/bin/python
need_cargo
say "building pgtenant (release)"
(cd "$ROOT" && cargo build --release --bin pgtenant)
cp "$TARGET/release/pgtenant" "$WORK/pgtenant.new" && mv -f "$WORK/pgtenant.new" "$WORK/pgtenant"

# --- cleanup -----------------------------------------------------------------------------
pg_owned_dir "$WORK/pg" "/var/tmp/pgtenant-django-load-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
PGHOME=$PG_DIR
DATA=$PGHOME/data
stop_server "$DATA"
PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM HUP
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ -f "$PGHOME/pgbouncer/pgbouncer.pid" ]; then
        kill -TERM "$(cat "$PGHOME/pgbouncer/pgbouncer.pid")" 2>/dev/null || true
    fi
    stop_server "$DATA"
    rm -f "$WORK/run.pid"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

NEXT_PORT=27432
take_port() { # variable
    while port_in_use "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    printf -v "$1" '%s' "$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}

# --- PostgreSQL playing three nodes ---------------------------------------------------------
pg_template "$PGHOME/template"
take_port PG_PORT
rm -rf "$DATA"
as_pg cp -a "$PGHOME/template" "$DATA"
printf "port = %s\nlisten_addresses = '127.0.0.1,127.0.0.2,127.0.0.3'\nunix_socket_directories = ''\nmax_connections = 200\n" \
    "$PG_PORT" | as_pg tee "$DATA/pgtenant_demo.conf" >/dev/null
as_pg "$PGBIN/pg_ctl" start -D "$DATA" -l "$PGHOME/postgres.log" -w -t 60 >/dev/null ||
    die "PostgreSQL did not start: $(tail -n 5 "$PGHOME/postgres.log")"
su_sql "$PG_PORT" postgres "CREATE ROLE app LOGIN CREATEDB PASSWORD 'secret'"
NODES="SELECT citus_set_coordinator_host('127.0.0.1', $PG_PORT);
       SELECT citus_add_node('127.0.0.2', $PG_PORT); SELECT citus_add_node('127.0.0.3', $PG_PORT);"
for db in template1 postgres; do
    PGPASSWORD=postgres "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" \
        -f "$APP/citus_emulation.sql" -c "$NODES" >/dev/null
done
su_sql "$PG_PORT" postgres "CREATE DATABASE app OWNER app"
DIRECT=postgres://app:secret@127.0.0.1:$PG_PORT/app
manage() { (cd "$APP" && DATABASE_URL=$1 PYTHONDONTWRITEBYTECODE=1 "$PY" manage.py "${@:2}"); }
say "migrating and seeding $ACCOUNTS accounts (directly on 127.0.0.1:$PG_PORT)"
manage "$DIRECT" migrate --noinput -v 0
manage "$DIRECT" seed --accounts "$ACCOUNTS"
FIRST_ACCOUNT=$(PGPASSWORD=secret "$PSQL" -X -At -h 127.0.0.1 -p "$PG_PORT" -U app -d app -c "SELECT min(id) FROM tracker_account")
su_sql "$PG_PORT" app "ANALYZE"

# --- the poolers -------------------------------------------------------------------------------
take_port PGT_PORT
cat >"$WORK/pgtenant.toml" <<EOF
listen = "127.0.0.1:$PGT_PORT"
upstream = "postgres://app:secret@127.0.0.1:$PG_PORT/app"
pool_mode = "transaction"
pool_size = $POOL
max_client_conn = 1000
admin_users = ["app"]
http_listen = ""
log_level = "warn"
EOF
setsid "$WORK/pgtenant" run --config "$WORK/pgtenant.toml" >"$WORK/pgtenant.log" 2>&1 &
PIDS+=($!)

take_port PGB_PORT
BDIR=$PGHOME/pgbouncer
rm -rf "$BDIR" && mkdir -p "$BDIR"
printf '"app" "secret"\n' >"$BDIR/userlist.txt"
cat >"$BDIR/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BDIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = $BDIR/pgbouncer.log
pidfile = $BDIR/pgbouncer.pid
EOF
if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$BDIR"; fi
as_pg "$PGBOUNCER" -d "$BDIR/pgbouncer.ini" >/dev/null 2>&1 || die "PgBouncer did not start"
for port in "$PGT_PORT" "$PGB_PORT"; do
    ok=0
    for _ in $(seq 1 100); do
        if PGPASSWORD=secret "$PSQL" -X -At -h 127.0.0.1 -p "$port" -U app -d app -c "select 1" >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [ "$ok" = 1 ] || die "cannot log in through the pooler on port $port (logs: $WORK/pgtenant.log, $BDIR/pgbouncer.log)"
done
admin() { PGPASSWORD=secret "$PSQL" -X -h 127.0.0.1 -p "$PGT_PORT" -U app -d pgtenant -c "$1"; }
for _ in $(seq 1 100); do
    admin "SHOW SHARDS" 2>/dev/null | grep -q tracker_account && break
    sleep 0.1
done
say "PostgreSQL 127.0.0.1:$PG_PORT (also .2 and .3), pgtenant :$PGT_PORT, PgBouncer :$PGB_PORT, pool $POOL"

# --- the runs ----------------------------------------------------------------------------------
# run POOLER PORT ROUND: gunicorn on the pooler, Locust against it; appends to runs.tsv.
RUNS=$WORK/runs.tsv
: >"$RUNS"
run() {
    local pooler=$1 port=$2 round=$3 http gpid prefix
    take_port http
    (cd "$APP" && DATABASE_URL="postgres://app:secret@127.0.0.1:$port/app" PYTHONDONTWRITEBYTECODE=1 \
        exec setsid "$VENV/bin/gunicorn" saas.wsgi -w "$GWORKERS" -b "127.0.0.1:$http" \
        --log-level warning) >"$WORK/runs/gunicorn-$pooler-$round.log" 2>&1 &
    gpid=$!
    PIDS+=("$gpid")
    for _ in $(seq 1 100); do
        "$PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1])" \
            "http://127.0.0.1:$http/plans/" >/dev/null 2>&1 && break
        sleep 0.2
    done
    prefix=$WORK/runs/$pooler-$round
    say "round $round, $pooler: $USERS users for ${DURATION}s"
    LOAD_ACCOUNTS=$ACCOUNTS LOAD_FIRST_ACCOUNT=$FIRST_ACCOUNT LOAD_THINK_MS=$THINK_MS \
        "$VENV/bin/locust" -f "$HERE/locustfile.py" --headless -u "$USERS" -r "$USERS" \
        -t "${DURATION}s" --host "http://127.0.0.1:$http" --csv "$prefix" --only-summary \
        --stop-timeout 5 >"$prefix.locust.log" 2>&1 || true
    kill -TERM "$gpid" 2>/dev/null || true
    wait "$gpid" 2>/dev/null || true
    [ -s "${prefix}_stats.csv" ] || die "Locust wrote no stats: $(tail -n 20 "$prefix.locust.log")"
    # The Aggregated row: Request Count, Failure Count, Requests/s, 50%, 95%, 99%.
    "$PY" - "$prefix" "$pooler" "$round" >>"$RUNS" <<'PYEOF'
import csv, sys
prefix, pooler, rnd = sys.argv[1:4]
for row in csv.DictReader(open(prefix + "_stats.csv")):
    if row["Name"] == "Aggregated":
        print("\t".join([pooler, rnd, row["Request Count"], row["Failure Count"],
                         f'{float(row["Requests/s"]):.1f}', row["50%"], row["95%"], row["99%"]]))
PYEOF
    tail -n1 "$RUNS" | awk -F'\t' '{ printf "    %s: %s requests, %s failed, %s req/s, p50 %s ms, p95 %s ms, p99 %s ms\n", $1, $3, $4, $5, $6, $7, $8 }'
}
for r in $(seq 1 "$ROUNDS"); do
    run pgtenant "$PGT_PORT" "$r"
    run pgbouncer "$PGB_PORT" "$r"
done

# --- results -----------------------------------------------------------------------------------
ROUTES=$(admin "SHOW ROUTES" | awk -F'|' 'NR <= 2 || $4 + 0 > 0')
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v p="$1" -v c="$2" '$1 == p { print $c }' "$RUNS" | median; }
{
    echo "# django-multitenant example under Locust: pgtenant vs PgBouncer"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load at start $LOAD_AT_START;"
    echo "$USERS users over $ACCOUNTS accounts, think time 0-$((2 * THINK_MS)) ms, ${DURATION}s per run, $ROUNDS round(s);"
    echo "gunicorn $GWORKERS sync workers; pool $POOL (per node for pgtenant); $("$PGBOUNCER" --version | head -n1); commit $(git -C "$ROOT" rev-parse --short HEAD)."
    echo
    echo "| pooler | requests/s | p50 ms | p95 ms | p99 ms | requests | failures |"
    echo "|---|---|---|---|---|---|---|"
    for p in pgtenant pgbouncer; do
        echo "| $p | $(col "$p" 5) | $(col "$p" 6) | $(col "$p" 7) | $(col "$p" 8) | $(col "$p" 3) | $(col "$p" 4) |"
    done
    echo
    echo "Every run (pooler, round, requests, failures, req/s, p50, p95, p99):"
    echo
    sed 's/^/    /' "$RUNS"
    echo
    echo "pgtenant SHOW ROUTES after the runs:"
    echo
    echo "$ROUTES" | sed 's/^/    /'
} | tee "$WORK/results.md"
