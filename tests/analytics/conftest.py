"""Helpers for the analytics tests: purchases written straight to the table at chosen
local days (the ledger is not what these tests are about)."""

import datetime as dt
import itertools
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings

_numbers = itertools.count(1)


def local(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=ZoneInfo(settings.TIME_ZONE))


@pytest.fixture
def buy(db):
    """buy(customer, day, amount, refunded=0, hour=12, member=None) → Purchase."""
    from rewards.models import Purchase
    from tests.factories import IntegrationFactory

    integration = IntegrationFactory(name="analytics-pos")

    def make(customer, day, amount, refunded=0, hour=12, member=None):
        occurred = local(day, hour) if isinstance(day, dt.date) and not isinstance(day, dt.datetime) else day
        if member is None:
            member = customer.enrolled_at is not None and customer.enrolled_at <= occurred
        return Purchase.objects.create(
            integration=integration,
            external_id=f"t-{next(_numbers)}",
            customer=customer,
            amount=Decimal(str(amount)),
            refunded_amount=Decimal(str(refunded)),
            currency="DKK",
            occurred_at=occurred,
            was_member=member,
            request_hash="test",
        )

    return make


def refund_whole(purchase, refund_id: str = "r1") -> None:
    """The purchase refunded in full as the analytics read it (its refunded amount and the
    refund row), without the ledger's clawback."""
    from rewards.models import Purchase, Refund

    Purchase.objects.filter(pk=purchase.pk).update(refunded_amount=purchase.amount)
    Refund.objects.create(
        integration=purchase.integration,
        refund_id=refund_id,
        purchase=purchase,
        amount=purchase.amount,
        request_hash="",
    )
