"""Reads of the loyalty core: balances, ledgers, rules in force. Fast paths live here."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum
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
from .prepared import prepared_cursor
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


def promotions_in_force_sql(customer: str) -> str:
    """promotions_in_force as one scalar subquery (a JSON array of [name, multiplier]), for the
    purchase path to read with the lock on the member's account in one round trip. `customer`
    is the SQL expression of the customer's id (a column or a parameter); `%(at)s` the time."""
    return f"""
    SELECT COALESCE(json_agg(json_build_array(pr.name, pr.multiplier::text)), '[]'::json)
    FROM (
        SELECT DISTINCT p.name, p.multiplier FROM rewards_promotion p
        WHERE p.is_active AND p.starts_at <= %(at)s AND p.ends_at > %(at)s
          AND (
            NOT EXISTS (SELECT 1 FROM rewards_promotion_customers pc WHERE pc.promotion_id = p.id)
            OR EXISTS (
                SELECT 1 FROM rewards_promotion_customers pc
                WHERE pc.promotion_id = p.id AND pc.customer_id = {customer}
            )
          )
    ) pr
    """  # noqa: S608 - `customer` is a column name or a placeholder from this module's callers


def tier_get(tier_id: int) -> Tier:
    """A tier by id from the cached program (a tier added in another process: from the database)."""
    for tier in program_get()["tiers"]:
        if tier.pk == tier_id:
            return tier
    return Tier.objects.get(pk=tier_id)


def earn_context_get(
    *,
    customer: Customer,
    tier: Tier | None,
    at: dt.datetime,
    promotions: list[tuple[str, Decimal]] | None = None,
) -> EarnContext:
    """What the rules need for this member at `at`; `promotions` when the caller already read
    them (the purchase path reads them with its lock)."""
    program = program_get()
    rules = program["rules"]
    if promotions is None:
        promotions = promotions_in_force(customer_id=customer.pk, at=at) if customer.is_member else []
    return EarnContext(
        points_per_unit=rules.points_per_unit,
        minimum_spend=rules.minimum_spend,
        category_multipliers=program["categories"],
        # The base name is stored with the entry; pages render it in the reader's language.
        tier_name=tier.name if tier else None,
        tier_multiplier=tier.multiplier if tier else Decimal("1"),
        promotions=promotions if customer.is_member else (),
        is_member=customer.is_member,
    )


def qualifying_spend(*, customer_id: int, as_of: dt.datetime) -> Decimal:
    """Net spend (amount − refunds) in the 365 days up to `as_of`: what tiers are earned by."""
    total = Purchase.objects.filter(
        customer_id=customer_id, occurred_at__gt=as_of - dt.timedelta(days=365), occurred_at__lte=as_of
    ).aggregate(total=Sum(F("amount") - F("refunded_amount")))["total"]
    return total or Decimal("0")


# Customers read with a plain cursor and turned into models without Django's converters
# (a RawQuerySet cost a quarter of a customer read): fine while no field needs a converter.
_CUSTOMER_FIELDS = list(Customer._meta.concrete_fields)
if any(hasattr(f, "from_db_value") for f in _CUSTOMER_FIELDS):
    raise RuntimeError("accounts.Customer gained a field with from_db_value: read it through the ORM")
_CUSTOMER_COLUMNS = ", ".join(f"c.{f.column}" for f in _CUSTOMER_FIELDS)
_CUSTOMER_STANDING_SQL = f"""
SELECT {_CUSTOMER_COLUMNS}, a.balance, a.tier_id,
       CASE WHEN a.customer_id IS NOT NULL THEN (
           SELECT COALESCE(SUM(p.amount - p.refunded_amount), 0) FROM rewards_purchase p
           WHERE p.customer_id = c.id AND p.occurred_at > %(spend_from)s AND p.occurred_at <= %(now)s
       ) END,
       CASE WHEN a.customer_id IS NOT NULL THEN (
           SELECT COALESCE(SUM(l.remaining), 0) FROM rewards_pointslot l
           WHERE l.account_id = c.id AND l.remaining > 0 AND l.expires_at IS NOT NULL
             AND l.expires_at <= %(expiring_until)s
       ) END
FROM accounts_customer c LEFT JOIN rewards_pointsaccount a ON a.customer_id = c.id
WHERE c.external_ref = %(ref)s
"""  # noqa: S608 - the column list is the model's; the values go as parameters


def customer_from_row(row) -> Customer:
    """A Customer from the first columns of a row that starts with _CUSTOMER_COLUMNS."""
    fields = _CUSTOMER_FIELDS
    return Customer.from_db(connection.alias, [f.attname for f in fields], row[: len(fields)])


