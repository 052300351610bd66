#!/usr/bin/env bash
# Build io_engine_probe (release) and run the relay comparison; prints markdown tables.
#
# Env knobs (defaults in brackets):
#   ENGINES ["tokio-mt tokio-ct monoio compio tokio-uring raw-uring raw-uring-naive monoio-legacy compio-poll"]
#   NS ["1 32 200"]  REPS [3]  WARMUP [1]  SECS [4] (window A: tx/s, CPU, latency)
#   PERF_SECS [2] (window B: perf stat raw_syscalls:sys_enter)  THREADS [2] (relay threads)
#   LAT_PINNED [1]  also run N=1 with relay pinned to CPU 0 (1 thread) and load+backend on CPU 1
set -euo pipefail
cd "$(dirname "$0")"
ENGINES=${ENGINES:-"tokio-mt tokio-ct monoio compio tokio-uring raw-uring raw-uring-naive monoio-legacy compio-poll"}
NS=${NS:-"1 32 200"}
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
SECS=${SECS:-4}
PERF_SECS=${PERF_SECS:-2}
THREADS=${THREADS:-2}
LAT_PINNED=${LAT_PINNED:-1}

cargo build --release --quiet
B=$PWD/target/release/io_engine_probe
mkdir -p results
TS=$(date +%Y%m%d-%H%M%S)
RAW=results/raw-$TS.tsv
: > "$RAW"
echo "# host: $(uname -r), $(nproc) cpus; loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$B" detect >&2 || true

BACK_PID=""; RELAY_PID=""
cleanup() { [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true; [ -n "$BACK_PID" ] && kill "$BACK_PID" 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

# one measurement: $1=mode(label) $2=engine $3=N $4=rep $5=relay-threads $6=relay-taskset $7=load-taskset $8=backend port
one() {
  local mode=$1 eng=$2 n=$3 rep=$4 thr=$5 rts=$6 lts=$7 bport=$8
  local port try
  # ports below the ephemeral range (32768+) so no outgoing connection can hold them
  for try in 1 2 3; do
    port=$((20000 + RANDOM % 10000))
    $rts "$B" relay --engine "$eng" --listen 127.0.0.1:$port --backend 127.0.0.1:$bport --threads "$thr" 2>>results/relay-$TS.log &
    RELAY_PID=$!
    if wait_port $port; then break; fi
    kill $RELAY_PID 2>/dev/null || true; wait $RELAY_PID 2>/dev/null || true
  done
  local line
  line=$($lts "$B" load --target 127.0.0.1:$port --conns "$n" --pid $RELAY_PID --warmup "$WARMUP" --secs "$SECS" --perf-secs "$PERF_SECS" 2>>results/load-$TS.log) || line="FAILED"
  kill $RELAY_PID 2>/dev/null || true; wait $RELAY_PID 2>/dev/null || true; RELAY_PID=""
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$eng" "$n" "$rep" "$(cut -d' ' -f1 /proc/loadavg)" "$line" >> "$RAW"
  echo "$mode $eng N=$n rep=$rep: $line" >&2
}

# ---- main comparison: unpinned, relay with $THREADS threads; engines alternate inside each
# rep, order reversed on every other rep so drift does not favour one engine.
"$B" backend --listen 127.0.0.1:15432 2>/dev/null & BACK_PID=$!
wait_port 15432
for rep in $(seq "$REPS"); do
  order=$ENGINES
  if (( rep % 2 == 0 )); then order=$(echo $ENGINES | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for n in $NS; do
    for eng in $order; do one main "$eng" "$n" "$rep" "$THREADS" "" "" 15432; done
  done
done
kill $BACK_PID; wait $BACK_PID 2>/dev/null || true; BACK_PID=""

# ---- latency at N=1 with the relay alone on CPU 0 (1 thread), load + backend on CPU 1
if [ "$LAT_PINNED" = 1 ]; then
  taskset -c 1 "$B" backend --listen 127.0.0.1:15433 2>/dev/null & BACK_PID=$!
  wait_port 15433
  for rep in $(seq "$REPS"); do
    order=$ENGINES
    if (( rep % 2 == 0 )); then order=$(echo $ENGINES | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for eng in $order; do one pinned "$eng" 1 "$rep" 1 "taskset -c 0" "taskset -c 1" 15433; done
  done
  kill $BACK_PID; wait $BACK_PID 2>/dev/null || true; BACK_PID=""
fi

echo "# raw results: $RAW" >&2
python3 summarize.py "$RAW"
