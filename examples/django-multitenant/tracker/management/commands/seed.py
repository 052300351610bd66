"""`manage.py seed --accounts N`: plans, N accounts and their members, projects, tags,
tasks and comments (what the load scenario and the traffic run start from).

Accounts are created with no current tenant (their id comes from the sequence: the
INSERT names no tenant and goes to the coordinator); everything else is created inside
set_current_tenant(account), so each INSERT carries account_id.
"""

from django.core.management.base import BaseCommand
from django.db import transaction
from django_multitenant.utils import set_current_tenant, unset_current_tenant

from tracker.models import Account, Comment, Member, Plan, Project, Tag, Task, TaskTag

PLANS = [("free", 3, 0), ("team", 20, 900), ("business", 100, 4900)]


def ensure_plans():
    for name, max_projects, price in PLANS:
        Plan.objects.get_or_create(
            name=name, defaults={"max_projects": max_projects, "price_cents": price}
        )
    return list(Plan.objects.order_by("id"))


def seed_account(account, members=3, projects=2, tasks=4):
    """One account's rows, inside set_current_tenant(account); bulk INSERTs (of lists:
    django-multitenant's bulk_create walks its argument before Django does)."""
    set_current_tenant(account)
    try:
        ms = Member.objects.bulk_create([
            Member(account=account, name=f"member {i}", email=f"m{i}@a{account.id}.example")
            for i in range(members)
        ])
        tags = Tag.objects.bulk_create(
            [Tag(account=account, name=n) for n in ("bug", "feature", "urgent")]
        )
        ps = Project.objects.bulk_create([
            Project(account=account, name=f"project {i}", owner=ms[i % len(ms)])
            for i in range(projects)
        ])
        ts = Task.objects.bulk_create([
            Task(
                account=account,
                project=p,
                title=f"task {j} of {p.name}",
                assignee=ms[j % len(ms)],
                status=Task.Status.values[j % 3],
            )
            for p in ps
            for j in range(tasks)
        ])
        TaskTag.objects.bulk_create(
            [TaskTag(account=account, task=t, tag=tags[k % len(tags)]) for k, t in enumerate(ts)]
        )
        Comment.objects.bulk_create(
            [Comment(account=account, task=t, author=ms[0], body=f"first comment on {t.title}")
             for t in ts]
        )
    finally:
        unset_current_tenant()


class Command(BaseCommand):
    help = "Create plans and N accounts with their members, projects, tasks and comments."

    def add_arguments(self, parser):
        parser.add_argument("--accounts", type=int, default=1000)
        parser.add_argument("--members", type=int, default=3)
        parser.add_argument("--projects", type=int, default=2)
        parser.add_argument("--tasks", type=int, default=4)

    def handle(self, *args, **opts):
        plans = ensure_plans()
        accounts = Account.objects.bulk_create(
            Account(name=f"account {i}", plan=plans[i % len(plans)])
            for i in range(opts["accounts"])
        )
        for account in accounts:
            with transaction.atomic():
                seed_account(account, opts["members"], opts["projects"], opts["tasks"])
        self.stdout.write(f"seeded {len(accounts)} accounts")
