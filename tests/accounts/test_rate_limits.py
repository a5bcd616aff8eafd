"""Password reset, the confirmation-link resend and sign-up (each sends a mail) are rate
limited per address (or login) and per network: a clear message, 429 with Retry-After, no
mail; never a 500, even when the cache that counts is gone (then nothing is limited: login
lockouts stay in the database)."""

import socket

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User
from accounts.security import SIGNUP_PER_ADDRESS, SIGNUP_PER_IP
from accounts.views import (
    CONFIRMATION_RESEND_PER_IP,
    CONFIRMATION_RESEND_PER_LOGIN,
    PASSWORD_RESET_PER_ADDRESS,
    PASSWORD_RESET_PER_IP,
)
from tests.rewards.test_portal import member_with_login, signup_data

# Each test counts up to an hourly limit and expects the next attempt refused.
pytestmark = pytest.mark.usefixtures("rate_limit_hour_ahead")


@pytest.fixture
def anna(program):
    return member_with_login(email="anna.limits@example.com")


def reset(client, email, ip):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=ip)


def test_password_reset_is_limited_per_address_whatever_the_network(client, anna):
    for i in range(PASSWORD_RESET_PER_ADDRESS.count):
        assert reset(client, "Anna.Limits@example.com", f"10.20.0.{i}").status_code == 302
    assert len(mail.outbox) == PASSWORD_RESET_PER_ADDRESS.count

    refused = reset(client, "anna.limits@example.com", "10.20.1.1")
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= PASSWORD_RESET_PER_ADDRESS.seconds
    assert "Too many reset requests" in refused.content.decode()
    assert refused.context["form"]["email"].value() == "anna.limits@example.com"
    assert len(mail.outbox) == PASSWORD_RESET_PER_ADDRESS.count
    # Another address from the same network is still served.
    assert reset(client, "someone.else@example.com", "10.20.1.1").status_code == 302


def test_password_reset_is_limited_per_network_across_addresses(client, db):
    for i in range(PASSWORD_RESET_PER_IP.count):
        assert reset(client, f"probe{i}@example.com", "10.21.0.1").status_code == 302
    refused = reset(client, "probe-last@example.com", "10.21.0.1")
    assert refused.status_code == 429 and "Retry-After" in refused
    assert reset(client, "probe-last@example.com", "10.21.0.2").status_code == 302


def test_an_unknown_address_is_limited_like_a_known_one(client, db):
    """Otherwise the limit itself would tell which addresses have an account."""
    for i in range(PASSWORD_RESET_PER_ADDRESS.count):
        assert reset(client, "nobody.limits@example.com", f"10.22.0.{i}").status_code == 302
    assert reset(client, "nobody.limits@example.com", "10.22.1.1").status_code == 429
    assert mail.outbox == []


@pytest.fixture
def unconfirmed(program):
    return member_with_login(email="bo.limits@example.com", confirmed=False)


def resend(client, ip="10.23.0.1", next_url="/me/"):
    return client.post(reverse("confirmation-resend"), {"next": next_url}, REMOTE_ADDR=ip)


def test_confirmation_resend_is_limited_per_login(client, unconfirmed):
    client.force_login(unconfirmed.user)
    for i in range(CONFIRMATION_RESEND_PER_LOGIN.count):
        assert resend(client, ip=f"10.23.0.{i}").status_code == 302
    assert len(mail.outbox) == CONFIRMATION_RESEND_PER_LOGIN.count
    refused = resend(client, ip="10.23.1.1")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "several confirmation links" in refused.content.decode()
    assert len(mail.outbox) == CONFIRMATION_RESEND_PER_LOGIN.count


def test_confirmation_resend_is_limited_per_network(client, program):
    users = [
        member_with_login(email=f"net{i}.limits@example.com", confirmed=False).user
        for i in range(CONFIRMATION_RESEND_PER_IP.count + 1)
    ]
    for user in users[:-1]:
        client.force_login(user)
        assert resend(client, ip="10.24.0.1").status_code == 302
    client.force_login(users[-1])
    assert resend(client, ip="10.24.0.1").status_code == 429
    assert resend(client, ip="10.24.0.2").status_code == 302


