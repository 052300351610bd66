"""Settings of the example SaaS app, for a transaction-pooling pgtenant in front of Citus.

The database comes from DATABASE_URL (dj-database-url), e.g.
postgres://app:secret@127.0.0.1:6432/app with pgtenant on port 6432. What matters for a
transaction pooler is set here, with the reason:

- ENGINE django_multitenant.backends.postgresql: Django's PostgreSQL backend (psycopg 3)
  with django-multitenant's schema editor (foreign keys between tenant tables include the
  tenant column, as Citus requires) and GROUP BY on every column of tenant models.
- CONN_MAX_AGE: Django keeps its connection to pgtenant across requests (a client
  connection costs pgtenant a few KiB, not a server backend); CONN_HEALTH_CHECKS drops it
  if pgtenant closed it meanwhile.
- DISABLE_SERVER_SIDE_CURSORS: .iterator() would otherwise DECLARE a cursor WITH HOLD in
  one transaction and FETCH it in the next, which pins the client to one server
  connection (pgtenant) or fails (PgBouncer).
- Client-side binding (psycopg's default, Django's): literals are inlined, so pgtenant
  sees the tenant value in the text and caches the plan per statement shape.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_multitenant",
    "tracker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Sets the current tenant from the URL (/a/<account id>/…) and comments statements
    # that do not name it (see tracker/middleware.py).
    "tracker.middleware.TenantMiddleware",
]

ROOT_URLCONF = "saas.urls"
WSGI_APPLICATION = "saas.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default="postgres://app:secret@127.0.0.1:6432/app",
        engine="django_multitenant.backends.postgresql",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
        disable_server_side_cursors=True,
    )
}

# Citus: bigint ids. An int/smallint sequence or identity default cannot be filled on a
# worker (Citus refuses it), so every such INSERT would go through the coordinator.
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-multitenant: the Citus extension is there (real or emulated), so a delete that
# mixes reference and distributed tables runs in sequential shard-modify mode.
CITUS_EXTENSION_INSTALLED = os.environ.get("CITUS_EXTENSION_INSTALLED", "1") == "1"
TENANT_MODEL_NAME = "tracker.Account"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# DJANGO_SERVER_SIDE_BINDING=1: psycopg's server-side binding (parameters sent apart, as
# Bind values; statements prepared after a few runs), which pgtenant routes as well.
if os.environ.get("DJANGO_SERVER_SIDE_BINDING") == "1":
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True

# The test runner's database: DJANGO_TEST_DATABASE names an existing one to run the
# suite in with --keepdb (tests/it/django_multitenant.rs: the emulated cluster's own).
if os.environ.get("DJANGO_TEST_DATABASE"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["DJANGO_TEST_DATABASE"]}
