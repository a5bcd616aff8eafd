"""The member portal's pages: joining, balance, history, rewards and vouchers, referrals.
Every page is scoped to the signed-in member: another member's objects answer 404."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import Customer, User
from rewards.models import LedgerEntry, Redemption
from rewards.services import customer_enroll, purchase_record, reward_redeem
from tests.factories import CustomerFactory, RewardFactory, TierFactory, program_rules_set

PASSWORD = "Brave-otter-2026"

MEMBER_PAGES = [
    ("portal-home", []),
    ("portal-history", []),
    ("portal-catalog", []),
    ("portal-vouchers", []),
    ("portal-referral", []),
    ("profile", []),
    ("inbox", []),
    ("my-data", []),
    ("closure-request", []),
]


def member_with_login(*, email="anna@example.com", confirmed=True, **customer_fields):
    user = User.objects.create_user(username=email, email=email, password=PASSWORD)
    if confirmed:
        user.email_confirmed_at = timezone.now()
        user.save()
    customer, _ = customer_enroll(customer=CustomerFactory(email=email, user=user, **customer_fields))
    return customer


def buy(customer, integration, amount, external_id, *, days_ago=0):
    return purchase_record(
        integration=integration,
        external_id=external_id,
        customer_ref=customer.external_ref,
        amount=Decimal(amount),
        currency="DKK",
        occurred_at=timezone.now() - dt.timedelta(days=days_ago),
        lines=[],
    )


@pytest.fixture
def anna(program):
    return member_with_login()


@pytest.fixture
def anna_client(client, anna):
    client.force_login(anna.user)
    return client


# --- Anonymous visitors ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args"), MEMBER_PAGES)
def test_member_pages_send_anonymous_visitors_to_login(client, db, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_public_pages_render_for_anonymous_visitors(client, program):
    for url in ("/", reverse("login"), reverse("signup"), reverse("password_reset")):
        response = client.get(url)
        assert response.status_code == 200, url


# --- Joining ------------------------------------------------------------------------------


def signup_data(**overrides):
    data = {
        "first_name": "Mette",
        "last_name": "Holm",
        "email": "Mette.Holm@Example.com",
        "password1": PASSWORD,
        "password2": PASSWORD,
        "card_number": "",
        "referral_code": "",
        "language": "da",
        "marketing_consent": "on",
    }
    data.update(overrides)
    return data


def test_signup_creates_a_member_with_the_bonus_and_mails_a_confirmation(client, program, smtp_server):
    response = client.post(reverse("signup"), signup_data(), follow=True)
    assert response.status_code == 200
    customer = Customer.objects.get(email="mette.holm@example.com")
    assert customer.is_member and customer.user.username == "mette.holm@example.com"
    assert customer.marketing_consent and customer.marketing_consent_changed_at
    assert customer.language == "da"
    assert customer.points_account.balance == 50
    assert "50" in response.content.decode()
    # Confirmation through the link in the real mail.
    link = smtp_server.link("/confirm/")
    assert smtp_server.messages[-1]["To"] == "mette.holm@example.com"
    client.get(link)
    customer.user.refresh_from_db()
    assert customer.user.email_confirmed_at is not None


def test_signup_with_the_mail_server_down_keeps_the_account_and_says_so(client, program, settings):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    response = client.post(reverse("signup"), signup_data(language="en"), follow=True)
    assert response.status_code == 200
    assert "We could not send the confirmation email just now" in response.content.decode()
    customer = Customer.objects.get(email="mette.holm@example.com")
    assert customer.is_member and customer.points_account.balance == 50
    resend = client.post(reverse("confirmation-resend"), {"next": reverse("portal-home")}, follow=True)
    assert resend.status_code == 200
    assert "We could not send the confirmation email just now" in resend.content.decode()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"password2": "Other-otter-2026"}, "password2", "The two passwords differ."),
        ({"password1": "12345678", "password2": "12345678"}, "password1", "too common"),
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"referral_code": "NOPE1234"}, "referral_code", "We do not know this referral code"),
        ({"first_name": ""}, "first_name", "required"),
    ],
)
def test_signup_shows_errors_next_to_the_field(client, program, overrides, field, message):
    response = client.post(reverse("signup"), signup_data(**overrides))
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors
    assert message in " ".join(form.errors[field])
    assert not User.objects.filter(username="mette.holm@example.com").exists()


def test_signup_refuses_an_email_in_use_whatever_its_case(client, anna):
    response = client.post(reverse("signup"), signup_data(email="ANNA@example.com"))
    assert "exists already" in " ".join(response.context["form"].errors["email"])
    assert User.objects.filter(email__iexact="anna@example.com").count() == 1


def test_signup_with_a_referral_code_links_the_friend(client, anna, smtp_server):
    client.post(reverse("signup"), signup_data(referral_code=anna.referral_code.lower()))
    friend = Customer.objects.get(email="mette.holm@example.com")
    assert friend.referred_by == anna


def test_signup_page_prefills_the_code_of_a_referral_link(client, anna):
    response = client.get(reverse("signup") + f"?ref={anna.referral_code}")
    assert response.context["form"].initial["referral_code"] == anna.referral_code


def test_a_shopper_links_their_card_after_confirming_the_email(client, program, integration, smtp_server):
    shopper = CustomerFactory(email="ole@example.com", external_ref="POS-7781")
    buy(shopper, integration, "300", "old-1", days_ago=40)
    response = client.post(
        reverse("signup"), signup_data(email="ole@example.com", card_number="POS-7781"), follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("portal-pending")
    shopper.refresh_from_db()
    assert shopper.user is None and not shopper.is_member  # nothing happens before the confirmation
    client.get(smtp_server.link("/confirm/"))
    shopper.refresh_from_db()
    assert shopper.user.email == "ole@example.com" and shopper.is_member
    assert shopper.points_account.balance == 50
    response = client.get(reverse("portal-home"))
    assert response.status_code == 200 and "POS-7781" in response.content.decode()


def test_linking_a_card_needs_the_address_the_shop_knows(client, program):
    CustomerFactory(email="ole@example.com", external_ref="POS-7781")
    response = client.post(
        reverse("signup"), signup_data(email="someone@example.com", card_number="POS-7781")
    )
    assert "email address you gave in the shop" in " ".join(response.context["form"].errors["email"])
    response = client.post(reverse("signup"), signup_data(card_number="NO-SUCH-CARD"))
    assert "No card with this number" in " ".join(response.context["form"].errors["card_number"])
    assert not User.objects.exists()


def test_a_tampered_confirmation_link_is_refused(client, db):
    response = client.get(reverse("confirm-email", args=["not-a-token"]))
    assert response.status_code == 400


# --- Home, history ---------------------------------------------------------------------------


def test_home_shows_balance_tier_progress_expiring_points_and_card(anna_client, anna, integration):
    buy(anna, integration, "1234.50", "p-1", days_ago=715)  # expires within 30 days (24 months)
    response = anna_client.get(reverse("portal-home"))
    body = response.content.decode()
    assert response.context["account"].balance == 1284
    assert re.search(r"1,284", body)
    assert response.context["expiring"] == 1234
    assert response.context["progress"]["next_tier"].code == "silver"
    assert "Bronze" in body and anna.external_ref in body and "<svg" in body


def test_home_shows_a_points_debt(anna_client, anna, integration):
    from rewards.services import purchase_refund

    buy(anna, integration, "500", "p-1")
    reward = RewardFactory(cost_points=540)
    reward_redeem(customer=anna, reward_id=reward.pk)
    purchase_refund(
        integration=integration, purchase_external_id="p-1", refund_id="r-1", amount=Decimal("500")
    )
    response = anna_client.get(reverse("portal-home"))
    assert response.context["debt"] == 490  # 550 − 540 redeemed − 500 clawed back
    assert "Points debt" in response.content.decode()


def test_history_explains_every_entry_and_filters_by_kind(anna_client, anna, integration):
    buy(anna, integration, "60", "p-1")
    response = anna_client.get(reverse("portal-history"))
    body = response.content.decode()
    assert "60 pts: 60 × 1 base" in body
    assert "Welcome bonus for joining" in body
    response = anna_client.get(reverse("portal-history") + "?kind=earn")
    assert [e.kind for e in response.context["page"].object_list] == ["earn"]
    response = anna_client.get(reverse("portal-history") + "?kind=bogus&page=99")
    assert response.status_code == 200


def test_history_is_paginated(anna_client, anna, integration):
    for i in range(25):
        buy(anna, integration, "10", f"p-{i}")
    first = anna_client.get(reverse("portal-history"))
    second = anna_client.get(reverse("portal-history") + "?page=2")
    assert len(first.context["page"].object_list) == 20
    assert len(second.context["page"].object_list) == 6
    assert "Page 2 of 2" in second.content.decode()


# --- Rewards and vouchers -------------------------------------------------------------------


def test_catalog_lists_affordable_rewards_first_and_says_what_locked_ones_need(anna_client, anna):
    gold = TierFactory(code="gold")
    RewardFactory(name="Espresso", cost_points=40)
    RewardFactory(name="Tote bag", cost_points=500)
    RewardFactory(name="Gold lounge", cost_points=10, min_tier=gold)
    response = anna_client.get(reverse("portal-catalog"))
    items = response.context["items"]
    assert [i["reward"].name for i in items] == ["Espresso", "Gold lounge", "Tote bag"]
    assert items[0]["can_redeem"] and items[2]["missing_points"] == 450
    body = response.content.decode()
    assert "450 more points needed" in body and "For Gold members" in body


def test_redeem_flow_confirms_then_shows_the_voucher_and_its_qr_code(anna_client, anna):
    reward = RewardFactory(name="Espresso", cost_points=40)
    page = anna_client.get(reverse("portal-reward", args=[reward.pk]))
    key = page.context["key"]
    assert "Confirm: redeem for 40 points" in page.content.decode()
    response = anna_client.post(reverse("portal-reward", args=[reward.pk]), {"key": key}, follow=True)
    redemption = Redemption.objects.get(customer=anna)
    assert response.redirect_chain[-1][0] == reverse("portal-voucher", args=[redemption.voucher_code])
    body = response.content.decode()
    assert redemption.voucher_code in body and "<svg" in body
    # The same form sent again (a double click) redeems once.
    anna_client.post(reverse("portal-reward", args=[reward.pk]), {"key": key})
    assert Redemption.objects.filter(customer=anna).count() == 1
    anna.points_account.refresh_from_db()
    assert anna.points_account.balance == 10


def test_redeeming_needs_a_confirmed_email(client, program):
    customer = member_with_login(email="new@example.com", confirmed=False)
    client.force_login(customer.user)
    reward = RewardFactory(cost_points=40)
    response = client.post(reverse("portal-reward", args=[reward.pk]), {"key": "a" * 32}, follow=True)
    assert "confirm your email" in response.content.decode()
    assert not Redemption.objects.exists()


def test_redeeming_without_enough_points_says_so(anna_client, anna):
    reward = RewardFactory(cost_points=400)
    response = anna_client.post(reverse("portal-reward", args=[reward.pk]), {"key": "b" * 32}, follow=True)
    assert "not have enough points" in response.content.decode()
    assert not Redemption.objects.exists()


def test_vouchers_list_shows_states(anna_client, anna):
    used = reward_redeem(customer=anna, reward_id=RewardFactory(name="Cake", cost_points=10).pk).redemption
    Redemption.objects.filter(pk=used.pk).update(state="used", used_at=timezone.now())
    reward_redeem(customer=anna, reward_id=RewardFactory(name="Tea", cost_points=10).pk)
    body = anna_client.get(reverse("portal-vouchers")).content.decode()
    assert "ready to use" in body and "used" in body and "Cake" in body and "Tea" in body


def test_a_voucher_past_its_validity_shows_expired_without_its_qr_code(anna_client, anna):
    # Before the nightly job has expired it: still "issued" in the database, not usable at the till.
    reward = RewardFactory(name="Cake", cost_points=10, validity_days=30)
    voucher = reward_redeem(customer=anna, reward_id=reward.pk).redemption
    page = reverse("portal-voucher", args=[voucher.voucher_code])
    assert "<svg" in anna_client.get(page).content.decode()
    Redemption.objects.filter(pk=voucher.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    body = anna_client.get(page).content.decode()
    assert "expired" in body and "<svg" not in body and "at the till" not in body
    assert voucher.voucher_code in body  # the code stays on the page, for a question to the shop


def test_another_members_voucher_and_unknown_rewards_are_404(anna_client, program):
    bo = member_with_login(email="bo@example.com")
    voucher = reward_redeem(customer=bo, reward_id=RewardFactory(cost_points=10).pk).redemption
    assert anna_client.get(reverse("portal-voucher", args=[voucher.voucher_code])).status_code == 404
    assert anna_client.get(reverse("portal-voucher", args=["AAAA-BBBB-CCCC"])).status_code == 404
    assert anna_client.get(reverse("portal-reward", args=[999999])).status_code == 404
    inactive = RewardFactory(cost_points=10, is_active=False)
    assert anna_client.get(reverse("portal-reward", args=[inactive.pk])).status_code == 404


# --- Referral ------------------------------------------------------------------------------


def test_referral_page_shows_link_code_and_what_friends_earned(anna_client, anna, integration):
    program_rules_set(referral_bonus_referrer=100, referral_bonus_referee=25)
    friend, _ = customer_enroll(customer=CustomerFactory(), referral_code=anna.referral_code)
    buy(friend, integration, "100", "f-1")
    response = anna_client.get(reverse("portal-referral"))
    assert response.context["summary"]["joined"] == 1
    assert response.context["summary"] == {"joined": 1, "rewarded": 1, "points": 100}
    body = response.content.decode()
    assert f"http://testserver/join/?ref={anna.referral_code}" in body


# --- Shoppers and staff without membership ------------------------------------------------


def test_a_login_without_a_card_sees_the_pending_page(client, db):
    user = User.objects.create_user(
        username="waiting@example.com", email="waiting@example.com", password=PASSWORD
    )
    client.force_login(user)
    response = client.get(reverse("portal-home"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("portal-pending")


def test_a_shopper_with_a_login_can_join_with_one_click(client, program):
    user = User.objects.create_user(username="s@example.com", email="s@example.com", password=PASSWORD)
    shopper = CustomerFactory(user=user)
    client.force_login(user)
    assert "not a member yet" in client.get(reverse("portal-home")).content.decode()
    client.post(reverse("portal-join"))
    shopper.refresh_from_db()
    assert shopper.is_member
    assert LedgerEntry.objects.filter(account_id=shopper.pk).count() == 1


def test_a_gifted_voucher_says_it_was_a_gift_not_redeemed_for_points(anna_client, anna):
    from rewards.services import voucher_gift

    gift = voucher_gift(customer=anna, reward_id=RewardFactory(name="Cake").pk, key="campaign:3")
    body = anna_client.get(reverse("portal-voucher", args=[gift.voucher_code])).content.decode()
    assert "A gift from us, given" in body and "for 0 points" not in body
    anna_client.post(reverse("set_language"), {"language": "da"})
    danish = anna_client.get(reverse("portal-voucher", args=[gift.voucher_code])).content.decode()
    assert "En gave fra os, givet" in danish
