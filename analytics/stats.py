"""Statistics helpers shared by the analytics and the campaigns (a campaign's lift over its
holdout): differences of proportions and of means with 95 % intervals, and their wording."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.translation import gettext as _

Z95 = 1.959963984540054


@dataclass
class Interval:
    estimate: float
    low: float
    high: float

    def words(self, unit: str) -> str:
        """ "+3.1 points, 95 % interval +1.2 to +5.0" """
        return _("%(estimate)s %(unit)s, 95 %% interval %(low)s to %(high)s") % {
            "estimate": f"{self.estimate:+.1f}",
            "unit": unit,
            "low": f"{self.low:+.1f}",
            "high": f"{self.high:+.1f}",
        }

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def difference_of_proportions(x1: int, n1: int, x0: int, n0: int) -> Interval | None:
    """p1 − p0 with a Newcombe (Wilson score) 95 % interval, which behaves at small counts
    and rates near 0 where the Wald interval does not."""
    if not n1 or not n0:
        return None

    def wilson(x, n):
        p = x / n
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
        return p, centre - half, centre + half

    p1, l1, u1 = wilson(x1, n1)
    p0, l0, u0 = wilson(x0, n0)
    d = p1 - p0
    return Interval(
        d, d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    )


def difference_of_means(values1: list[float], values0: list[float]) -> Interval | None:
    """Mean difference with a Welch (unequal variances) 95 % interval."""
    n1, n0 = len(values1), len(values0)
    if n1 < 2 or n0 < 2:
        return None
    from scipy import stats

    m1, m0 = sum(values1) / n1, sum(values0) / n0
    v1 = sum((v - m1) ** 2 for v in values1) / (n1 - 1)
    v0 = sum((v - m0) ** 2 for v in values0) / (n0 - 1)
    se = math.sqrt(v1 / n1 + v0 / n0)
    if se == 0:
        return Interval(m1 - m0, m1 - m0, m1 - m0)
    df = (v1 / n1 + v0 / n0) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v0 / n0) ** 2 / (n0 - 1))
    t = float(stats.t.ppf(0.975, df))
    return Interval(m1 - m0, m1 - m0 - t * se, m1 - m0 + t * se)
