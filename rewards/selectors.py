"""Reads of the loyalty core: balances, ledgers, rules in force. Fast paths live here."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

from django.db.models import F, Q, QuerySet, Sum
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from accounts.models import Customer

from .models import (
    CategoryMultiplier,
    LedgerEntry,
    PointsAccount,
    PointsLot,
    ProgramRules,
    Promotion,
    Purchase,
    Reward,
    Tier,
)
from .rules import EarnContext

# Rules, category multipliers and tiers change rarely and are read on every
# purchase: keep them in memory for a few seconds. A save in this process
# clears the copy at once; other processes see the change within the TTL.
RULES_CACHE_SECONDS = 10.0
_program_cache: dict = {}
_program_lock = threading.Lock()


def _program_cache_clear(**kwargs) -> None:
    with _program_lock:
        _program_cache.clear()


for _model in (ProgramRules, CategoryMultiplier, Tier):
    post_save.connect(_program_cache_clear, sender=_model, dispatch_uid=f"rules-cache-{_model.__name__}")
    post_delete.connect(
        _program_cache_clear, sender=_model, dispatch_uid=f"rules-cache-del-{_model.__name__}"
    )


def program_get() -> dict:
    """Program rules, active category multipliers and tiers (cached briefly)."""
    with _program_lock:
        cached = _program_cache.get("program")
        if cached and cached["at"] > time.monotonic() - RULES_CACHE_SECONDS:
            return cached
    rules = ProgramRules.current()
    program = {
        "at": time.monotonic(),
        "rules": rules,
        "categories": {c.category: c.multiplier for c in CategoryMultiplier.objects.filter(is_active=True)},
        "tiers": list(Tier.objects.order_by("min_qualifying_spend")),
    }
    with _program_lock:
        _program_cache["program"] = program
    return program


def tier_lowest() -> Tier | None:
    tiers = program_get()["tiers"]
    return tiers[0] if tiers and tiers[0].min_qualifying_spend == 0 else None


def promotions_in_force(*, customer_id: int, at: dt.datetime) -> list[tuple[str, Decimal]]:
    rows = (
        Promotion.objects.filter(is_active=True, starts_at__lte=at, ends_at__gt=at)
        .filter(Q(customers__isnull=True) | Q(customers__id=customer_id))
        .values_list("name", "multiplier")
        .distinct()
    )
    return list(rows)


def earn_context_get(*, customer: Customer, tier: Tier | None, at: dt.datetime) -> EarnContext:
    program = program_get()
    rules = program["rules"]
    return EarnContext(
        points_per_unit=rules.points_per_unit,
        minimum_spend=rules.minimum_spend,
        category_multipliers=program["categories"],
        # The base name is stored with the entry; pages render it in the reader's language.
        tier_name=tier.name if tier else None,
        tier_multiplier=tier.multiplier if tier else Decimal("1"),
        promotions=promotions_in_force(customer_id=customer.pk, at=at) if customer.is_member else (),
        is_member=customer.is_member,
    )


def qualifying_spend(*, customer_id: int, as_of: dt.datetime) -> Decimal:
    """Net spend (amount − refunds) in the 365 days up to `as_of`: what tiers are earned by."""
    total = Purchase.objects.filter(
        customer_id=customer_id, occurred_at__gt=as_of - dt.timedelta(days=365), occurred_at__lte=as_of
    ).aggregate(total=Sum(F("amount") - F("refunded_amount")))["total"]
    return total or Decimal("0")


def tier_progress(*, account: PointsAccount, spend: Decimal) -> dict:
    """Where a member stands: current tier, the next one, and what is missing to reach it."""
    tiers = program_get()["tiers"]
    current = account.tier
    next_tier = next((t for t in tiers if t.min_qualifying_spend > spend), None)
    progress = None
    if next_tier is not None:
        floor = current.min_qualifying_spend if current else Decimal("0")
        span = next_tier.min_qualifying_spend - floor
        progress = float(max(Decimal("0"), min(Decimal("1"), (spend - floor) / span))) if span > 0 else 1.0
    return {
        "tier": current,
        "qualifying_spend": spend,
        "next_tier": next_tier,
        "spend_to_next_tier": (next_tier.min_qualifying_spend - spend) if next_tier else None,
        "progress": progress,
    }


def points_expiring(*, customer_id: int, within_days: int = 30, now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    total = PointsLot.objects.filter(
        account_id=customer_id,
        remaining__gt=0,
        expires_at__isnull=False,
        expires_at__lte=now + dt.timedelta(days=within_days),
    ).aggregate(total=Sum("remaining"))["total"]
    return total or 0


def ledger_list(*, customer_id: int, kind: str | None = None) -> QuerySet[LedgerEntry]:
    entries = LedgerEntry.objects.filter(account_id=customer_id).order_by("-created_at", "-id")
    if kind:
        entries = entries.filter(kind=kind)
    return entries


def rewards_available(*, at: dt.datetime | None = None) -> QuerySet[Reward]:
    at = at or timezone.now()
    return (
        Reward.objects.filter(is_active=True)
        .filter(Q(active_from__isnull=True) | Q(active_from__lte=at))
        .filter(Q(active_until__isnull=True) | Q(active_until__gt=at))
        .filter(Q(stock__isnull=True) | Q(stock__gt=0))
        .select_related("min_tier")
        .order_by("cost_points", "name")
    )
