"""Two servers under load at the same moment: CPU a request of each, side by side.

    .venv/bin/python bench/pair.py --a gthread --b loyalty_site.gunicorn_worker.OneThreadWorker
    .venv/bin/python bench/pair.py --a /tmp/old@gthread --b loyalty_site.gunicorn_worker.OneThreadWorker

For comparing two versions (a worker class, or another checkout of the code: DIR@CLASS) on a
shared machine whose speed changes from one minute to the next: both gunicorns (each --workers
processes of one thread) serve their own load generator (closed loop, --concurrency
connections, bench/loadgen.py) at once, on the same database (`loyalty_bench`, seeded by
bench/run.py), so whatever slows the machine slows both. Prints, for each: requests answered
in the measured window, gunicorn CPU (all its workers) and PostgreSQL CPU (its backends, by
application_name) a request. Swap --a and --b between runs. The busier server of a pair
(more requests a wake-up) is favoured: in the seventh round (bench/RESULTS.md) pairs showed
about twice the saving that saturation runs one after the other did.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import run  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="[DIR@]WORKER_CLASS of the first server (DIR: a checkout)")
    p.add_argument("--b", required=True, help="[DIR@]WORKER_CLASS of the second server")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of each server (4)")
    p.add_argument("--concurrency", type=int, default=8, help="connections of each load generator (8)")
    p.add_argument("--scenario", default="purchases", choices=["purchases", "customers", "floor"])
    p.add_argument("--duration", type=float, default=25)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="loyalty_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    p.add_argument("--port", type=int, default=0)
    return p.parse_args(argv)


def cpu_seconds(server, backends: list[int]) -> tuple[float, float]:
    """CPU seconds so far of the server's gunicorn workers and of its PostgreSQL backends."""
    table = run.proc_table()  # pid -> (comm, ppid, cpu seconds, cmdline)
    workers = sum(cpu for _comm, ppid, cpu, _cmd in table.values() if ppid == server.proc.pid)
    return workers, sum(table[pid][2] for pid in backends if pid in table)


class Server:
    def __init__(self, args, name: str, spec: str):
        directory, _, worker_class = spec.rpartition("@")
        self.name, self.spec = name, spec
        self.directory = Path(directory) if directory else ROOT
        self.app = f"pair-{name}-{os.getpid()}"
        env = run.django_env(args)
        env["DATABASE_URL"] += f"?application_name={self.app}"
        env["PYTHONPATH"] = str(self.directory)
        self.port = run.free_port()
        self.proc = subprocess.Popen(
            [
                run.gunicorn_bin(), "loyalty_site.wsgi", "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(args.workers), "--worker-class", worker_class, "--threads", "1",
                "--keep-alive", "10", "--backlog", "2048", "--timeout", "120", "--log-level", "warning",
            ],
            cwd=self.directory, env=env, start_new_session=True,
        )  # fmt: skip
        self.token = run.manage(args, "create_api_token", self.app).stdout.split()[-1]

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


def main(argv=None) -> None:
    args = parse_args(argv)
    servers = [Server(args, "a", args.a), Server(args, "b", args.b)]
    try:
        time.sleep(6)  # both up and importing done
        loads = [
            subprocess.Popen(
                [
                    run.python_bin(),
                    str(ROOT / "bench" / "loadgen.py"),
                    "--port",
                    str(s.port),
                    "--token",
                    s.token,
                    "--scenario",
                    args.scenario,
                    "--mode",
                    "closed",
                    "--concurrency",
                    str(args.concurrency),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(args.warmup),
                    "--run-id",
                    f"{s.app}-{int(time.time())}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for s in servers
        ]
        time.sleep(args.warmup)
        with psycopg.connect(f"{args.pg_url.rstrip('/')}/{args.db_name}", autocommit=True) as pg:

            def backends(server):
                sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                rows = pg.execute(sql, [server.app])
                return [pid for (pid,) in rows]

            before = [cpu_seconds(s, backends(s)) for s in servers]
            results = [json.loads(load.communicate()[0]) for load in loads]
            after = [cpu_seconds(s, backends(s)) for s in servers]
    finally:
        for s in servers:
            s.stop()
    for server, result, (g0, p0), (g1, p1) in zip(servers, results, before, after, strict=True):
        ok = max(result["ok"], 1)
        print(
            json.dumps(
                {
                    "server": server.spec,
                    "ok": result["ok"],
                    "gunicorn_cpu_ms": round((g1 - g0) / ok * 1000, 3),
                    "postgres_cpu_ms": round((p1 - p0) / ok * 1000, 3),
                }
            )
        )


if __name__ == "__main__":
    sys.exit(main())
