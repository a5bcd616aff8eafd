"""What the program adds: difference-in-differences around enrollment against matched
non-members (METRICS.md, "The program's effect").

For each enrollment month E (a cohort whose K months after enrollment have all ended):
- treated: members who enrolled in E, had been customers for at least K months before E
  (so the pre-period is K months of their own history, not months before they first came)
  and bought in E;
- candidate controls: customers with the same K months of history, who bought in E, and were not members
  then (never enrolled, or enrolled in E + 2 or later), a deterministic sample when many.
  Both groups buy in month E because members join at a visit (or right after one): a
  member is alive at E by construction, and controls who had silently left before E would
  fall off after it and make the program look better than it is. A control who joins later
  counts only for the months before joining (their post rate is over those months):
  requiring controls to stay out of the program for all K months would pick those who
  visited least (each visit is a chance to join) and, again, flatter the program;
- pre = the K calendar months before E, post = the K months after it; the enrollment month
  itself is left out of both (it is partly before and partly after);
- matching: nearest neighbour with replacement on pre-period recency, frequency
  (purchase days), monetary value (net spend), tenure, and purchase days per month over
  the whole history before E (the K months alone leave too much doubt about a customer's
  rate, and heavier buyers join more), each log(1 + value) and scaled by
  its pooled standard deviation; balance is the standardised mean difference of each
  covariate before and after matching (target below 0.1);
- outcome per customer: post rate − pre rate, per month, for purchase days and for spend;
  the estimate is the mean over treated members of their change minus their matched
  control's change, over the same calendar months;
- 95 % interval: percentile bootstrap over treated members (each resampled with its
  matched control). Reusing a control for several members makes pairs slightly dependent,
  which this interval ignores (the usual simplification for matching with replacement).
Pooled estimates put all cohorts' pairs together; segments split the pooled members by
pre-period purchase days into light / medium / heavy thirds.
"""

# ruff: noqa: S608 - SQL text here is built from constants, table names and numbers computed in
# this module, never from user input; values travel as query parameters.

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy  # scipy.spatial loads on first use

from . import sql
from .compute import Parameters, months_sql

COVARIATES = ["recency", "frequency", "monetary", "tenure", "history_frequency"]
OUTCOMES = ["purchase_days", "spend"]


@dataclass
class Units:
    customer_id: np.ndarray
    cohort: np.ndarray
    pre_days: np.ndarray
    pre_net: np.ndarray
    post_days: np.ndarray
    post_net: np.ndarray
    recency: np.ndarray
    tenure: np.ndarray
    post_months: np.ndarray  # K, or fewer for a control who joined within the K months after E
    history_days: np.ndarray  # purchase days before E, all history

    @classmethod
    def of(cls, rows, cohort_starts: dict[int, int]) -> Units:
        data = np.array(rows, dtype=float).reshape(-1, 10)
        cohort = data[:, 1].astype(int)
        start = np.array([cohort_starts[c] for c in cohort], dtype=float)
        return cls(
            customer_id=data[:, 0].astype(np.int64),
            cohort=cohort,
            pre_days=data[:, 2],
            pre_net=data[:, 3],
            post_days=data[:, 4],
            post_net=data[:, 5],
            recency=start - data[:, 6],
            tenure=start - data[:, 7],
            post_months=data[:, 8],
            history_days=data[:, 9],
        )

    def take(self, mask) -> Units:
        return Units(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.customer_id)

    def features(self) -> np.ndarray:
        rate = self.history_days / np.maximum(self.tenure, 1) * 30.44
        return np.log1p(
            np.column_stack(
                [np.maximum(self.recency, 0), self.pre_days, np.maximum(self.pre_net, 0), self.tenure, rate]
            )
        )

    def change(self, outcome: str, months: int) -> np.ndarray:
        """Monthly rate after E minus monthly rate in the K months before E."""
        if outcome == "purchase_days":
            return self.post_days / self.post_months - self.pre_days / months
        return self.post_net / self.post_months - self.pre_net / months


@dataclass
class Pairs:
    treated: Units
    control: Units  # row i is the match of treated row i
    balance_before: dict = field(default_factory=dict)


@dataclass
class EffectResult:
    rows: list[dict]
    treated_ids: np.ndarray
    cohorts: list[int]


