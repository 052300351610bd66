"""Plain ORM work: create, read, update, delete, lookups, aggregates, raw SQL."""
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, ProtectedError, Q, Sum
from django.test import TestCase

from shop.models import Customer, Order, OrderLine, Product


class CrudTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.alice = Customer.objects.create(name="Alice", email="alice@example.com")
        cls.bob = Customer.objects.create(name="Bob", email="bob@example.com")
        cls.pen = Product.objects.create(sku="PEN", name="Pen", price=Decimal("1.50"), stock=100)
        cls.ink = Product.objects.create(sku="INK", name="Ink", price=Decimal("7.25"), stock=10)

    def test_create_read_update_delete(self):
        c = Customer.objects.create(name="Carol", email="carol@example.com")
        self.assertIsNotNone(c.pk)
        self.assertIsNotNone(c.created_at.tzinfo)
        got = Customer.objects.get(pk=c.pk)
        self.assertEqual(got.name, "Carol")
        self.assertEqual(got.created_at, c.created_at)

        got.name = "Caroline"
        got.save(update_fields=["name"])
        self.assertEqual(Customer.objects.get(pk=c.pk).name, "Caroline")

        n = Customer.objects.filter(pk=c.pk).update(name="Caro")
        self.assertEqual(n, 1)
        c.refresh_from_db()
        self.assertEqual(c.name, "Caro")

        c.delete()
        self.assertFalse(Customer.objects.filter(pk=c.pk).exists())
        self.assertEqual(Customer.objects.count(), 2)

    def test_text_decimal_and_null_round_trip(self):
        names = ["plain", "ünïcödé ✓", "quote ' and \" and \\ backslash", "emoji 🐘", ""]
        for i, name in enumerate(names):
            Product.objects.create(sku=f"T{i}", name=name, price=Decimal("12345678.91"))
        self.assertEqual(
            list(Product.objects.filter(sku__startswith="T").order_by("sku").values_list("name", flat=True)),
            names,
        )
        self.assertEqual(Product.objects.get(sku="T0").price, Decimal("12345678.91"))
        with connection.cursor() as cur:
            cur.execute("SELECT %s::text, %s::int, %s::numeric", [None, None, "0.10"])
            self.assertEqual(cur.fetchone(), (None, None, Decimal("0.10")))

    def test_filters_aggregates_and_expressions(self):
        Product.objects.filter(sku="PEN").update(stock=F("stock") - 3)
        self.pen.refresh_from_db()
        self.assertEqual(self.pen.stock, 97)
        self.assertEqual(Product.objects.aggregate(total=Sum("stock"))["total"], 107)
        cheap = Product.objects.filter(Q(price__lt=2) | Q(sku="NONE")).values_list("sku", flat=True)
        self.assertEqual(list(cheap), ["PEN"])
        self.assertEqual(
            list(Product.objects.order_by("-price").values_list("sku", flat=True)), ["INK", "PEN"]
        )
        self.assertTrue(Product.objects.filter(name__icontains="in").exists())
        self.assertEqual(Product.objects.filter(price__range=(1, 5)).count(), 1)

    def test_related_queries_and_cascades(self):
        order = Order.objects.create(customer=self.alice)
        OrderLine.objects.create(order=order, product=self.pen, quantity=3)
        OrderLine.objects.create(order=order, product=self.ink, quantity=1)
        Order.objects.create(customer=self.alice)
        Order.objects.create(customer=self.bob)

        line = OrderLine.objects.select_related("order__customer", "product").get(product=self.ink)
        self.assertEqual(line.order.customer.name, "Alice")
        with self.assertNumQueries(2):
            customers = list(Customer.objects.prefetch_related("orders").order_by("name"))
            self.assertEqual([len(c.orders.all()) for c in customers], [2, 1])
        counts = dict(
            Customer.objects.annotate(n=Count("orders")).values_list("name", "n")
        )
        self.assertEqual(counts, {"Alice": 2, "Bob": 1})
        total = OrderLine.objects.filter(order=order).aggregate(
            t=Sum(F("quantity") * F("product__price"))
        )["t"]
        self.assertEqual(total, Decimal("11.75"))

        with self.assertRaises(ProtectedError):
            self.ink.delete()
        self.alice.delete()
        self.assertEqual(Order.objects.count(), 1)
        self.assertEqual(OrderLine.objects.count(), 0)

    def test_get_or_create_and_update_or_create(self):
        c, created = Customer.objects.get_or_create(email="alice@example.com", defaults={"name": "X"})
        self.assertFalse(created)
        self.assertEqual(c.pk, self.alice.pk)
        c, created = Customer.objects.get_or_create(email="dan@example.com", defaults={"name": "Dan"})
        self.assertTrue(created)
        p, created = Product.objects.update_or_create(sku="PEN", defaults={"stock": 5})
        self.assertFalse(created)
        self.assertEqual(Product.objects.get(sku="PEN").stock, 5)

    def test_unique_violation_is_an_integrity_error(self):
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                Customer.objects.create(name="Dup", email="alice@example.com")
        # The connection is usable afterwards.
        self.assertEqual(Customer.objects.count(), 2)

    def test_same_query_many_times(self):
        # With server-side binding psycopg prepares a query after a few runs.
        for i in range(30):
            p = Product.objects.get(sku="PEN" if i % 2 else "INK")
            self.assertEqual(p.sku, "PEN" if i % 2 else "INK")
            self.assertEqual(Customer.objects.filter(name__startswith="A").count(), 1)
