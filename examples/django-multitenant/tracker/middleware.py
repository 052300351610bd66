"""The current tenant, from the URL, and a tenant comment for SQL that does not name it.

`TenantMiddleware` looks the account up for every view whose URL has `account_id`
(`/a/<account_id>/…`) and makes it django-multitenant's current tenant for the rest of the
request: every query of a tenant model then carries `account_id = <id>`, which pgtenant
reads to send the statement to the worker that owns the account. Views without an
account (the admin, `/plans/`) run with no tenant: their queries go to the coordinator.

`tenant_comment` is an execute wrapper (`connection.execute_wrapper`) that appends a
sqlcommenter-style comment `/*tenant_id='42'*/` to each statement run inside
it while a tenant is set: pgtenant routes a statement that does not name the tenant
itself (raw SQL on a tenant table without the tenant column, a join through a table
without it) by that comment. Set `PGTENANT_TENANT_COMMENTS = True` in the settings to wrap
every request; by default only the views that need it use it (see views.stats).
"""

from django.conf import settings
from django.db import connection
from django.http import Http404
from django_multitenant.utils import (
    get_current_tenant_value,
    set_current_tenant,
    unset_current_tenant,
)

from .models import Account


def tenant_comment(execute, sql, params, many, context):
    tenant = get_current_tenant_value()
    if tenant is not None and not isinstance(tenant, list):
        # An integer, so nothing to escape; quoted as sqlcommenter writes values.
        sql = f"{sql} /*tenant_id='{int(tenant)}'*/"
    return execute(sql, params, many, context)


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.comment_all = getattr(settings, "PGTENANT_TENANT_COMMENTS", False)

    def __call__(self, request):
        try:
            if self.comment_all:
                with connection.execute_wrapper(tenant_comment):
                    return self.get_response(request)
            return self.get_response(request)
        finally:
            unset_current_tenant()

    def process_view(self, request, view_func, view_args, view_kwargs):
        account_id = view_kwargs.get("account_id")
        if account_id is None:
            unset_current_tenant()
            return None
        # SELECT … FROM tracker_account JOIN tracker_plan … WHERE tracker_account.id = 42:
        # pinned by the key (the reference table read next to it keeps the pin).
        account = Account.objects.select_related("plan").filter(pk=account_id).first()
        if account is None:
            raise Http404("no such account")
        request.account = account
        set_current_tenant(account)
        return None
