"""factory_boy factories shared by the suite."""

import datetime as dt
from decimal import Decimal

import factory
from django.utils import timezone

from accounts.models import Customer, User
from rewards.models import CategoryMultiplier, Integration, ProgramRules, Reward, Tier


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("pw-for-tests-123")


class StaffFactory(UserFactory):
    is_staff = True
    is_superuser = True


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_ref = factory.Sequence(lambda n: f"C{n:06d}")
    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")


class IntegrationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Integration
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"pos-{n}")


class TierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tier
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"tier{n}")
    name = factory.LazyAttribute(lambda t: t.code.title())
    min_qualifying_spend = Decimal("0")
    multiplier = Decimal("1")


class RewardFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Reward

    name = factory.Sequence(lambda n: f"Reward {n}")
    cost_points = 100


class CategoryMultiplierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CategoryMultiplier
        django_get_or_create = ("category",)

    category = "coffee"
    multiplier = Decimal("2")


def program_rules_set(**values) -> ProgramRules:
    rules = ProgramRules.current()
    for key, value in values.items():
        setattr(rules, key, value)
    rules.save()
    return rules


def standard_tiers() -> tuple[Tier, Tier, Tier]:
    return (
        TierFactory(code="bronze", name="Bronze", min_qualifying_spend=Decimal("0"), multiplier=Decimal("1")),
        TierFactory(
            code="silver", name="Silver", min_qualifying_spend=Decimal("2000"), multiplier=Decimal("1.25")
        ),
        TierFactory(code="gold", name="Gold", min_qualifying_spend=Decimal("5000"), multiplier=Decimal("2")),
    )


def days_ago(n: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(days=n)


def campaign_make(*, name="Campaign", conditions=(), contents=None, **fields):
    """A campaign with a segment of `conditions` (dicts for SegmentCondition) and content
    per language (default: an English message using a few fields)."""
    from campaigns.models import Campaign, CampaignContent, Segment, SegmentCondition

    segment = Segment.objects.create(name=f"{name} segment {Segment.objects.count()}")
    for condition in conditions:
        SegmentCondition.objects.create(segment=segment, **condition)
    fields.setdefault("holdout_percent", 0)
    campaign = Campaign.objects.create(name=name, segment=segment, **fields)
    for language, (subject, body) in (
        contents or {"en": ("Hi {{ first_name }}", "You have {{ points_balance }} points.")}
    ).items():
        CampaignContent.objects.create(campaign=campaign, language=language, subject=subject, body=body)
    return campaign
