"""The example SaaS schema: accounts are the tenants.

Every tenant table carries `account_id` (its Citus distribution column) and is colocated
with `tracker_account` (distributed by `id`); `Plan` is a reference table (a copy on every
node). Foreign keys between tenant tables are `TenantForeignKey`s: their joins and lookups
include `account_id`, which is what lets Citus — and pgtenant — send a tenant's queries to
the one node that holds the tenant. The primary keys are `(account_id, id)` on Citus
(migration 0001), as a distributed table's unique constraints must include its
distribution column.
"""

from django.db import models
from django_multitenant.fields import TenantForeignKey
from django_multitenant.models import TenantModel


class Plan(models.Model):
    """Reference table: the subscription plans, the same on every node."""

    name = models.CharField(max_length=50, unique=True)
    max_projects = models.IntegerField()
    price_cents = models.IntegerField()

    def __str__(self):
        return self.name


class Account(TenantModel):
    """The tenant."""

    name = models.CharField(max_length=100)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class TenantMeta:
        tenant_field_name = "id"

    def __str__(self):
        return self.name


class Member(TenantModel):
    """A user of an account (the app's users; Django's auth users are the admin staff)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    email = models.EmailField()

    class TenantMeta:
        tenant_field_name = "account_id"

    def __str__(self):
        return self.name


class Project(TenantModel):
    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    owner = TenantForeignKey(Member, on_delete=models.PROTECT, related_name="projects")
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class TenantMeta:
        tenant_field_name = "account_id"

    def __str__(self):
        return self.name


class Tag(TenantModel):
    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    name = models.CharField(max_length=30)

    class TenantMeta:
        tenant_field_name = "account_id"

    def __str__(self):
        return self.name


class Task(TenantModel):
    class Status(models.TextChoices):
        TODO = "todo"
        DOING = "doing"
        DONE = "done"

    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    project = TenantForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.TODO)
    assignee = TenantForeignKey(
        Member, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    tags = models.ManyToManyField(Tag, through="TaskTag", related_name="tasks", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class TenantMeta:
        tenant_field_name = "account_id"

    def __str__(self):
        return self.title


class TaskTag(TenantModel):
    """The many-to-many between tasks and tags, with the tenant column (colocated)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    task = TenantForeignKey(Task, on_delete=models.CASCADE)
    tag = TenantForeignKey(Tag, on_delete=models.CASCADE)

    class TenantMeta:
        tenant_field_name = "account_id"


class Comment(TenantModel):
    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    task = TenantForeignKey(Task, on_delete=models.CASCADE, related_name="comments")
    author = TenantForeignKey(Member, on_delete=models.CASCADE, related_name="comments")
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class TenantMeta:
        tenant_field_name = "account_id"
