#!/usr/bin/env bash
# Capture PostgreSQL's own answers for the hash_pg fuzz target: start a throw-away server
# (initdb in a temp dir, unix socket only), hash every value of inputs.py with the server's
# hash functions through their input functions (`$1::text::int8` etc., as tests/hash.rs
# does), and write `type<TAB>hex(input)<TAB>hash or E:SQLSTATE` lines to pg_hashes.tsv.
#
#   fuzz/oracle/capture.sh        (needs PostgreSQL's server binaries and python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
dir=$(mktemp -d /tmp/pgtenant-oracle.XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
fi
cleanup() { "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -E UTF8 --locale=C -U postgres >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -w -o "-c listen_addresses='' -k $dir -p 5499" -l "$dir/log" start >/dev/null
python3 inputs.py > "$dir/inputs.tsv"
chmod a+r "$dir/inputs.tsv"
version=$("${as_pg[@]}" "$bin/psql" -h "$dir" -p 5499 -U postgres -d postgres -Atc "SHOW server_version")
"${as_pg[@]}" "$bin/psql" -h "$dir" -p 5499 -U postgres -d postgres -q -At -F $'\t' -v ON_ERROR_STOP=1 >"$dir/out.tsv" <<SQL
CREATE FUNCTION h(t text, v text) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE r int;
BEGIN
  EXECUTE format('SELECT %s(\$1::text::%s)',
    CASE t WHEN 'int2' THEN 'hashint2' WHEN 'int4' THEN 'hashint4' WHEN 'int8' THEN 'hashint8'
           WHEN 'uuid' THEN 'uuid_hash' WHEN 'bpchar' THEN 'hashbpchar' ELSE 'hashtext' END, t)
    INTO r USING v;
  RETURN r::text;
EXCEPTION WHEN others THEN RETURN 'E:' || SQLSTATE;
END \$\$;
CREATE TEMP TABLE inputs (n serial, t text, hex text);
\copy inputs (t, hex) FROM '$dir/inputs.tsv'
SELECT t, hex, h(t, convert_from(decode(hex, 'hex'), 'UTF8')) FROM inputs ORDER BY n;
SQL
{
    echo "# PostgreSQL $version's answers (fuzz/oracle/capture.sh): type, hex of the input text, hash or E:SQLSTATE"
    cat "$dir/out.tsv"
} > pg_hashes.tsv
echo "wrote $(grep -vc '^#' pg_hashes.tsv) answers of PostgreSQL $version to fuzz/oracle/pg_hashes.tsv"
