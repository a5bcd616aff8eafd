"""How the analytics are computed: the nightly full refresh and the incremental update as
Celery tasks on a real worker, both recorded as runs with their as-of date and parameters;
`compute_analytics [--as-of]` and `analytics_report --json` on the command line."""

import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from analytics.models import AnalyticsRun, CustomerScore
from loyalty_site.celery import app
from loyalty_site.schedule import BEAT_SCHEDULE
from tests.factories import CustomerFactory

from .conftest import local


def test_the_nightly_refresh_and_the_incremental_update_are_on_the_beat_schedule():
    tasks = {entry["task"]: entry["schedule"] for entry in BEAT_SCHEDULE.values()}
    assert "analytics.refresh" in tasks and "analytics.update" in tasks
    assert tasks["analytics.refresh"].hour == {2}  # once a night


@pytest.mark.django_db(transaction=True)
def test_refresh_and_update_run_on_the_worker_and_each_records_its_as_of_date_and_parameters(
    celery_worker_real, buy
):
    today = timezone.localdate()
    yesterday = today - dt.timedelta(days=1)
    ann = CustomerFactory(external_ref="ann", enrolled_at=local(today - dt.timedelta(days=90)))
    bo = CustomerFactory(external_ref="bo")
    for customer in (ann, bo):
        for days_ago in (60, 30, 5):
            buy(customer, today - dt.timedelta(days=days_ago), 40)

    nightly = app.send_task("analytics.refresh", ignore_result=False).get(timeout=120)

    full = AnalyticsRun.objects.get(pk=nightly["run"])
    assert (full.kind, full.status, full.as_of) == ("full", "done", yesterday)  # the last complete day
    assert full.parameters["as_of"] == yesterday.isoformat() and "margin" in full.parameters
    assert CustomerScore.objects.filter(run=full).count() == 2

    buy(bo, today, 55, hour=0)
    answer = app.send_task("analytics.update", ignore_result=False).get(timeout=120)

    assert answer["customers_touched"] == 1 and answer["scores_refreshed"] == 1
    update = AnalyticsRun.objects.get(pk=answer["run"])
    assert (update.kind, update.status, update.as_of) == ("incremental", "done", today)
    assert update.parameters["base_run"] == full.pk
    assert update.parameters["as_of"] == today.isoformat()
    assert update.parameters["margin"] == full.parameters["margin"]
    assert update.parameters["churn_rule"] == full.parameters["churn_rule"]
    refreshed = CustomerScore.objects.get(run=full, customer=bo)
    assert refreshed.last_day == today and refreshed.updated_at is not None
    assert CustomerScore.objects.get(run=full, customer=ann).updated_at is None
    out = io.StringIO()
    call_command("analytics_report", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["run"]["id"] == full.pk and report["incremental_update"]["id"] == update.pk
    assert report["incremental_update"]["as_of"] == today.isoformat()

    # Nothing new: the second update changes nothing and records no run.
    again = app.send_task("analytics.update", ignore_result=False).get(timeout=120)
    assert again["customers_touched"] == 0 and "run" not in again
    assert AnalyticsRun.objects.filter(kind="incremental").count() == 1


@pytest.mark.django_db
def test_compute_analytics_as_of_a_date_and_the_report_prints_that_snapshot_as_json(buy):
    ann = CustomerFactory(external_ref="ann", enrolled_at=local(dt.date(2026, 1, 5)))
    bo = CustomerFactory(external_ref="bo")
    for day in (dt.date(2026, 1, 2), dt.date(2026, 1, 20), dt.date(2026, 2, 10), dt.date(2026, 3, 5)):
        buy(ann, day, 50)
    buy(bo, dt.date(2026, 1, 15), 100)
    buy(bo, dt.date(2026, 3, 1), 20)
    buy(bo, dt.date(2026, 4, 2), 30)  # after the as-of date: not in the snapshot

    out = io.StringIO()
    call_command("compute_analytics", "--as-of", "2026-03-20", stdout=out)
    run = AnalyticsRun.objects.get()
    assert f"Analytics run {run.pk} as of 2026-03-20: 2 shoppers" in out.getvalue()
    assert run.as_of == dt.date(2026, 3, 20) and run.status == "done"

    out = io.StringIO()
    call_command("analytics_report", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["run"]["as_of"] == "2026-03-20" and report["run"]["parameters"]["churn_days"] == 90
    assert report["incremental_update"] is None
    february = next(m for m in report["crr"]["month"] if m["start"] == "2026-02-01")
    assert (february["numerator"], february["denominator"]) == (1, 2)  # of ann and bo, only ann
    assert set(report["crr"]) == set(report["churn"]) == {"month", "quarter", "year"}
    assert report["rpr"]["window_90"]["value"] == 1.0  # both bought on 2+ days in 90 days
    january = next(c for c in report["cohorts"]["first_purchase"] if c["cohort"] == "2026-01-01")
    assert january["size"] == 2 and january["retention"][:3] == [1.0, 0.5, 1.0]
    assert january["complete"][:3] == [True, True, False]
    bgnbd = report["clv"]["models"]["bgnbd"]
    assert set(bgnbd["parameters"]) == {"r", "alpha", "a", "b"} and "log_likelihood" in bgnbd
    for key in ("nps", "csat", "program_effect", "second_purchase_rate", "points", "cac"):
        assert key in report, key
    assert {e["method"] for e in report["program_effect"]} >= {"naive"}


@pytest.mark.django_db
def test_compute_analytics_refuses_a_date_it_cannot_read_and_the_report_needs_a_run():
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("compute_analytics", "--as-of", "20/03/2026", stdout=io.StringIO())
    with pytest.raises(CommandError, match="compute_analytics"):
        call_command("analytics_report", "--json", stdout=io.StringIO())
