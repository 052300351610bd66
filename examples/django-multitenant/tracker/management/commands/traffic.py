"""`manage.py traffic --record FILE [--direct-url URL]`: a scripted run of the app, every
statement recorded with the tenant it was issued for.

What it does, in order (phase names as recorded):
  setup   no tenant: the plans (reference table), ACCOUNTS accounts, a staff superuser;
  orm     for each account, inside set_current_tenant(account): its members, tags,
          projects, tasks (with tags: the many-to-many), comments, an update, a delete,
          counts and joins through the ORM;
  views   for each account, the app's pages through Django's test client (the whole
          request cycle, middleware included): dashboard, project page, task page, a new
          task with tags, a status change, a comment, the raw-SQL stats page (routed by its
          tenant comment);
  admin   no tenant: the staff's admin pages (index, account, task and comment lists with
          filters and search, a task's change page): cross-tenant reads.

Each statement the app sends is recorded by an execute wrapper as one JSON line:
{"n", "phase", "tenant" (the account id it was issued for, or null), "sql" (the exact text
sent: with psycopg's client-side binding the parameters merged in, as cursor.mogrify gives
it; with server-side binding the text with $1, $2, … as psycopg sends it), "in_tx" (inside
atomic())}. In a view, the tenant is the URL's account from the start of
the request (the middleware's own account lookup included).

With --direct-url (a connection string straight to the coordinator), every SELECT run
outside a transaction is run again on that connection and its rows compared with what
the app got through DATABASE_URL; a difference is printed and the command fails.
Prints one JSON summary line.
"""

import datetime
import json
import re

import psycopg
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Count, Q
from django.test import Client
from django_multitenant.utils import (
    get_current_tenant_value,
    set_current_tenant,
    unset_current_tenant,
)

from tracker.management.commands.seed import ensure_plans, seed_account
from tracker.models import Account, Comment, Member, Project, Tag, Task

ORDERED = re.compile(r"\bORDER\s+BY\b", re.IGNORECASE)
PLACEHOLDER = re.compile(r"%%|%[sbt]")


def dollar_params(sql):
    """The text psycopg sends for `sql` with server-side binding: %s → $1, $2, …"""
    n = 0

    def number(m):
        nonlocal n
        if m.group(0) == "%%":
            return "%"
        n += 1
        return f"${n}"

    return PLACEHOLDER.sub(number, sql)


def normalized(rows):
    """Rows with timestamps as UTC ISO text: the two connections' time zone objects differ
    (Django's datetime.timezone.utc, psycopg's ZoneInfo of the server's zone)."""

    def value(v):
        if isinstance(v, datetime.datetime) and v.tzinfo is not None:
            return v.astimezone(datetime.timezone.utc).isoformat()
        return v

    return [tuple(value(v) for v in row) for row in rows]


class Recorder:
    """An execute wrapper: records each statement; compares SELECTs with the direct
    connection's answer."""

    def __init__(self, out, direct_url):
        self.out = out
        self.phase = "setup"
        self.request_tenant = None
        self.n = 0
        self.compared = 0
        self.mismatches = []
        self.direct = psycopg.connect(direct_url, autocommit=True) if direct_url else None
        self.client_side = not connection.settings_dict.get("OPTIONS", {}).get(
            "server_side_binding", False
        )

    def tenant(self):
        value = get_current_tenant_value()
        if value is None:
            value = self.request_tenant
        return None if value is None else int(value)

    def __call__(self, execute, sql, params, many, context):
        cur = context["cursor"].cursor  # the psycopg cursor
        if params is None:
            texts = [sql]
        elif not self.client_side:
            texts = [dollar_params(sql)] * (len(params) if many else 1)
        elif many:
            texts = [cur.mogrify(sql, p) for p in params]
        else:
            texts = [cur.mogrify(sql, params)]
        in_tx = context["connection"].in_atomic_block
        tenant = self.tenant()
        for text in texts:
            self.n += 1
            self.out.write(
                json.dumps(
                    {"n": self.n, "phase": self.phase, "tenant": tenant, "sql": text,
                     "in_tx": in_tx}
                )
                + "\n"
            )
        result = execute(sql, params, many, context)
        if (
            self.direct is not None
            and not many
            and not in_tx
            and texts[0].lstrip().upper().startswith("SELECT")
            and cur.description is not None
        ):
            self.compare(cur, sql, params)
        return result

    def compare(self, cur, sql, params):
        got = cur.fetchall()
        if got:
            cur.scroll(0, mode="absolute")  # the app reads the same rows next
        got = normalized(got)
        text = sql if params is None else psycopg.ClientCursor(self.direct).mogrify(sql, params)
        want = normalized(self.direct.execute(text).fetchall())
        self.compared += 1
        if not ORDERED.search(text):
            got, want = sorted(map(repr, got)), sorted(map(repr, want))
        if got != want:
            self.mismatches.append({"sql": text, "through": repr(got)[:500],
                                    "direct": repr(want)[:500]})


