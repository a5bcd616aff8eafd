"""/healthz: does the site reach its database and its broker?"""

from django.core.cache import cache
from django.db import DatabaseError, connections
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .celery import HEARTBEAT_CACHE_KEY
from .celery import app as celery_app


def _database_ok() -> tuple[bool, str]:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:  # OperationalError, InterfaceError, ...
        return False, exc.__class__.__name__
    return True, "ok"


# A broker that hangs (a dropped network) must not hang the probe, and with it a web worker
# per probe: the probe's connection gives up after this many seconds.
BROKER_PROBE_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}


def _broker_ok() -> tuple[bool, str]:
    try:
        with celery_app.connection_for_write(transport_options=BROKER_PROBE_TIMEOUTS) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    except Exception as exc:  # kombu raises transport-specific errors
        return False, exc.__class__.__name__
    return True, "ok"


def _last_heartbeat() -> str | None:
    try:
        return cache.get(HEARTBEAT_CACHE_KEY)
    except Exception:  # the cache may live on the broker that just failed
        return None


@never_cache
@require_GET
def healthz(request):
    """200 when the database and the broker answer, else 503 naming the failure."""
    db_ok, db_detail = _database_ok()
    broker_ok, broker_detail = _broker_ok()
    healthy = db_ok and broker_ok
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": {
            "database": {"ok": db_ok, "detail": db_detail},
            "broker": {"ok": broker_ok, "detail": broker_detail},
        },
        "failed": [name for name, ok in (("database", db_ok), ("broker", broker_ok)) if not ok],
        "last_beat_heartbeat": _last_heartbeat(),
        "time": timezone.now().isoformat(),
    }
    response = JsonResponse(body, status=200 if healthy else 503)
    if not healthy:
        response["Retry-After"] = "10"
    return response
