"""Two-factor sign-in for staff (TOTP, django-otp): a code at the admin's login once an
authenticator is enrolled, and enrolment required of program admins when the setting is on."""

import re
import time

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import roles
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-123"


def code_for(device: TOTPDevice, *, steps_ahead: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def staff(username="sofie", role=roles.SUPPORT):
    user = UserFactory(username=username, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def throttle_over(user) -> None:
    """After a wrong code django-otp refuses any code for 1 s (doubling with each failure);
    let that second pass."""
    TOTPDevice.objects.filter(user=user).update(throttling_failure_timestamp=None)


def enrolled(user) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)


def admin_login(client, user, code=None):
    data = {"username": user.username, "password": PASSWORD, "next": reverse("admin:index")}
    if code is not None:
        data["otp_token"] = code
    return client.post(reverse("admin:login"), data)


def test_login_with_a_valid_code_opens_the_admin(client):
    user = staff()
    device = enrolled(user)

    response = admin_login(client, user, code_for(device))

    assert response.status_code == 302 and response.url == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200


@pytest.mark.parametrize("code", ["", "000000", "abc"], ids=["missing", "wrong", "garbage"])
def test_login_with_a_wrong_or_missing_code_is_refused(client, code):
    user = staff()
    device = enrolled(user)
    if code == "000000" and code_for(device) == "000000":
        code = "111111"

    response = admin_login(client, user, code)

    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_code_is_accepted_only_once(client):
    user = staff()
    device = enrolled(user)
    code = code_for(device)
    assert admin_login(client, user, code).status_code == 302
    client.logout()
    assert admin_login(client, user, code).status_code == 200


def test_staff_without_a_device_sign_in_with_the_password_alone_when_not_required(client, settings):
    settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = False
    user = staff(role=roles.PROGRAM_ADMIN)
    assert admin_login(client, user).status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200


def test_a_staff_session_without_a_code_must_enter_one(client):
    """Signed in some other way (the members' login): the admin asks for the code first."""
    user = staff()
    device = enrolled(user)
    client.force_login(user)

    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and response.url.startswith(reverse("staff-2fa-verify"))
    assert client.post(reverse("staff-2fa-verify"), {"otp_token": "x1"}).status_code == 200
    # Right after a wrong code even the right one is refused, and the message says why.
    refused = client.post(reverse("staff-2fa-verify"), {"otp_token": code_for(device)})
    assert "wait a few seconds" in refused.content.decode()
    throttle_over(user)
    response = client.post(
        reverse("staff-2fa-verify"), {"otp_token": code_for(device), "next": reverse("admin:index")}
    )
    assert response.status_code == 302 and response.url == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200


def test_program_admins_must_enrol_when_the_setting_is_on(client, settings):
    settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = True
    user = staff(role=roles.PROGRAM_ADMIN)
    assert admin_login(client, user).status_code == 302

    response = client.get(reverse("admin:rewards_tier_changelist"))
    assert response.status_code == 302 and response.url.startswith(reverse("staff-2fa-setup"))

    page = client.get(response.url)
    assert page.status_code == 200 and "<svg" in page.content.decode()
    secret = re.search(r"<code[^>]*>([A-Z2-7]+)</code>", page.content.decode()).group(1)
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    assert secret.rstrip("=") and device.key
    # A wrong first code does not confirm the device.
    assert client.post(reverse("staff-2fa-setup"), {"otp_token": "000001"}).status_code == 200
    assert client.get(reverse("admin:index")).status_code == 302
    throttle_over(user)

    response = client.post(
        reverse("staff-2fa-setup"),
        {"otp_token": code_for(device), "next": reverse("admin:rewards_tier_changelist")},
    )
    assert response.status_code == 302 and response.url == reverse("admin:rewards_tier_changelist")
    assert TOTPDevice.objects.get(user=user).confirmed
    assert client.get(reverse("admin:rewards_tier_changelist")).status_code == 200

    # From now on the login needs the code.
    client.logout()
    assert admin_login(client, user).status_code == 200
    assert admin_login(client, user, code_for(device, steps_ahead=1)).status_code == 302


def test_superusers_count_as_program_admins(client, settings):
    settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = True
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    assert client.get(reverse("admin:index")).url.startswith(reverse("staff-2fa-setup"))


@pytest.mark.parametrize("role", [roles.SUPPORT, roles.MARKETING, roles.ANALYST])
def test_other_roles_are_not_forced_to_enrol(client, settings, role):
    settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = True
    client.force_login(staff(role=role))
    assert client.get(reverse("admin:index")).status_code == 200


def test_the_requirement_is_on_in_production_and_off_in_the_test_and_dev_defaults(settings):
    from loyalty_site.settings import base

    assert base.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS is False
    source = (base.BASE_DIR / "loyalty_site" / "settings" / "production.py").read_text()
    assert 'env.bool("STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS", default=True)' in source


def test_the_analytics_pages_under_staff_ask_for_the_code_too(client):
    user = staff()
    enrolled(user)
    client.force_login(user)
    response = client.get("/staff/analytics/")
    assert response.status_code == 302 and response.url.startswith(reverse("staff-2fa-verify"))
