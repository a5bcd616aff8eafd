"""The customer 360 page (loyalty_site/staff.py): a hand-made history and its figures, who may
open it, the actions each role is offered (and that the server still refuses), a query
budget that does not grow with the history, and the page in Chromium."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import roles
from accounts.models import AuditEntry, Customer
from analytics.models import AnalyticsRun, CustomerScore, Survey, SurveyResponse
from campaigns.models import Click, Delivery, InboxMessage
from rewards import services
from rewards.models import LedgerEntry, Redemption
from tests.factories import CustomerFactory, IntegrationFactory, RewardFactory, UserFactory, campaign_make

pytestmark = pytest.mark.django_db

ROLE_GROUPS = {
    "support": roles.SUPPORT,
    "marketing": roles.MARKETING,
    "analyst": roles.ANALYST,
    "programadmin": roles.PROGRAM_ADMIN,
}


def staff_user(role: str):
    if role == "superuser":
        return UserFactory(username="root", is_staff=True, is_superuser=True)
    user = UserFactory(username=role, is_staff=True)
    user.groups.add(Group.objects.get(name=ROLE_GROUPS[role]))
    return user


def url_360(customer) -> str:
    return reverse("staff-customer-360", args=[customer.pk])


def text_of(response) -> str:
    """The page's visible text, one space between words."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def by_testid(response, name: str) -> str:
    match = re.search(rf'data-testid="{name}"[^>]*>(.*?)</', response.content.decode(), flags=re.S)
    assert match, f"no data-testid={name}"
    return match.group(1).strip()


def history(program, *, purchases: int = 2, deliveries: int = 2) -> dict:
    """A member with a hand-checkable history.

    Signup bonus +50 (now); purchase of 300.00 (+300); purchase of 200.00 (+200) refunded 100.00
    (−100); Coffee for 100 points (voucher issued); Cake for 50 points (voucher used); a
    support correction of +25. Balance 325; qualifying spend 400.00, 1600.00 short of Silver
    (2000.00): 20 %.
    """
    pos = IntegrationFactory(name="pos")
    customer = CustomerFactory(
        first_name="Mette",
        last_name="Holm",
        email="mette@example.com",
        marketing_consent=True,
        marketing_consent_changed_at=dt.datetime(2026, 3, 4, 10, 0, tzinfo=dt.UTC),
    )
    customer, _ = services.customer_enroll(customer=customer)
    now = timezone.now()
    services.purchase_record(
        integration=pos,
        external_id=f"{customer.external_ref}-R-1",
        customer_ref=customer.external_ref,
        amount=Decimal("300.00"),
        currency="DKK",
        occurred_at=now - dt.timedelta(days=2),
    )
    services.purchase_record(
        integration=pos,
        external_id=f"{customer.external_ref}-R-2",
        customer_ref=customer.external_ref,
        amount=Decimal("200.00"),
        currency="DKK",
        occurred_at=now - dt.timedelta(days=1),
    )
    services.purchase_refund(
        integration=pos,
        purchase_external_id=f"{customer.external_ref}-R-2",
        refund_id=f"{customer.external_ref}-RF-1",
        amount=Decimal("100.00"),
    )
    # More purchases (1.00, one point each) for the query budget.
    for i in range(purchases - 2):
        services.purchase_record(
            integration=pos,
            external_id=f"{customer.external_ref}-X-{i}",
            customer_ref=customer.external_ref,
            amount=Decimal("1.00"),
            currency="DKK",
            occurred_at=now - dt.timedelta(days=30, minutes=i),
        )
    coffee = RewardFactory(name="Coffee", cost_points=100)
    cake = RewardFactory(name="Cake", cost_points=50)
    issued = services.reward_redeem(customer=customer, reward_id=coffee.pk).redemption
    used = services.reward_redeem(customer=customer, reward_id=cake.pk).redemption
    services.voucher_use(code=used.voucher_code)
    clerk = UserFactory(username="clerk", is_staff=True)
    services.points_adjust(customer=customer, points=25, reason="Goodwill for a late order", staff_user=clerk)

    campaign = campaign_make(name="Autumn", attribution_days=7)
    sent = Delivery.objects.create(
        campaign=campaign,
        customer=customer,
        occurrence="once",
        channel="email",
        status=Delivery.Status.SENT,
        due_at=now - dt.timedelta(days=3),
        sent_at=now - dt.timedelta(days=3),
    )
    Click.objects.create(delivery=sent, url="https://shop.example/")
    Click.objects.create(delivery=sent, url="https://shop.example/b")
    other = campaign_make(name="Winter")
    Delivery.objects.create(
        campaign=other,
        customer=customer,
        occurrence="once",
        channel="email",
        status=Delivery.Status.FAILED,
        due_at=now,
        reason="550 mailbox unavailable",
    )
    for i in range(deliveries - 2):
        extra = Delivery.objects.create(
            campaign=other,
            customer=customer,
            occurrence=f"r-{i}",
            channel="email",
            status=Delivery.Status.SENT,
            due_at=now - dt.timedelta(days=60),
            sent_at=now - dt.timedelta(days=60),
        )
        Click.objects.create(delivery=extra, url="https://shop.example/x")
    InboxMessage.objects.create(customer=customer, subject="Sorry about your order", body="…")
    survey = Survey.objects.create(name="Store NPS", kind="nps", question="Recommend us?")
    SurveyResponse.objects.create(
        survey=survey, customer=customer, score=9, comment="Great coffee", answered_at=now
    )
    return {"customer": customer, "issued": issued, "used": used, "clerk": clerk}


