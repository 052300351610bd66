"""The app's pages, as JSON: what a tenant's users do all day, and the plan list.

Every view under /a/<account_id>/ runs with the account as django-multitenant's current
tenant (tracker.middleware), so its ORM queries carry `account_id`.
"""

import json

from django.db import connection, transaction
from django.db.models import Count, Prefetch, Q
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .middleware import tenant_comment
from .models import Comment, Member, Plan, Project, Tag, Task


def _body(request):
    try:
        return json.loads(request.body or b"{}")
    except ValueError:
        return None


@require_GET
def plans(request):
    """No tenant: a read of the reference table."""
    return JsonResponse(
        {"plans": list(Plan.objects.order_by("id").values("id", "name", "max_projects"))}
    )


@require_GET
def dashboard(request, account_id):
    """The account's members, and its projects with their open and total task counts."""
    account = request.account
    projects = (
        Project.objects.filter(archived=False)
        .annotate(
            tasks_total=Count("tasks"),
            tasks_open=Count("tasks", filter=~Q(tasks__status=Task.Status.DONE)),
        )
        .order_by("id")
    )
    return JsonResponse(
        {
            "account": account.name,
            "plan": account.plan.name,
            "members": list(Member.objects.order_by("id").values("id", "name")),
            "projects": [
                {"id": p.id, "name": p.name, "open": p.tasks_open, "total": p.tasks_total}
                for p in projects
            ],
        }
    )


@require_GET
def project_detail(request, account_id, project_id):
    """A project's tasks with assignee and tags (select_related, prefetch_related)."""
    project = get_object_or_404(Project.objects.select_related("owner"), pk=project_id)
    tasks = (
        project.tasks.select_related("assignee")
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.order_by("name")))
        .order_by("-id")[:50]
    )
    return JsonResponse(
        {
            "project": project.name,
            "owner": project.owner.name,
            "tasks": [
                {
                    "id": t.id,
                    "title": t.title,
                    "status": t.status,
                    "assignee": t.assignee.name if t.assignee else None,
                    "tags": [tag.name for tag in t.tags.all()],
                }
                for t in tasks
            ],
        }
    )


@require_GET
def task_detail(request, account_id, task_id):
    task = get_object_or_404(Task.objects.select_related("project", "assignee"), pk=task_id)
    comments = task.comments.select_related("author").order_by("id")
    return JsonResponse(
        {
            "id": task.id,
            "title": task.title,
            "project": task.project.name,
            "status": task.status,
            "comments": [{"author": c.author.name, "body": c.body} for c in comments],
        }
    )


@csrf_exempt
@require_POST
def task_create(request, account_id, project_id):
    """A new task with tags, in one transaction (BEGIN … COMMIT on the owner)."""
    data = _body(request)
    if not data or not data.get("title"):
        return HttpResponseBadRequest("title required")
    project = get_object_or_404(Project, pk=project_id)
    with transaction.atomic():
        assignee = Member.objects.filter(pk=data.get("assignee")).first()
        task = Task.objects.create(
            account=request.account, project=project, title=data["title"], assignee=assignee
        )
        tags = list(Tag.objects.filter(name__in=data.get("tags", [])))
        if tags:
            task.tags.add(*tags)
    return JsonResponse({"id": task.id}, status=201)


@csrf_exempt
@require_POST
def task_status(request, account_id, task_id):
    data = _body(request)
    if not data or data.get("status") not in Task.Status.values:
        return HttpResponseBadRequest("status required")
    task = get_object_or_404(Task, pk=task_id)
    task.status = data["status"]
    task.save(update_fields=["status", "updated_at"])
    return JsonResponse({"id": task.id, "status": task.status})


@csrf_exempt
@require_POST
def comment_create(request, account_id, task_id):
    data = _body(request)
    if not data or not data.get("body"):
        return HttpResponseBadRequest("body required")
    task = get_object_or_404(Task, pk=task_id)
    author = get_object_or_404(Member, pk=data.get("author"))
    comment = Comment.objects.create(
        account=request.account, task=task, author=author, body=data["body"]
    )
    return JsonResponse({"id": comment.id}, status=201)


@require_GET
def stats(request, account_id):
    """Raw SQL that does not name the tenant column: the tenant comment routes it."""
    with connection.execute_wrapper(tenant_comment), connection.cursor() as cur:
        cur.execute(
            "SELECT t.status, count(*) FROM tracker_task t "
            "JOIN tracker_project p ON p.id = t.project_id "
            "WHERE p.id = %s GROUP BY t.status ORDER BY t.status",
            [int(request.GET.get("project", 0))],
        )
        rows = cur.fetchall()
    return JsonResponse({"by_status": dict(rows)})
