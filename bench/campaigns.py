#!/usr/bin/env python
"""Benchmark of campaign delivery against the targets of the campaigns issue:

- the dispatcher's selection of a segment of 1,000,000 customers (audience with a 10 %
  holdout drawn, deliveries inserted): target ≤ 10 s;
- 100,000 recipients personalised and delivered to an SMTP server on loopback by two
  worker processes: target ≤ 100 s (≥ 1,000 messages/s).

    .venv/bin/python bench/campaigns.py                 # the full run
    .venv/bin/python bench/campaigns.py --customers 200000 --recipients 20000 --reuse-db
    .venv/bin/python bench/campaigns.py --pipelining    # the SMTP server advertises PIPELINING

It (re)creates the database `loyalty_bench_campaigns` (PostgreSQL on 127.0.0.1), migrates
it, seeds customers with set-based SQL, then runs the dispatcher in this process and the
sending in real Celery worker processes (Redis database 3 as the broker) against an
aiosmtpd server in its own process. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def log(message: str) -> None:
    print(f"[bench campaigns {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PipeliningSink:
    """aiosmtpd's Sink, advertising PIPELINING (`--pipelining`)."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 - aiosmtpd's API
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's API
        return "250 OK"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    # 2 × 2 threads × 32 sessions measured best on 2 cores (2026-11-23, bench/RESULTS.md).
    parser.add_argument("--threads", type=int, default=2, help="threads per worker process")
    parser.add_argument("--sessions", type=int, default=32, help="SMTP sessions per thread")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="loyalty_bench_campaigns")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    parser.add_argument(
        "--pipelining",
        action="store_true",
        help="the SMTP server advertises PIPELINING (RFC 2920), as Postfix and Exim do; aiosmtpd's "
        "Sink does not, though it reads pipelined commands correctly",
    )
    parser.add_argument("--reuse-db", action="store_true")
    parser.add_argument("--no-send", action="store_true", help="measure the selection only")
    args = parser.parse_args()

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.test",
        "DATABASE_URL": f"{args.pg}/{args.db}",
        "REDIS_URL": args.redis,
        "SITE_URL": "https://loyalty.example.com",
        "CAMPAIGN_QUIET_HOURS": "0,0",
        "CAMPAIGN_FREQUENCY_CAP": "0",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    if not args.reuse_db:
        with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.db}"')
            conn.execute(f'CREATE DATABASE "{args.db}"')
    log("migrating")
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    if not args.reuse_db:
        log(f"seeding {args.customers:,} customers")
        started = time.monotonic()
        with psycopg.connect(f"{args.pg}/{args.db}", autocommit=True) as conn:
            conn.execute(
                """
                INSERT INTO accounts_customer (external_ref, email, first_name, last_name, language,
                    time_zone, marketing_consent, referral_code, created_at)
                SELECT 'M' || i, 'm' || i || '@bench.invalid', 'Kim', '',
                       CASE WHEN i <= %s THEN 'sv' ELSE (ARRAY['en', 'da', 'ru', 'th'])[1 + i %% 4] END,
                       'Europe/Copenhagen', true, 'BC' || i, now()
                FROM generate_series(1, %s) AS i
                """,
                [args.recipients, args.customers],
            )
            conn.execute("ANALYZE")
        log(f"seeded in {time.monotonic() - started:.1f} s")

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from campaigns import delivery
    from campaigns.models import Campaign, Delivery
    from campaigns.services import campaign_launch
    from tests.factories import campaign_make

    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "customers": args.customers,
        "recipients": args.recipients,
        "workers": args.workers,
        "threads": args.threads,
        "sessions": args.sessions,
        "smtp_pipelining": args.pipelining,
    }

    # 1. Selection: a segment of every customer (all consented), 10 % holdout.
    from campaigns.segments import segment_customers

    everyone = campaign_make(name="Everyone", holdout_percent=10, conditions=[{"field": "consent"}])
    campaign_launch(campaign=everyone)
    started = time.monotonic()
    result["segment_count"] = segment_customers(everyone.segment).count()
    result["segment_select_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    delivery.dispatch()
    result["dispatch_pass_s"] = round(time.monotonic() - started, 2)
    result["deliveries_after_first_pass"] = Delivery.objects.filter(campaign=everyone).count()
    while delivery.occurrences_fill(budget_seconds=30):
        pass
    result["materialise_all_s"] = round(time.monotonic() - started, 2)
    rows = Delivery.objects.filter(campaign=everyone).count()
    result["materialised_deliveries"] = rows
    log(
        f"segment of {result['segment_count']:,} selected in {result['segment_select_s']} s; dispatcher pass "
        f"{result['dispatch_pass_s']} s ({result['deliveries_after_first_pass']:,} ready to send); "
        f"all {rows:,} deliveries in {result['materialise_all_s']} s"
    )
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM campaigns_delivery WHERE campaign_id = %s", [everyone.pk])
        # Autovacuum may be off on a benchmark server (it is on this one); production runs it.
        # Without it the rows just deleted, and those of earlier --reuse-db runs, stay in the
        # table and its indexes, and every claim of the send below wades through them.
        cursor.execute("VACUUM ANALYZE campaigns_delivery")
    Campaign.objects.filter(pk=everyone.pk).update(status=Campaign.Status.FINISHED)

    if args.no_send:
        print(json.dumps(result, indent=2))
        return 0

    # 2. Sending: the Swedish-speaking customers, no holdout, personalised.
    swedish = campaign_make(
        name="Send",
        holdout_percent=0,
        conditions=[{"field": "language", "value": "sv"}],
        contents={
            "en": ("Hi {{ first_name }}", "You have {{ points_balance }} points."),
            "sv": (
                "Hej {{ first_name }}",
                "Du har {{ points_balance }} poäng. Nästa nivå: {{ next_tier }}.\n"
                "Tips: {{ recommended_reward }}. https://shop.example.com/erbjudanden",
            ),
        },
    )
    campaign_launch(campaign=swedish)
    delivery.dispatch()
    while delivery.occurrences_fill(budget_seconds=30):
        pass
    total = Delivery.objects.filter(campaign=swedish).count()
    port = free_port()
    smtp = subprocess.Popen(
        [
            PY,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "bench.campaigns.PipeliningSink" if args.pipelining else "aiosmtpd.handlers.Sink",
        ],
        env=env,
    )
    worker_env = {**env, "EMAIL_URL": f"smtp://127.0.0.1:{port}"}
    workers = [
        subprocess.Popen(
            [
                PY,
                "-m",
                "celery",
                "-A",
                "loyalty_site",
                "worker",
                "-P",
                "threads",
                "-c",
                str(args.threads),
                "-Q",
                "bench-campaigns",
                "-n",
                f"bench{i}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env=worker_env,
            start_new_session=True,
        )  # fmt: skip
        for i in range(args.workers)
    ]
    time.sleep(4)
    from loyalty_site.celery import app

    app.control.purge()
    log(f"sending {total:,} messages with {args.workers} workers × {args.threads} threads")
    started = time.monotonic()
    for _ in range(args.workers * args.threads):
        app.send_task(
            "campaigns.deliveries_send",
            kwargs={"budget_seconds": 3600, "sessions": args.sessions},
            queue="bench-campaigns",
        )
    try:
        while True:
            left = Delivery.objects.filter(campaign=swedish, status__in=["pending", "sending"]).count()
            if not left:
                break
            if time.monotonic() - started > 3600:
                raise SystemExit("sending did not finish within an hour")
            time.sleep(1)
    finally:
        elapsed = time.monotonic() - started
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        smtp.terminate()
    sent = Delivery.objects.filter(campaign=swedish, status="sent").count()
    result.update(
        {
            "send_messages": sent,
            "send_failed": Delivery.objects.filter(campaign=swedish, status="failed").count(),
            "send_s": round(elapsed, 1),
            "send_per_s": round(sent / elapsed, 1),
        }
    )
    log(f"sent {sent:,} in {elapsed:.1f} s = {sent / elapsed:.0f}/s")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