@pytest.fixture
def world(program):
    return history(program)


def test_the_360_page_shows_the_hand_made_history(client, world):
    customer = world["customer"]
    client.force_login(staff_user("support"))
    response = client.get(url_360(customer))
    assert response.status_code == 200
    page = text_of(response)

    assert by_testid(response, "balance") == "325"
    assert by_testid(response, "debt") == "0"
    assert by_testid(response, "tier") == "Bronze"
    assert response.context["progress"]["qualifying_spend"] == Decimal("400.00")
    assert response.context["progress"]["percent"] == 20
    assert "1,600.00 DKK more to reach Silver" in page
    assert "Given on" in by_testid(response, "consent")
    assert "3 purchases" not in page and "2 purchases, 500.00 DKK, of which 100.00 refunded." in page
    assert "100.00 on" in page and "(100 points back)" in page

    # The ledger, newest first, with its explanations and the correction's author and reason.
    kinds = [row["entry"].kind for row in response.context["ledger_rows"]]
    assert kinds == ["adjust", "redeem", "redeem", "clawback", "bonus", "earn", "earn"]
    assert "clerk: Goodwill for a late order" in page
    assert "300.00 × 1 = 300 base points" in page or "300" in page

    # Vouchers with their states.
    assert world["issued"].voucher_code in page and world["used"].voucher_code in page
    assert re.search(r"Coffee 100 issued", page) and re.search(r"Cake 50 used", page)

    # Messages and their results: 2 clicks, converted by the purchase a day later; a failure.
    deliveries = {d.campaign.name: d for d in response.context["deliveries"]}
    assert deliveries["Autumn"].click_count == 2 and deliveries["Autumn"].converted is True
    assert deliveries["Winter"].converted is None and "550 mailbox unavailable" in page
    assert "yes (within 7 days)" in page
    assert "Sorry about your order" in page

    assert "Store NPS" in page and "Great coffee" in page
    assert by_testid(response, "scores") == "Not computed yet: no analytics run has finished."


