"""A small shop: enough tables, keys and types to exercise what Django sends."""
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    discontinued = models.BooleanField(default=False)

    def __str__(self):
        return self.sku


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    status = models.CharField(max_length=16, default="new")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"order {self.pk}"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()


class Counter(models.Model):
    name = models.CharField(max_length=32, unique=True)
    value = models.BigIntegerField(default=0)


class Event(models.Model):
    """Timestamps written and read through connections in different time zones."""

    label = models.CharField(max_length=64)
    happened_at = models.DateTimeField()
    written_by = models.CharField(max_length=16)

    class Meta:
        indexes = [models.Index(fields=["happened_at"], name="shop_event_happened_idx")]
