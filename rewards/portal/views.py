"""The member portal: balance and tier, history with explanations, the catalog and the
redeem flow, vouchers with QR codes, referrals, joining. Thin: selectors and services do
the work; every query is scoped to the signed-in member, so another member's voucher or
redemption is a 404."""

import re
import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.decorators import customer_required
from accounts.middleware import member_customer
from accounts.models import User
from accounts.security import signup_rate_limit
from accounts.services import (
    CONFIRMATION_NOT_SENT,
    confirmation_email_send,
    confirmation_token_make,
    confirmation_token_read,
    email_confirm,
)

from .. import selectors
from ..errors import DomainError
from ..membership import card_for_linking, member_link_confirm, member_link_request, member_signup
from ..models import LedgerEntry, Redemption, Reward
from ..services import customer_enroll, reward_redeem
from .forms import SignupForm

# What a member reads when the ledger refuses something (the API says it in English).
ERROR_MESSAGES = {
    "insufficient_points": gettext_lazy("You do not have enough points for this reward yet."),
    "points_debt": gettext_lazy("Your balance is below zero: new purchases will repay it first."),
    "out_of_stock": gettext_lazy("Sorry, this reward has just run out."),
    "tier_too_low": gettext_lazy("This reward is for a higher tier."),
    "limit_reached": gettext_lazy("You have already redeemed this reward as often as allowed."),
    "reward_unavailable": gettext_lazy("This reward is not available now."),
    "card_unknown": gettext_lazy("No card with this number is free to link. Please check the number."),
    "card_email_mismatch": gettext_lazy("Use the email address you gave in the shop for this card."),
    "card_taken": gettext_lazy("This card is linked to another login already. Please contact us."),
    "email_taken": gettext_lazy("An account with this email address exists already."),
    "unknown_referral_code": gettext_lazy("We do not know this referral code. Please check it."),
}


def _error_message(error: DomainError) -> str:
    return str(ERROR_MESSAGES.get(error.code, gettext_lazy("Something went wrong. Please try again.")))


HISTORY_PAGE_SIZE = 20


# --- Joining ---------------------------------------------------------------------------


