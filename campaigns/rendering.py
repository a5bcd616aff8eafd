"""Personalised messages: the values each recipient sees, and the message rendered in
their language (falling back to the default language's content).

Values for a batch of recipients are read with a handful of set-based queries, not a few
queries per recipient: sending a hundred thousand messages must not mean half a million
queries.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core import signing
from django.db.models import F, Sum
from django.template import Context, Engine, TemplateSyntaxError
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.formats import number_format
from django.utils.translation import gettext as _

from accounts.models import Customer
from rewards.models import PointsAccount, PointsLot, Purchase
from rewards.selectors import program_get, rewards_available

from .models import Campaign, CampaignContent

# The fields a message may use, as {{ name }}.
FIELDS = [
    "first_name",
    "points_balance",
    "tier",
    "next_tier",
    "to_next_tier",
    "points_expiring",
    "recommended_reward",
    "offer",
    "basket",
    "survey_link",
]
# Only the variables and the plain filters: no tags that load, include or reach the database.
ENGINE = Engine(builtins=["django.template.defaultfilters"], autoescape=False)
ALLOWED_TAG = re.compile(r"{%\s*(if|elif|else|endif|for|endfor|empty)\b")
TAG = re.compile(r"{%.*?%}")


def template_check(text: str) -> None:
    """Raise ValueError with a message for staff when a subject or body will not render."""
    for tag in TAG.findall(text):
        if not ALLOWED_TAG.match(tag):
            raise ValueError(_("Only {{ fields }} and if/for blocks are allowed: %(tag)s") % {"tag": tag})
    try:
        ENGINE.from_string(text)
    except TemplateSyntaxError as exc:
        raise ValueError(str(exc)) from exc


@dataclass
class Rendered:
    subject: str
    body: str
    language: str


def _points(n: int) -> str:
    return number_format(n, 0, use_l10n=True, force_grouping=True)


def _money(amount: Decimal) -> str:
    return f"{number_format(amount, 2, use_l10n=True, force_grouping=True)} {settings.PROGRAM_CURRENCY}"


def recipient_values(customers: list[Customer], *, now: dt.datetime | None = None) -> dict[int, dict]:
    """Raw values per customer id (numbers, objects), for a batch."""
    now = now or timezone.now()
    ids = [c.pk for c in customers]
    accounts = {a.pk: a for a in PointsAccount.objects.filter(pk__in=ids).select_related("tier")}
    spend = dict(
        Purchase.objects.filter(customer_id__in=ids, occurred_at__gt=now - dt.timedelta(days=365))
        .values("customer_id")
        .annotate(s=Sum(F("amount") - F("refunded_amount")))
        .values_list("customer_id", "s")
    )
    expiring = dict(
        PointsLot.objects.filter(
            account_id__in=ids,
            remaining__gt=0,
            expires_at__isnull=False,
            expires_at__lte=now + dt.timedelta(days=30),
        )
        .values("account_id")
        .annotate(n=Sum("remaining"))
        .values_list("account_id", "n")
    )
    tiers = program_get()["tiers"]
    catalog = list(rewards_available(at=now))
    values = {}
    for customer in customers:
        account = accounts.get(customer.pk)
        balance = account.balance if account else 0
        qualifying = spend.get(customer.pk) or Decimal("0")
        next_tier = next((t for t in tiers if t.min_qualifying_spend > qualifying), None)
        eligible = [
            r
            for r in catalog
            if not r.min_tier_id
            or (
                account
                and account.tier
                and account.tier.min_qualifying_spend >= r.min_tier.min_qualifying_spend
            )
        ]
        affordable = [r for r in eligible if r.cost_points <= balance]
        if affordable:
            recommended = max(affordable, key=lambda r: r.cost_points)
        else:
            recommended = min(eligible, key=lambda r: r.cost_points - balance, default=None)
        values[customer.pk] = {
            "customer": customer,
            "balance": balance,
            "tier": account.tier if account else None,
            "next_tier": next_tier,
            "to_next_tier": (next_tier.min_qualifying_spend - qualifying) if next_tier else None,
            "expiring": expiring.get(customer.pk, 0),
            "recommended": recommended,
            "affordable": bool(affordable),
        }
    return values


def _offer_text(campaign: Campaign) -> str:
    if campaign.offer == Campaign.Offer.MULTIPLIER and campaign.offer_multiplier:
        return _("%(multiplier)s× points on your purchases from %(start)s to %(end)s") % {
            "multiplier": number_format(campaign.offer_multiplier.normalize(), use_l10n=True),
            "start": _date(campaign.offer_starts_at),
            "end": _date(campaign.offer_ends_at),
        }
    if campaign.offer == Campaign.Offer.POINTS and campaign.offer_points:
        return _("%(points)s bonus points, already in your account") % {
            "points": _points(campaign.offer_points)
        }
    if campaign.offer == Campaign.Offer.VOUCHER and campaign.offer_reward_id:
        return _("a voucher for %(reward)s, waiting in your account") % {
            "reward": campaign.offer_reward.name_in(translation.get_language())
        }
    return ""


def _date(value) -> str:
    from django.utils.dateformat import format as date_format
    from django.utils.formats import get_format

    if value is None:
        return ""
    return date_format(timezone.localtime(value), get_format("DATE_FORMAT"))


def _basket(context: dict) -> str:
    items = context.get("items") or context.get("basket") or []
    lines = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            name = item.get("name") or item.get("sku") or ""
            quantity = item.get("quantity") or 1
            lines.append(f"{quantity} × {name}".strip())
    return "\n".join(lines)


def fields_for(values: dict, campaign: Campaign, context: dict) -> dict:
    """The {{ fields }} of one recipient, formatted in the active language."""
    language = translation.get_language()
    customer = values["customer"]
    recommended = values["recommended"]
    return {
        "first_name": customer.first_name or _("member"),
        "points_balance": _points(values["balance"]),
        "tier": values["tier"].name_in(language) if values["tier"] else "",
        "next_tier": values["next_tier"].name_in(language) if values["next_tier"] else "",
        "to_next_tier": _money(values["to_next_tier"]) if values["to_next_tier"] is not None else "",
        "points_expiring": _points(values["expiring"]),
        "recommended_reward": recommended.name_in(language) if recommended else "",
        "offer": _offer_text(campaign),
        "basket": _basket(context),
        "survey_link": _survey_link(campaign, customer),
    }


def _survey_link(campaign: Campaign, customer: Customer) -> str:
    """The campaign's survey, signed for this recipient (empty when the campaign has none)."""
    if not campaign.survey_id:
        return ""
    from analytics.services import survey_token_make

    token = survey_token_make(survey=campaign.survey, customer=customer)
    return settings.SITE_URL.rstrip("/") + reverse("survey-answer", args=[token])


