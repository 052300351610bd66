#!/usr/bin/env bash
# What the shard-map fingerprint costs the coordinator: the query pgtenant runs every
# `shard_map_refresh_interval`, timed by pgbench against an emulated Citus catalog of
# TABLES distributed tables × 32 shards on three nodes, beside the text-hashing query it
# replaced (same server, same run, alternating rounds).
#
#   ./scripts/fingerprint_cost.sh            # TABLES=100 (3,200 shards), 5 rounds of 3 s
#   TABLES=1000 ROUNDS=3 ./scripts/fingerprint_cost.sh
#
# Starts its own PostgreSQL (as the postgres OS user, a free loopback port, a temp dir),
# never 5432. The current query is read from src/citus/shard_map.rs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_NAME=fingerprint_cost
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

TABLES=${TABLES:-100}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
need_postgres
BIN=$(pg_bindir)

WORK=$(mktemp -d /tmp/pgtenant-fingerprint.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$((20000 + RANDOM % 30000))
while port_in_use "$PORT"; do PORT=$((20000 + RANDOM % 30000)); done
mkdir -p "$WORK/pg"
if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$WORK" "$WORK/pg"; fi
as_pg "$BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null
PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres postgres)

# The catalog tables as the demo's emulation defines them (up to its first INSERT).
sed -n '/^CREATE TABLE pg_dist_partition/,/^-- Nodes:/p' deploy/demo/emulated-coordinator.sql |
    sed '$d' | "${PSQL[@]}"
"${PSQL[@]}" <<EOF
DO \$\$ DECLARE i int; BEGIN
  FOR i IN 1..$TABLES LOOP
    EXECUTE format('CREATE TABLE t%s (account_id bigint, id bigserial, c1 int, c2 text, c3 text, c4 timestamptz)', i);
    EXECUTE format('INSERT INTO pg_dist_partition VALUES (%L::regclass, %L, %L, 1)', 't' || i, 'h', '{VAR :varno 1 :varattno 1}');
  END LOOP;
END \$\$;
INSERT INTO pg_dist_shard
  SELECT ('t' || ((s - 1) / 32 + 1))::regclass, 102007 + s, 't',
         (-2147483648::bigint + ((s - 1) % 32)::bigint * 134217728)::text,
         (-2147483648::bigint + ((s - 1) % 32 + 1)::bigint * 134217728 - 1)::text
  FROM generate_series(1, $TABLES * 32) s;
INSERT INTO pg_dist_placement SELECT s, 102007 + s, 1, 0, 1 + s % 2 FROM generate_series(1, $TABLES * 32) s;
INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport) VALUES (1, 0, 'coordinator', 5432), (2, 1, 'w1', 5432), (3, 2, 'w2', 5432);
ANALYZE;
EOF

# The text-hashing fingerprint used up to 2026-12 (for comparison).
cat >"$WORK/old.sql" <<'EOF'
SELECT (SELECT count(*)::text || ':' || coalesce(sum(hashtext(logicalrelid::text || ':' || partmethod::text || ':' || coalesce(partkey, '') || ':' || colocationid::text)), 0)::text FROM pg_dist_partition) || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashtext(shardid::text || ':' || coalesce(shardminvalue, '') || ':' || coalesce(shardmaxvalue, ''))), 0)::text FROM pg_dist_shard) || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashtext(shardid::text || ':' || groupid::text || ':' || shardstate::text)), 0)::text FROM pg_dist_placement) || '/' || (SELECT count(*)::text || ':' || coalesce(sum(hashtext(groupid::text || ':' || nodename || ':' || nodeport::text || ':' || isactive::text || ':' || noderole::text)), 0)::text FROM pg_dist_node) || '/' || (SELECT count(*)::text FROM pg_attribute a JOIN pg_dist_partition p ON p.logicalrelid = a.attrelid WHERE a.attnum > 0 AND NOT a.attisdropped);
EOF
python3 - "$ROOT/src/citus/shard_map.rs" "$WORK/new.sql" <<'EOF'
import re, sys
s = open(sys.argv[1]).read()
q = re.search(r'pub const FINGERPRINT_SQL: &str = "(.*?)";', s, re.S).group(1)
q = re.sub(r"\\\n\s*", " ", q)
open(sys.argv[2], "w").write(q + ";\n")
EOF
echo "$TABLES tables, $((TABLES * 32)) shards and placements; pgbench -c 1 -T $SECS per round"
latency() { # sql file
    "$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U postgres -c 1 -T "$SECS" -f "$1" postgres 2>&1 |
        sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p'
}
for r in $(seq 1 "$ROUNDS"); do
    old=$(latency "$WORK/old.sql")
    new=$(latency "$WORK/new.sql")
    one=$(echo 'SELECT 1;' >"$WORK/one.sql" && latency "$WORK/one.sql")
    printf 'round %s: old %s ms, new %s ms, SELECT 1 %s ms\n' "$r" "$old" "$new" "$one"
done
