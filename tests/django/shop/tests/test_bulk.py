"""bulk_create / bulk_update, and iterator() with DISABLE_SERVER_SIDE_CURSORS."""
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum
from django.test import TestCase, TransactionTestCase

from shop.models import Product


def make_products(n, prefix="P"):
    return [Product(sku=f"{prefix}{i:05d}", name=f"product {i}", price=Decimal(i % 100) / 4, stock=i) for i in range(n)]


def open_cursors():
    with connection.cursor() as c:
        c.execute("SELECT count(*) FROM pg_cursors")
        return c.fetchone()[0]


class BulkTests(TestCase):
    def test_bulk_create_1000_rows(self):
        created = Product.objects.bulk_create(make_products(1000))
        self.assertEqual(len(created), 1000)
        self.assertTrue(all(p.pk is not None for p in created))
        self.assertEqual(len({p.pk for p in created}), 1000)
        self.assertEqual(Product.objects.count(), 1000)
        self.assertEqual(Product.objects.aggregate(s=Sum("stock"))["s"], sum(range(1000)))

    def test_bulk_create_in_batches_and_bulk_update(self):
        created = Product.objects.bulk_create(make_products(1000), batch_size=150)
        for p in created:
            p.stock = -p.stock
        Product.objects.bulk_update(created, ["stock"], batch_size=200)
        self.assertEqual(Product.objects.aggregate(s=Sum("stock"))["s"], -sum(range(1000)))
        self.assertEqual(Product.objects.filter(stock__gt=0).count(), 0)

    def test_bulk_create_ignore_conflicts(self):
        Product.objects.bulk_create(make_products(10))
        Product.objects.bulk_create(make_products(20), ignore_conflicts=True)
        self.assertEqual(Product.objects.count(), 20)

    def test_iterator_inside_a_transaction(self):
        self.assertTrue(connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"])
        Product.objects.bulk_create(make_products(3000))
        seen = 0
        total = 0
        for p in Product.objects.order_by("pk").iterator(chunk_size=250):
            seen += 1
            total += p.stock
            if seen % 1000 == 0:
                # No DECLAREd cursor: the rows came with the query.
                self.assertEqual(open_cursors(), 0)
        self.assertEqual((seen, total), (3000, sum(range(3000))))


class IteratorAutocommitTests(TransactionTestCase):
    """iterator() outside a transaction: the case where a server-side cursor (WITH HOLD)
    would be stranded on one server connection behind transaction pooling."""

    def test_iterator_in_autocommit_with_queries_in_between(self):
        Product.objects.bulk_create(make_products(2500))
        self.assertTrue(transaction.get_autocommit())
        seen = []
        for sku in Product.objects.order_by("sku").values_list("sku", flat=True).iterator(chunk_size=100):
            seen.append(sku)
            if len(seen) % 500 == 0:
                # Other statements run (each its own transaction) while iterating.
                self.assertEqual(Product.objects.filter(sku=sku).count(), 1)
                self.assertEqual(open_cursors(), 0)
        self.assertEqual(seen, sorted(p.sku for p in make_products(2500)))

    def test_two_iterators_interleaved(self):
        Product.objects.bulk_create(make_products(1200))
        a = Product.objects.order_by("pk").iterator(chunk_size=100)
        b = Product.objects.order_by("-pk").iterator(chunk_size=100)
        pairs = list(zip(a, b))
        self.assertEqual(len(pairs), 1200)
        self.assertEqual(pairs[0][0].pk, pairs[-1][1].pk)
