"""Scheduled analytics jobs. Thin: each calls one service.

Both are safe to repeat: the full refresh writes a new run for its as-of date (the
dashboards read the newest), the incremental update finds nothing new the second time.
"""

import datetime as dt

from celery import shared_task
from django.utils import timezone

from . import services


@shared_task(name="analytics.refresh")
def refresh(as_of: str | None = None) -> dict:
    """The nightly full refresh, as of yesterday (the last complete day) unless told."""
    day = dt.date.fromisoformat(as_of) if as_of else timezone.localdate() - dt.timedelta(days=1)
    run = services.analytics_refresh(as_of=day)
    return {"run": run.pk, "as_of": run.as_of.isoformat(), "timings": run.timings}


@shared_task(name="analytics.update")
def update() -> dict:
    """The incremental update: rollup and the scores of customers who bought since."""
    return services.analytics_update()
