#!/usr/bin/env bash
# pgtenant's load benchmark in one command: pgtenant and PgBouncer side by side.
#
#   ./scripts/loadbench.sh
#   LOADBENCH_DURATION=5 LOADBENCH_ROUNDS=1 LOADBENCH_ONLY=pgbench,latency ./scripts/loadbench.sh
#
# On Debian, as root or with sudo. Installs what is missing (PostgreSQL, PgBouncer) with
# apt-get, builds pgtenant and examples/idle_clients.rs (release), and starts its own
# PostgreSQL servers (as the postgres OS user, data in ./target/loadbench/pg, free loopback
# ports, never 5432) and, in front of each, one PgBouncer and one pgtenant (transaction
# pooling, the same pool size, SCRAM client auth, user app / password secret).
#
# Sections (LOADBENCH_ONLY picks some):
#   pgbench  pgbench -S (-M simple, extended, prepared), 32 clients, through each pooler
#   latency  pgbench -S -c 1: direct to PostgreSQL, through PgBouncer, through pgtenant;
#            then examples/latency_probe.rs: the same three, one query each in turn
#            (interleaved, so that a machine whose speed drifts between runs favours
#            none of them), p50 / p99 and the latency each pooler adds
#   idle     each pooler's RSS before, with N idle authenticated clients, and after
#   tenant   single-tenant SELECTs on the emulated Citus cluster of demo.sh: pgtenant
#            routing to the workers vs PgBouncer in front of the coordinator
#   instructions
#            user-space instructions per transaction, each pooler run under valgrind's
#            callgrind (pgbench -S simple / extended, 8 clients, pool 8, one pgtenant
#            worker): a count that does not depend on how busy the machine is
# Runs alternate between the poolers (A B A B …) for ROUNDS rounds; medians are reported.
# The CPU cost of a pooler is its utime+stime (/proc/PID/stat) over the run / transactions.
# Prints one markdown table and writes it, with the machine, versions and knobs and every
# run, to target/loadbench/results.md. Everything the script starts is stopped on exit.
#
# Knobs (environment):
#   LOADBENCH_DURATION      seconds per pgbench run (15)
#   LOADBENCH_ROUNDS        rounds per workload (3)
#   LOADBENCH_POOL          server connections per pool, both poolers (20)
#   LOADBENCH_CLIENTS       pgbench clients of the pgbench and tenant sections (32)
#   PGTENANT_SERVER_PIPELINING  off (default) or auto: pgtenant's server-side pipelining
#   PGTENANT_IO_ENGINE      auto (default), io_uring or epoll: pgtenant's I/O engine (the
#                           one that ran is read from pgtenant's log into the results)
#   LOADBENCH_IDLE_CLIENTS  idle clients of the idle section (10000)
#   LOADBENCH_PROBE_QUERIES round trips per target of the interleaved latency probe (20000)
#   LOADBENCH_WORKERS       pgtenant --workers (default: one per core)
#   LOADBENCH_ONLY          comma list of sections: pgbench,latency,idle,tenant,instructions
#                           (all)
#   LOADBENCH_SYSCALLS      "detail": also count which system calls (read, write, recvfrom,
#                           sendto, epoll_wait, futex, io_uring_enter, …) per transaction,
#                           printed per run and kept in target/loadbench/syscalls.tsv
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_NAME=loadbench
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

no_args_or_help "$@"

DURATION=${LOADBENCH_DURATION:-15}
ROUNDS=${LOADBENCH_ROUNDS:-3}
POOL=${LOADBENCH_POOL:-20}
IDLE_CLIENTS=${LOADBENCH_IDLE_CLIENTS:-10000}
PROBE_QUERIES=${LOADBENCH_PROBE_QUERIES:-20000}
WORKERS=${LOADBENCH_WORKERS:-}
ONLY=${LOADBENCH_ONLY:-pgbench,latency,idle,tenant,instructions}
CLIENTS=${LOADBENCH_CLIENTS:-32}
THREADS=2
SECTIONS=(pgbench latency idle tenant instructions)

is_count() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
is_count "$CLIENTS" || die "LOADBENCH_CLIENTS must be a positive number, not '$CLIENTS'"
is_count "$DURATION" || die "LOADBENCH_DURATION must be a positive number of seconds, not '$DURATION'"
is_count "$ROUNDS" || die "LOADBENCH_ROUNDS must be a positive number, not '$ROUNDS'"
is_count "$POOL" || die "LOADBENCH_POOL must be a positive number, not '$POOL'"
is_count "$IDLE_CLIENTS" || die "LOADBENCH_IDLE_CLIENTS must be a positive number, not '$IDLE_CLIENTS'"
is_count "$PROBE_QUERIES" || die "LOADBENCH_PROBE_QUERIES must be a positive number, not '$PROBE_QUERIES'"
[ -z "$WORKERS" ] || [[ $WORKERS =~ ^[0-9]+$ ]] || die "LOADBENCH_WORKERS must be a number, not '$WORKERS'"
IFS=, read -r -a WANT <<<"$ONLY"
[ "${#WANT[@]}" -gt 0 ] || die "LOADBENCH_ONLY is empty"
for s in "${WANT[@]}"; do
    [[ " ${SECTIONS[*]} " == *" $s "* ]] || die "LOADBENCH_ONLY: unknown section '$s' (sections: ${SECTIONS[*]})"
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
MAX_CLIENT_CONN=11000
if want idle && [ $((IDLE_CLIENTS + 100)) -gt "$MAX_CLIENT_CONN" ]; then
    MAX_CLIENT_CONN=$((IDLE_CLIENTS + 100))
