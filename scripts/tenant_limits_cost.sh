#!/usr/bin/env bash
# The CPU cost of per-tenant limits (issue 18): user-space instructions per transaction of
# pgtenant before the limits and after them, each run under valgrind's callgrind, on the
# emulated Citus cluster of scripts/demo.sh (lib.sh: a coordinator and two workers, 1,000
# tenants) with pgtenant routing single-tenant SELECTs to the workers:
#
#   BEFORE=/path/to/old/pgtenant ./scripts/tenant_limits_cost.sh
#
# Workloads (pgbench -c 8 -j 1, pool_size 8, --workers 1):
#   routed simple / extended  \set aid random(1, 1000); a SELECT on orders WHERE
#                             account_id = :aid (-M simple, -M extended)
#   plain simple              pgbench -S -M simple on a database without the Citus catalog
#                             (plain pooling, nothing routed), limits off
# Configurations: before (BEFORE), after with no limit ("off"), after with every limit on
# but none binding ("on": tenant_max_active = "100%", tenant_max_tps = 1000000,
# tenant_statement_timeout = 3600) and after with tenant_max_active = 3 ("max3": 8 clients
# over 1,000 tenants, so a tenant is almost never at 3).
#
# AFTER defaults to target/release/pgtenant (built if missing). Each run starts pgtenant
# afresh under callgrind; a short and a long pgbench run, and (long − short) ÷ the extra
# transactions is the cost of one transaction (start, logins, the shard map's load and
# shutdown cancel out). Instructions do not depend on how busy the machine is, but they
# do move a little with how the messages of 8 clients happen to batch, so every
# configuration is measured in each of ROUNDS rounds (in turns) and the median reported,
# with every round's number. To keep fixed costs fixed, the nodes trust user app over
# loopback (no SCRAM exchange per server connection, whose number may differ between two
# runs) and the shard map is loaded once (shard_map_refresh_interval = 3600). PostgreSQL
# runs as the postgres OS user in target/tenant-limits-cost/pg (free loopback ports, never
# 5432); the callgrind files stay in target/tenant-limits-cost/callgrind
# (<config>-<workload>-<mode>-<transactions per client>-r<round>.out: callgrind_annotate
# them), the table in target/tenant-limits-cost/table.md. 6 to 9 minutes on 2 shared cores.
#
# Knobs (environment): LIMITS_SHORT and LIMITS_LONG, transactions per client of the two
# runs (200, 1700); LIMITS_ROUNDS (3); LIMITS_ONLY, a comma list of workloads ("routed
# simple,routed extended,plain simple").
set -euo pipefail
shopt -s inherit_errexit # a failure in $(…) stops the script too

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_NAME=tenant_limits_cost
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

no_args_or_help "$@"

BEFORE=${BEFORE:?set BEFORE to the pgtenant binary to compare against (built before the limits)}
AFTER=${AFTER:-$ROOT/target/release/pgtenant}
CLIENTS=8
SHORT=${LIMITS_SHORT:-200}
LONG=${LIMITS_LONG:-1700}
ROUNDS=${LIMITS_ROUNDS:-3}
WORKLOADS=("routed simple" "routed extended" "plain simple")
ONLY=${LIMITS_ONLY:-$(IFS=,; echo "${WORKLOADS[*]}")}
if ! [[ $SHORT =~ ^[0-9]+$ && $LONG =~ ^[0-9]+$ ]] || [ "$LONG" -le "$SHORT" ]; then
    die "LIMITS_SHORT and LIMITS_LONG must be numbers, LONG > SHORT"
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "LIMITS_ROUNDS must be a positive number"
[ -x "$BEFORE" ] || die "BEFORE=$BEFORE is not an executable"
if [ ! -x "$AFTER" ]; then
    need_cargo
    cargo build --release --bin pgtenant
