"""seed_demo: a believable shop, made through the services, safe to run again."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum
from PIL import Image

from accounts.models import Customer, User
from rewards.models import (
    CategoryMultiplier,
    CustomerEvent,
    EventRule,
    Integration,
    LedgerEntry,
    PointsAccount,
    PointsLot,
    ProgramRules,
    Promotion,
    Purchase,
    PurchaseLine,
    Redemption,
    Refund,
    Reward,
    Tier,
)

pytestmark = pytest.mark.django_db

MODELS = [
    User,
    Customer,
    Tier,
    CategoryMultiplier,
    EventRule,
    Promotion,
    Reward,
    Integration,
    Purchase,
    PurchaseLine,
    Refund,
    CustomerEvent,
    Redemption,
    PointsAccount,
    LedgerEntry,
    PointsLot,
]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def seed(**options) -> str:
    out = StringIO()
    call_command("seed_demo", customers=15, months=2, seed=5, stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def seeded():
    return seed()


def test_seed_demo_twice_duplicates_nothing_and_shows_the_token_only_the_first_time(seeded):
    counts = {model.__name__: model.objects.count() for model in MODELS}
    again = seed()
    assert {model.__name__: model.objects.count() for model in MODELS} == counts
    assert "lyt_" in seeded and "lyt_" not in again
    assert "customer" in again and "demo-loyalty-2026" in again
    assert counts["Customer"] == 15 and counts["Purchase"] > 100 and counts["Redemption"] > 0


def test_seed_demo_sets_the_programs_rules_tiers_and_a_future_promotion(seeded):
    rules = ProgramRules.current()
    assert (rules.points_per_unit, rules.minimum_spend, rules.expiry_months) == (1, 10, 24)
    assert (rules.signup_bonus, rules.birthday_bonus) == (100, 250)
    assert (rules.referral_bonus_referrer, rules.referral_bonus_referee) == (200, 100)
    tiers = list(Tier.objects.values_list("code", "min_qualifying_spend", "multiplier"))
    assert tiers == [("bronze", 0, 1), ("silver", 3000, 1.25), ("gold", 8000, 1.5)]
    assert set(Tier.objects.get(code="gold").name_translations) == {"da", "sv", "ru", "th"}
    from django.utils import timezone

    assert Promotion.objects.get(source="demo").starts_at > timezone.now()
    # The demo's finished campaign made its own (past) promotion for its treated members.
    assert Promotion.objects.get(source__startswith="campaign:").ends_at < timezone.now()


def test_rewards_have_translations_and_generated_pictures(seeded):
    rewards = list(Reward.objects.all())
    assert len(rewards) == 10
    for reward in rewards:
        assert set(reward.translations) == {"da", "sv", "ru", "th"}
        assert reward.image and reward.image.storage.exists(reward.image.name)
        with reward.image.open("rb") as file, Image.open(file) as picture:
            assert picture.size == (600, 400)


def test_members_earned_points_and_every_balance_is_the_sum_of_its_entries(seeded):
    accounts = list(PointsAccount.objects.all())
    assert sum(1 for account in accounts if account.balance > 0) >= len(accounts) // 2
    entry_sums = dict(
        LedgerEntry.objects.values("account_id")
        .annotate(total=Sum("points"))
        .values_list("account_id", "total")
    )
    lot_sums = dict(
        PointsLot.objects.values("account_id")
        .annotate(total=Sum("remaining"))
        .values_list("account_id", "total")
    )
    for account in accounts:
        assert entry_sums.get(account.pk, 0) == account.balance
        assert (lot_sums.get(account.pk) or 0) == max(account.balance, 0)
        last = LedgerEntry.objects.filter(account=account).order_by("-id").first()
        assert last is not None and last.balance_after == account.balance
    earned = Purchase.objects.filter(was_member=True, points_earned__gt=0)
    assert earned.exists() and not Purchase.objects.filter(was_member=False, points_earned__gt=0).exists()
    assert Purchase.objects.filter(was_member=False).exists()  # non-members shop too


def test_the_demo_login_is_anna_larsen_a_member_with_history(seeded):
    anna = Customer.objects.get(user__username="customer")
    assert (anna.first_name, anna.last_name) == ("Anna", "Larsen") and anna.is_member
    assert anna.points_account.tier.code in ("silver", "gold")
    assert anna.purchases.count() > 20
    assert anna.redemptions.filter(state=Redemption.State.ISSUED).exists()


def test_the_demo_has_survey_answers_costs_and_a_computed_analytics_run(seeded):
    from analytics.models import AnalyticsRun, CustomerScore, MonthlyCost, SurveyResponse
    from analytics.selectors import run_latest

    assert SurveyResponse.objects.filter(survey__kind="nps").exists()
    assert SurveyResponse.objects.filter(survey__kind="csat").exists()
    assert MonthlyCost.objects.filter(kind="acquisition").count() >= 2
    run = run_latest()
    assert run is not None and run.status == AnalyticsRun.Status.DONE
    assert CustomerScore.objects.filter(run=run).count() == 15


def test_a_demo_with_enough_history_has_a_program_effect_to_show():
    """Members with six months of history before and after joining, matched non-members: the
    effect page has difference-in-differences rows (pooled, per cohort, per segment) with
    intervals and balance, and the incremental revenue and ROI built on them."""
    from analytics.models import MetricValue, ProgramEffect
    from analytics.selectors import run_latest

    call_command("seed_demo", customers=200, months=16, seed=5, stdout=StringIO())
    run = run_latest()
    did = ProgramEffect.objects.filter(run=run, method="did")
    pooled = {e.outcome: e for e in did.filter(cohort=None, segment="all")}
    assert set(pooled) == {"purchase_days", "spend"}
    for estimate in pooled.values():
        assert estimate.treated >= 5 and estimate.ci_low is not None and estimate.ci_high is not None
        assert {b["covariate"] for b in estimate.extra["balance"]} >= {"frequency", "recency", "tenure"}
    assert did.filter(cohort__isnull=False, treated__gte=2).exists()
    assert set(did.filter(cohort=None).values_list("segment", flat=True)) == {
        "all",
        "light",
        "medium",
        "heavy",
    }
    # Heavier buyers join more often: members look far better than non-members before any effect.
    naive = ProgramEffect.objects.get(run=run, method="naive", outcome="spend")
    assert naive.estimate > 0
    values = dict(
        MetricValue.objects.filter(run=run, metric__in=["incremental_revenue", "program_roi"]).values_list(
            "metric", "value"
        )
    )
    assert values["incremental_revenue"] is not None and values["program_roi"] is not None
