"""The incremental update: the rollup and the scores of the customers who bought or were
refunded since, as a full run today would score them; nobody else's."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from analytics import services
from analytics.models import CustomerScore
from rewards.models import Purchase
from tests.factories import CustomerFactory

from .conftest import local, refund_whole

pytestmark = pytest.mark.django_db

FIELDS = [
    "first_day",
    "last_day",
    "purchase_days",
    "frequency",
    "recency",
    "age",
    "net_revenue",
    "repeat_mean_spend",
    "historical_clv",
    "is_member",
]


def scores(run, customer) -> dict:
    score = CustomerScore.objects.get(run=run, customer=customer)
    return {name: getattr(score, name) for name in FIELDS}


def test_update_rescores_only_the_customers_who_bought_or_were_refunded_as_a_full_run_would(buy):
    today = timezone.localdate()
    days_ago = [today - dt.timedelta(days=n) for n in (70, 40, 20)]
    ann = CustomerFactory(external_ref="ann", enrolled_at=local(days_ago[0]) - dt.timedelta(hours=1))
    bo = CustomerFactory(external_ref="bo")
    cy = CustomerFactory(external_ref="cy")
    for customer, amounts in ((ann, (50, 60, 70)), (bo, (20, 30, 40)), (cy, (15, 25, 35))):
        for day, amount in zip(days_ago, amounts, strict=True):
            buy(customer, day, amount)
    run = services.analytics_refresh(as_of=today)
    cy_before = scores(run, cy)

    buy(bo, today, 45, hour=0)  # a new purchase day, just after local midnight
    refunded = Purchase.objects.get(customer=ann, amount=Decimal("60"))
    refund_whole(refunded)
    answer = services.analytics_update()

    assert answer["customers_touched"] == 2 and answer["scores_refreshed"] == 2
    fresh = services.analytics_refresh(as_of=today)
    for customer in (ann, bo):
        assert scores(run, customer) == scores(fresh, customer), customer.external_ref
    assert scores(run, bo)["purchase_days"] == 4 and scores(run, bo)["last_day"] == today
    assert scores(run, ann)["purchase_days"] == 2 and scores(run, ann)["net_revenue"] == Decimal("120.00")
    assert scores(run, cy) == cy_before
    updated = set(
        CustomerScore.objects.filter(run=run, updated_at__isnull=False).values_list("customer_id", flat=True)
    )
    assert updated == {ann.pk, bo.pk}


def test_only_the_latest_runs_keep_their_per_customer_scores(buy, settings):
    from django.db import connection

    from analytics.models import AnalyticsRun, MetricValue

    settings.ANALYTICS_SCORE_RUNS_KEPT = 2
    today = timezone.localdate()
    for n, customer in enumerate(CustomerFactory.create_batch(3)):
        buy(customer, today - dt.timedelta(days=10 + n), 20 + n)
    runs = [services.analytics_refresh(as_of=today) for _ in range(3)]
    assert all(run.status == AnalyticsRun.Status.DONE for run in runs)
    assert set(CustomerScore.objects.values_list("run_id", flat=True)) == {runs[1].pk, runs[2].pk}
    assert CustomerScore.objects.filter(run=runs[2]).count() == 3
    # The oldest run keeps its metrics; only the row-per-shopper scores went.
    assert MetricValue.objects.filter(run=runs[0]).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname LIKE 'analytics_customerscore_run%%'")
        partitions = {name for (name,) in cursor.fetchall()}
    assert f"analytics_customerscore_run{runs[0].pk}" not in partitions
    assert {f"analytics_customerscore_run{run.pk}" for run in runs[1:]} <= partitions


def test_pruning_also_clears_the_runs_from_before_partitioning_and_the_default_partition(buy, settings):
    # After migration 0005 the runs from before sit in one attached table, and scores written
    # through the ORM for a run without a partition of its own land in the default partition.
    from django.db import connection

    from analytics.models import AnalyticsRun

    settings.ANALYTICS_SCORE_RUNS_KEPT = 1
    today = timezone.localdate()
    customer = CustomerFactory()
    buy(customer, today - dt.timedelta(days=10), 20)
    legacy = services.analytics_refresh(as_of=today)
    own, before = f"analytics_customerscore_run{legacy.pk}", "analytics_customerscore_before_0005"
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE analytics_customerscore DETACH PARTITION {own}")
        cursor.execute(f"ALTER TABLE {own} RENAME TO {before}")
        cursor.execute(
            f"ALTER TABLE analytics_customerscore ATTACH PARTITION {before} FOR VALUES IN ({legacy.pk})"
        )
    unpartitioned = AnalyticsRun.objects.create(
        kind=AnalyticsRun.Kind.FULL,
        status=AnalyticsRun.Status.DONE,
        as_of=today,
        parameters=legacy.parameters,
    )
    score = CustomerScore.objects.get(run=legacy)
    score.pk, score.run = None, unpartitioned
    score.save()
    assert CustomerScore.objects.filter(run=unpartitioned).exists()

    latest = services.analytics_refresh(as_of=today)

    assert set(CustomerScore.objects.values_list("run_id", flat=True)) == {latest.pk}
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('analytics_customerscore_before_0005') IS NULL")
        assert cursor.fetchone()[0]
