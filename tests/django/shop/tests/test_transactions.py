"""transaction.atomic(): nested savepoints, rollbacks, commits seen by other connections."""
from django.db import IntegrityError, connection, connections, transaction
from django.test import TestCase, TransactionTestCase

from shop.models import Counter, Customer


def names(alias="default"):
    return sorted(Customer.objects.using(alias).values_list("name", flat=True))


class SavepointTests(TestCase):
    """Inside TestCase's own transaction: every atomic() here is a savepoint."""

    def test_inner_rollback_keeps_outer_work(self):
        with transaction.atomic():
            Customer.objects.create(name="outer", email="outer@example.com")
            try:
                with transaction.atomic():
                    Customer.objects.create(name="inner", email="inner@example.com")
                    raise RuntimeError("roll back the inner block")
            except RuntimeError:
                pass
            Customer.objects.create(name="after", email="after@example.com")
        self.assertEqual(names(), ["after", "outer"])

    def test_outer_rollback_discards_everything(self):
        try:
            with transaction.atomic():
                Customer.objects.create(name="outer", email="outer@example.com")
                with transaction.atomic():
                    Customer.objects.create(name="inner", email="inner@example.com")
                raise RuntimeError("roll back all")
        except RuntimeError:
            pass
        self.assertEqual(names(), [])

    def test_integrity_error_in_inner_block(self):
        Customer.objects.create(name="a", email="a@example.com")
        with transaction.atomic():
            Customer.objects.create(name="b", email="b@example.com")
            with self.assertRaises(IntegrityError):
                with transaction.atomic():
                    Customer.objects.create(name="dup", email="a@example.com")
            Customer.objects.create(name="c", email="c@example.com")
        self.assertEqual(names(), ["a", "b", "c"])

    def test_set_rollback_and_manual_savepoints(self):
        with transaction.atomic():
            Customer.objects.create(name="kept", email="kept@example.com")
            with transaction.atomic():
                Customer.objects.create(name="dropped", email="dropped@example.com")
                transaction.set_rollback(True)
            sid = transaction.savepoint()
            Customer.objects.create(name="sp-dropped", email="sp1@example.com")
            transaction.savepoint_rollback(sid)
            sid = transaction.savepoint()
            Customer.objects.create(name="sp-kept", email="sp2@example.com")
            transaction.savepoint_commit(sid)
        self.assertEqual(names(), ["kept", "sp-kept"])

    def test_deep_nesting(self):
        def level(n):
            with transaction.atomic():
                Counter.objects.create(name=f"level{n}", value=n)
                if n < 6:
                    try:
                        level(n + 1)
                    except RuntimeError:
                        pass
                if n == 4:
                    raise RuntimeError("drop levels 4 and deeper")

        level(1)
        self.assertEqual(
            list(Counter.objects.order_by("value").values_list("value", flat=True)), [1, 2, 3]
        )


class RealTransactionTests(TransactionTestCase):
    """Top-level atomic() blocks really BEGIN and COMMIT/ROLLBACK; a second connection
    (alias "other") sees only committed work."""

    databases = {"default", "other"}

    def test_commit_is_visible_elsewhere_and_inner_rollback_keeps_outer(self):
        with transaction.atomic():
            Customer.objects.create(name="outer", email="outer@example.com")
            try:
                with transaction.atomic():
                    Customer.objects.create(name="inner", email="inner@example.com")
                    raise RuntimeError("roll back the inner block")
            except RuntimeError:
                pass
            # Not committed yet: the other connection sees nothing.
            self.assertEqual(names("other"), [])
            Customer.objects.create(name="after", email="after@example.com")
        self.assertEqual(names("other"), ["after", "outer"])

    def test_outer_rollback_discards_everything(self):
        try:
            with transaction.atomic():
                Customer.objects.create(name="outer", email="outer@example.com")
                with transaction.atomic():
                    Customer.objects.create(name="inner", email="inner@example.com")
                raise RuntimeError("roll back all")
        except RuntimeError:
            pass
        self.assertEqual(names(), [])
        self.assertEqual(names("other"), [])

    def test_autocommit_statements_commit_at_once(self):
        self.assertTrue(transaction.get_autocommit())
        for i in range(10):
            Customer.objects.create(name=f"c{i}", email=f"c{i}@example.com")
            self.assertEqual(Customer.objects.using("other").count(), i + 1)

    def test_on_commit_runs_after_commit_only(self):
        ran = []
        with transaction.atomic():
            Customer.objects.create(name="x", email="x@example.com")
            transaction.on_commit(lambda: ran.append("committed"))
            self.assertEqual(ran, [])
        self.assertEqual(ran, ["committed"])
        try:
            with transaction.atomic():
                transaction.on_commit(lambda: ran.append("rolled back"))
                raise RuntimeError
        except RuntimeError:
            pass
        self.assertEqual(ran, ["committed"])

    def test_connection_works_after_failed_transactions(self):
        Customer.objects.create(name="a", email="a@example.com")
        for _ in range(5):
            with self.assertRaises(IntegrityError):
                with transaction.atomic():
                    Customer.objects.create(name="ok", email="ok@example.com")
                    Customer.objects.create(name="dup", email="a@example.com")
            # A failed statement in autocommit mode, too.
            with self.assertRaises(IntegrityError):
                Customer.objects.create(name="dup", email="a@example.com")
            self.assertEqual(names(), ["a"])
            self.assertEqual(names("other"), ["a"])

    def test_interleaved_transactions_on_two_connections(self):
        other = connections["other"]
        with transaction.atomic():
            Customer.objects.create(name="d1", email="d1@example.com")
            with transaction.atomic(using="other"):
                Customer.objects.using("other").create(name="o1", email="o1@example.com")
                # Each transaction sees its own row only.
                self.assertEqual(names(), ["d1"])
                self.assertEqual(names("other"), ["o1"])
                self.assertTrue(other.in_atomic_block)
            self.assertEqual(names(), ["d1", "o1"])
        self.assertEqual(names("other"), ["d1", "o1"])
        self.assertFalse(connection.in_atomic_block)
