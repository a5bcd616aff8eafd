"""Two-factor sign-in (TOTP, django-otp) for staff in the admin.

- Staff who have enrolled an authenticator enter its code with their password at the admin's
  login (StaffAuthenticationForm); a staff session opened elsewhere without a code is sent to
  the code page before any admin page.
- With STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS on, program admins (and superusers) without an
  authenticator are sent to the enrolment page before any admin page.
- Enrolment: a QR code (segno) of the device's otpauth:// URL, confirmed by a first code.

django-otp keeps the verified device in the session (django_otp.login) and OTPMiddleware
puts `request.user.is_verified()` on every request.
"""

from __future__ import annotations

import base64

import segno
from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.views.decorators import staff_member_required
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from .roles import is_program_admin

DEVICE_NAME = "authenticator"


def _confirmed_devices(user):
    return TOTPDevice.objects.devices_for_user(user, confirmed=True)


def code_verify(user, token: str) -> TOTPDevice | None:
    """The user's confirmed device that accepts `token`, or None. Throttled by django-otp
    (each failure doubles the wait before the next try, from 1 s); the failure count is
    committed even though the caller then refuses the login."""
    token = (token or "").strip().replace(" ", "")
    with transaction.atomic():
        for device in _confirmed_devices(user).select_for_update().order_by("pk"):
            allowed, _extra = device.verify_is_allowed()
            if allowed and device.verify_token(token):
                return device
    return None


def code_refused_message(user) -> str:
    """Why a code was refused: wrong, or too soon after a wrong one."""
    if any(not device.verify_is_allowed()[0] for device in _confirmed_devices(user)):
        return gettext("Too many wrong codes: wait a few seconds, then enter the code your app shows now.")
    return gettext("This code is not right (or was already used). Enter the code your app shows now.")


def _code_field() -> forms.CharField:
    return forms.CharField(
        label=_("Authentication code"),
        required=False,
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class StaffAuthenticationForm(AdminAuthenticationForm):
    """The admin's login, plus the code of the staff member's authenticator when they have one."""

    otp_token = _code_field()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["otp_token"].help_text = _(
            "The 6 digits your authenticator app shows. "
            "Leave empty if you have not set up two-factor sign-in."
        )

    def clean(self):
        cleaned = super().clean()
        user = self.get_user()
        if user is None or not _confirmed_devices(user).exists():
            return cleaned
        token = cleaned.get("otp_token")
        if not token:
            raise forms.ValidationError(
                gettext("Enter the code from your authenticator app."), code="token_required"
            )
        device = code_verify(user, token)
        if device is None:
            raise forms.ValidationError(code_refused_message(user), code="invalid_token")
        # django-otp's user_logged_in handler stores the device in the session.
        user.otp_device = device
        return cleaned


class CodeForm(forms.Form):
    otp_token = _code_field()

    def clean_otp_token(self):
        token = self.cleaned_data["otp_token"].strip()
        if not token:
            raise forms.ValidationError(gettext("Enter the code from your authenticator app."))
        return token


# --- Middleware --------------------------------------------------------------------


def _staff_prefixes() -> tuple[str, ...]:
    """The admin and the other staff pages (the analytics dashboards under /staff/)."""
    return (reverse("admin:index"), "/staff/")


def _exempt_paths() -> set[str]:
    return {
        reverse("admin:login"),
        reverse("admin:logout"),
        reverse("admin:jsi18n"),
        reverse("staff-2fa-setup"),
        reverse("staff-2fa-verify"),
    }


class StaffTwoFactorMiddleware:
    """Before any staff page: a staff member with an authenticator must have entered a code
    in this session; a program admin must have an authenticator when the setting asks."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        redirect_to = self._redirect(request)
        if redirect_to:
            return HttpResponseRedirect(f"{redirect_to}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)

    @staticmethod
    def _redirect(request) -> str | None:
        if not request.path.startswith(_staff_prefixes()) or request.path in _exempt_paths():
            return None
        user = getattr(request, "user", None)
        if user is None or not (user.is_authenticated and user.is_active and user.is_staff):
            return None
        if user.is_verified():
            return None
        if _confirmed_devices(user).exists():
            return reverse("staff-2fa-verify")
        if settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS and is_program_admin(user):
            return reverse("staff-2fa-setup")
        return None


# --- Views -------------------------------------------------------------------------


def _next_url(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("admin:index")


def _context(request, **extra):
    from django.contrib import admin

    return {**admin.site.each_context(request), "next": _next_url(request), **extra}


@never_cache
@staff_member_required
def setup(request):
    """Enrol an authenticator: scan the QR code, confirm with a first code. A staff member who
    already has one must be signed in with it to replace it."""
    user = request.user
    has_device = _confirmed_devices(user).exists()
    if has_device and not user.is_verified():
        return HttpResponseRedirect(f"{reverse('staff-2fa-verify')}?{urlencode({'next': request.path})}")
    if has_device and request.method == "GET" and request.GET.get("replace") != "1":
        return render(
            request,
            "admin/two_factor/setup.html",
            _context(request, title=gettext("Two-factor sign-in"), enrolled=True),
        )
    # The same unconfirmed device until it is confirmed: reloading keeps the QR code.
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        with transaction.atomic():
            device = TOTPDevice.objects.select_for_update().get(pk=device.pk)
            accepted = device.verify_token(form.cleaned_data["otp_token"])
        if accepted:
            with transaction.atomic():
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                # One authenticator per person: the new one replaces any earlier one.
                TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
            otp_login(request, device)
            from django.contrib import messages

            messages.success(
                request, gettext("Two-factor sign-in is on. You will need a code at every sign-in.")
            )
            return HttpResponseRedirect(_next_url(request))
        form.add_error("otp_token", gettext("This code is not right. Enter the code your app shows now."))
    qr = segno.make(device.config_url, error="m")
    context = _context(
        request,
        title=gettext("Set up two-factor sign-in"),
        enrolled=False,
        form=form,
        # Inline SVG: no image request, nothing for the Content-Security-Policy to allow.
        qr_svg=mark_safe(qr.svg_inline(scale=5, dark="#000", light="#fff")),  # noqa: S308 - segno's own markup
        secret=base64.b32encode(device.bin_key).decode(),
        required=settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS and is_program_admin(user),
    )
    return render(request, "admin/two_factor/setup.html", context)


@never_cache
@staff_member_required
def verify(request):
    """The code, for a staff session opened without one (e.g. through the members' login)."""
    if request.user.is_verified() or not _confirmed_devices(request.user).exists():
        return HttpResponseRedirect(_next_url(request))
    form = CodeForm(request.POST or None)
    if form.is_bound and form.is_valid():
        device = code_verify(request.user, form.cleaned_data["otp_token"])
        if device is not None:
            otp_login(request, device)
            return HttpResponseRedirect(_next_url(request))
        form.add_error("otp_token", code_refused_message(request.user))
    return render(
        request,
        "admin/two_factor/verify.html",
        _context(request, title=gettext("Authentication code"), form=form),
    )


urlpatterns = [
    path("setup/", setup, name="staff-2fa-setup"),
    path("verify/", verify, name="staff-2fa-verify"),
]
