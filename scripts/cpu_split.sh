#!/bin/bash
# cpu_split.sh: user and system CPU per transaction of running poolers, interleaved.
#
#   scripts/cpu_split.sh NAME:PORT:PID [NAME:PORT:PID ...]
#
# For each round and pgbench mode, runs `pgbench -n -S -M MODE -c $C -j 2 -T $T` against
# each target in turn and prints its tps and the user and system time the process with
# PID spent per transaction (from /proc/PID/stat). The targets must already run, with
# pgbench's tables initialised in database app, user app, password secret
# (PGPASSWORD overrides). Knobs: C (clients, 32), T (seconds, 10), R (rounds, 2),
# MODES ("simple extended"). A measurement helper for benches/RESULTS.md, not a test.
set -euo pipefail
[ $# -gt 0 ] || { sed -n 2,12p "$0"; exit 2; }
hz=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
for r in $(seq "${R:-2}"); do
  for m in ${MODES:-simple extended}; do
    for spec in "$@"; do
      IFS=: read -r name port pid <<<"$spec"
      read -r u0 s0 < <(ticks "$pid")
      out=$(PGPASSWORD=${PGPASSWORD:-secret} pgbench -n -S -M "$m" -c "${C:-32}" -j 2 \
        -T "${T:-10}" -h 127.0.0.1 -p "$port" -U app app 2>&1)
      read -r u1 s1 < <(ticks "$pid")
      tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
      n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
      [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "$name: pgbench failed: $out" >&2; exit 1; }
      awk -v name="$name" -v m="$m" -v tps="$tps" -v n="$n" -v hz="$hz" \
        -v u="$((u1 - u0))" -v s="$((s1 - s0))" 'BEGIN {
          printf "round %d %-10s %-8s tps %8.0f  user/xact %5.1f us  sys/xact %5.1f us\n",
            '"$r"', name, m, tps, u * 1e6 / hz / n, s * 1e6 / hz / n }'
    done
  done
done
