"""CPU per purchase without HTTP: the site's WSGI application called in this process.

    .venv/bin/python bench/inprocess.py                    # 3 rounds of 2,000 purchases
    .venv/bin/python bench/inprocess.py --requests 5000 --rounds 5

For comparing two versions of the purchase path on a shared, noisy machine: a saturation run
through gunicorn (bench/run.py) mixes in the server, the load generator and whatever else the
machine is doing, while this measures only the request's own Python (process CPU time) and its
PostgreSQL backend's CPU (from /proc), on the same database `bench/run.py` seeds
(`loyalty_bench`, 1,000,000 customers; run `make bench` once first). The requests are
bench/loadgen.py's own purchases (1-3 lines, a random customer, 2 % never seen before, a new
external id each time).
Production settings (prepared statements, the API's middleware stack, connection health checks).
A warm-up of 200 purchases is not counted. Run it on PostgreSQL on 127.0.0.1, nowhere else: it
writes purchases into the benchmark database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import loadgen  # bench/ is on sys.path when run as a script
import run
from wsgi_call import wsgi_call

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="purchases a round (2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each reported (3)")
    p.add_argument("--customers", type=int, default=1_000_000, help="customers B0000001… in the database")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="loyalty_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    return p.parse_args(argv)


def setup(args) -> None:
    os.environ.update(run.django_env(args))  # the benchmark's production settings
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def backend_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup(args)
    from django.db import connection

    from loyalty_site.wsgi import application
    from rewards.services import integration_token_create

    _integration, token = integration_token_create(name=f"bench-inprocess-{time.time():.0f}-{os.getpid()}")
    # The load generator's own purchases (bench/loadgen.py), as WSGI environs.
    workload = loadgen.Workload(
        loadgen.parse_args(
            ["--scenario", "purchases", "--token", token, "--customers", str(args.customers)]
            + ["--run-id", f"inproc-{time.time():.0f}-{os.getpid()}"]
        )
    )

    def purchase(seq: int) -> None:
        method, path, headers, body = workload.next()
        status, answer = wsgi_call(application, method, path, headers, body)
        if status != 201:
            raise SystemExit(f"purchase {seq}: {status} {answer[:300]!r}")

    for seq in range(200):
        purchase(seq)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    seq = 200
    for round_no in range(1, args.rounds + 1):
        cpu0, pg0, wall0 = time.process_time(), backend_cpu_seconds(pid), time.perf_counter()
        for _ in range(args.requests):
            purchase(seq)
            seq += 1
        cpu1, pg1, wall1 = time.process_time(), backend_cpu_seconds(pid), time.perf_counter()
        n = args.requests
        print(
            json.dumps(
                {
                    "round": round_no,
                    "purchases": n,
                    "python_cpu_ms": round(1000 * (cpu1 - cpu0) / n, 3),
                    "postgres_cpu_ms": round(1000 * (pg1 - pg0) / n, 3),
                    "wall_ms": round(1000 * (wall1 - wall0) / n, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