def smd(treated: np.ndarray, control: np.ndarray) -> float | None:
    """Standardised mean difference: (mean_t − mean_c) ÷ √((var_t + var_c) / 2)."""
    if len(treated) < 2 or len(control) < 2:
        return None
    spread = np.sqrt((treated.var(ddof=1) + control.var(ddof=1)) / 2)
    difference = treated.mean() - control.mean()
    if spread == 0:
        return 0.0 if difference == 0 else None
    return float(difference / spread)


def _balance(treated: Units, control: Units) -> dict:
    t, c = treated.features(), control.features()
    return {name: smd(t[:, i], c[:, i]) for i, name in enumerate(COVARIATES)}


def match(treated: Units, candidates: Units) -> Pairs | None:
    """Nearest-neighbour matching with replacement on the scaled covariates."""
    if not len(treated) or not len(candidates):
        return None
    t, c = treated.features(), candidates.features()
    scale = np.concatenate([t, c]).std(axis=0)
    scale[scale == 0] = 1.0
    _distance, index = scipy.spatial.cKDTree(c / scale).query(t / scale, k=1)
    return Pairs(treated, candidates.take(index), _balance(treated, candidates))


def bootstrap_interval(differences: np.ndarray, *, draws: int, rng: np.random.Generator) -> tuple:
    """Percentile 95 % interval of the mean by resampling units, in chunks to bound memory."""
    n = len(differences)
    if n < 2:
        return None, None
    means = []
    chunk = max(1, min(draws, 2_000_000 // n))
    remaining = draws
    while remaining > 0:
        size = min(chunk, remaining)
        means.append(differences[rng.integers(0, n, size=(size, n))].mean(axis=1))
        remaining -= size
    values = np.concatenate(means)
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def _estimate_rows(pairs: Pairs, *, cohort, segment, p: Parameters, rng) -> list[dict]:
    rows = []
    after = _balance(pairs.treated, pairs.control)
    balance = [
        {"covariate": name, "before": pairs.balance_before.get(name), "after": after[name]}
        for name in COVARIATES
    ]
    for outcome in OUTCOMES:
        treated_change = pairs.treated.change(outcome, p.effect_months)
        control_change = pairs.control.change(outcome, p.effect_months)
        differences = treated_change - control_change
        low, high = bootstrap_interval(differences, draws=p.bootstrap, rng=rng)
        pre = "pre_days" if outcome == "purchase_days" else "pre_net"
        post = "post_days" if outcome == "purchase_days" else "post_net"
        k = p.effect_months
        rows.append(
            {
                "method": "did",
                "outcome": outcome,
                "cohort": None if cohort is None else sql.month_start(cohort),
                "segment": segment,
                "estimate": float(differences.mean()) if len(differences) else None,
                "ci_low": low,
                "ci_high": high,
                "treated": len(pairs.treated),
                "controls": int(len(np.unique(pairs.control.customer_id))),
                "extra": {
                    "months": k,
                    "treated_pre": float(getattr(pairs.treated, pre).mean() / k),
                    "treated_post": float((getattr(pairs.treated, post) / pairs.treated.post_months).mean()),
                    "control_pre": float(getattr(pairs.control, pre).mean() / k),
                    "control_post": float((getattr(pairs.control, post) / pairs.control.post_months).mean()),
                    "balance": balance,
                },
            }
        )
    return rows


def _cohort_range(p: Parameters) -> list[int]:
    last_complete = p.as_of_month if sql.month_end(p.as_of_month) <= p.as_of else p.as_of_month - 1
    newest = last_complete - p.effect_months
    return list(range(newest - p.effect_cohorts + 1, newest + 1))


_UNIT_SQL = """
    SELECT c.customer_id, k.e,
           SUM(CASE WHEN cm.month BETWEEN k.e - {K} AND k.e - 1 THEN cm.days ELSE 0 END),
           SUM(CASE WHEN cm.month BETWEEN k.e - {K} AND k.e - 1 THEN cm.net ELSE 0 END),
           SUM(CASE WHEN cm.month BETWEEN k.e + 1 AND {post_end} THEN cm.days ELSE 0 END),
           SUM(CASE WHEN cm.month BETWEEN k.e + 1 AND {post_end} THEN cm.net ELSE 0 END),
           MAX(CASE WHEN cm.month < k.e THEN cm.last_day END),
           s.first_day,
           {post_end} - k.e,
           SUM(CASE WHEN cm.month < k.e THEN cm.days ELSE 0 END)
    FROM analytics_effect_cohort k
    JOIN analytics_cust c ON {join}
    JOIN analytics_cs s ON s.customer_id = c.customer_id AND s.first_month <= k.e - {K}
    JOIN ({months}) cm ON cm.customer_id = c.customer_id AND cm.month <= k.e + {K}
    {where}
    GROUP BY c.customer_id, k.e, s.first_day, c.enrolled_month
    HAVING SUM(CASE WHEN cm.month = k.e THEN 1 ELSE 0 END) > 0
"""


def program_effect(p: Parameters) -> EffectResult:
    """Difference-in-differences per enrollment cohort, pooled, and by pre-period segment."""
    cohorts = _cohort_range(p)
    K = p.effect_months
    sql.temp_table("analytics_effect_cohort", "e integer PRIMARY KEY")
    sql.rows_insert("analytics_effect_cohort", ["e"], [(e,) for e in cohorts])
    starts = {e: sql.day_number(sql.month_start(e)) for e in cohorts}

    def units(join: str, where: str, post_end: str) -> Units:
        # The months of tens of thousands of members and sampled candidates, probed per customer
        # in the months' primary-key indexes rather than joined to all five million months.
        with sql.planner(hashjoin=False, mergejoin=False):
            query = _UNIT_SQL.format(K=K, join=join, where=where, post_end=post_end, months=months_sql(p))
            return Units.of(sql.fetchall(query, []), starts)

    treated = units("c.enrolled_month = k.e", "", f"k.e + {K}")
    # A deterministic sample of the candidate controls when there are many (a multiplicative
    # hash of the id, the same on both databases).
    candidates_total = sql.fetchone(
        "SELECT COUNT(*) FROM analytics_cust WHERE enrolled_month IS NULL OR enrolled_month > %s",
        [cohorts[0] + K],
    )[0]
    share = min(1.0, p.effect_controls_per_cohort / max(candidates_total, 1))
    # %% is one % once the driver has substituted parameters (psycopg and Django's SQLite alike).
    where = f"WHERE (c.customer_id * 2654435761) %% 100000 < {int(share * 100000)}" if share < 1 else ""
    controls = units(
        "(c.enrolled_month IS NULL OR c.enrolled_month > k.e + 1)",
        where,
        f"(CASE WHEN c.enrolled_month IS NULL OR c.enrolled_month > k.e + {K} "
        f"THEN k.e + {K} ELSE c.enrolled_month - 1 END)",
    )
    rng = np.random.default_rng(p.seed)
    rows: list[dict] = []
    all_pairs: list[Pairs] = []
    for e in cohorts:
        pairs = match(treated.take(treated.cohort == e), controls.take(controls.cohort == e))
        if pairs is None:
            continue
        all_pairs.append(pairs)
        rows += _estimate_rows(pairs, cohort=e, segment="all", p=p, rng=rng)
    if not all_pairs:
        return EffectResult(rows, np.array([], dtype=np.int64), cohorts)
    pooled = Pairs(
        _concat([pp.treated for pp in all_pairs]),
        _concat([pp.control for pp in all_pairs]),
    )
    # Balance before matching, pooled: every cohort's members against all its candidates.
    pooled.balance_before = _balance(pooled.treated, controls.take(np.isin(controls.cohort, cohorts)))
    rows += _estimate_rows(pooled, cohort=None, segment="all", p=p, rng=rng)
    monthly = pooled.treated.pre_days / K
    low, high = np.quantile(monthly, [1 / 3, 2 / 3])
    segments = {
        "light": monthly <= low,
        "medium": (monthly > low) & (monthly <= high),
        "heavy": monthly > high,
    }
    for name, mask in segments.items():
        if mask.sum() >= 2:
            part = Pairs(pooled.treated.take(mask), pooled.control.take(mask))
            part.balance_before = pooled.balance_before
            for row in _estimate_rows(part, cohort=None, segment=name, p=p, rng=rng):
                row["extra"]["pre_purchase_days_per_month"] = [
                    float(monthly[mask].min()),
                    float(monthly[mask].max()),
                ]
                rows.append(row)
    sql.execute("DROP TABLE analytics_effect_cohort", [])
    return EffectResult(rows, pooled.treated.customer_id, cohorts)


def _concat(parts: list[Units]) -> Units:
    return Units(
        **{
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in Units.__dataclass_fields__
        }
    )