def test_the_scores_of_the_latest_run_are_shown(client, world):
    customer = world["customer"]
    run = AnalyticsRun.objects.create(as_of=dt.date(2026, 11, 1), status=AnalyticsRun.Status.DONE)
    CustomerScore.objects.create(
        run=run,
        customer=customer,
        is_member=True,
        first_day=dt.date(2026, 10, 1),
        last_day=dt.date(2026, 10, 20),
        purchase_days=2,
        frequency=1,
        recency=19,
        age=31,
        net_revenue=Decimal("400.00"),
        historical_clv=Decimal("120.00"),
        p_alive=0.87,
        expected_90=1.25,
        predicted_clv=Decimal("345.60"),
        rfm_r=5,
        rfm_f=3,
        rfm_m=4,
        rfm_score=12,
        churn_risk=CustomerScore.Risk.MEDIUM,
    )
    client.force_login(staff_user("programadmin"))
    response = client.get(url_360(customer))
    page = text_of(response)
    assert "0.87" in page and "1.25" in page and "345.60 DKK" in page
    assert "534" in page and "total 12" in page
    assert by_testid(response, "churn-risk") == "medium"

    # A later run that did not score this customer: said so, not the old numbers.
    AnalyticsRun.objects.create(as_of=dt.date(2026, 11, 2), status=AnalyticsRun.Status.DONE)
    page = text_of(client.get(url_360(customer)))
    assert "Not scored in the latest analytics run" in page and "345.60" not in page


@pytest.mark.parametrize(
    ("role", "status"),
    [("support", 200), ("programadmin", 200), ("superuser", 200), ("marketing", 403), ("analyst", 403)],
)
def test_who_may_open_the_360_page(client, world, role, status):
    client.force_login(staff_user(role))
    assert client.get(url_360(world["customer"])).status_code == status


