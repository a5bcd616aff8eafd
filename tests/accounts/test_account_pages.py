"""Sign-in, lockout, password reset, the profile, consent, data download, closure, language."""

import datetime as dt
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import Customer
from campaigns.models import InboxMessage
from tests.rewards.test_portal import PASSWORD, member_with_login


@pytest.fixture
def anna(program):
    return member_with_login(email="anna@example.com", language="en")


def login(client, email, password, **extra):
    return client.post(reverse("login"), {"username": email, "password": password}, **extra)


# --- Signing in -------------------------------------------------------------------------------


def test_members_log_in_with_their_email_in_any_case(client, anna):
    response = login(client, "ANNA@Example.com", PASSWORD)
    assert response.status_code == 302 and response["Location"] == reverse("portal-home")
    assert client.get(reverse("portal-home")).status_code == 200


def test_a_login_named_otherwise_signs_in_with_its_email_too(client, anna):
    """The demo's member (login "customer") and staff sign in with their address as well."""
    anna.user.username = "customer"
    anna.user.save(update_fields=["username"])
    response = login(client, "Anna@example.com", PASSWORD)
    assert response.status_code == 302 and response["Location"] == reverse("portal-home")


def test_a_wrong_password_says_so_on_the_form(client, anna):
    response = login(client, "anna@example.com", "wrong-password")
    assert response.status_code == 200
    assert "correct" in " ".join(response.context["form"].non_field_errors())


def test_logout_needs_a_post_and_ends_the_session(client, anna):
    client.force_login(anna.user)
    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))
    assert client.get(reverse("portal-home")).status_code == 302


def test_an_account_is_locked_after_five_failures_even_from_new_addresses(client, anna):
    for i in range(5):
        login(client, "anna@example.com", "wrong", REMOTE_ADDR=f"10.0.0.{i}")
    response = login(client, "anna@example.com", PASSWORD, REMOTE_ADDR="10.0.1.1")
    assert response.status_code == 429
    assert "Too many attempts" in response.content.decode()


def test_an_address_is_locked_after_five_failures_across_accounts(client, anna):
    for i in range(5):
        login(client, f"nobody{i}@example.com", "wrong", REMOTE_ADDR="10.9.9.9")
    assert login(client, "anna@example.com", PASSWORD, REMOTE_ADDR="10.9.9.9").status_code == 429
    assert login(client, "anna@example.com", PASSWORD, REMOTE_ADDR="10.9.9.10").status_code == 302


def test_password_reset_by_email_through_smtp(client, anna, smtp_server):
    response = client.post(reverse("password_reset"), {"email": "Anna@Example.com"})
    assert response.status_code == 302
    link = smtp_server.link("/account/password-reset/")
    assert "Reset your" in smtp_server.messages[-1]["Subject"]
    form_page = client.get(link, follow=True)
    assert form_page.context["validlink"]
    new_password = "Quiet-heron-2027"
    client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password}
    )
    client.logout()
    assert login(client, "anna@example.com", new_password).status_code == 302


def test_password_reset_for_an_unknown_address_reveals_nothing(client, db, smtp_server):
    response = client.post(reverse("password_reset"), {"email": "stranger@example.com"})
    assert response.status_code == 302 and smtp_server.messages == []


# --- Profile ----------------------------------------------------------------------------------


