"""Points, money and explanations, formatted for the reader's language."""

from decimal import ROUND_HALF_UP, Decimal

import segno
from django import template
from django.conf import settings
from django.utils import formats
from django.utils.safestring import mark_safe
from django.utils.translation import get_language

from rewards.rules import explain, explain_summary

register = template.Library()


@register.filter
def points(value) -> str:
    """1234 → "1,234" / "1.234" / "1 234", as the active language writes numbers."""
    if value in (None, ""):
        return ""
    return formats.number_format(int(value), 0, use_l10n=True, force_grouping=True)


@register.filter
def signed_points(value) -> str:
    value = int(value or 0)
    return ("+" if value > 0 else "−" if value < 0 else "") + points(abs(value))


@register.filter
def money(value, currency: str | None = None) -> str:
    if value in (None, ""):
        return ""
    # Rounded half up to the cent first: number_format cuts extra decimals off.
    cents = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    amount = formats.number_format(cents, 2, use_l10n=True, force_grouping=True)
    return f"{amount} {currency or settings.PROGRAM_CURRENCY}"


@register.filter
def percent(value) -> int:
    return round(float(value or 0) * 100)


@register.filter
def translated_name(obj) -> str:
    """A reward's or tier's name in the active language."""
    if obj is None:
        return ""
    return obj.name_in(get_language())


@register.filter
def reward_description(reward) -> str:
    return reward.description_in(get_language())


MONEY_KEYS = ("amount", "minimum", "refund")


def _localised(explanation) -> list[dict]:
    """The stored explanation with its amounts written the reader's way (60, 1.234,50)."""
    lines = []
    for line in explanation or []:
        line = dict(line)
        for key in MONEY_KEYS:
            if key in line:
                try:
                    value = Decimal(str(line[key]))
                except ArithmeticError:
                    continue
                places = 0 if value == value.to_integral_value() else 2
                line[key] = formats.number_format(value, places, use_l10n=True, force_grouping=True)
        lines.append(line)
    return lines


@register.filter
def entry_summary(entry) -> str:
    """One line for a ledger entry: "120 pts: 60 × 1 base, × 2 Gold"."""
    return explain_summary(entry.points, _localised(entry.explanation))


@register.filter
def entry_lines(entry) -> list[str]:
    return explain(_localised(entry.explanation))


@register.simple_tag
def qr_svg(data: str, label: str = "", scale: int = 5):
    """A QR code as inline SVG (segno), labelled for screen readers."""
    svg = segno.make(data, error="m").svg_inline(scale=scale, dark="#1d2733", light="#ffffff", border=2)
    svg = svg.replace(
        "<svg ", f'<svg role="img" aria-label="{template.defaultfilters.force_escape(label)}" ', 1
    )
    return mark_safe(svg)  # noqa: S308 - segno's SVG from our own data, the label escaped
