"""A campaign's results and the lift over its holdout, with 95 % intervals."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone, translation

from accounts.models import Customer
from analytics.stats import difference_of_means, difference_of_proportions
from campaigns import delivery
from campaigns.models import Audience, Click, Delivery
from campaigns.results import campaign_results
from campaigns.services import campaign_launch
from rewards.services import purchase_record
from tests.factories import campaign_make


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 − 48/80.
    lift = difference_of_proportions(56, 70, 48, 80)
    assert round(lift.estimate, 4) == 0.2
    assert (round(lift.low, 4), round(lift.high, 4)) == (0.0524, 0.3339)


def test_welch_interval_and_words():
    lift = difference_of_means([10.0, 12.0, 14.0, 16.0], [8.0, 9.0, 10.0, 11.0])
    assert lift.estimate == pytest.approx(3.5)
    assert lift.low < 3.5 < lift.high
    # In English whatever language an earlier test's request left active in this thread (the
    # tests without a database run after those with one: tests/site/test_i18n.py leaves Russian).
    with translation.override("en"):
        assert lift.words("DKK per recipient") == (
            f"+3.5 DKK per recipient, 95 % interval {lift.low:+.1f} to {lift.high:+.1f}"
        )
    assert difference_of_means([1.0], [2.0, 3.0]) is None


def test_results_count_what_was_sent_and_estimate_the_lift(program, integration, settings):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    Customer.objects.bulk_create(
        Customer(external_ref=f"R{i:04d}", email=f"r{i}@example.com", marketing_consent=True)
        for i in range(600)
    )
    campaign = campaign_make(name="Lift", holdout_percent=50, conditions=[{"field": "consent"}])
    campaign_launch(campaign=campaign)
    delivery.dispatch()
    while delivery.deliveries_send()["claimed"]:
        pass
    # 30 % of the treated and 10 % of the holdout buy within the window: a true lift of 20 points.
    now = timezone.now() + dt.timedelta(hours=1)
    audience = Audience.objects.filter(campaign=campaign).select_related("customer").order_by("customer_id")
    treated = [a.customer for a in audience if not a.holdout]
    holdout = [a.customer for a in audience if a.holdout]
    buyers = treated[: round(0.30 * len(treated))] + holdout[: round(0.10 * len(holdout))]
    for customer in buyers:
        purchase_record(
            integration=integration,
            external_id=f"p-{customer.pk}",
            customer_ref=customer.external_ref,
            amount=Decimal("100"),
            currency="DKK",
            occurred_at=now,
        )
    # A purchase after the attribution window does not count.
    late = holdout[-1]
    purchase_record(
        integration=integration,
        external_id="late",
        customer_ref=late.external_ref,
        amount=Decimal("1000"),
        currency="DKK",
        occurred_at=now + dt.timedelta(days=8),
    )
    Click.objects.create(delivery=Delivery.objects.first(), url="https://x.example")
    results = campaign_results(campaign)
    assert results["recipients"] + results["holdout"] == 600
    assert results["sent"] == results["recipients"] and results["clicks"] == 1
    assert results["conversion_rate"] == pytest.approx(0.30, abs=0.005)
    assert results["holdout_conversion_rate"] == pytest.approx(0.10, abs=0.005)
    lift = results["conversion_lift"]
    assert lift.low < 0.20 < lift.high and lift.significant
    assert results["revenue_per_recipient"] == pytest.approx(100 * results["conversion_rate"])
    assert (
        results["conversion_lift_words"].startswith("+")
        and "95 % interval" in results["conversion_lift_words"]
    )