fi

# The command as run, with the knobs that were set.
COMMAND=
PGT_ENGINE=
for v in LOADBENCH_DURATION LOADBENCH_ROUNDS LOADBENCH_POOL LOADBENCH_IDLE_CLIENTS \
    LOADBENCH_WORKERS LOADBENCH_ONLY LOADBENCH_CLIENTS PGTENANT_SERVER_PIPELINING \
    PGTENANT_IO_ENGINE; do
    if [ -n "${!v+x}" ]; then COMMAND+="$v=$(printf '%q' "${!v}") "; fi
done
COMMAND+="./scripts/loadbench.sh"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/loadbench
RUNS=$WORK/runs.tsv
mkdir -p "$WORK/bin" "$WORK/runs" "$WORK/pids"

claim_pidfile "$WORK/loadbench.pid" 'loadbench\.sh' "another loadbench run is going on"

# --- 1. packages, build, limits ----------------------------------------------------------
need_postgres
PGBENCH=$PGBIN/pgbench
[ -x "$PGBENCH" ] || die "pgbench not found in $PGBIN"
find_pgbouncer() { command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; }; }
if ! find_pgbouncer >/dev/null; then
    say "installing PgBouncer"
    apt_install pgbouncer
fi
PGBOUNCER=$(find_pgbouncer) || die "pgbouncer not found after installing it"
command -v awk >/dev/null 2>&1 || apt_install mawk
if want instructions && ! command -v valgrind >/dev/null 2>&1; then
    say "installing valgrind (instructions section)"
    apt_install valgrind
fi

need_cargo
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
    COMMIT+=" (with uncommitted changes)"
fi
say "building pgtenant, examples/idle_clients and examples/latency_probe (release)"
cargo build --release --bin pgtenant --example idle_clients --example latency_probe
# Private copies: a rebuild during the run does not change what is measured.
cp "$TARGET/release/pgtenant" "$WORK/bin/pgtenant.new"
mv -f "$WORK/bin/pgtenant.new" "$WORK/bin/pgtenant"
cp "$TARGET/release/examples/idle_clients" "$WORK/bin/idle_clients.new"
mv -f "$WORK/bin/idle_clients.new" "$WORK/bin/idle_clients"
cp "$TARGET/release/examples/latency_probe" "$WORK/bin/latency_probe.new"
mv -f "$WORK/bin/latency_probe.new" "$WORK/bin/latency_probe"
PGT_BIN=$WORK/bin/pgtenant
IDLE_BIN=$WORK/bin/idle_clients
PROBE_BIN=$WORK/bin/latency_probe

# Open files: the idle clients' process and each pooler need one per client.
hard=$(ulimit -Hn)
NOFILE=65536
if [ "$hard" != unlimited ] && [ "$hard" -lt "$NOFILE" ]; then NOFILE=$hard; fi
ulimit -n "$NOFILE" || die "cannot raise the open-file limit to $NOFILE"
if want idle; then
    [ "$NOFILE" -ge $((IDLE_CLIENTS + 200)) ] ||
        die "the open-file limit is $NOFILE (hard limit $hard): too low for $IDLE_CLIENTS idle clients; raise the hard limit (limits.conf, ulimit -Hn) or lower LOADBENCH_IDLE_CLIENTS"
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    [ $((hi - lo)) -gt $((IDLE_CLIENTS + 1000)) ] ||
        die "the local port range $lo-$hi is too small for $IDLE_CLIENTS clients (net.ipv4.ip_local_port_range)"
fi
SOMAXCONN=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?')
CLK_TCK=$(getconf CLK_TCK)
# System calls per transaction: perf counting the raw_syscalls:sys_enter tracepoint of the
# pooler's threads during each run (every system call enters the kernel through it). Off
# ("—") where perf or the tracepoint is not available (containers, kernel.perf_event_paranoid).
PERF_SYSCALLS=no
PERF_EVENTS=raw_syscalls:sys_enter
if command -v perf >/dev/null 2>&1 &&
    perf stat -e raw_syscalls:sys_enter -x, -o /dev/null -- true >/dev/null 2>&1; then
    PERF_SYSCALLS=yes
    # LOADBENCH_SYSCALLS=detail: also which calls, per transaction (the calls a pooler's
    # socket work and waiting go through; those the kernel has a tracepoint for).
    if [ "${LOADBENCH_SYSCALLS:-}" = detail ]; then
        for c in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait \
            epoll_ctl futex sched_yield io_uring_enter; do
            if perf stat -e "syscalls:sys_enter_$c" -x, -o /dev/null -- true >/dev/null 2>&1; then
                PERF_EVENTS+=",syscalls:sys_enter_$c"
            fi
        done
    fi
fi

# --- 2. leftovers of a killed run, cleanup -----------------------------------------------
pg_owned_dir "$WORK/pg" "/var/tmp/pgtenant-loadbench-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
PGHOME=$PG_DIR

