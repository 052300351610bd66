#!/usr/bin/env python3
"""Django's command-line utility for the pgtenant test project.

Run the suite (tests/it/django.rs does this through pgtenant):

    PGT_HOST=127.0.0.1 PGT_PORT=6432 PGT_USER=app PGT_PASSWORD=secret PGT_DB=app \
        python manage.py test --noinput -v 2
"""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pgtproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
