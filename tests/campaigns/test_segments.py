"""Segments: every condition, and AND / OR / NOT, compiled to SQL."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Customer
from campaigns.segments import Condition, ConditionError, segment_preview, segment_q
from rewards.models import PointsAccount
from rewards.services import customer_enroll, purchase_record, reward_redeem
from tests.factories import CustomerFactory, RewardFactory


def matching(*conditions: Condition) -> set[str]:
    return set(Customer.objects.filter(segment_q(list(conditions))).values_list("external_ref", flat=True))


def buy(customer, integration, amount, external_id, *, days_ago=0, lines=None):
    purchase_record(
        integration=integration,
        external_id=external_id,
        customer_ref=customer.external_ref,
        amount=Decimal(amount),
        currency="DKK",
        occurred_at=timezone.now() - dt.timedelta(days=days_ago),
        lines=lines or [],
    )


@pytest.fixture
def people(program, integration):
    """Ann: Gold member, Danish, consents, bought coffee 3 days ago (3 purchases, 6000).
    Bo: Bronze member, English, last bought 90 days ago, birthday in May, redeemed.
    Cy: a shopper (not a member), Thai, one purchase today."""
    ann, _ = customer_enroll(
        customer=CustomerFactory(external_ref="ann", language="da", marketing_consent=True),
        at=timezone.now() - dt.timedelta(days=200),
    )
    bo, _ = customer_enroll(
        customer=CustomerFactory(external_ref="bo", language="en", birthday=dt.date(1990, 5, 3)),
        at=timezone.now() - dt.timedelta(days=5),
    )
    cy = CustomerFactory(external_ref="cy", language="th")
    for i in range(3):
        buy(
            ann,
            integration,
            "2000",
            f"a{i}",
            days_ago=3 + i,
            lines=[{"category": "coffee", "amount": "2000"}],
        )
    buy(bo, integration, "100", "b1", days_ago=90)
    buy(cy, integration, "50", "c1")
    reward_redeem(customer=bo, reward_id=RewardFactory(cost_points=10).pk)
    PointsAccount.objects.filter(pk=ann.pk).update(tier=program[2])
    return ann, bo, cy


def test_each_condition(people):
    assert matching(Condition("tier", value="gold")) == {"ann"}
    assert matching(Condition("tier", value="bronze,silver")) == {"bo"}
    assert matching(Condition("member")) == {"ann", "bo"}
    assert matching(Condition("enrolled_within", days=30)) == {"bo"}
    assert matching(Condition("days_since_purchase", "gte", "60")) == {"bo"}
    assert matching(Condition("days_since_purchase", "lte", "7")) == {"ann", "cy"}
    assert matching(Condition("purchases", "gte", "3", days=30)) == {"ann"}
    assert matching(Condition("purchases", "lte", "0", days=30)) == {"bo"}
    assert matching(Condition("spend", "gte", "5000", days=365)) == {"ann"}
    assert matching(Condition("spend", "lte", "100", days=365)) == {"bo", "cy"}
    assert matching(Condition("category", value="coffee")) == {"ann"}
    assert matching(Condition("category", value="coffee", days=2)) == set()
    assert matching(Condition("redeemed")) == {"bo"}
    assert matching(Condition("birthday_month", value="5,6")) == {"bo"}
    assert matching(Condition("language", value="th,da")) == {"ann", "cy"}
    assert matching(Condition("consent")) == {"ann"}


def test_and_or_not(people):
    member, consent = Condition("member"), Condition("consent")
    assert matching(member, Condition("consent", negate=True)) == {"bo"}  # AND, NOT
    assert matching(Condition("tier", value="gold", group=1), Condition("language", value="th", group=2)) == {
        "ann",
        "cy",
    }  # OR across groups
    assert matching(Condition("member", negate=True)) == {"cy"}
    assert matching() == {"ann", "bo", "cy"}
    assert matching(member, consent) == {"ann"}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (Condition("purchases", "gte", "3"), "number of days"),
        (Condition("tier", value="platinum"), "Unknown tier"),
        (Condition("birthday_month", value="13"), "1 to 12"),
        (Condition("language", value="fr"), "codes"),
        (Condition("spend", "gte", "lots", days=30), "number"),
        (Condition("consent", "gte"), "takes"),
    ],
)
def test_incomplete_conditions_say_what_is_missing(people, condition, message):
    with pytest.raises(ConditionError, match=message):
        matching(condition)


def test_predicted_values_need_analytics_scores(people):
    with pytest.raises(ConditionError, match="Analytics"):
        matching(Condition("p_alive", "gte", "0.5"))


def _score(run, ref: str, **fields):
    """A score row for the customer `ref` in `run`: a one-day customer unless `fields` say more."""
    from analytics.models import CustomerScore

    today = timezone.localdate()
    row = {
        "first_day": today,
        "last_day": today,
        "purchase_days": 1,
        "frequency": 0,
        "recency": 0,
        "age": 1,
        "net_revenue": Decimal("1"),
        "historical_clv": Decimal("1"),
        "rfm_r": 1,
        "rfm_f": 1,
        "rfm_m": 1,
        "rfm_score": 3,
        "churn_risk": "low",
    }
    customer = Customer.objects.get(external_ref=ref)
    CustomerScore.objects.create(run=run, customer=customer, **{**row, **fields})


def _scores(run, **by_ref):
    """Scores by reference: (RFM score, predicted CLV, P(alive))."""
    for ref, (rfm, clv, p_alive) in by_ref.items():
        _score(
            run,
            ref,
            predicted_clv=clv,
            p_alive=p_alive,
            rfm_r=rfm // 3,
            rfm_f=rfm // 3,
            rfm_m=rfm - 2 * (rfm // 3),
            rfm_score=rfm,
        )


def test_predicted_values_target_the_latest_full_run(people):
    from analytics.models import AnalyticsRun

    old = AnalyticsRun.objects.create(as_of=timezone.localdate(), status="done")
    _scores(old, ann=(3, Decimal("10"), 0.1), bo=(15, Decimal("900"), 0.9))
    latest = AnalyticsRun.objects.create(as_of=timezone.localdate(), status="done")
    _scores(latest, ann=(14, Decimal("800"), 0.95), bo=(4, Decimal("20"), 0.2), cy=(9, None, None))
    AnalyticsRun.objects.create(as_of=timezone.localdate(), status="running")  # not finished: ignored
    assert matching(Condition("rfm", "gte", "12")) == {"ann"}
    assert matching(Condition("clv", "gte", "500")) == {"ann"}
    assert matching(Condition("p_alive", "lte", "0.5")) == {"bo"}  # no prediction: not matched
    assert matching(Condition("p_alive", "lte", "0.5", negate=True)) == {"ann", "cy"}


def test_predicted_values_from_a_real_analytics_run(people):
    from analytics.models import CustomerScore
    from analytics.services import analytics_refresh

    run = analytics_refresh(as_of=timezone.localdate())
    expected = set(
        CustomerScore.objects.filter(run=run, rfm_score__gte=9).values_list(
            "customer__external_ref", flat=True
        )
    )
    assert matching(Condition("rfm", "gte", "9")) == expected
    assert CustomerScore.objects.filter(run=run).count() == 3


def test_preview_counts_and_samples(people):
    preview = segment_preview([Condition("member")])
    assert preview["count"] == 2
    assert {s["ref"] for s in preview["sample"]} == {"ann", "bo"}


def test_churn_risk_and_expected_purchases_target_the_latest_full_run(people):
    from analytics.models import AnalyticsRun

    old = AnalyticsRun.objects.create(as_of=timezone.localdate(), status="done")
    _score(old, "ann", churn_risk="churned", expected_30=0.0, expected_90=0.1, expected_365=0.2)
    latest = AnalyticsRun.objects.create(as_of=timezone.localdate(), status="done")
    _score(latest, "ann", churn_risk="low", expected_30=1.5, expected_90=4.2, expected_365=16.0)
    _score(latest, "bo", churn_risk="high", expected_30=0.1, expected_90=0.4, expected_365=1.1)
    _score(latest, "cy", churn_risk="churned")  # one-time buyer, no model: no expected purchases

    assert matching(Condition("churn_risk", value="high,churned")) == {"bo", "cy"}
    assert matching(Condition("churn_risk", value=" low ")) == {"ann"}
    assert matching(Condition("churn_risk", value="high,churned", negate=True)) == {"ann"}
    assert matching(Condition("expected_30", "gte", "1")) == {"ann"}
    assert matching(Condition("expected_90", "lte", "0.4")) == {"bo"}  # no prediction: not matched
    assert matching(Condition("expected_365", "gte", "1.1")) == {"ann", "bo"}
    assert matching(Condition("expected_365", "gte", "1.2")) == {"ann"}
    # With the other conditions: members at risk, and the predicted heavy buyers who are not.
    assert matching(Condition("member"), Condition("churn_risk", value="high,churned")) == {"bo"}
    assert (
        matching(Condition("expected_90", "gte", "2"), Condition("churn_risk", value="low", negate=True))
        == set()
    )


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (Condition("churn_risk", value="lost"), "low, medium, high, churned"),
        (Condition("churn_risk", value=""), "value"),
        (Condition("churn_risk", "gte", "high"), "takes"),
        (Condition("expected_30", "is", "1"), "takes"),
        (Condition("expected_90", "gte", "many"), "number"),
        (Condition("expected_365", "lte", ""), "value"),
    ],
)
def test_churn_risk_and_expected_purchases_say_what_is_missing(people, condition, message):
    with pytest.raises(ConditionError, match=message):
        matching(condition)


def test_churn_risk_and_expected_purchases_need_analytics_scores(people):
    for condition in (Condition("churn_risk", value="churned"), Condition("expected_30", "gte", "1")):
        with pytest.raises(ConditionError, match="Analytics"):
            matching(condition)


def test_churn_risk_from_a_real_analytics_run(people):
    from analytics.models import CustomerScore
    from analytics.services import analytics_refresh

    run = analytics_refresh(as_of=timezone.localdate())
    risks = dict(CustomerScore.objects.filter(run=run).values_list("customer__external_ref", "churn_risk"))
    # One-time buyers by the 90-day rule: Bo last bought 90 days ago, Cy today. Ann's label
    # comes from whatever model three shoppers allow.
    assert risks["bo"] == "high" and risks["cy"] == "low"
    for labels in (["high"], ["low"], ["medium", "high", "churned"], [risks["ann"]]):
        expected = {ref for ref, risk in risks.items() if risk in labels}
        assert matching(Condition("churn_risk", value=",".join(labels))) == expected, labels


@pytest.mark.django_db
def test_expected_purchases_from_a_real_analytics_run():
    """Simulated shoppers, enough for the models to be fitted: the condition selects exactly
    the customers whose stored expectation passes the threshold."""
    from analytics.models import CustomerScore, ModelFit
    from analytics.services import analytics_refresh
    from rewards.demo import shoppers_simulate, simulated_shoppers_write
    from tests.factories import IntegrationFactory

    as_of = dt.date(2026, 6, 30)
    simulated_shoppers_write(
        shoppers_simulate(customers=300, months=18, seed=11, effect=0.2, end=as_of),
        pos=IntegrationFactory(name="sim-pos"),
    )
    run = analytics_refresh(as_of=as_of)
    assert ModelFit.objects.get(run=run, model="bgnbd").converged
    scores = CustomerScore.objects.filter(run=run)
    for field, threshold in (("expected_30", 0.5), ("expected_90", 1.5), ("expected_365", 6)):
        above = set(scores.filter(**{f"{field}__gte": threshold}).values_list("customer_id", flat=True))
        below = set(scores.filter(**{f"{field}__lte": threshold}).values_list("customer_id", flat=True))
        assert above and below, field  # the threshold splits the shoppers
        found = Customer.objects.filter(segment_q([Condition(field, "gte", str(threshold))]))
        assert set(found.values_list("pk", flat=True)) == above, field
        found = Customer.objects.filter(segment_q([Condition(field, "lte", str(threshold))]))
        assert set(found.values_list("pk", flat=True)) == below, field


@pytest.mark.parametrize("code", ["en", "da", "sv", "ru", "th"])
def test_the_segment_editor_offers_churn_risk_and_expected_purchases_in_each_language(admin_client, code):
    from django.urls import reverse
    from django.utils import translation

    from campaigns.models import SegmentCondition

    # The request activates its language in this thread; the block puts back what was active.
    with translation.override(None):
        page = admin_client.get(reverse("admin:campaigns_segment_add"), HTTP_ACCEPT_LANGUAGE=code)
    html = page.content.decode()
    fields = SegmentCondition.Field
    for field in (fields.CHURN_RISK, fields.EXPECTED_30, fields.EXPECTED_90, fields.EXPECTED_365):
        with translation.override(code):
            label = str(field.label)
        if code != "en":
            with translation.override("en"):
                assert label != str(field.label), (code, field)
        assert f'<option value="{field.value}">{label}</option>' in html.replace("&#x27;", "'"), (code, field)
