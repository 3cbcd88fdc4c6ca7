"""How fast the admin's overview page answers with millions of AuthAttempt rows
on PostgreSQL (the target: under 300 ms with 2 million).

Fills the database agentmail_overview (its own, made afresh: never the
project's or the tests') with ``--rows`` attempts by COPY, spread evenly over the last
``--hours`` hours (24, the default, puts every row inside the page's window: the
worst case; 720 is 30 days, as a table pruned at 90 days holds them), 80 %
successes, 15 % failed credential checks from 5,000 clients (IPv4 and IPv6),
5 % other failures. Then VACUUM ANALYZE, as autovacuum does after a large
insert, and GET /admin/overview/ as a staff user through Django's test client:
once cold (a fresh connection; after a fill no settled hour has its
AuthHourSummary yet, so each is summarized), then ``--runs`` times (the settled
hours from their summaries, the current hour read); prints the median and the
slowest, and the plan of each query. ``--keep`` measures again without a new
fill: a fresh process, the summaries there.

    python bench/overview_run.py [--rows 2000000] [--hours 24] [--runs 15]

Needs PostgreSQL on 127.0.0.1:5432 with the CI role (agentmail/agentmail), as
.ci/run sets it up.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = "postgres://agentmail:agentmail@127.0.0.1:5432"
DATABASE = "agentmail_overview"
REASONS_FAILED = ["API_KEY_NOT_FOUND", "INVALID_API_KEY_FORMAT", "INBOX_NOT_FOUND", "API_KEY_REVOKED"]
REASONS_OTHER = ["MALFORMED", "RATE_LIMITED", "ABORTED"]


def create_database() -> None:
    """The benchmark's own database, made afresh (its schema from this checkout's migrations)."""
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')


def client(number: int) -> tuple[str, str]:
    """(remote_addr, client_network) of client ``number``: a third IPv6 (/64s), the rest IPv4."""
    if number % 3 == 0:
        network = f"2001:db8:{number // 256:x}:{number % 256:x}::"
        return network + "1", network + "/64"
    address = f"198.{18 + number % 2}.{(number // 200) % 256}.{number % 200 + 1}"
    return address, address


def fill(rows: int, hours: float) -> None:
    import psycopg

    now = datetime.now(UTC)
    start = now - timedelta(hours=hours)
    step = timedelta(hours=hours) / rows
    randomness = random.Random(7)
    columns = (
        "created_at, remote_addr, remote_port, client_network, session_id, encrypted, tls_version, tls_cipher, "
        "mechanism, username, key_prefix, success, credential_failure, reason"
    )
    with psycopg.connect(f"{SERVER}/{DATABASE}") as connection:
        connection.execute("TRUNCATE smtpgateway_authattempt")
        started = time.monotonic()
        with connection.cursor() as cursor, cursor.copy(f"COPY smtpgateway_authattempt ({columns}) FROM STDIN") as copy:
            for n in range(rows):
                draw = randomness.random()
                if draw < 0.80:
                    address, network = client(randomness.randrange(50_000, 60_000))
                    success, counted, reason, username = True, False, "OK", "inb_valid1234567890"
                elif draw < 0.95:
                    address, network = client(randomness.randrange(5_000))
                    success, counted, reason = False, True, randomness.choice(REASONS_FAILED)
                    username = f"inb_guess{randomness.randrange(20_000):011d}"
                else:
                    address, network = client(randomness.randrange(5_000))
                    success, counted, reason, username = False, False, randomness.choice(REASONS_OTHER), ""
                copy.write_row(
                    (
                        start + step * n,
                        address,
                        40_000 + n % 20_000,
                        network,
                        f"{n:012x}",
                        True,
                        "TLSv1.3",
                        "TLS_AES_256_GCM_SHA384",
                        "PLAIN",
                        username,
                        "",
                        success,
                        counted,
                        reason,
                    )
                )
        connection.commit()
        print(f"COPY of {rows:,} rows: {time.monotonic() - started:.1f} s", flush=True)
    with psycopg.connect(f"{SERVER}/{DATABASE}", autocommit=True) as connection:
        started = time.monotonic()
        connection.execute("VACUUM ANALYZE smtpgateway_authattempt")
        print(f"VACUUM ANALYZE: {time.monotonic() - started:.1f} s", flush=True)


def measure(runs: int) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from smtpgateway.models import AuthAttempt
    from smtpgateway.overview import read_overview

    staff, _ = User.objects.get_or_create(username="overview-bench", defaults={"is_staff": True, "is_superuser": True})
    browser = Client()
    browser.force_login(staff)
    connection.close()

    def timed() -> float:
        started = time.perf_counter()
        response = browser.get("/admin/overview/", HTTP_HOST="127.0.0.1")
        assert response.status_code == 200, response.status_code
        return (time.perf_counter() - started) * 1000

    cold = timed()
    warm = [timed() for _ in range(runs)]
    reads = []
    for _ in range(runs):
        started = time.perf_counter()
        read_overview(timezone.now())
        reads.append((time.perf_counter() - started) * 1000)
    in_window = AuthAttempt.objects.filter(created_at__gte=timezone.now() - timedelta(hours=24)).count()
    print(f"rows: {AuthAttempt.objects.count():,} ({in_window:,} in the last 24 h)")
    print(
        f"GET /admin/overview/: first view {cold:.0f} ms (a fresh connection; summarizes the settled hours "
        "that have no summary yet); "
        f"then median {statistics.median(warm):.0f} ms, slowest {max(warm):.0f} ms"
    )
    print(f"its reads alone (read_overview): median {statistics.median(reads):.0f} ms, slowest {max(reads):.0f} ms")
    with CaptureQueriesContext(connection) as captured:
        read_overview(timezone.now())
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            sql = query["sql"]
            if "authattempt" not in sql:
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plan = [line for (line,) in cursor.fetchall()]
            print(f"\n{float(query['time']) * 1000:.0f} ms: {sql[:140]}...")
            print("\n".join("   " + line for line in plan if "Scan" in line or "Execution" in line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--hours", type=float, default=24.0, help="spread the rows over this many hours back")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="measure the rows already there (no new fill)")
    args = parser.parse_args()
    env = {
        **os.environ,
        "DATABASE_URL": f"{SERVER}/{DATABASE}",
        "DEBUG": "false",
        "SECRET_KEY": "benchmark-only",
        "DJANGO_SETTINGS_MODULE": "agentmail_site.settings",
    }
    if not args.keep:
        create_database()
        for command in (["migrate", "--noinput", "-v0"], ["loaddata", "scenarios", "-v0"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)
        fill(args.rows, args.hours)
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    measure(args.runs)


if __name__ == "__main__":
    main()