# Processes of an earlier run (their pid files in $WORK/pids), if they are still ours.
for f in "$WORK"/pids/*.pid; do
    [ -e "$f" ] || continue
    old=$(cat "$f")
    exe=$(readlink "/proc/$old/exe" 2>/dev/null | sed 's/ (deleted)$//' || true)
    if [ -n "$exe" ] && { [[ $exe == "$WORK/bin/"* ]] || [ "$exe" = "$(readlink -f "$PGBOUNCER")" ]; }; then
        say "stopping $(basename "$f" .pid) of an earlier run (pid $old)"
        kill -TERM "$old" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$old" 2>/dev/null || true
    fi
    rm -f "$f"
done
for d in bench "${NODES[@]}"; do stop_server "$PGHOME/$d"; done

PG_DIRS=()       # data directories of the servers started here
CHILD_PIDS=()    # pgtenant and idle_clients: our children
DAEMON_PIDS=()   # PgBouncer (daemonized)
# Forget a child that has been waited for (its pid may be reused by another process).
drop_child() {
    local p keep=()
    for p in "${CHILD_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    CHILD_PIDS=("${keep[@]}")
}
cleanup() {
    local rc=$? p d
    trap - EXIT INT TERM HUP
    for p in "${CHILD_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${DAEMON_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${CHILD_PIDS[@]}" "${DAEMON_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${CHILD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f "$WORK"/pids/*.pid "$WORK/loadbench.pid"
    if [ "${#PG_DIRS[@]}" -gt 0 ]; then
        say "stopping the PostgreSQL servers"
        for d in "${PG_DIRS[@]}"; do stop_server "$d" & done
        wait
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- helpers -------------------------------------------------------------------------------
NEXT_PORT=26432 # below the ephemeral range, where the idle clients' ports come from
take_port() { # variable
    while port_in_use "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    printf -v "$1" '%s' "$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

app_sql() { # port sql
    PGPASSWORD=secret "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app -d app -c "$2"
}

# Wait until user app logs in through a port; with a pid, give up once it exits.
wait_login() { # port [pid]
    for _ in $(seq 1 150); do
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
        app_sql "$1" "select 1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# A wrong password must be refused: the pooler really authenticates clients.
check_auth() { # port what
    if PGPASSWORD=wrong "$PSQL" -X -At -h 127.0.0.1 -p "$1" -U app -d app -c 'select 1' >/dev/null 2>&1; then
        die "$2 accepted a wrong password"
    fi
}

PG_SETTINGS=("max_connections = 200")

start_bench_pg() {
    take_port PG_PORT
    PORT[bench]=$PG_PORT
    DIR[bench]=$PGHOME/bench
    rm -rf "${DIR[bench]}"
    as_pg cp -a "$PGHOME/template" "${DIR[bench]}"
    node_conf bench "${PG_SETTINGS[@]}"
    PG_DIRS+=("${DIR[bench]}")
    as_pg "$PGBIN/pg_ctl" start -D "${DIR[bench]}" -l "$PGHOME/bench.log" -w -t 60 >/dev/null || {
        tail -n 20 "$PGHOME/bench.log" >&2 || true
        die "PostgreSQL did not start (log: $PGHOME/bench.log)"
    }
    su_sql "$PG_PORT" postgres "CREATE ROLE app LOGIN PASSWORD 'secret'"
    su_sql "$PG_PORT" postgres "CREATE DATABASE app OWNER app"
    [ "$(su_sql "$PG_PORT" postgres "SELECT rolpassword LIKE 'SCRAM-SHA-256\$%' FROM pg_authid WHERE rolname = 'app'")" = t ] ||
        die "role app has no SCRAM password"
    say "pgbench -i -s 2 on 127.0.0.1:$PG_PORT"
    PGPASSWORD=secret "$PGBENCH" -i -q -s 2 -h 127.0.0.1 -p "$PG_PORT" -U app app >"$WORK/pgbench-init.log" 2>&1 ||
        die "pgbench -i failed: $(tail -n 3 "$WORK/pgbench-init.log")"
}

declare -A POOLER_PORT POOLER_PID
# start_pgbouncer NAME UPSTREAM_PORT: PgBouncer as the postgres OS user (pgbouncer -d).
start_pgbouncer() {
    local name=$1 up=$2 dir port pid
    dir=$PGHOME/$name
    take_port port
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '"app" "secret"\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$up dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = $MAX_CLIENT_CONN
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$dir"; fi
    chmod 0700 "$dir"
    # shellcheck disable=SC2016
    as_pg sh -c 'ulimit -n "$1" && exec "$2" -d "$3"' sh "$NOFILE" "$PGBOUNCER" "$dir/pgbouncer.ini" \
        >"$WORK/$name.start.log" 2>&1 || die "PgBouncer ($name) did not start: $(tail -n 5 "$WORK/$name.start.log")"
    for _ in $(seq 1 100); do
        [ -s "$dir/pgbouncer.pid" ] && break
        sleep 0.1
    done
    pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        die "PgBouncer ($name) is not running: $(tail -n 5 "$dir/pgbouncer.log" 2>/dev/null)"
    fi
    DAEMON_PIDS+=("$pid")
    echo "$pid" >"$WORK/pids/$name.pid"
    wait_login "$port" "$pid" || die "cannot log in through PgBouncer ($name) on port $port: $(tail -n 5 "$dir/pgbouncer.log")"
    check_auth "$port" "PgBouncer ($name)"
    POOLER_PORT[$name]=$port
    POOLER_PID[$name]=$pid
    say "PgBouncer ($name): 127.0.0.1:$port, pid $pid, upstream port $up"
}

# start_pgtenant NAME UPSTREAM_PORT: pgtenant in its own session (Ctrl-C reaches only us).
start_pgtenant() {
    local name=$1 up=$2 port pid args exe
    take_port port
    args=(run --listen "127.0.0.1:$port" --upstream "postgres://app:secret@127.0.0.1:$up/app"
        --pool-mode transaction --pool-size "$POOL" --max-client-conn "$MAX_CLIENT_CONN"
        --http-listen 127.0.0.1:0)
    if [ -n "$WORKERS" ]; then args+=(--workers "$WORKERS"); fi
    setsid "$PGT_BIN" "${args[@]}" >"$WORK/$name.log" 2>&1 &
    pid=$!
    CHILD_PIDS+=("$pid")
    echo "$pid" >"$WORK/pids/$name.pid"
    # setsid execs (the job is no process group leader): the pid is pgtenant's own.
    for _ in $(seq 1 50); do
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        [ "$exe" = "$PGT_BIN" ] && break
        sleep 0.05
    done
    [ "$exe" = "$PGT_BIN" ] || die "pid $pid is not pgtenant ($exe): cannot measure it"
    wait_login "$port" "$pid" || die "cannot log in through pgtenant ($name) on port $port: $(tail -n 5 "$WORK/$name.log")"
    check_auth "$port" "pgtenant ($name)"
    POOLER_PORT[$name]=$port
    POOLER_PID[$name]=$pid
    # The I/O engine that runs (io_engine = auto picks io_uring where it works).
    PGT_ENGINE=$(sed -n 's/.*I\/O engine io_engine="\([a-z_]*\)".*/\1/p' "$WORK/$name.log" | head -n 1)
    say "pgtenant ($name): 127.0.0.1:$port, pid $pid, upstream port $up, I/O engine ${PGT_ENGINE:-unknown}"
}

