"""Daily jobs through the real broker and worker; ledger_check and create_api_token commands."""

import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from loyalty_site.celery import app
from loyalty_site.schedule import BEAT_SCHEDULE
from rewards import services, tasks
from rewards.models import Integration, LedgerEntry, PointsAccount
from tests.factories import CustomerFactory, IntegrationFactory, program_rules_set, standard_tiers


@pytest.mark.django_db(transaction=True)
def test_daily_jobs_run_on_the_worker_and_twice_change_nothing(celery_worker_real):
    program_rules_set(points_per_unit=1, signup_bonus=10, expiry_months=12, birthday_bonus=99)
    standard_tiers()
    today = timezone.localdate()
    customer = CustomerFactory(birthday=dt.date(1985, today.month, min(today.day, 28)))
    services.customer_enroll(customer=customer)
    services.purchase_record(
        integration=IntegrationFactory(),
        external_id="old",
        customer_ref=customer.external_ref,
        amount=Decimal("300"),
        currency="DKK",
        occurred_at=timezone.now() - dt.timedelta(days=500),
    )
    day = today.replace(day=min(today.day, 28)).isoformat()
    for _ in range(2):
        for task in ("rewards.points_expire", "rewards.birthday_bonuses_award", "rewards.tiers_recalculate"):
            result = app.send_task(task, kwargs={"on_date": day}, ignore_result=False)
            result.get(timeout=30)
    kinds = sorted(LedgerEntry.objects.filter(account_id=customer.pk).values_list("kind", flat=True))
    assert kinds == ["bonus", "bonus", "earn", "expire"]
    assert PointsAccount.objects.get(pk=customer.pk).balance == 10 + 99
    check = app.send_task("rewards.ledger_check", ignore_result=False).get(timeout=30)
    assert check["violations"] == 0


def test_each_daily_job_is_on_the_beat_schedule():
    tasks = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert {
        "rewards.points_expire",
        "rewards.tiers_recalculate",
        "rewards.birthday_bonuses_award",
        "rewards.ledger_check",
    } <= tasks


def ledger_check_failing() -> str:
    """Run `manage.py ledger_check`, expecting exit 1; its report."""
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("ledger_check", stdout=out)
    assert exit_info.value.code == 1
    return out.getvalue()


@pytest.mark.django_db
def test_ledger_check_exits_1_with_a_report_when_a_balance_is_wrong(member):
    out = io.StringIO()
    call_command("ledger_check", stdout=out)
    assert "ok" in out.getvalue()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE rewards_pointsaccount SET balance = balance + 7 WHERE customer_id = %s", [member.pk]
        )
    report = ledger_check_failing()
    assert f"customer {member.pk}" in report and "sum of entries" in report


@pytest.mark.django_db
def test_ledger_check_exits_1_with_a_report_when_the_lots_do_not_hold_the_balance(member):
    # Lots are not append-only (spending lowers what is left of them): a raw UPDATE can break them.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE rewards_pointslot SET remaining = remaining - 7 WHERE account_id = %s", [member.pk]
        )
    report = ledger_check_failing()
    assert f"customer {member.pk}" in report and "lots hold 43, expected 50" in report
    assert "sum of entries" not in report  # the balance itself still matches the entries


@pytest.mark.django_db
def test_the_daily_ledger_check_mails_staff_when_an_invariant_is_broken(member, settings, smtp_server):
    settings.ADMINS = [("Ledger desk", "ledger-desk@example.com")]
    assert tasks.ledger_check()["violations"] == 0
    assert smtp_server.messages == []  # a clean check mails nobody
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE rewards_pointsaccount SET balance = balance + 7 WHERE customer_id = %s", [member.pk]
        )

    assert tasks.ledger_check()["violations"] == 1

    (mail,) = smtp_server.messages
    assert mail["To"] == "ledger-desk@example.com"
    assert "Ledger check failed" in mail["Subject"]
    body = smtp_server.bodies()[0]
    assert f"customer {member.pk}: balance 57 != sum of entries 50" in body


@pytest.mark.django_db
def test_create_api_token_prints_the_token_once_and_stores_its_hash(program):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", "Web shop", stdout=out, stderr=err)
    token = out.getvalue().strip()
    integration = Integration.objects.get(name="Web shop")
    assert token.startswith("lyt_") and len(token) > 40
    assert token not in (integration.token_hash or "")
    assert integration.token_hash == services.token_hash(token)