fi
command -v valgrind >/dev/null || apt_install valgrind
need_postgres

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/tenant-limits-cost
mkdir -p "$WORK/callgrind" "$WORK/bin" "$WORK/logs"
claim_pidfile "$WORK/run.pid" 'tenant_limits_cost\.sh' "another run is going on"
# pgtenant under valgrind, started by this run (or a killed one): stopped by pid, if the
# process is still that.
stop_ours() {
    local p
    [ -f "$WORK/pgtenant.pids" ] || return 0
    while read -r p; do
        if tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q "callgrind-out-file=$WORK/"; then
            kill -INT "$p" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        fi
    done <"$WORK/pgtenant.pids"
    rm -f "$WORK/pgtenant.pids"
}
stop_ours
rm -f "$WORK"/callgrind/*.out "$WORK"/logs/*.log
# Private copies: a rebuild during the run does not change what is measured.
cp "$BEFORE" "$WORK/bin/before"
cp "$AFTER" "$WORK/bin/after"
pg_owned_dir "$WORK/pg" "/var/tmp/pgtenant-limits-cost-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
PGHOME=$PG_DIR
cluster_init "$PGHOME" "$(free_port)"
# Servers of a killed run: everything is recreated below.
cluster_stop

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_ours
    cluster_stop
    rm -f "$WORK/run.pid"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- the cluster ---------------------------------------------------------------------------
pg_template "$PGHOME/template"
say "the emulated Citus cluster of demo.sh (coordinator + 2 workers, $TENANTS tenants)"
cluster_create "$PGHOME/template" "fsync = off" "full_page_writes = off" "synchronous_commit = off"
for n in "${NODES[@]}"; do
    as_pg sed -i '1i host all app 127.0.0.1/32 trust' "${DIR[$n]}/pg_hba.conf"
    as_pg "$PGBIN/pg_ctl" reload -D "${DIR[$n]}" >/dev/null
done
# The plain workload's database: no Citus catalog, so pgtenant only pools.
su_sql "$COORD_PORT" postgres "CREATE DATABASE bench OWNER app"
"$PGBIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$COORD_PORT" -U app bench >"$WORK/pgbench-init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -n 3 "$WORK/pgbench-init.log")"
OWNER_42=$(owner_port orders "hashint8(42)")

cat >"$WORK/routed.sql" <<EOF
\\set aid random(1, $TENANTS)
select count(*), sum(amount) from orders where account_id = :aid;
EOF
# Every run: no metrics listener, the shard map loaded at start and not polled after.
printf 'http_listen = ""\nshard_map_refresh_interval = 3600\n' >"$WORK/off.toml"
{
    cat "$WORK/off.toml"
    printf 'tenant_max_active = "100%%"\ntenant_max_tps = 1000000\ntenant_statement_timeout = 3600\n'
} >"$WORK/on.toml"
{
    cat "$WORK/off.toml"
    printf 'tenant_max_active = 3\n'
} >"$WORK/max3.toml"
: >"$WORK/runs.tsv"

# total CONFIG WORKLOAD MODE XACTS: user-space instructions of one pgtenant run.
# CONFIG: before, off, on or max3 (before runs BEFORE with off.toml).
total() {
    local cfg=$1 workload=$2 mode=$3 n=$4 bin=$WORK/bin/after db=app port out pid got='' log
    [ "$cfg" = before ] && bin=$WORK/bin/before
    [ "$workload" = plain ] && db=bench
    out=$WORK/callgrind/$cfg-$workload-$mode-$n-r$ROUND.out
    log=$WORK/logs/pgtenant-$cfg-$workload-$mode-$n-r$ROUND.log
    local toml=$WORK/$cfg.toml
    [ "$cfg" = before ] && toml=$WORK/off.toml
    # Up, and (routed) sending tenant 42 to its worker: the shard map is loaded.
    local q="select 1" want=1 attempt
    if [ "$workload" = routed ]; then
        q="select inet_server_port() from orders where account_id = 42 limit 1"
        want=$OWNER_42
    fi
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$toml" \
            --listen "127.0.0.1:$port" --upstream "postgres://app:secret@127.0.0.1:$COORD_PORT/$db" \
            --auth-type trust --pool-mode transaction --pool-size "$CLIENTS" --workers 1 \
            >"$log" 2>&1 &
        pid=$!
        # A file, not a variable: this runs in a $(…) subshell, and cleanup must find it.
        echo "$pid" >>"$WORK/pgtenant.pids"
        for _ in $(seq 1 600); do
            got=$("$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U app -d "$db" -c "$q" 2>/dev/null || true)
            [ "$got" = "$want" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        [ "$got" = "$want" ] && break
        wait "$pid" 2>/dev/null || true
        # Another process took the port since free_port looked: another one.
        grep -q 'Address already in use' "$log" && [ "$attempt" -lt 5 ] && continue
        die "pgtenant ($cfg) under valgrind on port $port: '$q' answered '${got}', not '$want': $(grep -v '^==' "$log" | tail -n 5)"
    done
    local args=(-n -h 127.0.0.1 -p "$port" -U app -M "$mode" -c "$CLIENTS" -j 1 -t "$n")
    if [ "$workload" = plain ]; then args+=(-S); else args+=(-f "$WORK/routed.sql"); fi
    local pgb=$WORK/logs/pgbench-$cfg-$workload-$mode-$n-r$ROUND.log
    "$PGBIN/pgbench" "${args[@]}" "$db" >"$pgb" 2>&1 ||
        die "pgbench through pgtenant ($cfg) failed: $(tail -n 3 "$pgb")"
    grep -q "^number of transactions actually processed: $((CLIENTS * n))/" "$pgb" ||
        die "pgbench through pgtenant ($cfg) did not complete every transaction: $(grep -i 'transactions' "$pgb")"
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        grep -q '^summary: ' "$out" 2>/dev/null && break
        sleep 0.1
    done
    got=$(sed -n 's/^summary: \([0-9]*\)$/\1/p' "$out" | head -n1)
    [ -n "$got" ] || die "no callgrind summary in $out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$cfg" "$workload" "$mode" "$n" "$got" >>"$WORK/runs.tsv"
    echo "$got"
}

per_xact() { # config workload mode round
    local s l
    say "round $4, $1: $2 -M $3 ($SHORT and $LONG transactions per client)" >&2
    s=$(total "$1" "$2" "$3" "$SHORT")
    l=$(total "$1" "$2" "$3" "$LONG")
    awk -v s="$s" -v l="$l" -v n=$((CLIENTS * (LONG - SHORT))) 'BEGIN { printf "%.0f", (l - s) / n }'
}

# Every round runs each workload in each configuration, the configurations in turns (in
# reverse order every other round); per.tsv: round workload mode config instructions.
: >"$WORK/per.tsv"
for r in $(seq 1 "$ROUNDS"); do
    ROUND=$r
    for w in "${WORKLOADS[@]}"; do
        [[ ",$ONLY," == *",$w,"* ]] || continue
        read -r workload mode <<<"$w"
        cfgs=(before off)
        [ "$workload" = routed ] && cfgs+=(on max3)
        if [ $((r % 2)) -eq 0 ]; then
            rev=()
            for ((i = ${#cfgs[@]} - 1; i >= 0; i--)); do rev+=("${cfgs[i]}"); done
            cfgs=("${rev[@]}")
        fi
        for c in "${cfgs[@]}"; do
            per=$(per_xact "$c" "$workload" "$mode" "$r")
            printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$workload" "$mode" "$c" "$per" >>"$WORK/per.tsv"
        done
    done
done

# median WORKLOAD MODE CONFIG over the rounds; all: every round's, in order.
median() {
    awk -F'\t' -v w="$1" -v m="$2" -v c="$3" '$2 == w && $3 == m && $4 == c { print $5 }' "$WORK/per.tsv" |
        sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.0f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
all() {
    awk -F'\t' -v w="$1" -v m="$2" -v c="$3" '$2 == w && $3 == m && $4 == c { printf "%s%s", sep, $5; sep = " / " }' "$WORK/per.tsv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

TABLE=$WORK/table.md
{
    echo "User-space instructions per transaction, median of $ROUNDS rounds ($CLIENTS clients, pool_size $CLIENTS, --workers 1, under callgrind):"
    echo
    echo "| workload | before | after, off | after, on (not binding) | after, max_active = 3 | off ÷ before | on ÷ off | max_active 3 ÷ off |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for w in "${WORKLOADS[@]}"; do
        [[ ",$ONLY," == *",$w,"* ]] || continue
        read -r workload mode <<<"$w"
        b=$(median "$workload" "$mode" before)
        o=$(median "$workload" "$mode" off)
        if [ "$workload" = routed ]; then
            on=$(median "$workload" "$mode" on)
            m3=$(median "$workload" "$mode" max3)
            echo "| routed single-tenant SELECT, -M $mode | $b | $o | $on | $m3 | $(ratio "$o" "$b") | $(ratio "$on" "$o") | $(ratio "$m3" "$o") |"
        else
            echo "| pgbench -S -M $mode, not routed | $b | $o | — | — | $(ratio "$o" "$b") | — | — |"
        fi
    done
    echo
    echo "Each round:"
    echo
    echo "| workload | before | after, off | after, on | after, max_active = 3 |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for w in "${WORKLOADS[@]}"; do
        [[ ",$ONLY," == *",$w,"* ]] || continue
        read -r workload mode <<<"$w"
        if [ "$workload" = routed ]; then
            echo "| routed, -M $mode | $(all "$workload" "$mode" before) | $(all "$workload" "$mode" off) | $(all "$workload" "$mode" on) | $(all "$workload" "$mode" max3) |"
        else
            echo "| pgbench -S -M $mode | $(all "$workload" "$mode" before) | $(all "$workload" "$mode" off) | — | — |"
        fi
    done
} >"$TABLE"
echo
cat "$TABLE"
echo
say "table in $TABLE; totals of every run in $WORK/runs.tsv, callgrind files in $WORK/callgrind"