# bench_run SECTION WORKLOAD TARGET ROUND PORT PID|- PGBENCH-ARGS…: one pgbench run, one
# line in $RUNS: section workload target round status tps xacts failed latency_ms
# cpu_us_per_xact note syscalls_per_xact p50_ms p99_ms. The percentiles come from pgbench's
# per-transaction log (-l: every transaction's latency in µs), removed after the run.
bench_run() {
    local section=$1 workload=$2 target=$3 round=$4 port=$5 pid=$6
    shift 6
    local out=$WORK/runs/$section-$workload-$target-$round.log
    local c0=0 c1=0 rc=0 tps xacts failed lat cpu=- status=ok note=- perf_pid='' calls=- sc=-
    if [ "$pid" != - ]; then
        kill -0 "$pid" 2>/dev/null || die "$target (pid $pid) is gone"
        c0=$(cpu_ticks "$pid")
        if [ "$PERF_SYSCALLS" = yes ]; then
            perf stat -e "$PERF_EVENTS" -x, -p "$pid" -o "$out.perf" >/dev/null 2>&1 &
            perf_pid=$!
            sleep 0.2
        fi
    fi
    local xlog=$WORK/runs/xlog-$section-$workload-$target-$round p50=- p99=-
    PGPASSWORD=secret "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U app -l --log-prefix="$xlog" "$@" app \
        >"$out" 2>&1 || rc=$?
    # Columns: client, transaction, latency µs, script, epoch s, µs ("failed"/"skipped"
    # in the latency column for those: left out).
    read -r p50 p99 < <(cat "$xlog".* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "- -"; exit }
            i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
            printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }') || true
    rm -f "$xlog".*
    if [ "$pid" != - ]; then
        kill -0 "$pid" 2>/dev/null || die "$target (pid $pid) died during the run (log: $out)"
        c1=$(cpu_ticks "$pid")
        if [ -n "$perf_pid" ]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            calls=$(awk -F, '/raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ { print $1; exit }' "$out.perf" 2>/dev/null)
            calls=${calls:--}
        fi
    fi
    xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out")
    if [ "$rc" -ne 0 ] || [ -z "$xacts" ] || [ "$xacts" = 0 ] || [ -z "$tps" ] || [ -z "$lat" ]; then
        status=failed
        note=$({ grep -m1 -iE 'error|fatal' "$out" || tail -n1 "$out"; } |
            sed -E 's/^pgbench: (error: )?//; s/[[:space:]|]+/ /g' | cut -c1-150)
        [ -n "$note" ] || note="pgbench exit code $rc"
        if grep -q 'Run was aborted' "$out"; then note+=" (run aborted)"; fi
    elif [ "$pid" != - ]; then
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$xacts" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        if [ "$calls" != - ]; then
            sc=$(awk -v c="$calls" -v n="$xacts" 'BEGIN { printf "%.2f", c / n }')
            if [ "$PERF_EVENTS" != raw_syscalls:sys_enter ]; then
                # One line per run: section workload target round, then call=per-xact pairs.
                awk -F, -v n="$xacts" -v head="$section	$workload	$target	$round" '
                    $3 ~ /^syscalls:sys_enter_/ && $1 ~ /^[0-9]+$/ && $1 > 0 {
                        sub(/^syscalls:sys_enter_/, "", $3); line = line sprintf("\t%s=%.2f", $3, $1 / n)
                    }
                    END { print head line }' "$out.perf" >>"$WORK/syscalls.tsv"
                printf '    round %s  %-18s syscalls/xact by call:%s\n' "$round" "$target" \
                    "$(tail -n1 "$WORK/syscalls.tsv" | cut -f5- | tr '\t' ' ')"
            fi
        fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$workload" "$target" "$round" \
        "$status" "${tps:--}" "${xacts:--}" "${failed:--}" "${lat:--}" "$cpu" "$note" "$sc" "${p50:--}" "${p99:--}" >>"$RUNS"
    if [ "$status" = ok ]; then
        printf '    round %s  %-18s %10.0f tps  %8.3f ms (p50 %s, p99 %s)  %s  (%s xacts, %s failed)\n' \
            "$round" "$target" "$tps" "$lat" "${p50:--}" "${p99:--}" "$([ "$cpu" = - ] || echo "$cpu µs CPU/xact")$([ "$sc" = - ] || echo ", $sc syscalls/xact")" "$xacts" "${failed:--}"
    else
        printf '    round %s  %-18s FAILED: %s\n' "$round" "$target" "$note"
    fi
}

