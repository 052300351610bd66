"""select_for_update inside atomic(), and what a second connection sees meanwhile."""
import threading
import time

from django.db import DatabaseError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test import TransactionTestCase

from shop.models import Counter

from .helpers import Background, sqlstate

LOCK_NOT_AVAILABLE = "55P03"


def wait_for_lock_waiter(timeout=20):
    """True once another backend of this database waits on a lock (the server's view)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as c:
            c.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND pid <> pg_backend_pid()"
            )
            if c.fetchone()[0] > 0:
                return True
        time.sleep(0.05)
    return False


class SelectForUpdateTests(TransactionTestCase):
    def setUp(self):
        self.rows = [Counter.objects.create(name=f"row{i}", value=0) for i in range(3)]

    def test_select_for_update_inside_atomic(self):
        with transaction.atomic():
            row = Counter.objects.select_for_update().get(name="row0")
            row.value += 5
            row.save()
            locked = list(Counter.objects.select_for_update().filter(name__in=["row1", "row2"]).order_by("name"))
            self.assertEqual([r.name for r in locked], ["row1", "row2"])
        self.assertEqual(Counter.objects.get(name="row0").value, 5)

    def test_select_for_update_outside_atomic_is_refused(self):
        with self.assertRaises(TransactionManagementError):
            list(Counter.objects.select_for_update())

    def test_nowait_fails_while_the_row_is_locked(self):
        def try_nowait():
            with transaction.atomic():
                try:
                    with transaction.atomic():
                        Counter.objects.select_for_update(nowait=True).get(name="row0")
                except DatabaseError as e:
                    return sqlstate(e)
                return "got the lock"

        with transaction.atomic():
            Counter.objects.select_for_update().get(name="row0")
            self.assertEqual(Background(try_nowait).start().join(), LOCK_NOT_AVAILABLE)
        # Released at commit: now nowait succeeds.
        self.assertEqual(Background(try_nowait).start().join(), "got the lock")

    def test_skip_locked_returns_the_unlocked_rows(self):
        def skip_locked():
            with transaction.atomic():
                return list(
                    Counter.objects.select_for_update(skip_locked=True).order_by("name").values_list("name", flat=True)
                )

        with transaction.atomic():
            Counter.objects.select_for_update().get(name="row1")
            self.assertEqual(Background(skip_locked).start().join(), ["row0", "row2"])
        self.assertEqual(Background(skip_locked).start().join(), ["row0", "row1", "row2"])

    def test_second_transaction_waits_for_the_lock(self):
        started = threading.Event()

        def wait_and_increment():
            with transaction.atomic():
                # SET LOCAL ends with the transaction; a stuck lock fails instead of hanging.
                with connection.cursor() as c:
                    c.execute("SET LOCAL lock_timeout = '20s'")
                started.set()
                row = Counter.objects.select_for_update().get(name="row0")
                seen = row.value
                row.value += 1
                row.save()
            return seen

        with transaction.atomic():
            row = Counter.objects.select_for_update().get(name="row0")
            waiter = Background(wait_and_increment).start()
            self.assertTrue(started.wait(20))
            self.assertTrue(wait_for_lock_waiter(), "no backend waits for the row lock")
            self.assertTrue(waiter.is_alive(), "the second transaction did not wait for the lock")
            row.value = 100
            row.save()
        # The waiter got the row after our commit and saw our value.
        self.assertEqual(waiter.join(), 100)
        self.assertEqual(Counter.objects.get(name="row0").value, 101)

    def test_lock_timeout_set_local_ends_with_the_transaction(self):
        def short_timeout():
            with transaction.atomic():
                with connection.cursor() as c:
                    c.execute("SET LOCAL lock_timeout = '100ms'")
                try:
                    with transaction.atomic():
                        Counter.objects.select_for_update().get(name="row2")
                    code = "got the lock"
                except DatabaseError as e:
                    code = sqlstate(e)
            # SET LOCAL must not outlive the transaction, on this connection or any other.
            with connection.cursor() as c:
                c.execute("SHOW lock_timeout")
                after = c.fetchone()[0]
            return code, after

        with transaction.atomic():
            Counter.objects.select_for_update().get(name="row2")
            self.assertEqual(Background(short_timeout).start().join(), (LOCK_NOT_AVAILABLE, "0"))
        for _ in range(5):
            with connection.cursor() as c:
                c.execute("SHOW lock_timeout")
                self.assertEqual(c.fetchone()[0], "0")
