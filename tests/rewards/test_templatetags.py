"""The portal's formatting filters: money is rounded to the cent, in the active locale."""

from decimal import Decimal

from django.utils.translation import override

from rewards.templatetags.loyalty import money


def test_money_rounds_half_up_to_the_cent_instead_of_cutting_digits_off():
    with override("en"):
        assert money(Decimal("1491.465")) == "1,491.47 DKK"
        assert money(Decimal("1491.464")) == "1,491.46 DKK"
        assert money("12") == "12.00 DKK"
        assert money(None) == ""
    with override("da"):
        assert money(Decimal("1491.465"), "SEK") == "1.491,47 SEK"