# Median of one column over the successful runs (empty when there is none).
median() { # section workload target column
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" -v c="$4" \
        '$1 == s && $2 == w && $3 == t && $5 == "ok" { print $c }' "$RUNS" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
count_runs() { # section workload target status
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" -v st="$4" \
        '$1 == s && $2 == w && $3 == t && $5 == st { n++ } END { print n + 0 }' "$RUNS"
}
failed_xacts() { # section workload target: failed transactions over the successful runs
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" \
        '$1 == s && $2 == w && $3 == t && $5 == "ok" && $8 != "-" { n += $8 } END { print n + 0 }' "$RUNS"
}
first_note() { # section workload target
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" \
        '$1 == s && $2 == w && $3 == t && $5 == "failed" { print $11; exit }' "$RUNS"
}
fmt() { # printf-format value: "-" stays
    if [ -z "$2" ] || [ "$2" = - ]; then echo "—"; else awk -v v="$2" -v f="$1" 'BEGIN { printf f, v }'; fi
}
ratio() { # a b: a ÷ b
    if [ -z "$1" ] || [ -z "$2" ] || [ "$1" = - ] || [ "$2" = - ]; then
        echo "—"
    else
        awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "—"; else printf "%.2f", a / b }'
    fi
}

# --- 3. measurements -------------------------------------------------------------------------
: >"$RUNS"
: >"$WORK/syscalls.tsv"
: >"$WORK/idle.tsv"
: >"$WORK/routes.txt"
pg_template "$PGHOME/template"
NEED_MAIN=no
for s in pgbench latency idle instructions; do if want "$s"; then NEED_MAIN=yes; fi; done
if [ "$NEED_MAIN" = yes ]; then
    say "starting PostgreSQL (defaults except ${PG_SETTINGS[*]})"
    start_bench_pg
    start_pgbouncer pgbouncer "$PG_PORT"
    start_pgtenant pgtenant "$PG_PORT"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# Every workload: ROUNDS rounds of PgBouncer then pgtenant, after an unrecorded 2 s warm-up.
pooler_rounds() { # section workload pgbouncer-name pgtenant-name pgbench-args…
    local section=$1 workload=$2 a=$3 b=$4 r t
    shift 4
    say "$section: $workload ($*)"
    for t in "$a" "$b"; do
        PGPASSWORD=secret "$PGBENCH" -n -h 127.0.0.1 -p "${POOLER_PORT[$t]}" -U app \
            "$@" -T 2 app >/dev/null 2>&1 || true
    done
    for r in $(seq 1 "$ROUNDS"); do
        for t in "$a" "$b"; do
            bench_run "$section" "$workload" "$t" "$r" "${POOLER_PORT[$t]}" "${POOLER_PID[$t]}" "$@" -T "$DURATION"
        done
    done
}

if want pgbench; then
    for mode in simple extended prepared; do
        pooler_rounds pgbench "$mode" pgbouncer pgtenant -S -M "$mode" -c "$CLIENTS" -j "$THREADS"
    done
fi

if want latency; then
    say "latency: pgbench -S -M simple -c 1 -j 1, direct / PgBouncer / pgtenant"
    for r in $(seq 1 "$ROUNDS"); do
        bench_run latency simple direct "$r" "$PG_PORT" - -S -M simple -c 1 -j 1 -T "$DURATION"
        for t in pgbouncer pgtenant; do
            bench_run latency simple "$t" "$r" "${POOLER_PORT[$t]}" "${POOLER_PID[$t]}" -S -M simple -c 1 -j 1 -T "$DURATION"
        done
    done
    say "latency: examples/latency_probe, $PROBE_QUERIES round trips each, direct / PgBouncer / pgtenant in turn"
    "$PROBE_BIN" app secret app "$PROBE_QUERIES" "direct=127.0.0.1:$PG_PORT" \
        "pgbouncer=127.0.0.1:${POOLER_PORT[pgbouncer]}" "pgtenant=127.0.0.1:${POOLER_PORT[pgtenant]}" \
        >"$WORK/probe.txt" 2>"$WORK/probe.err" || die "latency_probe failed: $(tail -n 3 "$WORK/probe.err")"
    sed 's/^/    /' "$WORK/probe.txt"
fi

IDLE_PID=
idle_measure() { # pooler-name
    local name=$1 pid=${POOLER_PID[$1]} port=${POOLER_PORT[$1]} before with after log t0 secs
    log=$WORK/idle-$name
    sleep 1
    before=$(rss_kib "$pid")
    say "idle: $IDLE_CLIENTS clients to $name (RSS before: $before KiB)"
    t0=$SECONDS
    : >"$log.out"
    "$IDLE_BIN" 127.0.0.1 "$port" app secret app "$IDLE_CLIENTS" --hold-secs 3600 >"$log.out" 2>"$log.err" &
    IDLE_PID=$!
    CHILD_PIDS+=("$IDLE_PID")
    echo "$IDLE_PID" >"$WORK/pids/idle_clients.pid"
    while ! grep -q '^connected ' "$log.out"; do
        if ! kill -0 "$IDLE_PID" 2>/dev/null; then
            wait "$IDLE_PID" 2>/dev/null || true
            die "idle_clients failed against $name: $(tail -n 3 "$log.err")"
        fi
        [ $((SECONDS - t0)) -lt 1200 ] || die "idle_clients did not connect $IDLE_CLIENTS clients to $name in 1200 s"
        sleep 0.5
    done
    secs=$(sed -n 's/^connected [0-9]* clients in \([0-9.]*\) s$/\1/p' "$log.out")
    sleep 2
    with=$(rss_kib "$pid")
    kill -0 "$pid" 2>/dev/null || die "$name died with $IDLE_CLIENTS clients"
    kill -TERM "$IDLE_PID"
    wait "$IDLE_PID" || die "idle_clients did not close cleanly: $(tail -n 3 "$log.err")"
    grep -q '^closed ' "$log.out" || die "idle_clients did not report closing"
    drop_child "$IDLE_PID"
    IDLE_PID=
    rm -f "$WORK/pids/idle_clients.pid"
    # pgtenant gives memory back from a background check every 5 s: wait until the RSS
    # stops falling (at most ~15 s), for both poolers alike.
    local prev=0 i
    after=$(rss_kib "$pid")
    for i in $(seq 1 15); do
        sleep 1
        prev=$after
        after=$(rss_kib "$pid")
        if [ "$i" -ge 7 ] && [ "$after" -ge "$prev" ]; then break; fi
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$before" "$with" "$after" "$secs" >>"$WORK/idle.tsv"
    say "idle: $name RSS with $IDLE_CLIENTS clients: $with KiB, after: $after KiB (connected in $secs s)"
}

