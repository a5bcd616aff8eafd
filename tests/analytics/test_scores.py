"""Per-customer scores (issue 5, "Per customer"): what a full run stores for every shopper is
what the fitted BG/NBD and Gamma-Gamma models give for that shopper's own purchase days, and
the churn-risk label follows the rule the run names (METRICS.md, "Churned")."""

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest

from analytics import clv, compute, services
from analytics.models import CustomerDay, CustomerScore, ModelFit
from rewards.demo import shoppers_simulate, simulated_shoppers_write
from tests.factories import IntegrationFactory

pytestmark = pytest.mark.django_db

AS_OF = dt.date(2026, 6, 30)


@pytest.fixture
def run():
    simulation = shoppers_simulate(customers=500, months=18, seed=3, effect=0.2, end=AS_OF)
    simulated_shoppers_write(simulation, pos=IntegrationFactory(name="sim-pos"))
    return services.analytics_refresh(as_of=AS_OF, bootstrap=10)


def test_scores_hold_each_shoppers_predictions_from_the_fitted_models(run):
    fits = {f.model: f for f in ModelFit.objects.filter(run=run)}
    bg, gg = fits["bgnbd"], fits["gamma_gamma"]
    assert bg.converged and gg.converged
    p = compute.Parameters.from_settings(as_of=AS_OF, bootstrap=10)  # what the run was given
    assert p.as_json() == {k: v for k, v in run.parameters.items() if k != "churn_rule"}
    # Each shopper's BG/NBD inputs and mean spend of the repeat days, from the rollup.
    days: dict[int, list] = {}
    for customer_id, day, net in CustomerDay.objects.filter(day__lte=AS_OF).values_list(
        "customer_id", "day", "net_amount"
    ):
        days.setdefault(customer_id, []).append((day, net))
    scores = list(CustomerScore.objects.filter(run=run).order_by("customer_id"))
    assert len(scores) == len(days) > 400
    x, t_x, age, repeat_mean = [], [], [], []
    for score in scores:
        mine = sorted(days[score.customer_id])
        first, last = mine[0][0], mine[-1][0]
        assert (score.frequency, score.recency, score.age) == (
            len(mine) - 1,
            (last - first).days,
            (AS_OF - first).days,
        )
        x.append(len(mine) - 1)
        t_x.append((last - first).days)
        age.append((AS_OF - first).days)
        repeat = [float(net) for _, net in mine[1:]]
        repeat_mean.append(sum(repeat) / len(repeat) if repeat else 0.0)
    x, t_x, age = np.array(x, float), np.array(t_x, float), np.array(age, float)
    params = bg.parameters
    spend = clv.gamma_gamma_expected_spend(gg.parameters, x, np.array(repeat_mean))
    lifetime = clv.discounted_expected_purchases(
        params, x, t_x, age, months=p.clv_horizon_months, monthly_discount=p.monthly_discount
    )
    stored = {
        name: np.array([float(getattr(s, name)) for s in scores])
        for name in (
            "p_alive",
            "expected_30",
            "expected_90",
            "expected_365",
            "predicted_clv",
            "expected_spend",
        )
    }
    assert stored["p_alive"] == pytest.approx(clv.bgnbd_p_alive(params, x, t_x, age), rel=1e-9)
    for horizon in (30, 90, 365):
        expected = clv.bgnbd_expected(params, horizon, x, t_x, age)
        assert stored[f"expected_{horizon}"] == pytest.approx(expected, rel=1e-9)
    # Money is stored in cents.
    assert stored["expected_spend"] == pytest.approx(spend, abs=0.005)
    assert stored["predicted_clv"] == pytest.approx(lifetime * spend * p.margin, abs=0.005)
    assert {s.predicted_clv for s in scores} != {Decimal("0")}
    # Fewer purchases ahead and a lower P(alive) for a customer whose last purchase day is long ago.
    assert np.corrcoef(stored["p_alive"][x > 0], (age - t_x)[x > 0])[0, 1] < 0


def test_churn_risk_follows_the_rule_the_run_names(run):
    assert run.parameters["churn_rule"] == "p_alive<0.5 (tau for one-time buyers)"
    tau = run.parameters["churn_days"]
    for score in CustomerScore.objects.filter(run=run):
        if score.frequency == 0:
            silent = (AS_OF - score.last_day).days
            expected = (
                "churned"
                if silent > tau
                else "high"
                if silent > 2 * tau // 3
                else "medium"
                if silent > tau // 3
                else "low"
            )
        else:
            expected = (
                "churned"
                if score.p_alive < 0.5
                else "high"
                if score.p_alive < 0.7
                else "medium"
                if score.p_alive < 0.9
                else "low"
            )
        assert score.churn_risk == expected, (score.customer_id, score.frequency, score.p_alive)
    risks = set(CustomerScore.objects.filter(run=run).values_list("churn_risk", flat=True))
    assert {"churned", "low"} <= risks