class Command(BaseCommand):
    help = "A scripted run of the app with every statement recorded (see the module doc)."

    def add_arguments(self, parser):
        parser.add_argument("--record", required=True, help="JSON lines file to write")
        parser.add_argument("--direct-url", default=None)
        parser.add_argument("--accounts", type=int, default=12)

    def handle(self, *args, **opts):
        with open(opts["record"], "w", encoding="utf-8") as out:
            rec = Recorder(out, opts["direct_url"])
            with connection.execute_wrapper(rec):
                accounts = self.setup(rec, opts["accounts"])
                rec.phase = "orm"
                for account in accounts:
                    self.orm(account)
                rec.phase = "views"
                client = Client()
                for account in accounts:
                    self.views(rec, client, account.id)
                rec.phase = "admin"
                self.admin(client)
        summary = {
            "statements": rec.n,
            "accounts": [a.id for a in accounts],
            "selects_compared": rec.compared,
            "mismatches": rec.mismatches[:5],
        }
        self.stdout.write(json.dumps(summary))
        if rec.mismatches:
            raise CommandError(f"{len(rec.mismatches)} answers differ from the coordinator's")

    def setup(self, rec, n):
        plans = ensure_plans()
        accounts = Account.objects.bulk_create(
            Account(name=f"traffic account {i}", plan=plans[i % len(plans)]) for i in range(n)
        )
        User = get_user_model()
        if not User.objects.filter(username="staff").exists():
            User.objects.create_superuser("staff", "staff@example.com", "staff-password")
        return accounts

    def orm(self, account):
        with transaction.atomic():
            seed_account(account)
        set_current_tenant(account)
        try:
            # Reads: counts, joins over tenant foreign keys, an aggregate, exists.
            assert Member.objects.count() == 3
            open_tasks = list(
                Task.objects.filter(project__archived=False)
                .exclude(status=Task.Status.DONE)
                .select_related("project", "assignee")
                .order_by("id")
            )
            assert open_tasks, "seeded tasks"
            per_member = list(
                Member.objects.annotate(n=Count("tasks")).order_by("id").values("name", "n")
            )
            assert sum(m["n"] for m in per_member) == 8
            tagged = list(Task.objects.filter(tags__name="bug").order_by("id"))
            assert Comment.objects.filter(task__in=tagged).exists() == bool(tagged)
            # Writes outside atomic(): an update, an m2m add and remove, a delete (cascade).
            task = open_tasks[0]
            task.status = Task.Status.DOING
            task.save()
            urgent = Tag.objects.get(name="urgent")
            task.tags.add(urgent)
            task.tags.remove(urgent)
            Project.objects.filter(name="project 1").update(archived=True)
            doomed = Task.objects.create(
                account=account, project=task.project, title="to delete", assignee=None
            )
            Comment.objects.create(account=account, task=doomed, author=task.assignee,
                                   body="gone soon")
            doomed.delete()
            assert Task.objects.filter(
                Q(status=Task.Status.DOING) | Q(title__startswith="task 0")
            ).count() >= 1
        finally:
            unset_current_tenant()

    def views(self, rec, client, account_id):
        # Everything here is for this account: the requests, and the driver's own lookup.
        rec.request_tenant = account_id
        try:
            self.account_views(client, account_id)
        finally:
            rec.request_tenant = None

    def account_views(self, client, account_id):
        base = f"/a/{account_id}"

        def call(method, path, body=None):
            if method == "get":
                r = client.get(path)
            else:
                r = client.post(path, json.dumps(body), content_type="application/json")
            if r.status_code not in (200, 201):
                raise CommandError(f"{method.upper()} {path}: {r.status_code} {r.content[:300]!r}")
            return r.json()

        dash = call("get", f"{base}/")
        project_id = dash["projects"][0]["id"]
        page = call("get", f"{base}/projects/{project_id}/")
        task_id = page["tasks"][0]["id"]
        call("get", f"{base}/tasks/{task_id}/")
        members = list(Member.objects.filter(account_id=account_id).values_list("id", flat=True))
        new = call(
            "post",
            f"{base}/projects/{project_id}/tasks/",
            {"title": "from the view", "assignee": members[0], "tags": ["bug", "urgent"]},
        )
        call("post", f"{base}/tasks/{new['id']}/status/", {"status": "done"})
        call("post", f"{base}/tasks/{new['id']}/comments/",
             {"author": members[1], "body": "done and dusted"})
        stats = call("get", f"{base}/stats/?project={project_id}")
        if sum(stats["by_status"].values()) < 1:
            raise CommandError(f"stats of project {project_id}: {stats}")

    def admin(self, client):
        User = get_user_model()
        client.force_login(User.objects.get(username="staff"))
        task = Task.objects.order_by("id").first()
        for path in [
            "/admin/",
            "/admin/tracker/account/",
            "/admin/tracker/account/?q=traffic",
            "/admin/tracker/task/?status__exact=done",
            "/admin/tracker/task/?q=view",
            "/admin/tracker/comment/",
            f"/admin/tracker/task/{task.id}/change/",
            "/plans/",
        ]:
            r = client.get(path)
            if r.status_code != 200:
                raise CommandError(f"GET {path}: {r.status_code}")
        client.logout()