def test_anonymous_and_members_are_sent_to_the_admin_login(client, world):
    response = client.get(url_360(world["customer"]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    client.force_login(UserFactory(username="shopper"))
    response = client.get(url_360(world["customer"]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_an_unknown_customer_is_404(client, world):
    client.force_login(staff_user("support"))
    missing = (Customer.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    assert client.get(reverse("staff-customer-360", args=[missing])).status_code == 404


def test_actions_are_offered_to_permitted_roles_only(client, world):
    customer = world["customer"]
    customer.user = UserFactory(username="mette", email="mette@example.com")
    customer.save()
    for role in ("support", "programadmin", "superuser"):
        client.force_login(staff_user(role))
        html = client.get(url_360(customer)).content.decode()
        for action in ("adjust-points", "resend-confirmation", f"cancel-{world['issued'].pk}"):
            assert f'data-testid="{action}"' in html, (role, action)
        assert f'data-testid="mark-used-{world["issued"].pk}"' in html
        # Only issued vouchers can be cancelled or used.
        assert f'data-testid="cancel-{world["used"].pk}"' not in html

    # A desk that may look but not act: the page, no buttons ...
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label__in=["accounts", "rewards"],
            codename__in=["view_customer", "view_ledgerentry", "view_redemption"],
        )
    )
    client.force_login(viewer)
    html = client.get(url_360(customer)).content.decode()
    assert 'data-testid="actions"' not in html and "cancel_vouchers" not in html and "mark_used" not in html
    # ... and the admin's own views refuse what a forged request asks.
    client.post(
        reverse("admin:rewards_redemption_changelist"),
        {"action": "cancel_vouchers", "_selected_action": [world["issued"].pk], "index": 0},
    )
    world["issued"].refresh_from_db()
    assert world["issued"].state == Redemption.State.ISSUED
    response = client.get(reverse("admin:accounts_customer_adjust_points", args=[customer.pk]))
    assert response.status_code == 403


def test_the_buttons_post_to_the_admin_actions_that_do_the_work(client, world):
    client.force_login(staff_user("support"))
    html = client.get(url_360(world["customer"])).content.decode()
    form = re.search(
        rf'<form method="post" action="([^"]+)">(?:(?!</form>).)*'
        rf'value="{world["issued"].pk}"(?:(?!</form>).)*'
        rf'data-testid="cancel-{world["issued"].pk}"',
        html,
        flags=re.S,
    )
    assert form, "a cancel form for the issued voucher"
    action = form.group(1).replace("&amp;", "&")
    response = client.post(
        action, {"action": "cancel_vouchers", "_selected_action": [world["issued"].pk], "index": 0}
    )
    assert response.status_code == 302
    world["issued"].refresh_from_db()
    assert world["issued"].state == Redemption.State.CANCELLED
    assert AuditEntry.objects.filter(action=AuditEntry.Action.CANCEL_REDEMPTION).count() == 1


def test_adjusting_from_the_360_page_returns_to_it(client, world):
    customer = world["customer"]
    client.force_login(staff_user("support"))
    adjust = re.search(
        r'href="([^"]+)" data-testid="adjust-points"', client.get(url_360(customer)).content.decode()
    )
    target = adjust.group(1).replace("&amp;", "&")
    page = client.get(target)
    key = page.context["form"].initial["idempotency_key"]
    response = client.post(target, {"points": "40", "reason": "Missing receipt", "idempotency_key": key})
    assert response.status_code == 302 and response["Location"] == url_360(customer)
    response = client.get(url_360(customer))
    assert by_testid(response, "balance") == "365"
    assert "Missing receipt" in by_testid(response, "audit") or "Missing receipt" in text_of(response)
    # An outside address in `next` is ignored.
    evil = (
        reverse("admin:accounts_customer_adjust_points", args=[customer.pk]) + "?next=https://evil.example/"
    )
    key = client.get(evil).context["form"].initial["idempotency_key"]
    response = client.post(evil, {"points": "1", "reason": "x", "idempotency_key": key})
    assert response["Location"] == reverse("admin:accounts_customer_change", args=[customer.pk])


def test_the_ledger_is_paginated(client, world):
    customer = world["customer"]
    clerk = world["clerk"]
    for i in range(30):
        services.points_adjust(customer=customer, points=1, reason=f"tick {i}", staff_user=clerk)
    client.force_login(staff_user("support"))
    first = client.get(url_360(customer))
    assert len(first.context["ledger_rows"]) == 25 and "Page 1 of 2 (37 entries)" in text_of(first)
    second = client.get(url_360(customer) + "?page=2")
    # The oldest entry: the first purchase (entries of a purchase carry its time).
    assert [r["entry"].kind for r in second.context["ledger_rows"]][-1] == "earn"
    assert len(second.context["ledger_rows"]) == 12


def test_the_page_has_no_inline_style_or_script(client, world):
    client.force_login(staff_user("support"))
    html = client.get(url_360(world["customer"])).content.decode()
    assert "style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert "/static/css/staff.css" in html


def _queries(client, customer) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url_360(customer))
    assert response.status_code == 200
    return len(queries)


def test_the_query_count_does_not_grow_with_the_history(client, program, django_assert_max_num_queries):
    small = history(program)["customer"]
    user = staff_user("support")
    client.force_login(user)
    _queries(client, small)  # warm the per-process caches (rules, content types)
    few = _queries(client, small)

    big_world = history(program, purchases=60, deliveries=40)
    big = big_world["customer"]
    for i in range(80):
        services.points_adjust(customer=big, points=1, reason=f"tick {i}", staff_user=big_world["clerk"])
    assert LedgerEntry.objects.filter(account_id=big.pk).count() > 130
    with django_assert_max_num_queries(few):
        client.get(url_360(big))
    assert few <= 30, few


# --- In the browser ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_support_finds_a_customer_by_voucher_and_adjusts_points_in_chromium(page, live_server, program):
    world = history(program)
    support = staff_user("support")
    support.set_password("Support-pass-2026")
    support.save()
    csp_errors = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill("support")
    page.get_by_label("Password").fill("Support-pass-2026")
    page.get_by_role("button", name="Log in").click()

    page.goto(f"{live_server.url}{reverse('admin:accounts_customer_changelist')}")
    page.locator("#searchbar").fill(world["issued"].voucher_code)
    page.locator("#searchbar").press("Enter")
    page.get_by_role("link", name="Customer 360").click()
    assert page.get_by_role("heading", name=re.compile("Mette Holm")).is_visible()
    assert page.get_by_test_id("balance").inner_text().strip() == "325"

    page.get_by_test_id("adjust-points").click()
    page.get_by_label("Points").fill("-30")
    page.get_by_label("Reason").fill("Double-counted receipt R-1")
    page.get_by_role("button", name="Record the adjustment").click()

    page.wait_for_url(re.compile(r"/360/"))
    assert page.get_by_test_id("balance").inner_text().strip() == "295"
    audit = page.get_by_test_id("audit").inner_text()
    assert "support" in audit and "points adjusted" in audit and "Double-counted receipt R-1" in audit
    assert not csp_errors
