"""The admin: the staff's cross-tenant view (no current tenant: every query goes to the
coordinator, which sees all accounts)."""

from django.contrib import admin

from .models import Account, Comment, Member, Plan, Project, Tag, Task


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "max_projects", "price_cents")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "plan", "created_at")
    list_filter = ("plan",)
    search_fields = ("name",)


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ("id", "account", "name", "email")
    search_fields = ("name", "email")


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("id", "account", "name", "owner", "archived")
    list_filter = ("archived",)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "account", "project", "title", "status")
    list_filter = ("status",)
    search_fields = ("title",)


admin.site.register(Tag)
admin.site.register(Comment)
