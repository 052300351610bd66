"""Migrations run through the pooler: the test runner migrated the test database;
here the shop app goes back to zero and forward again."""
from decimal import Decimal

from django.core.management import call_command
from django.db import connection
from django.test import TransactionTestCase

from shop.models import Product

TABLES = {"shop_customer", "shop_product", "shop_order", "shop_orderline", "shop_counter", "shop_event"}


def shop_tables():
    return {t for t in connection.introspection.table_names() if t.startswith("shop_")}


def product_columns():
    with connection.cursor() as c:
        return {col.name for col in connection.introspection.get_table_description(c, "shop_product")}


def event_indexes():
    with connection.cursor() as c:
        return set(connection.introspection.get_constraints(c, "shop_event"))


class MigrationTests(TransactionTestCase):
    def test_runner_migrated_everything(self):
        self.assertEqual(shop_tables(), TABLES)
        self.assertIn("discontinued", product_columns())
        self.assertIn("shop_event_happened_idx", event_indexes())

    def test_migrate_to_zero_and_back(self):
        Product.objects.create(sku="A", name="a", price=Decimal("1.00"))
        # Warm the ORM's statements up (with server-side binding they get prepared).
        for _ in range(8):
            self.assertEqual(Product.objects.filter(sku="A").count(), 1)

        call_command("migrate", "shop", "zero", verbosity=0)
        self.assertEqual(shop_tables(), set())

        call_command("migrate", "shop", "0001", verbosity=0)
        self.assertEqual(shop_tables(), TABLES)
        self.assertNotIn("discontinued", product_columns())
        self.assertNotIn("shop_event_happened_idx", event_indexes())

        call_command("migrate", "shop", verbosity=0)
        self.assertIn("discontinued", product_columns())
        self.assertIn("shop_event_happened_idx", event_indexes())

        # The same ORM statements work against the re-created tables.
        for _ in range(8):
            self.assertEqual(Product.objects.filter(sku="A").count(), 0)
        Product.objects.create(sku="A", name="a", price=Decimal("1.00"))
        self.assertEqual(Product.objects.filter(sku="A").count(), 1)

    def test_showmigrations_lists_applied(self):
        from io import StringIO

        out = StringIO()
        call_command("showmigrations", "shop", stdout=out)
        self.assertIn("[X] 0001_initial", out.getvalue())
        self.assertIn("[X] 0002_product_discontinued_event_index", out.getvalue())
