"""psycopg's test_change_password (tests/pq/test_pgconn.py) through pgtenant, whose
auth_query finds roles made after it started (issue 12 item 8, issue 14 point 3).

As psycopg's test: a superuser creates role "ashesh" with password "psycopg2", ashesh
logs in, the superuser changes the password with PQchangePassword (psycopg's
PGconn.change_password) and ashesh logs in with the new one at once. Then: the old
password is refused; ashesh changes its own password with ALTER USER, logs in with it,
and restores it; the role is made NOLOGIN, then dropped: both refused with
PostgreSQL's wrong-password message.

    python change_password.py "host=127.0.0.1 port=… user=postgres password=postgres dbname=postgres"
"""
import sys

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

admin_dsn = sys.argv[1]
user, passwd = "ashesh", "psycopg2"
admin = psycopg.connect(admin_dsn, autocommit=True)
admin.execute(f"CREATE USER {user} LOGIN PASSWORD '{passwd}'")


def dsn(password):
    return make_conninfo(admin_dsn, user=user, password=password, dbname="postgres")


def logs_in(password):
    with psycopg.connect(dsn(password)) as c:
        assert c.execute("select current_user").fetchone() == (user,)


def refused(password):
    try:
        psycopg.connect(dsn(password)).close()
    except psycopg.OperationalError as e:
        assert f'password authentication failed for user "{user}"' in str(e), str(e)
        return
    raise SystemExit(f"{user} logged in with {password!r}")


try:
    # psycopg's test, with libpq's PGconn as it does.
    conn = pq.PGconn.connect(dsn(passwd).encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    conn.finish()
    admin.pgconn.change_password(user.encode(), b"psycopg")
    conn = pq.PGconn.connect(dsn("psycopg").encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    conn.finish()

    refused(passwd)
    # The role changes its own password, uses it, and restores it.
    with psycopg.connect(dsn("psycopg"), autocommit=True) as me:
        me.execute(f"ALTER USER {user} PASSWORD 'newpass'")
        logs_in("newpass")
        refused("psycopg")
        me.execute(f"ALTER USER {user} PASSWORD 'psycopg'")
    logs_in("psycopg")
    refused("newpass")

    admin.execute(f"ALTER USER {user} NOLOGIN")
    refused("psycopg")
finally:
    admin.execute(f"DROP USER IF EXISTS {user}")
refused("psycopg")
print("ok")
