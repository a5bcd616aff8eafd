"""Suite-wide fixtures. The suite runs against real services, never mocks:
PostgreSQL (DATABASE_URL) and Redis (REDIS_URL), a real Celery worker.
"""

import socket
from urllib.parse import urlsplit

import pytest

SERVICE_HELP = {
    "PostgreSQL": (
        "DATABASE_URL",
        "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
        "(or: sudo systemctl start postgresql), or point DATABASE_URL at a running server",
    ),
    "Redis": (
        "REDIS_URL",
        "start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
        "(or: sudo systemctl start redis-server), or point REDIS_URL at a running server",
    ),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def pytest_sessionstart(session):
    """Stop at once, naming the service, when PostgreSQL or Redis is not there."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    redis_url = urlsplit(settings.REDIS_URL)
    targets = {
        "PostgreSQL": (db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)),
        "Redis": (redis_url.hostname or "127.0.0.1", redis_url.port or 6379),
    }
    missing = []
    for name, (host, port) in targets.items():
        if not _reachable(host, port):
            variable, how = SERVICE_HELP[name]
            missing.append(f"{name} is not reachable at {host}:{port} ({variable}); {how}.")
    if missing:
        pytest.exit("\n".join(missing), returncode=3)


@pytest.fixture(scope="session")
def celery_app_real():
    """The project's Celery app, pointed at the real Redis broker of the test settings."""
    from loyalty_site.celery import app

    app.control.purge()
    return app


@pytest.fixture(scope="session")
def celery_worker_real(celery_app_real, django_db_setup, django_db_blocker):
    """A real Celery worker (in a thread of this process) consuming from Redis."""
    from celery.contrib.testing.worker import start_worker

    with (
        django_db_blocker.unblock(),
        start_worker(
            celery_app_real,
            pool="solo",
            concurrency=1,
            perform_ping_check=False,
            shutdown_timeout=30,
            loglevel="WARNING",
        ) as worker,
    ):
        yield worker
