"""The metrics of METRICS.md on small histories where every number can be worked out by hand."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from analytics import services
from analytics.models import CohortCell, CustomerDay, CustomerScore, MetricValue, ProgramEffect
from tests.factories import CustomerFactory

from .conftest import local

pytestmark = pytest.mark.django_db

AS_OF = dt.date(2026, 3, 20)
D = dt.date


def metric(run, name, period, segment="all", start=None):
    rows = MetricValue.objects.filter(run=run, metric=name, period=period, segment=segment)
    if start is not None:
        rows = rows.filter(period_start=start)
    return rows.get()


@pytest.fixture
def shop(buy):
    """Four customers:
    ann (member since 2026-01-05): Jan 2, Jan 2 again (same day), Jan 20, Feb 10, Mar 5
    bo: Jan 15, Feb 1 (fully refunded), Mar 1
    cy: Feb 3 only (partly refunded: 100 → 60)
    di: Dec 28 2025, Jan 4 (23:30 local: still Jan 4, though Jan 4 22:30 UTC)
    """
    ann = CustomerFactory(external_ref="ann", enrolled_at=local(D(2026, 1, 5)))
    bo = CustomerFactory(external_ref="bo")
    cy = CustomerFactory(external_ref="cy")
    di = CustomerFactory(external_ref="di")
    buy(ann, D(2026, 1, 2), 50, hour=9)
    buy(ann, D(2026, 1, 2), 30, hour=15)
    buy(ann, D(2026, 1, 20), 40)
    buy(ann, D(2026, 2, 10), 60)
    buy(ann, D(2026, 3, 5), 70)
    buy(bo, D(2026, 1, 15), 100)
    buy(bo, D(2026, 2, 1), 80, refunded=80)
    buy(bo, D(2026, 3, 1), 20)
    buy(cy, D(2026, 2, 3), 100, refunded=40)
    buy(di, D(2025, 12, 28), 10)
    buy(di, D(2026, 1, 4), 10, hour=23)
    return {"ann": ann, "bo": bo, "cy": cy, "di": di}


@pytest.fixture
def run(shop):
    return services.analytics_refresh(as_of=AS_OF, bootstrap=50)


def test_rollup_counts_purchase_days_not_receipts_and_drops_fully_refunded(run, shop):
    days = CustomerDay.objects.filter(customer=shop["ann"]).order_by("day")
    ann_days = list(days.values_list("day", "receipts", "net_amount"))
    assert ann_days[0] == (D(2026, 1, 2), 2, Decimal("80.00"))
    assert len(ann_days) == 4
    assert not CustomerDay.objects.filter(customer=shop["bo"], day=D(2026, 2, 1)).exists()
    assert CustomerDay.objects.get(customer=shop["cy"]).net_amount == Decimal("60.00")
    # 23:00 in Copenhagen is still the 4th, although it is the 4th 22:00 UTC.
    assert CustomerDay.objects.filter(customer=shop["di"], day=D(2026, 1, 4)).exists()
    seqs = list(days.values_list("seq", "prev_day_number"))
    assert [s for s, _ in seqs] == [1, 2, 3, 4] and seqs[0][1] is None


def test_crr_is_id_based_on_the_previous_month(run):
    # January active: ann, bo, di. February active: ann, cy (bo's February was refunded).
    feb = metric(run, "crr", "month", start=D(2026, 2, 1))
    assert (feb.numerator, feb.denominator) == (1, 3) and feb.value == pytest.approx(1 / 3)
    assert metric(run, "churn", "month", start=D(2026, 2, 1)).value == pytest.approx(2 / 3)
    # March: ann and bo of February's {ann, cy} → only ann.
    march = metric(run, "crr", "month", start=D(2026, 3, 1))
    assert (march.numerator, march.denominator) == (1, 2)
    assert not march.complete
    assert metric(run, "churn_annualised", "month", start=D(2026, 2, 1)).value == pytest.approx(
        1 - (1 / 3) ** 12
    )
    # January members: ann alone in December's base? December had only di (a non-member).
    jan_members = metric(run, "crr", "month", "members", start=D(2026, 1, 1))
    assert jan_members.denominator is None or jan_members.denominator == 0
    assert jan_members.value is None  # empty denominator: null, never 0


def test_repeat_rate_frequency_and_aov_over_a_window(run):
    # 90 days to 2026-03-20 start 2025-12-21: ann 4 days, bo 2, cy 1, di 2.
    rpr = metric(run, "rpr", "window", "all:90")
    assert (rpr.numerator, rpr.denominator) == (3, 4)
    frequency = metric(run, "frequency", "window", "all:90")
    assert frequency.value == pytest.approx(9 / 4)
    aov = metric(run, "aov", "window", "all:90")
    net = 80 + 40 + 60 + 70 + 100 + 20 + 60 + 10 + 10
    assert aov.value == pytest.approx(net / 9)
    assert aov.extra["receipts"] == 10


def test_inter_purchase_time_percentiles(run):
    # Gaps: ann 18, 21, 23; bo 45; di 7 → sorted 7, 18, 21, 23, 45
    ipt = metric(run, "inter_purchase_days", "window", "all:90")
    assert ipt.value == 21 and ipt.extra["p25"] == 18 and ipt.extra["p75"] == 23


def test_second_purchase_rate_within_d_days(run):
    # First days: ann Jan 2 (2nd Jan 20: 18 d), bo Jan 15 (Mar 1: 45 d), cy Feb 3 (none), di Dec 28 (7 d).
    # As of Mar 20: d = 30 → eligible first ≤ Feb 18: all four; within 30: ann, di.
    rates = {m.segment: m for m in MetricValue.objects.filter(run=run, metric="second_purchase_rate")}
    assert (rates["30"].numerator, rates["30"].denominator) == (2, 4)
    # d = 60 → eligible first ≤ Jan 19: ann, bo, di; within 60: all three.
    assert (rates["60"].numerator, rates["60"].denominator) == (3, 3)
    # d = 90 → eligible first ≤ Dec 20: nobody → null.
    assert rates["90"].value is None and rates["90"].denominator == 0


def test_cohorts_by_first_purchase_and_enrollment(run):
    cells = {(c.kind, c.cohort, c.period): c for c in CohortCell.objects.filter(run=run)}
    jan = [cells[("first_purchase", D(2026, 1, 1), k)] for k in range(3)]
    # January cohort: ann and bo. Feb: ann only (bo refunded). Mar: ann and bo.
    assert [c.size for c in jan] == [2, 2, 2]
    assert [c.active for c in jan] == [2, 1, 2]
    assert [c.active_or_later for c in jan] == [2, 2, 2]
    assert [c.complete for c in jan] == [True, True, False]
    dec = [cells[("first_purchase", D(2025, 12, 1), k)] for k in range(4)]
    assert [c.active for c in dec] == [1, 1, 0, 0]
    assert [c.active_or_later for c in dec] == [1, 1, 0, 0]
    enrolled = [cells[("enrollment", D(2026, 1, 1), k)] for k in range(3)]
    assert [c.size for c in enrolled] == [1, 1, 1] and [c.active for c in enrolled] == [1, 1, 1]


def test_scores_hold_bgnbd_inputs_rfm_and_churn_risk(run, shop):
    ann = CustomerScore.objects.get(run=run, customer=shop["ann"])
    assert (ann.purchase_days, ann.frequency, ann.recency, ann.age) == (4, 3, 62, 77)
    assert ann.net_revenue == Decimal("250.00") and ann.repeat_mean_spend == Decimal("56.67")
    assert ann.historical_clv == Decimal("75.00")  # × the default margin 0.3
    assert ann.is_member and 3 <= ann.rfm_score <= 15
    cy = CustomerScore.objects.get(run=run, customer=shop["cy"])
    assert cy.frequency == 0 and cy.repeat_mean_spend is None
    di = CustomerScore.objects.get(run=run, customer=shop["di"])
    # di last bought 75 days ago: the τ rule (90 days) says high risk, not yet churned.
    assert di.churn_risk in ("high", "churned")
    scores = {s.customer_id: s for s in CustomerScore.objects.filter(run=run)}
    assert scores[shop["ann"].pk].rfm_r == 5  # the most recent buyer
    assert scores[shop["ann"].pk].rfm_m == 5  # the biggest spender


def test_a_run_records_its_as_of_date_and_parameters(run):
    assert run.status == "done" and run.as_of == AS_OF
    assert run.parameters["margin"] == 0.3 and run.parameters["churn_days"] == 90
    assert run.timings["shoppers"] == 4
    assert ProgramEffect.objects.filter(run=run, method="naive").exists()


def test_empty_shop_gives_nulls_not_errors(db):
    run = services.analytics_refresh(as_of=AS_OF)
    assert run.status == "done"
    assert metric(run, "crr", "month", start=D(2026, 2, 1)).value is None
    assert metric(run, "rpr", "window", "all:365").value is None
    assert metric(run, "aov", "window", "all:365").value is None


def test_a_session_whose_temporary_buffers_are_in_use_still_computes(db):
    """A temporary table created in a transaction that rolled back leaves no temporary schema
    but the session's temporary buffers in use, and PostgreSQL then refuses a new temp_buffers
    (a long-lived worker's connection can be in that state when the nightly job comes)."""
    from django.db import connection, transaction

    with pytest.raises(RuntimeError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE scratch (x integer)")
        cursor.execute("INSERT INTO scratch VALUES (1)")
        raise RuntimeError("rolled back")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_my_temp_schema() = 0")
        assert cursor.fetchone()[0]
    assert services.analytics_refresh(as_of=AS_OF).status == "done"


def test_points_liability_redemption_rate_and_clv_to_cac_from_the_ledger(member, integration):
    from analytics.models import MonthlyCost
    from rewards import services as rewards
    from tests.factories import RewardFactory

    today = timezone.localdate()
    rewards.purchase_record(
        integration=integration,
        external_id="p1",
        customer_ref=member.external_ref,
        amount=Decimal("300"),
        currency="DKK",
        occurred_at=timezone.now(),
    )
    reward = RewardFactory(cost_points=100)
    kept = rewards.reward_redeem(customer=member, reward_id=reward.pk)
    returned = rewards.reward_redeem(customer=member, reward_id=reward.pk)
    rewards.redemption_cancel(redemption_id=returned.redemption.pk)
    assert kept.redemption.pk != returned.redemption.pk
    MonthlyCost.objects.create(month=today.replace(day=1), kind="acquisition", amount=Decimal("70"))

    run = services.analytics_refresh(as_of=today, bootstrap=10)

    # 50 (sign-up bonus) + 300 earned − 2 × 100 redeemed + 100 returned with the cancelled voucher.
    assert metric(run, "points_outstanding", "asof").value == 250
    breakage = metric(run, "points_breakage", "asof")  # nothing expired: all of it will be redeemed
    assert (breakage.numerator, breakage.denominator, breakage.value) == (0, 100, 0)
    liability = metric(run, "points_liability", "asof")
    assert liability.value == pytest.approx(250 * run.parameters["point_cost"])
    month = metric(run, "redemption_rate", "month", start=today.replace(day=1))
    assert (month.numerator, month.denominator) == (100, 350)  # redeemed net of returns ÷ issued
    assert month.complete == (month.period_end <= today)
    # CAC: 70 DKK for the one member who enrolled this month; CLV : CAC with the member's CLV.
    assert metric(run, "cac", "window").value == 70
    clv_cac = metric(run, "clv_cac", "window")
    score = CustomerScore.objects.get(run=run, customer=member)
    value = score.predicted_clv if clv_cac.extra["basis"] == "predicted" else score.historical_clv
    assert clv_cac.value == pytest.approx(float(value) / 70)
