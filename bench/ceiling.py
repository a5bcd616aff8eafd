#!/usr/bin/env python
"""The ceiling of `POST /api/v1/purchases` on this machine: PostgreSQL's own work for a member's
purchase, with no HTTP, no Django and no Python beyond a minimal psycopg loop.

Each client process holds one connection and, per purchase, runs the very statements of the
service for a known member (rewards/services.py `_purchase_record_unlocked`: the read of the
member, their account's row version, the promotions in force and the qualifying spend, then the
one data-modifying statement that writes the balance, the purchase, its line, the earn entry and
its lot if the account row is still that version), each its own transaction with a durable
commit, as prepared statements (planned once per connection). The points and explanation are
fixed (1 point per unit, one line), so the figure is what the database alone can do: the API
cannot be faster than this.

    .venv/bin/python bench/ceiling.py                      # after bench/run.py seeded loyalty_bench
    .venv/bin/python bench/ceiling.py --clients 2,4,8 --duration 15

It writes purchases into loyalty_bench (integration "bench"), like the load does; run
`manage.py ledger_check` after it if in doubt (it keeps every balance equal to its entries).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import background_load, django_env, log, proc_table  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="2,4,8", help="client processes, one run each (2,4,8)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each run (15)")
    parser.add_argument(
        "--unprepared",
        action="store_true",
        help="plan every statement every time (as client-side binding does)",
    )
    parser.add_argument("--db-name", default="loyalty_bench")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    return parser.parse_args()


def _statements() -> tuple[str, str]:
    from rewards import services

    return services._PURCHASE_READ_SQL, services._MEMBER_PURCHASE_WRITE_SQL


def _client(
    dsn, prepare, read_sql, write_sql, integration_id, refs, seconds, start_at, out, release, index
) -> None:
    import psycopg

    rng = random.Random(index)
    # Prepared on first use, or never (server-side binding without prepare: planned each time).
    conn = psycopg.connect(dsn, prepare_threshold=0 if prepare else None, autocommit=True)
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    stop = start_at + seconds
    explanation = json.dumps([{"code": "base", "points": 1}])
    while time.time() < stop:
        ref = rng.choice(refs)
        now = dt.datetime.now(dt.UTC)
        external_id = f"ceil-{index}-{os.getpid()}-{time.time_ns()}"
        row = conn.execute(
            read_sql,
            {
                "ref": ref,
                "at": now,
                "spend_from": now - dt.timedelta(days=365),
                "as_of": now,
                "integration": integration_id,
                "external_id": external_id,
            },
        ).fetchone()
        # The customer's columns, then account id, balance, tier, row version, promotions, spend, recorded.
        customer_id, balance, version = row[0], row[-6], row[-4]
        amount = Decimal(rng.randint(100, 9000)) / 100
        points = int(amount)
        conn.execute(
            write_sql,
            {
                "integration": integration_id,
                "external_id": external_id,
                "customer": customer_id,
                "amount": amount,
                "currency": "DKK",
                "occurred_at": now,
                "points": points,
                "was_member": True,
                "hash": "0" * 64,
                "balance_after": balance + points,
                "explanation": explanation,
                "now": now,
                "lines": json.dumps(
                    [{"sku": "SKU-1", "category": "coffee", "quantity": "1", "amount": str(amount)}]
                ),
                "kind": "earn",
                "earned_at": now,
                "entry_explanation": explanation,
                "credit": points > 0,
                "lot_points": points,
                "expires_at": now + dt.timedelta(days=365),
                "tier_up": None,
                "version": version,
            },
        ).fetchone()
        done += 1
    out.put(done)
    release.wait()  # the connection stays open until its backend's CPU time has been read
    conn.close()


def main() -> None:
    args = parse_args()
    os.environ.update(django_env(args))
    import django

    django.setup()
    import psycopg

    dsn = f"{args.pg_url.rstrip('/')}/{args.db_name}"
    read_sql, write_sql = _statements()
    with psycopg.connect(dsn) as conn:
        integration_id = conn.execute("SELECT id FROM rewards_integration ORDER BY id LIMIT 1").fetchone()[0]
        refs = [
            r[0]
            for r in conn.execute(
                "SELECT c.external_ref FROM accounts_customer c JOIN rewards_pointsaccount a"
                " ON a.customer_id = c.id ORDER BY c.id LIMIT 200000"
            )
        ]
    log(f"others use {background_load(2.0)} cores before the run")
    for clients in [int(x) for x in args.clients.split(",")]:
        out, release = multiprocessing.Queue(), multiprocessing.Event()
        start_at = time.time() + 1.5
        procs = [
            multiprocessing.Process(
                target=_client,
                args=(
                    dsn,
                    not args.unprepared,
                    read_sql,
                    write_sql,
                    integration_id,
                    refs,
                    args.duration,
                    start_at,
                    out,
                    release,
                    i,
                ),
            )
            for i in range(clients)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        before = proc_table()
        total = sum(out.get() for _ in procs)
        after = proc_table()
        release.set()
        for p in procs:
            p.join()
        rate = total / args.duration
        clients_pids = {p.pid for p in procs}
        cpu = {"clients": 0.0, "postgres": 0.0}
        for pid, (comm, _ppid, seconds, cmdline) in after.items():
            used = seconds - (before[pid][2] if pid in before else 0.0)
            if pid in clients_pids:
                cpu["clients"] += used
            elif comm == "postgres" and f" {args.db_name} " in cmdline:
                cpu["postgres"] += used
        per = {k: round(1000 * v / max(total, 1), 2) for k, v in cpu.items()}
        log(
            f"{clients} clients: {rate:,.0f} purchases/s; CPU ms per purchase {per}; "
            f"others used {background_load(1.0)} cores after"
        )


if __name__ == "__main__":
    main()