if want idle; then
    idle_measure pgbouncer
    idle_measure pgtenant
fi

if want tenant; then
    say "tenant: the emulated Citus cluster of demo.sh (defaults except ${PG_SETTINGS[*]})"
    cluster_init "$PGHOME" "$NEXT_PORT"
    for n in "${NODES[@]}"; do PG_DIRS+=("${DIR[$n]}"); done
    NEXT_PORT=$((PORT[worker2] + 1))
    cluster_create "$PGHOME/template" "${PG_SETTINGS[@]}"
    [ "$CLUSTER_MODE" = "emulated Citus" ] || say "note: real Citus cluster"
    start_pgbouncer pgbouncer-citus "$COORD_PORT"
    start_pgtenant pgtenant-citus "$COORD_PORT"
    # pgtenant must route tenant 42 to the worker that owns it (its shard map is loaded).
    A_PORT=$(owner_port orders "hashint8(42)")
    got=
    for _ in $(seq 1 100); do
        got=$(app_sql "${POOLER_PORT[pgtenant-citus]}" "select inet_server_port() from orders where account_id = 42 limit 1" 2>/dev/null || true)
        [ "$got" = "$A_PORT" ] && break
        sleep 0.2
    done
    [ "$got" = "$A_PORT" ] || die "pgtenant does not route tenant 42 to its worker (port $A_PORT; answered by ${got:-nobody})"
    got=$(app_sql "${POOLER_PORT[pgbouncer-citus]}" "select inet_server_port()")
    [ "$got" = "$COORD_PORT" ] || die "PgBouncer does not reach the coordinator (answered by $got)"
    cat >"$WORK/tenant.sql" <<EOF
\\set aid random(1, $TENANTS)
select count(*), sum(amount) from orders where account_id = :aid;
EOF
    for mode in simple extended prepared; do
        pooler_rounds tenant "$mode" pgbouncer-citus pgtenant-citus -f "$WORK/tenant.sql" -M "$mode" -c "$CLIENTS" -j "$THREADS"
    done
    # Where pgtenant sent the transactions (its /metrics).
    metrics_port=$(sed -n 's/.*http_listen=[^ ]*:\([0-9][0-9]*\).*/\1/p' "$WORK/pgtenant-citus.log" | head -n1)
    if [ -n "$metrics_port" ] && command -v curl >/dev/null 2>&1; then
        curl -fsS "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null |
            awk '/^pgtenant_routed_transactions_total/ && $NF > 0 { print }' >"$WORK/routes.txt" || true
    fi
fi

# Instructions: each pooler started afresh under callgrind, a short and a long pgbench run;
# the difference of the two totals ÷ the extra transactions is the cost of a transaction
# (login, startup and shutdown cancel out).
IR_CLIENTS=8
IR_SHORT=300
IR_LONG=2300
: >"$WORK/instructions.tsv"
ir_total() { # pooler mode xacts: instructions of one run
    local pooler=$1 mode=$2 xacts=$3 port pid dir out
    take_port port
    dir=$PGHOME/callgrind
    out=$dir/$pooler-$mode-$xacts.out
    if [ "$pooler" = pgbouncer ]; then
        sed -e "s/^listen_port = .*/listen_port = $port/" \
            -e "s/^default_pool_size = .*/default_pool_size = $IR_CLIENTS/" \
            -e "s#^logfile = .*#logfile = $dir/pgbouncer.log#" \
            -e "s#^pidfile = .*#pidfile = $dir/pgbouncer.pid#" \
            "$PGHOME/pgbouncer/pgbouncer.ini" >"$dir/pgbouncer.ini"
        if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$dir"; fi
        as_pg valgrind --tool=callgrind --callgrind-out-file="$out" "$PGBOUNCER" "$dir/pgbouncer.ini" \
            >"$WORK/callgrind-$pooler.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$out" "$PGT_BIN" run \
            --listen "127.0.0.1:$port" --upstream "postgres://app:secret@127.0.0.1:$PG_PORT/app" \
            --pool-mode transaction --pool-size "$IR_CLIENTS" --workers 1 \
            >"$WORK/callgrind-$pooler.log" 2>&1 &
    fi
    pid=$!
    CHILD_PIDS+=("$pid")
    wait_login "$port" "$pid" || die "$pooler under valgrind did not take logins: $(tail -n 5 "$WORK/callgrind-$pooler.log")"
    PGPASSWORD=secret "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U app -S -M "$mode" -c "$IR_CLIENTS" -j 1 \
        -t "$xacts" app >"$WORK/runs/instructions-$pooler-$mode-$xacts.log" 2>&1 ||
        die "pgbench through $pooler under valgrind failed: $(tail -n 3 "$WORK/runs/instructions-$pooler-$mode-$xacts.log")"
    if [ "$pooler" = pgbouncer ]; then
        pkill -INT -f "$dir/pgbouncer.ini" || true
    else
        kill -INT "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    drop_child "$pid"
    # valgrind writes its totals as the pooler exits.
    for _ in $(seq 1 100); do
        grep -q '^summary: ' "$out" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^summary: \([0-9]*\)$/\1/p' "$out" | head -n1
}

