"""More Django connections at once than pgtenant has server connections (pool of 2),
each doing transactions; and the same statements run many times on one connection
while other connections run them too (psycopg prepares them with server-side binding).
"""
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.test import TransactionTestCase

from shop.models import Counter, Customer, Order, OrderLine, Product

from .helpers import run_threads

THREADS = 8


class ConcurrencyTests(TransactionTestCase):
    def setUp(self):
        Counter.objects.create(name="hits", value=0)
        self.product = Product.objects.create(sku="PEN", name="Pen", price=Decimal("1.50"), stock=10_000)
        self.customers = [
            Customer.objects.create(name=f"thread{t}", email=f"t{t}@example.com") for t in range(THREADS)
        ]

    def test_eight_threads_doing_transactions(self):
        rounds = 12

        def work(t):
            customer = Customer.objects.get(email=f"t{t}@example.com")
            for i in range(rounds):
                with transaction.atomic():
                    counter = Counter.objects.select_for_update().get(name="hits")
                    counter.value += 1
                    counter.save(update_fields=["value"])
                    order = Order.objects.create(customer=customer)
                    OrderLine.objects.create(order=order, product_id=self.product.pk, quantity=i + 1)
                    Product.objects.filter(pk=self.product.pk).update(stock=F("stock") - (i + 1))
                    if i % 4 == 3:
                        # A rolled-back savepoint in the middle of it.
                        try:
                            with transaction.atomic():
                                Order.objects.create(customer=customer, status="discarded")
                                raise RuntimeError
                        except RuntimeError:
                            pass
            return Order.objects.filter(customer=customer).count()

        counts = run_threads(work, THREADS)
        self.assertEqual(counts, [rounds] * THREADS)
        self.assertEqual(Counter.objects.get(name="hits").value, THREADS * rounds)
        self.assertEqual(Order.objects.filter(status="discarded").count(), 0)
        self.assertEqual(OrderLine.objects.count(), THREADS * rounds)
        per_thread = sum(range(1, rounds + 1))
        self.assertEqual(Product.objects.get(pk=self.product.pk).stock, 10_000 - THREADS * per_thread)

    def test_eight_threads_in_autocommit(self):
        def work(t):
            for _ in range(25):
                Counter.objects.filter(name="hits").update(value=F("value") + 1)
            return Counter.objects.get(name="hits").value

        run_threads(work, THREADS)
        self.assertEqual(Counter.objects.get(name="hits").value, THREADS * 25)

    def test_same_query_many_times_on_every_connection(self):
        """Each connection runs three queries 25 times, in autocommit (each run may get
        a different server connection) and inside transactions: one whose text every
        connection sends, one whose text only it sends, one with its own parameters.
        psycopg names prepared statements _pg3_0, _pg3_1… on every connection, and the
        order differs by thread, so one name means different statements on different
        connections. Every answer must be the right one for that connection."""
        runs = 25

        def work(t):
            email = f"t{t}@example.com"
            inserted = 0

            def shared():
                p = Product.objects.get(sku="PEN")
                assert p.pk == self.product.pk, (t, p.pk)

            def own_text():
                # The literal makes the SQL text unique to this thread.
                row = Customer.objects.filter(email=email).annotate(tag=RawSQL(f"{t} + 1000", [])).values_list(
                    "name", "tag"
                ).get()
                assert row == (f"thread{t}", t + 1000), (t, row)

            def own_params():
                n = Order.objects.filter(customer__email=email, status=f"s{t}").count()
                assert n == inserted, (t, n, inserted)

            queries = [shared, own_text, own_params]
            queries = queries[t % 3 :] + queries[: t % 3]
            for i in range(runs):
                for q in queries:
                    q()
                if i % 5 == 4:
                    with transaction.atomic():
                        Order.objects.create(customer_id=self.customers[t].pk, status=f"s{t}")
                        inserted += 1
                        for q in queries:
                            q()
            return inserted

        self.assertEqual(run_threads(work, THREADS), [runs // 5] * THREADS)
        # And once more on this thread's connection, after all the others.
        for _ in range(runs):
            self.assertEqual(Product.objects.get(sku="PEN").pk, self.product.pk)

    def test_server_side_binding_prepares_statements(self):
        """With PGT_SERVER_SIDE_BINDING=1 the suite really uses named prepared
        statements (psycopg prepares after PGT_PREPARE_THRESHOLD runs)."""
        if not settings.SERVER_SIDE_BINDING:
            self.skipTest("server-side binding is off")
        for _ in range(settings.PREPARE_THRESHOLD + 3):
            Product.objects.get(sku="PEN")
        conn = connection.connection
        self.assertEqual(conn.prepare_threshold, settings.PREPARE_THRESHOLD)
        prepared = getattr(conn, "_prepared", None)
        if prepared is not None:
            self.assertTrue(prepared._names, "psycopg prepared no statement")
        # Prepared statements keep working across many transactions.
        for _ in range(30):
            with transaction.atomic():
                self.assertEqual(Product.objects.get(sku="PEN").pk, self.product.pk)
            self.assertEqual(Product.objects.get(sku="PEN").pk, self.product.pk)
