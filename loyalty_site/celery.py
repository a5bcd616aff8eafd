"""The Celery application: configuration comes from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_site.settings.dev")

app = Celery("loyalty_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

HEARTBEAT_CACHE_KEY = "beat:heartbeat"


@app.task(name="loyalty_site.heartbeat", ignore_result=True)
def heartbeat() -> str:
    """Record that beat scheduled and a worker ran a task: /healthz shows its age."""
    from django.core.cache import cache
    from django.utils import timezone

    now = timezone.now().isoformat()
    cache.set(HEARTBEAT_CACHE_KEY, now, timeout=None)
    return now


@app.task(name="loyalty_site.ping", ignore_result=False)
def ping(value: str = "pong") -> str:
    """Echo: proves a message travels broker → worker → result backend."""
    return value
