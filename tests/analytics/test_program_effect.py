"""On simulated shoppers with a known program effect and self-selected enrollment, the
difference-in-differences estimate recovers the effect within its 95 % interval, while the
naive member / non-member gap overstates it (METRICS.md, "The program's effect")."""

import datetime as dt

import numpy as np
import pytest

from analytics import compute, effect, rollup, services
from analytics.models import ProgramEffect
from rewards.demo import shoppers_simulate, simulated_shoppers_write
from tests.factories import IntegrationFactory

from .conftest import refund_whole

pytestmark = pytest.mark.django_db

AS_OF = dt.date(2026, 6, 30)


@pytest.fixture
def simulation():
    simulation = shoppers_simulate(customers=4000, months=30, seed=7, effect=0.3, end=AS_OF)
    simulated_shoppers_write(simulation, pos=IntegrationFactory(name="sim-pos"))
    return simulation


def test_did_recovers_the_injected_effect_and_the_naive_gap_overstates_it(simulation):
    run = services.analytics_refresh(as_of=AS_OF, bootstrap=300)
    pooled = {
        e.outcome: e for e in ProgramEffect.objects.filter(run=run, method="did", cohort=None, segment="all")
    }
    naive = {e.outcome: e for e in ProgramEffect.objects.filter(run=run, method="naive")}
    # The truth for exactly the members the estimate used (same eligibility, same months).
    p = compute.Parameters.from_settings(as_of=AS_OF, bootstrap=10)
    compute.work_tables_build(p)
    treated = effect.program_effect(p).treated_ids
    index = {customer_id: i for i, customer_id in enumerate(simulation.customer_ids)}
    truths = np.array([simulation.true_effect(index[c], months=p.effect_months) for c in treated])
    true_days, true_spend = truths.mean(axis=0)
    assert len(treated) == pooled["purchase_days"].treated > 100
    did_days, did_spend = pooled["purchase_days"], pooled["spend"]
    assert did_days.ci_low <= true_days <= did_days.ci_high, (true_days, did_days)
    assert did_spend.ci_low <= true_spend <= did_spend.ci_high, (true_spend, did_spend)
    assert did_days.ci_low > 0  # the program's effect is found, not just "not excluded"
    # Members look better than non-members by far more than the program adds.
    assert naive["spend"].estimate > did_spend.ci_high
    assert naive["spend"].estimate > 2 * true_spend
    # Matching balanced the pre-period: every covariate's SMD below 0.1 after, larger before.
    balance = {b["covariate"]: b for b in did_days.extra["balance"]}
    assert all(abs(b["after"]) < 0.1 for b in balance.values()), balance
    assert abs(balance["frequency"]["before"]) > 0.1
    # Per cohort and per segment estimates are there too.
    assert ProgramEffect.objects.filter(run=run, method="did", cohort__isnull=False).count() >= 2 * 6
    segments = set(
        ProgramEffect.objects.filter(run=run, method="did", cohort=None).values_list("segment", flat=True)
    )
    assert segments == {"all", "light", "medium", "heavy"}


def test_rollup_update_after_new_purchases_and_a_refund_equals_a_rebuild(simulation, buy):
    from analytics.models import CustomerDay
    from rewards.models import Purchase

    rollup.rollup_rebuild()
    customers = list(Purchase.objects.values_list("customer", flat=True).distinct()[:3])
    from accounts.models import Customer

    for customer in Customer.objects.filter(pk__in=customers):
        buy(customer, AS_OF, 42)
    refunded = Purchase.objects.filter(customer_id=customers[0]).order_by("occurred_at").first()
    refund_whole(refunded)
    result = rollup.rollup_update()
    assert result["customers_touched"] >= 3
    after_update = sorted(
        CustomerDay.objects.values_list("customer_id", "day", "net_amount", "seq", "prev_day_number")
    )
    assert rollup.rollup_update()["purchase_days"] >= 0  # again: idempotent
    rollup.rollup_rebuild()
    after_rebuild = sorted(
        CustomerDay.objects.values_list("customer_id", "day", "net_amount", "seq", "prev_day_number")
    )
    assert after_update == after_rebuild


def test_incremental_purchase_days_of_the_last_12_months_recover_what_the_program_added(simulation):
    """METRICS.md: incremental repeat purchases per member per month (the pooled estimate),
    applied to the member-months it speaks for. The truth: the purchase days the injected
    effect added to members in the 12 months up to the as-of date, while they were customers."""
    from analytics.models import MetricValue

    run = services.analytics_refresh(as_of=AS_OF, bootstrap=300)
    shown = MetricValue.objects.get(run=run, metric="incremental_purchase_days", period="window")
    pooled = ProgramEffect.objects.get(
        run=run, method="did", cohort=None, segment="all", outcome="purchase_days"
    )
    first = dt.date(AS_OF.year - (AS_OF.month < 12), AS_OF.month % 12 + 1, 1)  # 12 months back
    days = np.arange(simulation.days)
    in_window = (days >= (first - simulation.start).days) & (days <= (AS_OF - simulation.start).days)
    truth = 0.0
    for i in np.flatnonzero(simulation.enrolled >= 0):
        member = in_window & (days > simulation.enrolled[i]) & (days < simulation.death[i])
        rate = simulation.rate[i]
        truth += member.sum() * (np.exp(-rate) - np.exp(-rate * (1 + simulation.effect)))
    low, high = shown.extra["ci_low"], shown.extra["ci_high"]
    assert low <= truth <= high, (low, truth, high)
    assert abs(shown.value - truth) < 0.25 * truth, (shown.value, truth)
    assert shown.extra["per_member_month"] == pooled.estimate
    # The estimate times every month of every member in the window (those who had stopped
    # buying too), as the page used to show it, is far above the truth.
    as_of_month = AS_OF.year * 12 + AS_OF.month - 1
    every_member_month = 0
    for enrolled in simulation.enrolled[simulation.enrolled >= 0]:
        joined = simulation.start + dt.timedelta(days=int(enrolled))
        every_member_month += as_of_month - max(joined.year * 12 + joined.month - 1, as_of_month - 11) + 1
    assert pooled.estimate * every_member_month > 1.5 * truth
