"""Logins: creating them, confirming email addresses, the links we mail."""

from __future__ import annotations

import logging
import smtplib

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy

from .models import Customer

User = get_user_model()

CONFIRM_SALT = "accounts.email-confirmation"


log = logging.getLogger(__name__)

# Shown when the mail server did not take a confirmation email.
CONFIRMATION_NOT_SENT = gettext_lazy(
    'We could not send the confirmation email just now. Use "Send the link again" in a few minutes.'
)


def email_normalise(email: str) -> str:
    return (email or "").strip().lower()


def user_for_email(email: str):
    """The login that uses `email` (members sign in with their address as username)."""
    email = email_normalise(email)
    return (
        User.objects.filter(username__iexact=email).first()
        or User.objects.filter(email__iexact=email).first()
    )


def user_create(*, email: str, password: str, first_name: str = "", last_name: str = ""):
    """A member login: the username is the email address, lower-cased."""
    email = email_normalise(email)
    user = User(username=email, email=email, first_name=first_name, last_name=last_name)
    user.set_password(password)
    user.save()
    return user


def confirmation_token_make(*, user, link_customer_id: int | None = None, referral_code: str = "") -> str:
    """A signed, expiring token for the link in the confirmation email. It names the
    address it confirms, so changing the address later invalidates old links."""
    payload = {"u": user.pk, "e": user.email}
    if link_customer_id:
        payload["c"] = link_customer_id
    if referral_code:
        payload["r"] = referral_code
    return signing.dumps(payload, salt=CONFIRM_SALT, compress=True)


def confirmation_token_read(token: str) -> dict:
    """The token's payload; raises signing.BadSignature (SignatureExpired included)."""
    return signing.loads(token, salt=CONFIRM_SALT, max_age=settings.PASSWORD_RESET_TIMEOUT)


def confirmation_email_send(
    *, request, user, token: str, card_number: str = "", language: str | None = None
) -> bool:
    """Mail the confirmation link, in the member's language. False when the mail server
    could not take it (the account stays; the member can ask for the link again)."""
    link = request.build_absolute_uri(reverse("confirm-email", args=[token]))
    context = {"user": user, "link": link, "card_number": card_number, "program_name": settings.PROGRAM_NAME}
    with translation.override(language or translation.get_language()):
        subject = render_to_string("accounts/email/confirm_subject.txt", context).strip()
        body = render_to_string("accounts/email/confirm_body.txt", context)
    try:
        send_mail(subject, body, None, [user.email])
    except (smtplib.SMTPException, OSError) as error:
        log.warning("confirmation email to user %s not sent: %s", user.pk, error)
        return False
    return True


@transaction.atomic
def email_confirm(*, user) -> bool:
    """Mark the login's address confirmed. Idempotent: False when it already was."""
    user = User.objects.select_for_update().get(pk=user.pk)
    if user.email_confirmed_at is not None:
        return False
    user.email_confirmed_at = timezone.now()
    user.save(update_fields=["email_confirmed_at"])
    return True


def customer_consent_set(*, customer: Customer, consent: bool) -> bool:
    """Give or withdraw marketing consent, recording when. False when nothing changed."""
    if customer.marketing_consent == consent:
        return False
    customer.marketing_consent = consent
    customer.marketing_consent_changed_at = timezone.now()
    customer.save(update_fields=["marketing_consent", "marketing_consent_changed_at"])
    return True


def customer_closure_request(*, customer: Customer) -> bool:
    """Record the member's request to close the account and tell the team. Idempotent."""
    updated = Customer.objects.filter(pk=customer.pk, closure_requested_at__isnull=True).update(
        closure_requested_at=timezone.now()
    )
    if updated:
        from django.core.mail import mail_admins

        mail_admins(
            f"Account closure requested: {customer.external_ref}",
            f"Customer {customer.external_ref} (id {customer.pk}) asked to close their account.",
            fail_silently=True,
        )
    customer.refresh_from_db(fields=["closure_requested_at"])
    return bool(updated)


def customer_export(customer: Customer) -> dict:
    """What accounts holds about a customer, for the member's data download."""
    user = customer.user
    return {
        "customer_number": customer.external_ref,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "birthday": customer.birthday.isoformat() if customer.birthday else None,
        "language": customer.language,
        "time_zone": customer.time_zone,
        "marketing_consent": customer.marketing_consent,
        "marketing_consent_changed_at": _iso(customer.marketing_consent_changed_at),
        "enrolled_at": _iso(customer.enrolled_at),
        "referral_code": customer.referral_code,
        "referred_by": customer.referred_by.external_ref if customer.referred_by_id else None,
        "closure_requested_at": _iso(customer.closure_requested_at),
        "created_at": _iso(customer.created_at),
        "login": {
            "username": user.username,
            "email": user.email,
            "email_confirmed_at": _iso(user.email_confirmed_at),
            "date_joined": _iso(user.date_joined),
            "last_login": _iso(user.last_login),
        }
        if user
        else None,
    }


def _iso(value):
    return value.isoformat() if value else None