def test_confirmation_resend_goes_back_to_the_page_never_to_another_site(client, unconfirmed):
    client.force_login(unconfirmed.user)
    assert resend(client, next_url="/me/history/")["Location"] == "/me/history/"
    for elsewhere in ("https://evil.example/", "//evil.example/me/", "https:evil.example"):
        assert resend(client, ip="10.25.0.1", next_url=elsewhere)["Location"] == reverse("portal-home")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_the_cache_password_reset_still_works_and_says_why_in_the_log(client, anna, settings, caplog):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": settings.REDIS_CACHE_OPTIONS,
        }
    }
    for _ in range(PASSWORD_RESET_PER_ADDRESS.count + 1):
        assert reset(client, "anna.limits@example.com", "10.26.0.1").status_code == 302
    assert len(mail.outbox) == PASSWORD_RESET_PER_ADDRESS.count + 1
    assert "the cache does not answer" in caplog.text


# --- Sign-up ------------------------------------------------------------------------------


def signup(client, email, ip):
    client.logout()  # a successful sign-up signs the new member in
    return client.post(reverse("signup"), signup_data(email=email), REMOTE_ADDR=ip)


def test_signup_is_limited_per_network_across_addresses(client, program):
    for i in range(SIGNUP_PER_IP.count):
        assert signup(client, f"joiner{i}.limits@example.com", "10.30.0.1").status_code == 302
    assert len(mail.outbox) == SIGNUP_PER_IP.count

    refused = signup(client, "joiner-last.limits@example.com", "10.30.0.1")

    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= SIGNUP_PER_IP.seconds
    assert len(mail.outbox) == SIGNUP_PER_IP.count
    assert not User.objects.filter(email="joiner-last.limits@example.com").exists()
    # Another network is still served.
    assert signup(client, "joiner-last.limits@example.com", "10.30.0.2").status_code == 302


def test_signup_is_limited_per_address_whatever_the_network(client, program):
    """An address is free again once its login is gone (a closed account, a link request
    that was never confirmed and was removed): it still gets no more than its share of mail."""
    for i in range(SIGNUP_PER_ADDRESS.count):
        assert signup(client, "Again.Limits@example.com", f"10.31.0.{i}").status_code == 302
        User.objects.filter(email__iexact="again.limits@example.com").delete()
    assert len(mail.outbox) == SIGNUP_PER_ADDRESS.count

    refused = signup(client, "again.limits@example.com", "10.31.1.1")

    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert len(mail.outbox) == SIGNUP_PER_ADDRESS.count
    assert not User.objects.filter(email__iexact="again.limits@example.com").exists()
    # Another address from the same network is still served.
    assert signup(client, "other.limits@example.com", "10.31.1.1").status_code == 302


def test_signup_refused_by_a_limit_says_so_next_to_the_email_field(client, program):
    for i in range(SIGNUP_PER_IP.count):
        signup(client, f"field{i}.limits@example.com", "10.32.0.1")

    refused = signup(client, "field-last.limits@example.com", "10.32.0.1")

    form = refused.context["form"]
    assert list(form.errors) == ["email"] and "Too many sign-ups" in form.errors["email"][0]
    assert form["email"].value() == "field-last.limits@example.com"
    html = refused.content.decode()
    field_at = html.index('name="email"')
    message_at = html.index("Too many sign-ups")
    # In the email field's block of the form, not at the top of the page.
    assert abs(message_at - field_at) < 600, html[min(field_at, message_at) : max(field_at, message_at)]


def test_a_form_with_mistakes_is_not_counted(client, program):
    """Only a sign-up that sends mail counts: mistyped passwords do not lock anyone out."""
    for _ in range(SIGNUP_PER_ADDRESS.count + 2):
        wrong = client.post(
            reverse("signup"),
            signup_data(email="typo.limits@example.com", password2="not the same"),
            REMOTE_ADDR="10.33.0.1",
        )
        assert wrong.status_code == 200
    assert signup(client, "typo.limits@example.com", "10.33.0.1").status_code == 302


def test_without_the_cache_signup_still_works(client, program, settings, caplog):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": settings.REDIS_CACHE_OPTIONS,
        }
    }
    assert signup(client, "nocache.limits@example.com", "10.34.0.1").status_code == 302
    assert "the cache does not answer" in caplog.text