def customer_standing_get(*, external_ref: str, expiring_within_days: int = 30) -> Customer | None:
    """The customer with what the API's customer read shows, in one query: `account_balance`
    and `account_tier_id` (None for a shopper without an account), `qualifying_spend_now`
    (net spend of the last 365 days) and `points_expiring_soon` (left on lots expiring within
    the given days). The same figures as qualifying_spend and points_expiring."""
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(
            _CUSTOMER_STANDING_SQL,
            {
                "ref": external_ref,
                "now": now,
                "spend_from": now - dt.timedelta(days=365),
                "expiring_until": now + dt.timedelta(days=expiring_within_days),
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    customer = customer_from_row(row)
    (
        customer.account_balance,
        customer.account_tier_id,
        customer.qualifying_spend_now,
        customer.points_expiring_soon,
    ) = row[len(_CUSTOMER_FIELDS) :]
    if customer.qualifying_spend_now is not None and not isinstance(customer.qualifying_spend_now, Decimal):
        # SQLite (the demo) sums decimals as numbers; PostgreSQL already answers a Decimal.
        customer.qualifying_spend_now = Decimal(str(customer.qualifying_spend_now))
    return customer


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


# --- The member portal -------------------------------------------------------------


def account_get(*, customer_id: int) -> PointsAccount | None:
    return PointsAccount.objects.select_related("tier").filter(pk=customer_id).first()


def rewards_for_member(*, customer: Customer, account: PointsAccount) -> list[dict]:
    """The catalog as one member sees it: what each reward needs that they lack (points,
    tier, the per-customer limit), those they can redeem now first, then by cost."""
    from .models import Redemption

    rewards = list(rewards_available())
    taken = dict(
        Redemption.objects.filter(customer=customer)
        .exclude(state=Redemption.State.CANCELLED)
        .values("reward_id")
        .annotate(n=Count("id"))
        .values_list("reward_id", "n")
    )
    spend_floor = account.tier.min_qualifying_spend if account.tier else None
    items = []
    for reward in rewards:
        missing_points = max(0, reward.cost_points - max(account.balance, 0))
        tier_too_low = reward.min_tier_id and (
            spend_floor is None or spend_floor < reward.min_tier.min_qualifying_spend
        )
        tier_missing = reward.min_tier if tier_too_low else None
        limit_reached = (
            reward.per_customer_limit is not None and taken.get(reward.pk, 0) >= reward.per_customer_limit
        )
        can_redeem = (
            not missing_points and tier_missing is None and not limit_reached and account.balance >= 0
        )
        items.append(
            {
                "reward": reward,
                "can_redeem": can_redeem,
                "missing_points": missing_points,
                "tier_missing": tier_missing,
                "limit_reached": limit_reached,
                "progress": min(1.0, max(account.balance, 0) / reward.cost_points),
            }
        )
    items.sort(key=lambda item: (not item["can_redeem"], item["reward"].cost_points, item["reward"].name))
    return items


def redemptions_of(*, customer_id: int) -> QuerySet:
    from .models import Redemption

    return Redemption.objects.filter(customer_id=customer_id).select_related("reward").order_by("-created_at")


def referral_summary(*, customer: Customer) -> dict:
    """Friends who joined with the member's code, and the points their first purchases earned."""
    joined = Customer.objects.filter(referred_by=customer, enrolled_at__isnull=False).count()
    bonuses = LedgerEntry.objects.filter(
        account_id=customer.pk,
        kind=LedgerEntry.Kind.BONUS,
        idempotency_key__startswith="referral:",
        idempotency_key__endswith=":referrer",
    ).aggregate(n=Count("id"), points=Sum("points"))
    return {"joined": joined, "rewarded": bonuses["n"] or 0, "points": bonuses["points"] or 0}


def customer_export(customer: Customer) -> dict:
    """What the loyalty core holds about a customer, for the member's data download."""
    from .models import Redemption

    account = account_get(customer_id=customer.pk)
    purchases = Purchase.objects.filter(customer=customer).prefetch_related("lines").order_by("occurred_at")
    return {
        "account": {
            "balance": account.balance,
            "tier": account.tier.name if account.tier else None,
        }
        if account
        else None,
        "ledger": [
            {
                "at": e.created_at.isoformat(),
                "kind": e.kind,
                "points": e.points,
                "balance_after": e.balance_after,
                "explanation": e.explanation,
            }
            for e in LedgerEntry.objects.filter(account_id=customer.pk).order_by("created_at", "id")
        ],
        "purchases": [
            {
                "id": p.external_id,
                "occurred_at": p.occurred_at.isoformat(),
                "amount": str(p.amount),
                "currency": p.currency,
                "refunded_amount": str(p.refunded_amount),
                "points_earned": p.points_earned,
                "lines": [
                    {"sku": li.sku, "category": li.category, "amount": str(li.amount)} for li in p.lines.all()
                ],
            }
            for p in purchases
        ],
        "redemptions": [
            {
                "reward": r.reward.name,
                "points": r.points,
                "voucher_code": r.voucher_code,
                "state": r.state,
                "created_at": r.created_at.isoformat(),
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            }
            for r in Redemption.objects.filter(customer=customer).select_related("reward")
        ],
    }


# --- The staff panel: the customer 360 page and the home dashboard ---------------------------


def purchases_of(*, customer_id: int, limit: int = 20) -> list[Purchase]:
    """The newest purchases of a customer with their refunds (two queries)."""
    return list(
        Purchase.objects.filter(customer_id=customer_id)
        .select_related("integration")
        .prefetch_related("refunds")
        .order_by("-occurred_at", "-id")[:limit]
    )


def purchase_totals(*, customer_id: int) -> dict:
    """How many purchases, how much spent and refunded, over the customer's whole history."""
    row = Purchase.objects.filter(customer_id=customer_id).aggregate(
        count=Count("id"), amount=Sum("amount"), refunded=Sum("refunded_amount")
    )
    return {
        "count": row["count"],
        "amount": row["amount"] or Decimal("0"),
        "refunded": row["refunded"] or Decimal("0"),
    }


def _net_redeemed() -> dict:
    """Conditional sums: points credited (earn, bonus) and redeemed net of cancelled vouchers."""
    return {
        "issued": Q(kind__in=[LedgerEntry.Kind.EARN, LedgerEntry.Kind.BONUS]),
        "redeemed": Q(kind=LedgerEntry.Kind.REDEEM),
        "returned": Q(kind=LedgerEntry.Kind.REVERSAL, redemption__isnull=False),
    }


def points_flow(*, windows: dict[str, tuple[dt.datetime, dt.datetime]]) -> dict[str, dict[str, int]]:
    """Points issued (earned and bonus) and redeemed (net of cancelled vouchers) in each named
    [start, end) window, in one aggregate over the ledger."""
    kinds = _net_redeemed()
    aggregates = {}
    for name, (start, end) in windows.items():
        when = Q(created_at__gte=start, created_at__lt=end)
        for kind, condition in kinds.items():
            aggregates[f"{name}__{kind}"] = Sum("points", filter=when & condition)
    earliest = min((start for start, _end in windows.values()), default=None)
    entries = LedgerEntry.objects.all()
    if earliest is not None:
        entries = entries.filter(created_at__gte=earliest)
    row = entries.aggregate(**aggregates) if aggregates else {}
    return {
        name: {
            "issued": row[f"{name}__issued"] or 0,
            "redeemed": -(row[f"{name}__redeemed"] or 0) - (row[f"{name}__returned"] or 0),
        }
        for name in windows
    }


def active_members(*, since: dt.datetime, weeks: list[tuple[dt.datetime, dt.datetime]]) -> dict:
    """Members who bought since `since`, and distinct members who bought in each week: one query."""
    aggregates = {"active": Count("customer_id", distinct=True, filter=Q(occurred_at__gte=since))}
    for i, (start, end) in enumerate(weeks):
        aggregates[f"w{i}"] = Count(
            "customer_id", distinct=True, filter=Q(occurred_at__gte=start, occurred_at__lt=end)
        )
    earliest = min([since, *(start for start, _end in weeks)])
    row = Purchase.objects.filter(occurred_at__gte=earliest, customer__enrolled_at__isnull=False).aggregate(
        **aggregates
    )
    return {"active": row["active"], "weekly": [row[f"w{i}"] for i in range(len(weeks))]}


def points_outstanding() -> dict:
    """Points members hold (positive balances), and the debt of accounts below zero: one query."""
    row = PointsAccount.objects.aggregate(
        points=Sum("balance", filter=Q(balance__gt=0)),
        holders=Count("pk", filter=Q(balance__gt=0)),
        debt=Sum("balance", filter=Q(balance__lt=0)),
        in_debt=Count("pk", filter=Q(balance__lt=0)),
    )
    return {
        "points": row["points"] or 0,
        "holders": row["holders"],
        "debt": -(row["debt"] or 0),
        "in_debt": row["in_debt"],
    }


def ledger_check_latest():
    """The newest recorded run of the daily ledger check, or None before the first."""
    from .models import LedgerCheck

    return LedgerCheck.objects.order_by("-checked_at", "-id").first()


def integrations_failing(*, since: dt.datetime) -> list:
    """Active integrations with a failed API call since `since`, the most recent first."""
    from .models import Integration

    return list(
        Integration.objects.filter(is_active=True, last_failure_at__gte=since).order_by("-last_failure_at")
    )
