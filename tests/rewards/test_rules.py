"""The earning rules as pure functions: no database."""

import datetime as dt
from decimal import Decimal

from rewards import rules

CTX = rules.EarnContext(points_per_unit=Decimal("1"), category_multipliers={"beans": Decimal("2")})


def test_points_are_rounded_down_once_per_purchase():
    assert rules.purchase_points(amount=Decimal("59.99"), ctx=CTX).points == 59


def test_lines_covering_part_of_the_basket_are_not_scaled_up():
    result = rules.purchase_points(
        amount=Decimal("129.95"), lines=[rules.Line("beans", Decimal("89.95"))], ctx=CTX
    )
    assert result.points == 219  # 129.95 + 89.95 extra
    assert result.explanation[1]["amount"] == "89.95"


def test_lines_adding_up_to_more_than_the_amount_are_scaled_down():
    lines = [rules.Line("beans", Decimal("100")), rules.Line("cups", Decimal("100"))]
    result = rules.purchase_points(amount=Decimal("150"), lines=lines, ctx=CTX)
    assert result.points == 225  # 150 base + 75 (beans' share) extra


def test_tier_and_best_promotion_multiply_and_promotions_do_not_stack():
    ctx = rules.EarnContext(
        points_per_unit=Decimal("1"),
        tier_name="Gold",
        tier_multiplier=Decimal("2"),
        promotions=[("Double week", Decimal("2")), ("Triple day", Decimal("3"))],
    )
    result = rules.purchase_points(amount=Decimal("10"), ctx=ctx)
    assert result.points == 60
    assert [line["code"] for line in result.explanation] == ["base", "tier", "promotion", "total"]


def test_below_minimum_spend_and_non_members_earn_nothing():
    ctx = rules.EarnContext(points_per_unit=Decimal("1"), minimum_spend=Decimal("20"))
    assert rules.purchase_points(amount=Decimal("19.99"), ctx=ctx).points == 0
    non_member = rules.EarnContext(points_per_unit=Decimal("1"), is_member=False)
    assert rules.purchase_points(amount=Decimal("100"), ctx=non_member).points == 0


def test_clawback_never_leaves_the_member_ahead_and_is_exact_in_total():
    earned, amount = 99, Decimal("99")
    first = rules.clawback_points(
        points_earned=earned,
        amount=amount,
        refunded_before=Decimal("0"),
        refund=Decimal("0.50"),
        clawed_before=0,
    )
    assert first == 1  # keeps floor(99 × 98.5 / 99) = 98
    rest = rules.clawback_points(
        points_earned=earned,
        amount=amount,
        refunded_before=Decimal("0.50"),
        refund=Decimal("98.50"),
        clawed_before=1,
    )
    assert first + rest == earned


def test_expiry_date_is_the_day_after_n_months_and_clamps_short_months():
    assert rules.expiry_date(dt.date(2024, 11, 23), 24) == dt.date(2026, 11, 24)
    assert rules.expiry_date(dt.date(2024, 1, 31), 1) == dt.date(2024, 3, 1)  # valid through 29 Feb
    assert rules.expiry_date(dt.date(2024, 1, 31), 0) is None


def test_birthday_on_29_february_is_celebrated_on_28_february_in_other_years():
    assert rules.is_birthday(dt.date(2000, 2, 29), dt.date(2026, 2, 28))
    assert not rules.is_birthday(dt.date(2000, 2, 29), dt.date(2028, 2, 28))
    assert rules.is_birthday(dt.date(2000, 2, 29), dt.date(2028, 2, 29))


def test_event_cap():
    assert rules.event_points(rule_points=25, cap_count=2, already_awarded_in_period=2).points == 0
    assert rules.event_points(rule_points=25, cap_count=None, already_awarded_in_period=99).points == 25


def test_explanation_renders_in_the_active_language():
    from django.utils.translation import override

    result = rules.purchase_points(amount=Decimal("10"), ctx=CTX)
    with override("da"):
        danish = rules.explain(result.explanation)
    with override("en"):
        english = rules.explain(result.explanation)
    assert danish != english
