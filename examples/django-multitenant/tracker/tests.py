"""The example app's own tests (`manage.py test tracker`).

They run wherever DATABASE_URL points: straight at PostgreSQL, or through pgtenant in
front of Citus or of its emulation (tests/it/django_multitenant.rs runs them through
pgtenant, with --keepdb on the cluster's database, so they assume nothing about rows they
did not make).
"""

import json

from django.contrib.auth import get_user_model
from django.db.utils import NotSupportedError
from django.test import TestCase
from django_multitenant.utils import set_current_tenant, unset_current_tenant

from .management.commands.seed import ensure_plans, seed_account
from .models import Account, Comment, Member, Plan, Project, Tag, Task, TaskTag


class TenantTestCase(TestCase):
    @classmethod
    def setUpTestData(cls):
        plans = ensure_plans()
        cls.a = Account.objects.create(name="test a", plan=plans[0])
        cls.b = Account.objects.create(name="test b", plan=plans[1])
        seed_account(cls.a)
        seed_account(cls.b)

    def tearDown(self):
        unset_current_tenant()


class ScopingTests(TenantTestCase):
    def test_a_tenant_sees_only_its_rows(self):
        set_current_tenant(self.a)
        self.assertEqual(Project.objects.count(), 2)
        self.assertEqual({p.account_id for p in Project.objects.all()}, {self.a.id})
        self.assertEqual(Task.objects.count(), 8)
        self.assertEqual(Comment.objects.filter(task__project__name="project 0").count(), 4)
        set_current_tenant(self.b)
        self.assertFalse(Project.objects.filter(account_id=self.a.id).exists())

    def test_new_rows_get_the_current_tenant(self):
        set_current_tenant(self.b)
        owner = Member.objects.order_by("id").first()
        p = Project.objects.create(name="new", owner=owner)
        self.assertEqual(p.account_id, self.b.id)
        t = Task.objects.create(project=p, title="t")
        t.tags.add(Tag.objects.get(name="bug"))
        self.assertEqual(TaskTag.objects.get(task=t).account_id, self.b.id)
        self.assertEqual(list(t.tags.values_list("name", flat=True)), ["bug"])

    def test_the_tenant_column_cannot_change(self):
        set_current_tenant(self.a)
        project = Project.objects.order_by("id").first()
        project.account_id = self.b.id
        with self.assertRaises(NotSupportedError):
            project.save()

    def test_delete_cascades_within_the_tenant(self):
        set_current_tenant(self.a)
        task = Task.objects.order_by("id").first()
        task_id = task.id
        task.delete()
        self.assertFalse(Comment.objects.filter(task_id=task_id).exists())
        self.assertFalse(TaskTag.objects.filter(task_id=task_id).exists())
        set_current_tenant(self.b)
        self.assertEqual(Task.objects.count(), 8)

    def test_reference_table_is_shared(self):
        set_current_tenant(self.a)
        self.assertGreaterEqual(Plan.objects.count(), 3)
        self.assertEqual(Account.objects.select_related("plan").get().plan.name, "free")


class ViewTests(TenantTestCase):
    def post(self, path, body):
        return self.client.post(path, json.dumps(body), content_type="application/json")

    def test_dashboard(self):
        r = self.client.get(f"/a/{self.a.id}/")
        self.assertEqual(r.status_code, 200)
        data = r.json()
        self.assertEqual(data["account"], "test a")
        self.assertEqual([m["name"] for m in data["members"]], ["member 0", "member 1", "member 2"])
        self.assertEqual([p["total"] for p in data["projects"]], [4, 4])

    def test_a_task_from_the_view(self):
        set_current_tenant(self.a)
        project = Project.objects.order_by("id").first()
        member = Member.objects.order_by("id").first()
        unset_current_tenant()
        r = self.post(
            f"/a/{self.a.id}/projects/{project.id}/tasks/",
            {"title": "new", "assignee": member.id, "tags": ["bug", "urgent"]},
        )
        self.assertEqual(r.status_code, 201)
        task_id = r.json()["id"]
        r = self.post(f"/a/{self.a.id}/tasks/{task_id}/status/", {"status": "done"})
        self.assertEqual(r.json()["status"], "done")
        r = self.post(f"/a/{self.a.id}/tasks/{task_id}/comments/",
                      {"author": member.id, "body": "ok"})
        self.assertEqual(r.status_code, 201)
        page = self.client.get(f"/a/{self.a.id}/projects/{project.id}/").json()
        new = [t for t in page["tasks"] if t["id"] == task_id][0]
        self.assertEqual(new["tags"], ["bug", "urgent"])
        self.assertEqual(new["status"], "done")
        detail = self.client.get(f"/a/{self.a.id}/tasks/{task_id}/").json()
        self.assertEqual(detail["comments"], [{"author": member.name, "body": "ok"}])
        stats = self.client.get(f"/a/{self.a.id}/stats/?project={project.id}").json()
        self.assertEqual(stats["by_status"]["done"], 2)

    def test_another_tenants_rows_are_not_found(self):
        set_current_tenant(self.b)
        project_b = Project.objects.order_by("id").first()
        unset_current_tenant()
        r = self.client.get(f"/a/{self.a.id}/projects/{project_b.id}/")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(self.client.get("/a/0/").status_code, 404)

    def test_plans(self):
        names = [p["name"] for p in self.client.get("/plans/").json()["plans"]]
        self.assertEqual(names[:3], ["free", "team", "business"])


class AdminTests(TenantTestCase):
    def setUp(self):
        staff = get_user_model().objects.create_superuser("t-staff", "s@example.com", "pw")
        self.client.force_login(staff)

    def test_changelists_see_every_tenant(self):
        r = self.client.get("/admin/tracker/account/?q=test")
        self.assertContains(r, "test a")
        self.assertContains(r, "test b")
        r = self.client.get("/admin/tracker/project/")
        self.assertEqual(r.status_code, 200)
        task = Task.objects.filter(account=self.b).order_by("id").first()
        r = self.client.get(f"/admin/tracker/task/{task.id}/change/")
        self.assertContains(r, task.title)
