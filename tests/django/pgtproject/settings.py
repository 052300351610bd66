"""Settings for the pgtenant Django test project.

The database is whatever the environment names, normally pgtenant in transaction mode
(tests/it/django.rs starts one), or PostgreSQL itself to prove the suite is right:

    PGT_HOST, PGT_PORT, PGT_USER, PGT_PASSWORD, PGT_DB
    PGT_SERVER_SIDE_BINDING=1   psycopg server-side binding + prepared statements
    PGT_PREPARE_THRESHOLD=N     with the above: prepare a query after N runs (default 5)

Two aliases reach the same database through separate connections with different
session time zones, so a SET leaking from one server connection to another shows.
"""
import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECRET_KEY = "pgtenant-django-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = []

INSTALLED_APPS = ["shop"]
MIDDLEWARE = []
ROOT_URLCONF = "pgtproject.urls"

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SERVER_SIDE_BINDING = os.environ.get("PGT_SERVER_SIDE_BINDING", "") == "1"
PREPARE_THRESHOLD = int(os.environ.get("PGT_PREPARE_THRESHOLD", "5"))

# Session time zone of each alias (Django sends SET TIME ZONE when a connection opens).
DEFAULT_DB_TIME_ZONE = "America/New_York"
OTHER_DB_TIME_ZONE = "Asia/Tokyo"


def _database(time_zone):
    options = {"connect_timeout": 10}
    if SERVER_SIDE_BINDING:
        options["server_side_binding"] = True
        # Django turns psycopg's prepared statements off unless asked (prepare_threshold
        # None); ask, so that server-side binding really prepares named statements.
        options["prepare_threshold"] = PREPARE_THRESHOLD
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGT_HOST", "127.0.0.1"),
        "PORT": os.environ.get("PGT_PORT", "6432"),
        "USER": os.environ.get("PGT_USER", "app"),
        "PASSWORD": os.environ.get("PGT_PASSWORD", "secret"),
        "NAME": os.environ.get("PGT_DB", "app"),
        "TIME_ZONE": time_zone,
        "CONN_MAX_AGE": 0,
        # Required behind transaction pooling: a server-side cursor (DECLARE) lives on
        # one server connection, which the next transaction may not get.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": options,
    }


DATABASES = {
    "default": _database(DEFAULT_DB_TIME_ZONE),
    "other": {**_database(OTHER_DB_TIME_ZONE), "TEST": {"MIRROR": "default"}},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
