"""Two connections ("default" and "other") with different session time zones,
interleaved. Through a transaction pooler both may run on the same server connection
one after the other: a time zone (or any SET) leaking from one to the other shows up
here as a wrong SHOW timezone, a wrong ::text offset or a wrong ::date."""
import datetime
import threading
import zoneinfo

import psycopg
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import DateField
from django.db.models.functions import Cast
from django.test import TransactionTestCase

from shop.models import Event

from .helpers import EXPECTED_ZONE, Background, run_threads, session_zone

UTC = datetime.timezone.utc
ZONES = {alias: zoneinfo.ZoneInfo(name) for alias, name in EXPECTED_ZONE.items()}
ALIASES = ["default", "other"]


def instant(i):
    # Around 20:30 UTC: New York (UTC-4/-5) still has the same day, Tokyo (UTC+9) the next.
    return datetime.datetime(2024, 3, 1 + i, 20, 30, 15, 123456, tzinfo=UTC)


def raw_row(alias, pk):
    """happened_at as the server renders it in this connection's session zone."""
    with connections[alias].cursor() as c:
        c.execute(
            "SELECT happened_at::text, happened_at::date, current_setting('TimeZone') "
            "FROM shop_event WHERE id = %s",
            [pk],
        )
        return c.fetchone()


class TimeZoneTests(TransactionTestCase):
    databases = {"default", "other"}

    def check_zone(self, alias, when=""):
        self.assertEqual(session_zone(alias), EXPECTED_ZONE[alias], f"SHOW timezone on {alias!r} {when}")

    def test_each_connection_keeps_its_zone(self):
        for i in range(30):
            alias = ALIASES[i % 2]
            self.check_zone(alias, f"(round {i})")

    def test_each_connection_keeps_its_zone_in_transactions(self):
        for i in range(10):
            with transaction.atomic(using=ALIASES[i % 2]):
                self.check_zone(ALIASES[i % 2], f"(round {i}, in a transaction)")
            self.check_zone(ALIASES[(i + 1) % 2], f"(round {i}, after the other's transaction)")

    def test_aware_datetimes_written_and_read_from_both_connections(self):
        for i in range(12):
            writer = ALIASES[i % 2]
            # Write values made aware in different zones; all are the same instants.
            value = instant(i).astimezone(ZONES[ALIASES[(i // 2) % 2]])
            ev = Event.objects.using(writer).create(label=f"e{i}", happened_at=value, written_by=writer)
            for reader in (ALIASES[(i + 1) % 2], writer):
                got = Event.objects.using(reader).get(pk=ev.pk)
                self.assertIsNotNone(got.happened_at.tzinfo)
                self.assertEqual(got.happened_at, instant(i), f"round {i}: {writer} wrote, {reader} read")
                # The server renders the value in the reader's session zone.
                text, day, zone = raw_row(reader, ev.pk)
                self.assertEqual(zone, EXPECTED_ZONE[reader], f"round {i}: zone of {reader}")
                local = instant(i).astimezone(ZONES[reader])
                self.assertEqual(day, local.date(), f"round {i}: ::date on {reader} ({text})")
                offset = local.strftime("%z")  # e.g. +0900
                self.assertTrue(
                    text.endswith(offset[:3]) or text.endswith(f"{offset[:3]}:{offset[3:]}"),
                    f"round {i}: {text!r} on {reader} should carry offset {offset}",
                )
                # Cast to date happens in the server's session zone, too.
                cast_day = (
                    Event.objects.using(reader)
                    .filter(pk=ev.pk)
                    .annotate(d=Cast("happened_at", DateField()))
                    .values_list("d", flat=True)
                    .get()
                )
                self.assertEqual(cast_day, local.date(), f"round {i}: Cast(DateField) on {reader}")
        self.assertEqual(Event.objects.count(), 12)
        # Date lookups use Django's current time zone (settings.TIME_ZONE), on both.
        for alias in ALIASES:
            self.assertEqual(Event.objects.using(alias).filter(happened_at__date=instant(3).date()).count(), 1)

    def test_zones_hold_while_another_connection_holds_a_server_connection(self):
        """A third connection keeps a transaction open, so with a pool of two server
        connections "default" and "other" must take turns on the remaining one."""
        holding = threading.Event()
        release = threading.Event()

        def hold():
            with transaction.atomic():
                with connection.cursor() as c:
                    c.execute("SELECT 1")
                holding.set()
                if not release.wait(30):
                    raise AssertionError("never released")

        holder = Background(hold).start()
        try:
            self.assertTrue(holding.wait(30), "holder did not start")
            for i in range(20):
                alias = ALIASES[i % 2]
                self.check_zone(alias, f"(round {i}, pool squeezed)")
                ev = Event.objects.using(alias).create(label=f"s{i}", happened_at=instant(i), written_by=alias)
                _, day, _ = raw_row(alias, ev.pk)
                self.assertEqual(day, instant(i).astimezone(ZONES[alias]).date(), f"round {i}: ::date on {alias}")
        finally:
            release.set()
            holder.join()

    def test_zones_hold_with_many_threads(self):
        """Threads with their own "default" and "other" connections run at once."""

        def work(t):
            mismatches = []
            for i in range(10):
                alias = ALIASES[(i + t) % 2]
                got = session_zone(alias)
                if got != EXPECTED_ZONE[alias]:
                    mismatches.append((i, alias, got))
            return mismatches

        results = run_threads(work, 6)
        self.assertEqual([m for r in results for m in r], [])

    def test_a_connection_that_never_sets_keeps_its_startup_zone(self):
        """A plain psycopg connection (no SET of its own) must keep the TimeZone the
        server reported at login, whatever the Django connections set meanwhile."""
        db = settings.DATABASES["default"]
        raw = psycopg.connect(
            host=db["HOST"],
            port=db["PORT"],
            user=db["USER"],
            password=db["PASSWORD"],
            dbname=connection.settings_dict["NAME"],
            autocommit=True,
            connect_timeout=10,
        )
        try:
            startup = raw.info.parameter_status("TimeZone")
            self.assertNotIn(startup, EXPECTED_ZONE.values())
            for i in range(10):
                self.check_zone(ALIASES[i % 2], f"(round {i})")
                got = raw.execute("SHOW timezone").fetchone()[0]
                self.assertEqual(got, startup, f"round {i}: plain connection's zone")
        finally:
            raw.close()
