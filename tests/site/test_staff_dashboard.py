"""The staff home dashboard (loyalty_site/staff.py): today's figures for a hand-made history,
every staff role may see it, and each alert appears when its condition holds and only then:
a failed delivery, a stale periodic task, a failing integration, a ledger check failure."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts import roles
from analytics.models import AnalyticsSettings
from campaigns.models import Delivery
from loyalty_site.celery import HEARTBEAT_CACHE_KEY
from rewards import services
from rewards.models import Integration, LedgerCheck, PointsAccount
from rewards.tasks import ledger_check
from tests.factories import CustomerFactory, RewardFactory, UserFactory, campaign_make

pytestmark = pytest.mark.django_db

URL = "/admin/today/"


def staff_user(role: str):
    if role == "superuser":
        return UserFactory(username="root", is_staff=True, is_superuser=True)
    user = UserFactory(username=role, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def by_testid(html: str, name: str) -> str:
    match = re.search(rf'data-testid="{name}"[^>]*>(.*?)</', html, flags=re.S)
    assert match, f"no data-testid={name}"
    return match.group(1).strip()


@pytest.fixture
def heartbeat():
    """Beat is alive (a fresh heartbeat), unless a test says otherwise."""
    cache.set(HEARTBEAT_CACHE_KEY, timezone.now().isoformat(), timeout=None)
    yield
    cache.delete(HEARTBEAT_CACHE_KEY)


@pytest.fixture
def shop(program, heartbeat):
    """Two members and a non-member. Ann: signup +50, a purchase of 120.00 today (+120),
    redeems twice and cancels one voucher (net 70 redeemed today).
    Bo: signup +50, a purchase of 80.00 forty days ago (+80): a member, active (≤ 90 days),
    whose points were issued outside the last 30 days. Cy: no membership, buys today.
    Bun costs 70: Ann redeems it twice and cancels the second voucher."""
    pos = Integration.objects.create(name="pos")
    now = timezone.now()
    # "Today" is the program's local day: a few minutes ago, but never before its midnight.
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    ann, _ = services.customer_enroll(customer=CustomerFactory(first_name="Ann"))
    bo, _ = services.customer_enroll(customer=CustomerFactory(first_name="Bo"))
    cy = CustomerFactory(first_name="Cy")
    services.purchase_record(
        integration=pos,
        external_id="A-1",
        customer_ref=ann.external_ref,
        amount=Decimal("120.00"),
        currency="DKK",
        occurred_at=max(now - dt.timedelta(minutes=5), midnight),
    )
    services.purchase_record(
        integration=pos,
        external_id="B-1",
        customer_ref=bo.external_ref,
        amount=Decimal("80.00"),
        currency="DKK",
        occurred_at=now - dt.timedelta(days=40),
    )
    services.purchase_record(
        integration=pos,
        external_id="C-1",
        customer_ref=cy.external_ref,
        amount=Decimal("10.00"),
        currency="DKK",
        occurred_at=max(now - dt.timedelta(minutes=1), midnight),
    )
    reward = RewardFactory(name="Bun", cost_points=70)
    services.reward_redeem(customer=ann, reward_id=reward.pk)
    second = services.reward_redeem(customer=ann, reward_id=reward.pk, idempotency_key="2")
    services.redemption_cancel(redemption_id=second.redemption.pk)
    AnalyticsSettings.objects.create(pk=1, point_cost=Decimal("0.0500"))
    return {"ann": ann, "bo": bo, "cy": cy, "pos": pos}


def test_the_key_figures_of_a_hand_made_history(client, shop):
    # Ann: 50 + 120 − 70 − 70 + 70 = 100. Bo: 50 + 80 = 130. Outstanding 230 points.
    assert dict(PointsAccount.objects.values_list("customer_id", "balance")) == {
        shop["ann"].pk: 100,
        shop["bo"].pk: 130,
    }
    client.force_login(staff_user(roles.SUPPORT))
    html = client.get(URL).content.decode()
    assert by_testid(html, "kpi-members") == "2"
    assert by_testid(html, "kpi-active") == "2"  # Cy bought but is not a member
    # Today: the signup bonuses (50 + 50) and Ann's 120; Bo's 80 was earned 40 days ago.
    assert by_testid(html, "kpi-issued-today") == "220"
    assert "220 in the last 30 days" in html
    # Redeemed 70 + 70, one voucher cancelled (70 returned): net 70.
    assert by_testid(html, "kpi-redeemed-today") == "70"
    assert by_testid(html, "kpi-outstanding") == "230"
    # 230 points × 0.05 DKK.
    assert by_testid(html, "kpi-liability") == "11.50 DKK"
    assert "held by 2 members" in html

    weeks = client.get(URL).context["figures"]["weeks_table"]
    assert len(weeks) == 13 and not weeks[-1]["complete"]
    assert weeks[-1]["issued"] == 220 and weeks[-1]["redeemed"] == 70 and weeks[-1]["joined"] == 2
    assert weeks[-1]["active"] == 1  # Ann this week; Bo bought 40 days ago
    assert sum(w["issued"] for w in weeks) == 300 and sum(w["active"] for w in weeks) == 2


@pytest.mark.parametrize(
    "role", [roles.SUPPORT, roles.MARKETING, roles.ANALYST, roles.PROGRAM_ADMIN, "superuser"]
)
def test_every_staff_role_sees_the_dashboard(client, shop, role):
    client.force_login(staff_user(role))
    response = client.get(URL)
    assert response.status_code == 200
    # The header links to it on every admin page.
    assert f'href="{URL}"' in client.get(reverse("admin:index")).content.decode()


def test_members_and_anonymous_are_sent_to_the_admin_login(client, shop):
    assert client.get(URL)["Location"].startswith(reverse("admin:login"))
    client.force_login(UserFactory(username="shopper"))
    assert client.get(URL)["Location"].startswith(reverse("admin:login"))


def test_no_alert_when_all_is_well(client, shop):
    ledger_check()  # a clean check is recorded, no alert
    assert LedgerCheck.objects.get().violations == 0
    client.force_login(staff_user("superuser"))
    response = client.get(URL)
    assert response.context["alerts"] == []
    assert "No alerts" in by_testid(response.content.decode(), "alerts")


def test_a_failed_delivery_is_an_alert_with_a_link(client, shop):
    campaign = campaign_make(name="Autumn")
    Delivery.objects.create(
        campaign=campaign,
        customer=shop["ann"],
        occurrence="once",
        channel="email",
        status=Delivery.Status.FAILED,
        due_at=timezone.now(),
        claimed_at=timezone.now(),
        reason="550 no such mailbox",
    )
    client.force_login(staff_user(roles.SUPPORT))
    html = client.get(URL).content.decode()
    assert "1 campaign delivery failed in the last 7 days." in html
    assert "550 no such mailbox" in html
    assert reverse("admin:campaigns_delivery_changelist") + "?status__exact=failed" in html


def test_a_periodic_task_that_did_not_run_is_an_alert(client, shop):
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="campaigns-dispatch",
        task="campaigns.dispatch",
        interval=every_minute,
        last_run_at=timezone.now() - dt.timedelta(seconds=30),
    )
    client.force_login(staff_user("superuser"))
    assert client.get(URL).context["alerts"] == []

    PeriodicTask.objects.filter(name="campaigns-dispatch").update(
        last_run_at=timezone.now() - dt.timedelta(hours=2)
    )
    html = client.get(URL).content.decode()
    assert "1 scheduled job did not run on time." in html
    assert "campaigns-dispatch (campaigns.dispatch)" in html
    # A disabled job is not late.
    PeriodicTask.objects.filter(name="campaigns-dispatch").update(enabled=False)
    assert client.get(URL).context["alerts"] == []


def test_a_daily_crontab_job_two_days_late_is_an_alert(client, shop):
    from django_celery_beat.models import CrontabSchedule

    nightly = CrontabSchedule.objects.create(minute="30", hour="3", timezone="Europe/Copenhagen")
    PeriodicTask.objects.create(
        name="ledger-check-daily",
        task="rewards.ledger_check",
        crontab=nightly,
        last_run_at=timezone.now() - dt.timedelta(days=3),
    )
    client.force_login(staff_user("superuser"))
    assert "ledger-check-daily (rewards.ledger_check)" in client.get(URL).content.decode()
    PeriodicTask.objects.filter(name="ledger-check-daily").update(last_run_at=timezone.now())
    assert client.get(URL).context["alerts"] == []


def test_a_missing_beat_heartbeat_is_an_alert(client, shop):
    cache.delete(HEARTBEAT_CACHE_KEY)
    client.force_login(staff_user("superuser"))
    assert "The scheduler&#x27;s heartbeat is missing." in client.get(URL).content.decode()
    cache.set(HEARTBEAT_CACHE_KEY, (timezone.now() - dt.timedelta(minutes=20)).isoformat())
    assert "last heartbeat was 20 minutes ago" in client.get(URL).content.decode()


def test_a_failing_integration_is_recorded_by_the_api_and_alerted(client, shop):
    _integration, token = services.integration_token_create(name="web shop")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    # A member's own refusal is an answer, not a failure of the integration.
    response = client.get("/api/v1/customers/NOBODY", **auth)
    assert response.status_code == 404
    ok = client.post(
        "/api/v1/purchases",
        data=json.dumps(
            {
                "external_id": "W-1",
                "customer": shop["ann"].external_ref,
                "amount": "10.00",
                "currency": "DKK",
                "occurred_at": timezone.now().isoformat(),
            }
        ),
        content_type="application/json",
        **auth,
    )
    assert ok.status_code == 201
    integration = Integration.objects.get(name="web shop")
    assert integration.failed_calls == 0

    client.force_login(staff_user("superuser"))
    assert client.get(URL).context["alerts"] == []

    bad = client.post("/api/v1/purchases", data="{not json", content_type="application/json", **auth)
    assert bad.status_code == 400
    invalid = client.post(
        "/api/v1/purchases", data=json.dumps({"external_id": "W-2"}), content_type="application/json", **auth
    )
    assert invalid.status_code == 400
    integration.refresh_from_db()
    assert integration.failed_calls == 2 and integration.last_failure.startswith("invalid: ")
    assert integration.last_failure_at is not None

    html = client.get(URL).content.decode()
    assert "1 integration had failed API calls in the last 24 hours." in html
    assert "web shop: 2 failed calls in all" in html
    # A day later, with no new failure, the alert is gone.
    Integration.objects.filter(pk=integration.pk).update(
        last_failure_at=timezone.now() - dt.timedelta(days=2)
    )
    assert client.get(URL).context["alerts"] == []


def test_a_ledger_check_failure_is_recorded_and_alerted(client, shop):
    from django.db import connection

    ledger_check()
    client.force_login(staff_user("superuser"))
    assert client.get(URL).context["alerts"] == []

    # Break Ann's balance behind the ledger's back (what the check exists to catch).
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE rewards_pointsaccount SET balance = balance + 7 WHERE customer_id = %s", [shop["ann"].pk]
        )
    ledger_check()
    check = LedgerCheck.objects.order_by("-id").first()
    assert check.violations == 1 and check.details[0]["customer_id"] == shop["ann"].pk
    html = client.get(URL).content.decode()
    assert "found 1 account in error" in html
    assert f"customer {shop['ann'].pk}: balance 107 != sum of entries 100" in html


def test_the_dashboard_has_no_inline_style_or_script_and_draws_svg(client, shop):
    client.force_login(staff_user(roles.ANALYST))
    html = client.get(URL).content.decode()
    assert "style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert html.count('class="an-svg"') == 4 and "<title" in html and "/static/css/staff.css" in html


def test_the_dashboard_reads_with_a_few_queries(client, shop, django_assert_max_num_queries):
    user = staff_user(roles.SUPPORT)
    client.force_login(user)
    client.get(URL)
    with django_assert_max_num_queries(20):
        client.get(URL)