def content_for(campaign: Campaign, language: str, contents: dict[str, CampaignContent] | None = None):
    contents = contents if contents is not None else {c.language: c for c in campaign.contents.all()}
    return (
        contents.get(language) or contents.get(settings.LANGUAGE_CODE) or next(iter(contents.values()), None)
    )


def render(
    campaign: Campaign, values: dict, *, context: dict | None = None, contents=None
) -> Rendered | None:
    """The message for one recipient in their language (or the default's content)."""
    customer = values["customer"]
    content = content_for(campaign, customer.language, contents)
    if content is None:
        return None
    with translation.override(content.language), timezone.override(_zone(customer.time_zone)):
        fields = Context(fields_for(values, campaign, context or {}), autoescape=False)
        subject = _compiled(content.subject).render(fields).strip()
        body = _compiled(content.body).render(fields).strip()
    return Rendered(subject=" ".join(subject.split()), body=body, language=content.language)


@functools.lru_cache(maxsize=512)
def _compiled(text: str):
    """A message template compiled once per worker, not once per recipient."""
    return ENGINE.from_string(text)


def _zone(name: str):
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return timezone.get_default_timezone()


# --- Links: tracked clicks and the one-click unsubscribe ------------------------------------

LINK = re.compile(r"https?://[^\s<>\"')]+")
CLICK_SALT = "campaigns.click"


def tracked_url(base_url: str, token: str, url: str) -> str:
    signed = signing.dumps({"t": token, "u": url}, salt=CLICK_SALT, compress=True)
    return f"{base_url}{reverse('campaign-click', args=[signed])}"


def click_target(signed: str) -> tuple[str, str]:
    data = signing.loads(signed, salt=CLICK_SALT)
    return data["t"], data["u"]


def links_tracked(body: str, *, base_url: str, token: str) -> str:
    return LINK.sub(lambda m: tracked_url(base_url, token, m.group(0)), body)


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url}{reverse('campaign-unsubscribe', args=[token])}"
