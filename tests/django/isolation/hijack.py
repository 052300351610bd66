"""The prepared-statement hijack of issue 11, with psycopg 3 and prepare=True.

Two connections to pgtenant (pool_size 1: one server connection). A prepares a
statement server-side (psycopg's prepare=True); B looks up its server-side name in
pg_prepared_statements and, through dynamic SQL, drops it and prepares its own in its
place, then tries the same with `select 1; deallocate all`. A's next executions must run
A's own statement and hand B nothing.

    python hijack.py "host=127.0.0.1 port=… user=app password=secret dbname=app"
"""
import sys

import psycopg

dsn = sys.argv[1]
a = psycopg.connect(dsn, autocommit=True)
b = psycopg.connect(dsn, autocommit=True)
q = "select v from items where id = %s"

assert a.execute(q, (1,), prepare=True).fetchone() == ("one",)
name = b.execute(
    "select name from pg_prepared_statements where statement = 'select v from items where id = $1'"
).fetchone()[0]
assert name.startswith("pgt_"), name

for attack in [
    f"DEALLOCATE {name}",
    f"PREPARE {name}(int) AS INSERT INTO loot VALUES ($1::text) RETURNING 'one'::text",
]:
    try:
        b.execute(attack)
        raise SystemExit(f"B was allowed: {attack}")
    except psycopg.Error as e:
        assert e.sqlstate in ("26000", "42939"), (attack, e.sqlstate)

b.execute(
    f"DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; "
    f"EXECUTE 'PREPARE {name}(int) AS INSERT INTO loot VALUES ($1::text) RETURNING ''one''::text'; END $$"
)
for _ in range(3):
    assert a.execute(q, (2,), prepare=True).fetchone() == ("two",)
assert b.execute("select count(*) from loot").fetchone() == (0,), "A's parameter reached B"

b.execute("select 1; deallocate all")
for _ in range(3):
    assert a.execute(q, (1,), prepare=True).fetchone() == ("one",)
print("ok")
