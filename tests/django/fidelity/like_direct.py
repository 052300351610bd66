"""psycopg 3 behaviours that must be the same through pgtenant as on a direct connection
(issue 12). Run once per target by tests/it/django.rs:

    python like_direct.py "host=127.0.0.1 port=… user=app password=secret dbname=app" MODE

MODE is `direct`, `transaction` or `session`. Each check prints `ok <name>`; the first
failure raises (non-zero exit) with what was seen.
"""
import asyncio
import sys

import psycopg
from psycopg import errors

dsn, mode = sys.argv[1], sys.argv[2]


def ok(name):
    print(f"ok {name}", flush=True)


async def pipeline_error_does_not_hang():
    """An error inside psycopg's executemany pipeline (not in autocommit) ends in the
    error, every time, whatever the timing of the client's writes."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for i in range(10):
            cur = conn.cursor()
            try:
                await asyncio.wait_for(
                    cur.executemany(
                        "insert into nosuchtable values (%s)", [(j,) for j in range(20)]
                    ),
                    timeout=10,
                )
                raise SystemExit("executemany into a missing table succeeded")
            except errors.UndefinedTable:
                pass
            except asyncio.TimeoutError:
                raise SystemExit(f"executemany hung after the error (round {i})")
            await conn.rollback()
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)
            await conn.rollback()


def statements_after_ddl_are_planned_afresh():
    """psycopg's own test_change_type: DEALLOCATE ALL after DROP TYPE, then the same
    statement text again must not reuse a plan for the dropped type."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS preptable")
        conn.execute("DROP TYPE IF EXISTS prepenum")
        for _ in range(2):
            conn.execute("CREATE TYPE prepenum AS ENUM ('foo', 'bar', 'baz')")
            conn.execute("CREATE TABLE preptable(id integer, bar prepenum[])")
            conn.cursor().execute(
                "INSERT INTO preptable (bar) VALUES (%(enum_col)s::prepenum[])",
                {"enum_col": ["foo"]},
                prepare=True,
            )
            conn.execute("DROP TABLE preptable")
            conn.execute("DROP TYPE prepenum")


def own_notification_before_the_result():
    """PostgreSQL delivers the notification of a channel the client listens on before
    the ReadyForQuery of the transaction that sent it: psycopg has called the handler
    when execute() returns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = []
        conn.add_notify_handler(got.append)
        conn.execute("LISTEN like_direct")
        for i in range(20):
            got.clear()
            conn.execute(f"NOTIFY like_direct, 'n{i}'")
            assert [n.payload for n in got] == [f"n{i}"], (i, got)
            got.clear()
            conn.execute("select pg_notify('like_direct', 'f')")
            assert [n.payload for n in got] == ["f"], (i, got)
        got.clear()
        with conn.transaction():
            conn.execute("NOTIFY like_direct, 'tx'")
            assert got == [], got
        assert [n.payload for n in got] == ["tx"], got
        if mode != "transaction":
            # Sent by this very backend.
            assert got[0].pid == conn.info.backend_pid, (got[0].pid, conn.info.backend_pid)


def backend_pid():
    """Session mode and direct: the BackendKeyData is the server's, so the pid psycopg
    knows is the backend's. Transaction mode: pgtenant's own key; cancel still works."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        if mode == "transaction":
            assert conn.info.backend_pid != 0
        else:
            assert conn.info.backend_pid == pid, (conn.info.backend_pid, pid)
            row = conn.execute(
                "select count(*) from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            assert row == (1,), row
        # Cancel with the key psycopg was given.
        import threading
        import time

        t = threading.Timer(0.5, conn.cancel_safe)
        t.start()
        started = time.monotonic()
        try:
            conn.execute("select pg_sleep(10)")
            raise SystemExit("pg_sleep was not cancelled")
        except errors.QueryCanceled:
            pass
        assert time.monotonic() - started < 5
        t.join()
        assert conn.execute("select 1").fetchone() == (1,)


def client_encoding_spelling():
    """The client_encoding given at connect is reported as PostgreSQL spells it."""
    for given, want in [("euc-jp", "EUC_JP"), ("iso-8859-1", "LATIN1"), ("win1251", "WIN1251")]:
        with psycopg.connect(dsn, autocommit=True, client_encoding=given) as conn:
            assert conn.info.parameter_status("client_encoding") == want, (
                given,
                conn.info.parameter_status("client_encoding"),
            )
            assert conn.execute("show client_encoding").fetchone() == (want,)


def drop_database():
    """A database the pooler has (idle) connections to can be dropped, with a plain or a
    prepared statement."""
    for prepare in [False, True]:
        name = f"like_direct_{mode}_{int(prepare)}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
            other = psycopg.conninfo.make_conninfo(dsn, dbname=name)
            with psycopg.connect(other, autocommit=True) as c:
                c.execute("select 1")
            admin.cursor().execute(f"DROP DATABASE {name}", prepare=prepare)
            gone = admin.execute(
                "select count(*) from pg_database where datname = %s", (name,)
            ).fetchone()
            assert gone == (0,), gone


asyncio.run(pipeline_error_does_not_hang())
ok("pipeline_error_does_not_hang")
statements_after_ddl_are_planned_afresh()
ok("statements_after_ddl_are_planned_afresh")
own_notification_before_the_result()
ok("own_notification_before_the_result")
backend_pid()
ok("backend_pid")
client_encoding_spelling()
ok("client_encoding_spelling")
drop_database()
ok("drop_database")
print("all ok")
