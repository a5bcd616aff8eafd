"""The earning rules as pure functions over plain values.

The portal, the staff preview, the API and the ledger all call these, so a number
is explained the same way everywhere. An explanation is a list of structured
lines (a code and its values) stored with the ledger entry; `explain()` renders
them in the reader's language at display time.

Rounding is stated once, here: points are computed in exact decimals and
rounded down once per purchase (`ROUND_FLOOR`); money is kept to 2 decimals.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from django.utils.translation import gettext as _
from django.utils.translation import ngettext

CENT = Decimal("0.01")
ONE = Decimal("1")


@dataclass(frozen=True)
class Line:
    """A purchase line: what category multipliers look at."""

    category: str
    amount: Decimal


@dataclass(frozen=True)
class EarnContext:
    """Everything the rules need to know about the program and the member, as plain values."""

    points_per_unit: Decimal
    minimum_spend: Decimal = Decimal("0")
    category_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    tier_name: str | None = None
    tier_multiplier: Decimal = ONE
    # (name, multiplier) of every promotion in force for this member at the purchase time.
    promotions: Sequence[tuple[str, Decimal]] = ()
    is_member: bool = True


@dataclass(frozen=True)
class EarnResult:
    points: int
    explanation: list[dict]


def _num(value: Decimal) -> str:
    """A decimal as a short string: 2.00 → "2", 1.50 → "1.5"."""
    normalised = value.normalize()
    return format(normalised, "f") if normalised == normalised.to_integral() else str(normalised)


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT)


def purchase_points(*, amount: Decimal, lines: Iterable[Line] = (), ctx: EarnContext) -> EarnResult:
    """Points a purchase earns, and why, line by line.

    base = amount × points per unit; each category with a multiplier m adds
    (its share of the amount) × rate × (m − 1); the subtotal is multiplied by the
    tier's multiplier and by the best promotion in force (promotions do not
    stack: the highest one applies); the result is rounded down once.
    Line amounts are scaled down to the purchase amount when they add up to more
    (a discount on the whole basket); the part of the amount no line covers earns the base rate.
    """
    amount = money(amount)
    if not ctx.is_member:
        return EarnResult(0, [{"code": "not_member"}])
    if amount < ctx.minimum_spend:
        return EarnResult(
            0, [{"code": "below_minimum", "amount": str(amount), "minimum": str(ctx.minimum_spend)}]
        )
    rate = ctx.points_per_unit
    explanation: list[dict] = [
        {"code": "base", "amount": str(amount), "rate": _num(rate), "points": _num(amount * rate)}
    ]
    subtotal = amount * rate

    lines = [line for line in lines if line.amount > 0]
    lines_total = sum((line.amount for line in lines), Decimal("0"))
    if lines_total > 0:
        # Lines adding up to more than the amount (a basket discount) are scaled down to it;
        # lines covering only part of the basket leave the rest earning at the base rate.
        scale = min(ONE, amount / lines_total)
        by_category: dict[str, Decimal] = {}
        for line in lines:
            by_category[line.category] = by_category.get(line.category, Decimal("0")) + line.amount
        for category in sorted(by_category):
            multiplier = ctx.category_multipliers.get(category)
            if multiplier is None or multiplier == ONE:
                continue
            share = money(by_category[category] * scale)
            extra = share * rate * (multiplier - ONE)
            subtotal += extra
            explanation.append(
                {
                    "code": "category",
                    "category": category,
                    "amount": str(share),
                    "multiplier": _num(multiplier),
                    "points": _num(extra),
                }
            )

    if ctx.tier_name and ctx.tier_multiplier != ONE:
        subtotal *= ctx.tier_multiplier
        explanation.append({"code": "tier", "tier": ctx.tier_name, "multiplier": _num(ctx.tier_multiplier)})

    if ctx.promotions:
        name, multiplier = max(ctx.promotions, key=lambda p: (p[1], p[0]))
        if multiplier != ONE:
            subtotal *= multiplier
            explanation.append({"code": "promotion", "name": name, "multiplier": _num(multiplier)})

    points = int(subtotal.to_integral_value(rounding=ROUND_FLOOR))
    explanation.append({"code": "total", "points": points})
    return EarnResult(points, explanation)


def clawback_points(
    *, points_earned: int, amount: Decimal, refunded_before: Decimal, refund: Decimal, clawed_before: int
) -> int:
    """Points to take back for a refund, proportionally to the refunded amount.

    The member keeps floor(earned × net amount / amount): never more than the
    net amount would have earned, so buying and refunding never leaves them
    ahead, and a full refund takes back exactly what was earned, however it was
    split into partial refunds.
    """
    if points_earned <= 0 or amount <= 0:
        return 0
    refunded_after = min(amount, refunded_before + refund)
    kept = int(
        (Decimal(points_earned) * (amount - refunded_after) / amount).to_integral_value(rounding=ROUND_FLOOR)
    )
    return max(0, points_earned - kept - clawed_before)


def expiry_date(earned_on: dt.date, months: int) -> dt.date | None:
    """The first day on which points earned on `earned_on` are no longer valid (None: never).

    Points earned on 23 Nov 2024 with 24 months are valid through 23 Nov 2026
    and gone on 24 Nov; a month without that day uses its last day.
    """
    if months <= 0:
        return None
    month_index = earned_on.month - 1 + months
    year, month = earned_on.year + month_index // 12, month_index % 12 + 1
    day = min(earned_on.day, calendar.monthrange(year, month)[1])
    return dt.date(year, month, day) + dt.timedelta(days=1)


def is_birthday(birthday: dt.date, on: dt.date) -> bool:
    """Birthday falls on `on`; 29 February is celebrated on 28 February in other years."""
    if (birthday.month, birthday.day) == (on.month, on.day):
        return True
    return (
        birthday.month == 2
        and birthday.day == 29
        and not calendar.isleap(on.year)
        and (on.month, on.day) == (2, 28)
    )


def event_points(*, rule_points: int, cap_count: int | None, already_awarded_in_period: int) -> EarnResult:
    """Fixed points for an event under its rule, unless the cap for the period is reached."""
    if cap_count is not None and already_awarded_in_period >= cap_count:
        return EarnResult(0, [{"code": "event_cap", "cap": cap_count}])
    return EarnResult(rule_points, [{"code": "event", "points": rule_points}])


def tier_for_spend(spend: Decimal, tiers: Sequence[tuple[int, Decimal]]) -> int | None:
    """The id of the highest tier whose threshold `spend` reaches; `tiers` = (id, threshold)."""
    best = None
    for tier_id, threshold in sorted(tiers, key=lambda t: t[1]):
        if spend >= threshold:
            best = tier_id
    return best


# --- Rendering -----------------------------------------------------------------


def _explain_line(line: Mapping) -> str:  # noqa: C901 - one branch per kind of line, on purpose
    code = line.get("code")
    if code == "not_member":
        return _("Not a member at the time: no points.")
    if code == "below_minimum":
        return _("%(amount)s is below the minimum spend of %(minimum)s: no points.") % line
    if code == "base":
        return _("%(amount)s × %(rate)s points = %(points)s base points") % line
    if code == "category":
        return _("Category %(category)s (%(amount)s) × %(multiplier)s: %(points)s extra points") % line
    if code == "tier":
        return _("× %(multiplier)s for your tier %(tier)s") % line
    if code == "promotion":
        return _("× %(multiplier)s promotion: %(name)s") % line
    if code == "total":
        return (
            ngettext(
                "= %(points)s point (rounded down)", "= %(points)s points (rounded down)", line["points"]
            )
            % line
        )
    if code == "signup_bonus":
        return _("Welcome bonus for joining")
    if code == "birthday_bonus":
        return _("Birthday bonus %(year)s") % line
    if code == "referral_referrer":
        return _("Referral bonus: %(friend)s made a first purchase") % line
    if code == "referral_referee":
        return _("Referral bonus for joining through a friend")
    if code == "event":
        return _("Points for %(name)s") % {"name": line.get("name", line.get("event_type", ""))}
    if code == "event_cap":
        return _("Limit of %(cap)s times per period reached: no points.") % line
    if code == "redeem":
        return _("Redeemed for %(reward)s") % line
    if code == "reversal":
        return _("Returned: redemption of %(reward)s cancelled") % line
    if code == "expire":
        return _("Expired: points earned on %(earned_on)s") % line
    if code == "clawback":
        return _("Refund of %(refund)s on purchase %(purchase)s: points taken back") % line
    if code == "gift":
        return _("Gift: %(name)s") % line
    if code == "adjust":
        return _("Correction by staff: %(reason)s") % line
    if code == "debt_repaid":
        return (
            ngettext(
                "%(points)s point repaid points debt", "%(points)s points repaid points debt", line["points"]
            )
            % line
        )
    if code == "tier_upgrade":
        return _("Upgraded to %(tier)s") % line
    return str(line.get("text") or code or "")


def explain(explanation: Iterable[Mapping]) -> list[str]:
    """The explanation's lines in the active language."""
    return [_explain_line(line) for line in explanation]


def explain_summary(points: int, explanation: Iterable[Mapping]) -> str:
    """One line: "120 pts: 60 × 1 base, × 2 Gold"."""
    parts = []
    for line in explanation:
        code = line.get("code")
        if code == "base":
            parts.append(_("%(amount)s × %(rate)s base") % line)
        elif code == "category":
            parts.append(_("%(category)s × %(multiplier)s") % line)
        elif code in ("tier", "promotion"):
            parts.append(f"× {line['multiplier']} {line.get('tier') or line.get('name')}")
        elif code != "total":
            parts.append(_explain_line(line))
    return _("%(points)s pts: %(parts)s") % {"points": points, "parts": ", ".join(parts)}
