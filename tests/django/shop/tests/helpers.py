"""Helpers shared by the shop tests: threads with their own connections, zone checks."""
import threading
import traceback

from django.conf import settings
from django.db import connections

# A thread that has not finished by then is a hang (a lost wakeup, a pool that never
# hands out a server connection): fail instead of waiting for the outer timeout.
THREAD_TIMEOUT = 60


def run_threads(target, count, timeout=THREAD_TIMEOUT):
    """Run target(i) for i in range(count), each in its own thread (so with its own
    Django connections), all released together. Return the results in order; raise
    AssertionError naming every thread that failed or did not finish."""
    barrier = threading.Barrier(count)
    results = [None] * count
    errors = {}

    def body(i):
        try:
            barrier.wait(timeout=timeout)
            results[i] = target(i)
        except BaseException:  # noqa: BLE001 - report everything to the main thread
            errors[i] = traceback.format_exc()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    if hung or errors:
        lines = [f"{len(errors)} of {count} threads failed, {len(hung)} did not finish {hung}"]
        for i in sorted(errors):
            lines.append(f"--- thread {i} ---\n{errors[i]}")
        raise AssertionError("\n".join(lines))
    return results


class Background:
    """Run fn() in one thread with its own connections; join() returns its result or
    raises what it raised (with the thread's traceback)."""

    def __init__(self, fn):
        self._fn = fn
        self._result = None
        self._error = None
        self._thread = threading.Thread(target=self._body, daemon=True)

    def _body(self):
        try:
            self._result = self._fn()
        except BaseException as e:  # noqa: BLE001
            self._error = (e, traceback.format_exc())
        finally:
            connections.close_all()

    def start(self):
        self._thread.start()
        return self

    def is_alive(self):
        return self._thread.is_alive()

    def join(self, timeout=THREAD_TIMEOUT):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"background thread still running after {timeout}s")
        if self._error is not None:
            e, tb = self._error
            raise AssertionError(f"background thread failed: {e!r}\n{tb}") from e
        return self._result


def sqlstate(exc):
    """The SQLSTATE of a Django database error (from the psycopg error behind it)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return getattr(cause, "sqlstate", None)


def session_zone(alias):
    """The session TimeZone the server reports for this alias's connection."""
    with connections[alias].cursor() as c:
        c.execute("SHOW timezone")
        return c.fetchone()[0]


EXPECTED_ZONE = {
    "default": settings.DEFAULT_DB_TIME_ZONE,
    "other": settings.OTHER_DB_TIME_ZONE,
}