if want instructions; then
    mkdir -p "$PGHOME/callgrind"
    for mode in simple extended; do
        for pooler in pgbouncer pgtenant; do
            say "instructions: $pooler under callgrind, pgbench -S -M $mode -c $IR_CLIENTS, $IR_SHORT and $IR_LONG transactions per client"
            short=$(ir_total "$pooler" "$mode" "$IR_SHORT")
            long=$(ir_total "$pooler" "$mode" "$IR_LONG")
            if [ -z "$short" ] || [ -z "$long" ]; then die "no callgrind totals for $pooler ($mode)"; fi
            per=$(awk -v s="$short" -v l="$long" -v n=$((IR_CLIENTS * (IR_LONG - IR_SHORT))) 'BEGIN { printf "%.0f", (l - s) / n }')
            printf '%s\t%s\t%s\n' "$pooler" "$mode" "$per" >>"$WORK/instructions.tsv"
            say "instructions: $pooler, -M $mode: $per per transaction"
        done
    done
fi

# --- 4. the table ----------------------------------------------------------------------------
TABLE=$WORK/table.md
{
    echo "| workload | metric | PgBouncer | pgtenant | pgtenant ÷ PgBouncer |"
    echo "| --- | --- | ---: | ---: | ---: |"
    for section in pgbench tenant; do
        want "$section" || continue
        if [ "$section" = pgbench ]; then a=pgbouncer b=pgtenant label="select-only (-S)"; else a=pgbouncer-citus b=pgtenant-citus label="tenant SELECT, Citus"; fi
        for mode in simple extended prepared; do
            w="$label, -M $mode, $CLIENTS clients"
            ta=$(median "$section" "$mode" "$a" 6)
            tb=$(median "$section" "$mode" "$b" 6)
            ca=$(median "$section" "$mode" "$a" 10)
            cb=$(median "$section" "$mode" "$b" 10)
            la=$(median "$section" "$mode" "$a" 9)
            lb=$(median "$section" "$mode" "$b" 9)
            cell_a=$(fmt %.0f "$ta")
            cell_b=$(fmt %.0f "$tb")
            for t in "$a" "$b"; do
                nf=$(count_runs "$section" "$mode" "$t" failed)
                [ "$nf" -eq 0 ] && continue
                msg="$nf/$ROUNDS runs failed: $(first_note "$section" "$mode" "$t")"
                if [ "$t" = "$a" ]; then cell_a="$cell_a ($msg)"; else cell_b="$cell_b ($msg)"; fi
            done
            echo "| $w | tps | $cell_a | $cell_b | $(ratio "$tb" "$ta") |"
            echo "| $w | pooler CPU µs / xact | $(fmt %.1f "$ca") | $(fmt %.1f "$cb") | $(ratio "$cb" "$ca") |"
            sa=$(median "$section" "$mode" "$a" 12)
            sb=$(median "$section" "$mode" "$b" 12)
            echo "| $w | pooler system calls / xact | $(fmt %.2f "$sa") | $(fmt %.2f "$sb") | $(ratio "$sb" "$sa") |"
            echo "| $w | avg latency ms | $(fmt %.3f "$la") | $(fmt %.3f "$lb") | $(ratio "$lb" "$la") |"
            for q in 13:p50 14:p99; do
                qa=$(median "$section" "$mode" "$a" "${q%%:*}")
                qb=$(median "$section" "$mode" "$b" "${q%%:*}")
                echo "| $w | ${q#*:} latency ms | $(fmt %.3f "$qa") | $(fmt %.3f "$qb") | $(ratio "$qb" "$qa") |"
            done
            fa=$(failed_xacts "$section" "$mode" "$a")
            fb=$(failed_xacts "$section" "$mode" "$b")
            if [ "$fa" != 0 ] || [ "$fb" != 0 ]; then
                echo "| $w | failed xacts (all rounds) | $fa | $fb | |"
            fi
        done
    done
    if want latency; then
        w="select-only, -M simple, 1 client"
        ld=$(median latency simple direct 9)
        la=$(median latency simple pgbouncer 9)
        lb=$(median latency simple pgtenant 9)
        aa=- ab=-
        [ -n "$ld" ] && [ -n "$la" ] && aa=$(awk -v p="$la" -v d="$ld" 'BEGIN { printf "%.1f", (p - d) * 1000 }')
        [ -n "$ld" ] && [ -n "$lb" ] && ab=$(awk -v p="$lb" -v d="$ld" 'BEGIN { printf "%.1f", (p - d) * 1000 }')
        echo "| $w | avg latency ms (direct: $(fmt %.3f "$ld")) | $(fmt %.3f "$la") | $(fmt %.3f "$lb") | $(ratio "$lb" "$la") |"
        echo "| $w | latency added µs | $aa | $ab | $(ratio "$ab" "$aa") |"
        for q in 13:p50 14:p99; do
            qd=$(median latency simple direct "${q%%:*}")
            qa=$(median latency simple pgbouncer "${q%%:*}")
            qb=$(median latency simple pgtenant "${q%%:*}")
            echo "| $w | ${q#*:} latency ms (direct: $(fmt %.3f "$qd")) | $(fmt %.3f "$qa") | $(fmt %.3f "$qb") | $(ratio "$qb" "$qa") |"
        done
        # latency_probe's line: NAME n N mean X p50 Y p90 Z p99 W µs added p50 A mean B µs
        probe() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$WORK/probe.txt"; }
        w="interleaved probe, 1 client"
        echo "| $w | p50 µs (direct: $(probe direct 7)) | $(probe pgbouncer 7) | $(probe pgtenant 7) | $(ratio "$(probe pgtenant 7)" "$(probe pgbouncer 7)") |"
        echo "| $w | p99 µs (direct: $(probe direct 11)) | $(probe pgbouncer 11) | $(probe pgtenant 11) | $(ratio "$(probe pgtenant 11)" "$(probe pgbouncer 11)") |"
        echo "| $w | p50 added µs | $(probe pgbouncer 15) | $(probe pgtenant 15) | $(ratio "$(probe pgtenant 15)" "$(probe pgbouncer 15)") |"
        echo "| $w | mean added µs | $(probe pgbouncer 17) | $(probe pgtenant 17) | $(ratio "$(probe pgtenant 17)" "$(probe pgbouncer 17)") |"
    fi
    if want idle; then
        w="$IDLE_CLIENTS idle clients"
        idle() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n { print $c }' "$WORK/idle.tsv"; }
        per() { awk -v w="$(idle "$1" 3)" -v b="$(idle "$1" 2)" -v n="$IDLE_CLIENTS" 'BEGIN { printf "%.2f", (w - b) / n }'; }
        echo "| $w | RSS before, KiB | $(idle pgbouncer 2) | $(idle pgtenant 2) | $(ratio "$(idle pgtenant 2)" "$(idle pgbouncer 2)") |"
        echo "| $w | RSS with the clients, KiB | $(idle pgbouncer 3) | $(idle pgtenant 3) | $(ratio "$(idle pgtenant 3)" "$(idle pgbouncer 3)") |"
        echo "| $w | RSS after they left, KiB | $(idle pgbouncer 4) | $(idle pgtenant 4) | $(ratio "$(idle pgtenant 4)" "$(idle pgbouncer 4)") |"
        echo "| $w | KiB per idle client | $(per pgbouncer) | $(per pgtenant) | $(ratio "$(per pgtenant)" "$(per pgbouncer)") |"
        echo "| $w | seconds to connect them all | $(idle pgbouncer 5) | $(idle pgtenant 5) | $(ratio "$(idle pgtenant 5)" "$(idle pgbouncer 5)") |"
    fi
    if want instructions; then
        ir() { awk -F'\t' -v p="$1" -v m="$2" '$1 == p && $2 == m { print $3 }' "$WORK/instructions.tsv"; }
        for mode in simple extended; do
            w="select-only, -M $mode, $IR_CLIENTS clients, pool $IR_CLIENTS, under callgrind"
            echo "| $w | user-space instructions / xact | $(ir pgbouncer "$mode") | $(ir pgtenant "$mode") | $(ratio "$(ir pgtenant "$mode")" "$(ir pgbouncer "$mode")") |"
        done
    fi
} >"$TABLE"

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
PG_VERSION=$("$PGBIN/postgres" --version)
PGB_VERSION=$("$PGBOUNCER" --version | head -n1)
{
    echo "# pgtenant load benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- kernel: $(uname -r); CPU: ${CPU_MODEL:-unknown} × $(nproc)"
    echo "- $PG_VERSION; $PGB_VERSION; pgtenant $COMMIT"
    echo "- command: \`$COMMAND\`"
    echo "- knobs: duration ${DURATION} s, rounds $ROUNDS, pool size $POOL, pgbench -c $CLIENTS -j $THREADS," \
        "idle clients $IDLE_CLIENTS, pgtenant workers ${WORKERS:-one per core}, sections $ONLY," \
        "pgtenant I/O engine ${PGT_ENGINE:-unknown}"
    echo "- load average: $LOAD_AT_START at start, $LOAD_BEFORE before the measurements"
    echo "- PostgreSQL: defaults (fsync on) except ${PG_SETTINGS[*]}; both poolers: transaction" \
        "pooling, SCRAM-SHA-256 client auth with a plain-text password, max_client_conn $MAX_CLIENT_CONN," \
        "open-file limit $NOFILE; somaxconn $SOMAXCONN"
    echo "- medians over $ROUNDS rounds, PgBouncer and pgtenant alternating; CPU = the pooler's" \
        "utime+stime over the run ÷ transactions; ratio = pgtenant ÷ PgBouncer"
    echo
    cat "$TABLE"
    if [ -s "$WORK/routes.txt" ]; then
        echo
        echo "pgtenant's routing in the tenant section (\`pgtenant_routed_transactions_total\`):"
        echo
        echo '```'
        cat "$WORK/routes.txt"
        echo '```'
    fi
    if [ -s "$RUNS" ]; then
        echo
        echo "## Runs"
        echo
        echo "| section | workload | target | round | status | tps | xacts | failed | latency ms | CPU µs/xact | note | syscalls/xact | p50 ms | p99 ms |"
        echo "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
        awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$RUNS"
    fi
} >"$WORK/results.md"

echo
cat "$TABLE"
echo
say "written to $WORK/results.md (pgbench output: $WORK/runs/)"