def profile_data(customer, **overrides):
    data = {
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "language": customer.language,
        "time_zone": customer.time_zone,
        "birthday": "",
        "marketing_consent": "on" if customer.marketing_consent else "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


def test_profile_saves_name_language_time_zone_and_consent(client, anna):
    client.force_login(anna.user)
    response = client.post(
        reverse("profile"),
        profile_data(
            anna, first_name="Anne", language="sv", time_zone="Asia/Bangkok", marketing_consent="on"
        ),
    )
    assert response.status_code == 302
    anna.refresh_from_db()
    assert (anna.first_name, anna.language, anna.time_zone) == ("Anne", "sv", "Asia/Bangkok")
    assert anna.marketing_consent and anna.marketing_consent_changed_at is not None


def test_birthday_can_be_set_once(client, anna):
    client.force_login(anna.user)
    client.post(reverse("profile"), profile_data(anna, birthday="1990-05-03"))
    anna.refresh_from_db()
    assert anna.birthday == dt.date(1990, 5, 3)
    response = client.get(reverse("profile"))
    assert "birthday" not in response.context["form"].fields
    client.post(reverse("profile"), profile_data(anna, birthday="1991-01-01"))
    anna.refresh_from_db()
    assert anna.birthday == dt.date(1990, 5, 3)


def test_profile_errors_show_next_to_the_field(client, anna):
    client.force_login(anna.user)
    future = (timezone.localdate() + dt.timedelta(days=3)).isoformat()
    response = client.post(reverse("profile"), profile_data(anna, birthday=future, time_zone="Mars/Olympus"))
    assert response.status_code == 200
    assert "future" in " ".join(response.context["form"].errors["birthday"])
    assert "time_zone" in response.context["form"].errors


def test_consent_is_withdrawn_with_one_click(client, anna):
    Customer.objects.filter(pk=anna.pk).update(marketing_consent=True)
    client.force_login(anna.user)
    assert client.get(reverse("consent-withdraw")).status_code == 405
    client.post(reverse("consent-withdraw"))
    anna.refresh_from_db()
    assert not anna.marketing_consent and anna.marketing_consent_changed_at is not None


def test_data_download_holds_profile_ledger_and_messages(client, anna):
    InboxMessage.objects.create(customer=anna, subject="Hello", body="Welcome")
    client.force_login(anna.user)
    response = client.get(reverse("my-data"))
    assert response["Content-Disposition"].startswith("attachment;")
    data = json.loads(response.content)
    assert data["customer_number"] == anna.external_ref
    assert data["ledger"][0]["points"] == 50
    assert data["inbox"][0]["subject"] == "Hello"
    assert data["login"]["email"] == "anna@example.com"


def test_closure_request_is_recorded_once(client, anna, mailoutbox, settings):
    settings.ADMINS = [("Support", "support@example.com")]
    client.force_login(anna.user)
    assert "Yes, close my account" in client.get(reverse("closure-request")).content.decode()
    client.post(reverse("closure-request"))
    client.post(reverse("closure-request"))
    anna.refresh_from_db()
    assert anna.closure_requested_at is not None
    assert len(mailoutbox) == 1


# --- Language ------------------------------------------------------------------------------


def test_anonymous_visitors_get_the_browsers_language(client, db):
    response = client.get("/", HTTP_ACCEPT_LANGUAGE="da,en;q=0.5")
    assert response["Content-Language"] == "da"


def test_the_profile_language_wins_over_the_browser(client, anna):
    Customer.objects.filter(pk=anna.pk).update(language="th")
    client.force_login(anna.user)
    response = client.get(reverse("portal-home"), HTTP_ACCEPT_LANGUAGE="da")
    assert response["Content-Language"] == "th"
    assert '<html lang="th">' in response.content.decode()


def test_the_language_switcher_saves_a_members_choice(client, anna):
    client.force_login(anna.user)
    client.post(reverse("set_language"), {"language": "ru", "next": "/me/"})
    anna.refresh_from_db()
    assert anna.language == "ru"
    assert client.get(reverse("portal-home"))["Content-Language"] == "ru"


def test_the_language_switcher_works_for_visitors(client, db):
    response = client.post(reverse("set_language"), {"language": "sv", "next": "/"})
    assert response.status_code == 302
    assert client.get("/")["Content-Language"] == "sv"


def test_referral_codes_use_every_symbol_in_every_position():
    from collections import Counter

    from accounts.models import referral_code_new

    alphabet = set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")
    codes = [referral_code_new() for _ in range(4000)]
    assert all(len(code) == 8 and set(code) <= alphabet for code in codes)
    for position in range(8):
        counts = Counter(code[position] for code in codes)
        # 125 expected per symbol; a biased mapping would starve or flood some.
        assert set(counts) == alphabet and min(counts.values()) > 60 and max(counts.values()) < 200
