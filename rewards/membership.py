"""Joining through the portal: a new member, or a shopper linking the card they already use.

Separate from services.py (the ledger's writes) because it also creates logins; it calls
the ledger only through `customer_enroll`.
"""

from __future__ import annotations

import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Customer
from accounts.services import email_confirm, email_normalise, user_create, user_for_email

from .errors import Conflict, DomainError
from .services import customer_enroll


def member_number_new() -> str:
    """A customer number for members who join online: W + 9 digits, unique."""
    while True:
        ref = "W" + "".join(secrets.choice("0123456789") for _ in range(9))
        if not Customer.objects.filter(external_ref=ref).exists():
            return ref


def _email_free(email: str) -> None:
    if user_for_email(email) is not None:
        raise DomainError(
            "An account with this email address exists already.",
            code="email_taken",
            fields={"email": ["taken"]},
        )


@transaction.atomic
def member_signup(
    *,
    email: str,
    password: str,
    first_name: str,
    last_name: str,
    language: str,
    marketing_consent: bool,
    referral_code: str = "",
) -> Customer:
    """A new member with a login: customer number, account, lowest tier, signup bonus (and
    the referral link when a code is given). One login per email address."""
    _email_free(email)
    try:
        with transaction.atomic():
            user = user_create(email=email, password=password, first_name=first_name, last_name=last_name)
    except IntegrityError as exc:
        raise DomainError("An account with this email address exists already.", code="email_taken") from exc
    now = timezone.now()
    customer = Customer.objects.create(
        external_ref=member_number_new(),
        email=user.email,
        first_name=first_name,
        last_name=last_name,
        language=language,
        marketing_consent=marketing_consent,
        marketing_consent_changed_at=now if marketing_consent else None,
        user=user,
    )
    customer, _ = customer_enroll(customer=customer, at=now, referral_code=referral_code or None)
    return customer


def card_for_linking(*, card_number: str, email: str) -> Customer:
    """The shopper whose card a new login may claim: it exists, has no login yet, and if the
    shop knows an address for it, it is the one given. The link waits for the email's
    confirmation, so a card number alone never opens someone's history."""
    customer = Customer.objects.filter(external_ref=card_number.strip()).first()
    if customer is None or customer.user_id is not None:
        raise DomainError(
            "No card with this number is free to link.",
            code="card_unknown",
            fields={"card_number": ["unknown"]},
        )
    if customer.email and email_normalise(customer.email) != email_normalise(email):
        raise DomainError(
            "Use the email address you gave in the shop for this card.",
            code="card_email_mismatch",
            fields={"email": ["mismatch"]},
        )
    return customer


@transaction.atomic
def member_link_request(*, email: str, password: str, first_name: str, last_name: str, card_number: str):
    """The login of a shopper who asks to link an existing card; the link itself happens
    in `member_link_confirm`, from the emailed link."""
    _email_free(email)
    card_for_linking(card_number=card_number, email=email)
    try:
        with transaction.atomic():
            return user_create(email=email, password=password, first_name=first_name, last_name=last_name)
    except IntegrityError as exc:
        raise DomainError("An account with this email address exists already.", code="email_taken") from exc


@transaction.atomic
def member_link_confirm(*, user, customer_id: int, referral_code: str = "") -> Customer:
    """Link the confirmed login to the card and make the shopper a member (signup bonus,
    referral). Idempotent: confirming twice links once."""
    customer = Customer.objects.select_for_update().filter(pk=customer_id).first()
    if customer is None:
        raise DomainError("This card no longer exists.", code="card_unknown")
    if customer.user_id == user.pk:
        email_confirm(user=user)
        return customer
    if customer.user_id is not None or Customer.objects.filter(user_id=user.pk).exists():
        raise Conflict("This card is linked to another login already.", code="card_taken")
    customer.user = user
    customer.email = customer.email or user.email
    customer.first_name = customer.first_name or user.first_name
    customer.last_name = customer.last_name or user.last_name
    customer.save(update_fields=["user", "email", "first_name", "last_name"])
    email_confirm(user=user)
    customer, _ = customer_enroll(customer=customer, referral_code=referral_code or None)
    return customer
