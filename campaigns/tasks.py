"""Campaign jobs. Beat runs the dispatcher every 30 s; the dispatcher hands sending to
workers, which claim rows from the database (no long ETAs on the broker)."""

import time

from celery import shared_task
from django.conf import settings

from . import delivery
from .mail import Mailer
from .models import Delivery


@shared_task(name="campaigns.dispatch")
def dispatch() -> dict:
    report = delivery.dispatch()
    if Delivery.objects.filter(status=Delivery.Status.PENDING).exists():
        for _ in range(settings.CAMPAIGN_SEND_TASKS):
            deliveries_send.delay()
    return report


@shared_task(name="campaigns.deliveries_send")
def deliveries_send(budget_seconds: float = 50.0, sessions: int | None = None) -> dict:
    """Send batches until nothing is due or the time budget is spent (the next dispatch
    pass hands out new work). The SMTP sessions stay open from batch to batch; `sessions`
    overrides CAMPAIGN_SMTP_SESSIONS."""
    totals = {"claimed": 0, "sent": 0, "held": 0, "suppressed": 0, "failed": 0}
    deadline = time.monotonic() + budget_seconds
    with Mailer(sessions=sessions) as mailer:
        while time.monotonic() < deadline:
            report = delivery.deliveries_send(mailer=mailer)
            for key, value in report.items():
                totals[key] += value
            if not report["claimed"] and not delivery.occurrences_fill(budget_seconds=0.1):
                break
    return totals


@shared_task(name="campaigns.deliveries_sweep")
def deliveries_sweep() -> int:
    return delivery.deliveries_sweep()
