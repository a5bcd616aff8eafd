"""Scheduled jobs of the loyalty core. Thin: each takes a date and calls an idempotent service."""

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings
from django.core.mail import mail_admins
from django.utils import timezone

from . import services
from .ledger_check import ledger_check_record, ledger_violations

logger = logging.getLogger(__name__)


def _date(value: str | None) -> dt.date:
    return dt.date.fromisoformat(value) if value else timezone.localdate()


@shared_task(name="rewards.points_expire")
def points_expire(on_date: str | None = None) -> dict:
    result = services.points_expire(on_date=_date(on_date))
    services.vouchers_expire()
    return result


@shared_task(name="rewards.tiers_recalculate")
def tiers_recalculate(on_date: str | None = None) -> dict:
    return services.tiers_recalculate(on_date=_date(on_date))


@shared_task(name="rewards.birthday_bonuses_award")
def birthday_bonuses_award(on_date: str | None = None) -> dict:
    return services.birthday_bonuses_award(on_date=_date(on_date))


@shared_task(name="rewards.ledger_check")
def ledger_check() -> dict:
    """Alert staff (ADMINS by email, and the log) when an invariant is broken."""
    violations = ledger_violations(limit=100)
    ledger_check_record(violations=violations)
    if violations:
        lines = [f"customer {v['customer_id']}: {'; '.join(v['problems'])}" for v in violations]
        logger.error("ledger_check found %d violation(s):\n%s", len(violations), "\n".join(lines))
        if settings.ADMINS:
            mail_admins("Ledger check failed", "\n".join(lines), fail_silently=True)
    return {"violations": len(violations), "checked_at": timezone.now().isoformat()}
