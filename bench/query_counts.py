#!/usr/bin/env python
"""Queries (and, with --profile, Python time) per request on the two benchmarked endpoints.

Runs the real views in-process through Django's test client against the seeded bench
database (run `bench/run.py` once first), under the production settings, and counts the
SQL each request sends with django.test.utils.CaptureQueriesContext:

    .venv/bin/python bench/query_counts.py             # counts, with the SQL of each request
    .venv/bin/python bench/query_counts.py --profile 300   # + cProfile of 300 requests of each kind

It writes a few purchases into the bench database, through the service, like the load does.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import django_env, parse_args  # noqa: E402
from wsgi_call import wsgi_call  # noqa: E402


def setup(bench_args) -> None:
    os.environ.update(django_env(bench_args))
    import django

    django.setup()


def purchase_body(external_id: str, customer: str) -> dict:
    return {
        "external_id": external_id,
        "customer": customer,
        "amount": "129.95",
        "currency": "DKK",
        "occurred_at": "2026-11-20T10:15:00+01:00",
        "items": [
            {"sku": "ESP-1", "category": "coffee-beans", "quantity": "1", "amount": "89.95"},
            {"sku": "CR-2", "category": "pastry", "quantity": "1", "amount": "40.00"},
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", type=int, default=0, help="cProfile this many requests of each kind")
    p.add_argument("--quiet", action="store_true", help="counts only, no SQL")
    own, rest = p.parse_known_args()
    bench_args = parse_args(rest)
    setup(bench_args)

    from django.core.wsgi import get_wsgi_application
    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext

    from accounts.models import Customer
    from rewards.services import integration_token_create

    _, token = integration_token_create(name="bench-query-counts")
    application = get_wsgi_application()

    def wsgi_request(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """The request as gunicorn hands it over: request_started/finished signals included
        (Django's test client would skip the per-request connection health check)."""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return wsgi_call(application, method, path, headers, body)

    # CONN_HEALTH_CHECKS: a `SELECT 1` on a raw cursor before the first query of each request,
    # invisible to CaptureQueriesContext; count it here.
    health_checks = []
    db = connections["default"]
    real_is_usable = db.is_usable

    def counting_is_usable():
        health_checks.append(1)
        return real_is_usable()

    db.is_usable = counting_is_usable
    member = Customer.objects.filter(external_ref="B0000001").values_list("external_ref", flat=True).first()
    if member is None:
        raise SystemExit("The bench database is not seeded: run bench/run.py first.")
    # B0000001..: member unless a multiple of 5; the first --history-customers have history.
    member_with_history, member_without_history = "B0000002", f"B{bench_args.history_customers + 1:07d}"
    non_member = "B0000005"
    stamp = int(time.time() * 1000)
    counter = itertools.count()

    def post_purchase(customer):
        body = purchase_body(f"qc-{stamp}-{next(counter)}", customer)
        return wsgi_request("POST", "/api/v1/purchases", json.dumps(body).encode())

    def get_customer(ref):
        return wsgi_request("GET", f"/api/v1/customers/{ref}")

    # One request of each kind first, so one-off work (URL resolver, rules cache) is not counted.
    post_purchase(member_with_history)
    get_customer(member_with_history)

    cases = [
        ("POST /purchases, member", lambda: post_purchase(member_with_history)),
        ("POST /purchases, member (no history)", lambda: post_purchase(member_without_history)),
        ("POST /purchases, non-member", lambda: post_purchase(non_member)),
        ("POST /purchases, unknown customer", lambda: post_purchase(f"Nqc{stamp}-{next(counter)}")),
        ("GET /customers/{ref}, member with history", lambda: get_customer(member_with_history)),
        ("GET /customers/{ref}, non-member", lambda: get_customer(non_member)),
    ]
    for name, call in cases:
        timings: list[float] = []

        def timed(execute, sql, params, many, context, timings=timings):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                timings.append(time.perf_counter() - started)

        health_checks.clear()
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(timed):
            status, _ = call()
        elapsed = time.perf_counter() - started
        statements = [q for q in ctx.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
        print(
            f"\n== {name}: HTTP {status}, {len(ctx.captured_queries)} queries captured "
            f"({len(statements)} statements + {len(ctx.captured_queries) - len(statements)} BEGIN/COMMIT) "
            f"+ {len(health_checks)} health-check SELECT 1; "
            f"{elapsed * 1000:.1f} ms in-process, {sum(timings) * 1000:.1f} ms of it in cursor.execute"
        )
        if not own.quiet:
            for i, q in enumerate(ctx.captured_queries, 1):
                print(f"  {i:2}. {q['sql'][:200]}")

    if own.profile:
        for name, call in (cases[0], cases[4]):
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for _ in range(own.profile):
                call()
            profiler.disable()
            elapsed = time.perf_counter() - started
            print(f"\n== cProfile: {own.profile} × {name}: {elapsed / own.profile * 1000:.2f} ms per request")
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
            stats.print_stats(45)
            print(out.getvalue())
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