def signup(request):
    if request.user.is_authenticated:
        return redirect("portal-home")
    initial = {"referral_code": request.GET.get("ref", "")[:16], "language": get_language()}
    form = SignupForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        limited = signup_rate_limit(request, email=data["email"])
        if limited is not None:
            wait, message = limited
            form.add_error("email", message)
            response = render(request, "rewards/portal/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(wait)
            return response
        try:
            if data["card_number"]:
                return _signup_link_card(request, data)
            customer = member_signup(
                email=data["email"],
                password=data["password1"],
                first_name=data["first_name"],
                last_name=data["last_name"],
                language=data["language"],
                marketing_consent=data["marketing_consent"],
                referral_code=data["referral_code"],
            )
        except DomainError as error:
            field = next(iter(error.fields), None)
            form.add_error(field if field in form.fields else None, _error_message(error))
        else:
            user = customer.user
            token = confirmation_token_make(user=user)
            sent = confirmation_email_send(
                request=request, user=user, token=token, language=customer.language
            )
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if sent:
                messages.success(
                    request,
                    _("Welcome! We sent a link to %(email)s: open it to confirm your address.")
                    % {"email": user.email},
                )
            else:
                messages.success(request, _("Welcome!"))
                messages.warning(
                    request,
                    CONFIRMATION_NOT_SENT,
                )
            return redirect("portal-home")
    return render(request, "rewards/portal/signup.html", {"form": form})


def _signup_link_card(request, data):
    customer = card_for_linking(card_number=data["card_number"], email=data["email"])
    user = member_link_request(
        email=data["email"],
        password=data["password1"],
        first_name=data["first_name"],
        last_name=data["last_name"],
        card_number=data["card_number"],
    )
    token = confirmation_token_make(
        user=user, link_customer_id=customer.pk, referral_code=data["referral_code"]
    )
    sent = confirmation_email_send(
        request=request, user=user, token=token, card_number=customer.external_ref, language=data["language"]
    )
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    if not sent:
        messages.warning(
            request,
            CONFIRMATION_NOT_SENT,
        )
    return redirect("portal-pending")


def confirm_email(request, token):
    """The link in the confirmation email: confirms the address, and for a card link,
    links the card and enrols its shopper."""
    try:
        payload = confirmation_token_read(token)
    except signing.SignatureExpired:
        return render(request, "rewards/portal/confirm_failed.html", {"expired": True}, status=400)
    except signing.BadSignature:
        return render(request, "rewards/portal/confirm_failed.html", {"expired": False}, status=400)
    user = User.objects.filter(pk=payload["u"], email__iexact=payload["e"]).first()
    if user is None:
        return render(request, "rewards/portal/confirm_failed.html", {"expired": False}, status=400)
    if payload.get("c"):
        try:
            member_link_confirm(user=user, customer_id=payload["c"], referral_code=payload.get("r", ""))
        except DomainError as error:
            return render(
                request, "rewards/portal/confirm_failed.html", {"message": _error_message(error)}, status=409
            )
        messages.success(request, _("Your card is linked: welcome to the program!"))
    else:
        email_confirm(user=user)
        messages.success(request, _("Thank you: your email address is confirmed."))
    if request.user.is_authenticated and request.user.pk == user.pk:
        return redirect("portal-home")
    return redirect(f"{reverse('login')}?next={reverse('portal-home')}")


@login_required
def pending(request):
    """A login with no card yet: waiting for the link confirmation, or a staff login."""
    if member_customer(request) is not None:
        return redirect("portal-home")
    return render(request, "rewards/portal/pending.html")


@require_POST
@customer_required
def join(request):
    """A shopper with a login but no membership joins with one click."""
    customer_enroll(customer=request.customer)
    messages.success(request, _("Welcome to the program!"))
    return redirect("portal-home")


# --- The member's pages ------------------------------------------------------------------


def _member_page(view):
    """customer_required, plus the member's account on request.account; a shopper who is
    not a member yet sees the page that offers to join."""

    @customer_required
    def wrapped(request, *args, **kwargs):
        request.account = selectors.account_get(customer_id=request.customer.pk)
        if request.account is None:
            return render(request, "rewards/portal/not_member.html", {"customer": request.customer})
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


@_member_page
def home(request):
    customer, account = request.customer, request.account
    now = timezone.now()
    progress = selectors.tier_progress(
        account=account, spend=selectors.qualifying_spend(customer_id=customer.pk, as_of=now)
    )
    catalog = selectors.rewards_for_member(customer=customer, account=account)
    return render(
        request,
        "rewards/portal/home.html",
        {
            "customer": customer,
            "account": account,
            "debt": -account.balance if account.balance < 0 else 0,
            "progress": progress,
            "expiring": selectors.points_expiring(customer_id=customer.pk, within_days=30, now=now),
            "recent": selectors.ledger_list(customer_id=customer.pk)[:5],
            "affordable": [item for item in catalog if item["can_redeem"]][:4],
            "closest": next((item for item in catalog if not item["can_redeem"]), None),
        },
    )


@_member_page
def history(request):
    kind = request.GET.get("kind") or ""
    if kind not in LedgerEntry.Kind.values:
        kind = ""
    paginator = Paginator(
        selectors.ledger_list(customer_id=request.customer.pk, kind=kind or None), HISTORY_PAGE_SIZE
    )
    page = paginator.get_page(request.GET.get("page"))
    return render(
        request,
        "rewards/portal/history.html",
        {"page": page, "kind": kind, "kinds": LedgerEntry.Kind.choices, "account": request.account},
    )


@_member_page
def catalog(request):
    items = selectors.rewards_for_member(customer=request.customer, account=request.account)
    return render(request, "rewards/portal/catalog.html", {"items": items, "account": request.account})


IDEMPOTENCY_KEY = re.compile(r"^[0-9a-f]{32}$")


@_member_page
def reward_detail(request, reward_id):
    """The redeem flow: this page is the confirmation step; its form carries a one-time key
    so a double click or a resubmitted form redeems once."""
    items = selectors.rewards_for_member(customer=request.customer, account=request.account)
    item = next((i for i in items if i["reward"].pk == reward_id), None)
    if item is None:
        get_object_or_404(Reward, pk=reward_id, is_active=True)
        raise Http404
    if request.method == "POST":
        key = request.POST.get("key", "")
        if not request.user.email_confirmed_at:
            messages.error(request, _("Please confirm your email address before you redeem."))
        elif not IDEMPOTENCY_KEY.match(key):
            messages.error(request, _("Something went wrong. Please try again."))
        else:
            try:
                result = reward_redeem(
                    customer=request.customer, reward_id=reward_id, idempotency_key=f"portal:{key}"
                )
            except DomainError as error:
                messages.error(request, _error_message(error))
            else:
                if result.created:
                    messages.success(request, _("Enjoy! Here is your voucher."))
                return redirect("portal-voucher", code=result.redemption.voucher_code)
        return redirect("portal-reward", reward_id=reward_id)
    return render(
        request,
        "rewards/portal/reward_detail.html",
        {"item": item, "reward": item["reward"], "account": request.account, "key": uuid.uuid4().hex},
    )


@_member_page
def vouchers(request):
    redemptions = selectors.redemptions_of(customer_id=request.customer.pk)
    return render(
        request, "rewards/portal/vouchers.html", {"redemptions": redemptions, "now": timezone.now()}
    )


@_member_page
def voucher(request, code):
    redemption = get_object_or_404(
        Redemption.objects.select_related("reward"), customer=request.customer, voucher_code=code
    )
    now = timezone.now()
    # Usable at the till: issued and within its validity (the nightly job may not have expired it yet).
    usable = redemption.state == Redemption.State.ISSUED and not (
        redemption.expires_at and redemption.expires_at <= now
    )
    return render(
        request, "rewards/portal/voucher.html", {"redemption": redemption, "now": now, "usable": usable}
    )


@_member_page
def referral(request):
    customer = request.customer
    link = request.build_absolute_uri(f"{reverse('signup')}?ref={customer.referral_code}")
    return render(
        request,
        "rewards/portal/referral.html",
        {"customer": customer, "link": link, "summary": selectors.referral_summary(customer=customer)},
    )
