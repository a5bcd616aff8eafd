"""gunicorn on a free loopback port, in its own process, for tests that take a service
away from a running server (tests/site/test_outages.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def backends_gone(application_name: str, timeout: float = 15) -> None:
    """Wait until PostgreSQL no longer lists a stopped server's connections (by the
    application_name its DATABASE_URL set), so that the test database can be dropped at the
    end of the session."""
    from django.db import connection

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                [application_name],
            )
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class LiveServer:
    def __init__(self, env: dict, log_path: Path, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.args = args  # more of gunicorn's options
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.site.live_settings",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> LiveServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "loyalty_site.wsgi", "--bind", f"127.0.0.1:{self.port}",
                    "--workers", "1", "--timeout", "60", "--log-level", "warning", *self.args,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.request("GET", "/favicon.ico", timeout=2)
                return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = dict(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode() if not isinstance(body, bytes | str) else body
            headers.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()
