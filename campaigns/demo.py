"""The demo's campaigns: segments a marketer would build, a finished campaign with results
against its holdout, one recurring and one triggered campaign, and the demo member's inbox.
Idempotent: made once."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from accounts.models import Customer

from . import delivery
from .models import Campaign, CampaignContent, InboxMessage, Segment, SegmentCondition

SEGMENTS = {
    "At risk: no purchase for 60 days": [
        {"field": "member"},
        {"field": "days_since_purchase", "operator": "gte", "value": "60"},
    ],
    "Gold members": [{"field": "tier", "value": "gold"}],
    "Consented members": [{"field": "member"}, {"field": "consent"}],
    "Coffee-bean buyers this quarter": [{"field": "category", "value": "coffee-beans", "days": 90}],
}

AUTUMN = {
    "en": (
        "{{ first_name }}, double points on coffee this week",
        "Hi {{ first_name }},\n\nYou have {{ points_balance }} points. This week every purchase earns {{ offer }}.\nTreat yourself to {{ recommended_reward }}!\n\nSee you soon,\nBønne & Brød",
    ),
    "da": (
        "{{ first_name }}, dobbelt point på kaffe i denne uge",
        "Hej {{ first_name }},\n\nDu har {{ points_balance }} point. I denne uge giver hvert køb {{ offer }}.\nForkæl dig selv med {{ recommended_reward }}!\n\nVi ses,\nBønne & Brød",
    ),
    "sv": (
        "{{ first_name }}, dubbla poäng på kaffe den här veckan",
        "Hej {{ first_name }},\n\nDu har {{ points_balance }} poäng. Den här veckan ger varje köp {{ offer }}.\nUnna dig {{ recommended_reward }}!\n\nVi ses,\nBønne & Brød",
    ),
    "ru": (
        "{{ first_name }}, двойные баллы на кофе всю неделю",
        "Здравствуйте, {{ first_name }}!\n\nУ вас {{ points_balance }} баллов. На этой неделе каждая покупка приносит {{ offer }}.\nПобалуйте себя: {{ recommended_reward }}!\n\nДо встречи,\nBønne & Brød",
    ),
    "th": (
        "{{ first_name }} รับคะแนนสองเท่าสำหรับกาแฟสัปดาห์นี้",
        "สวัสดี {{ first_name }}\n\nคุณมี {{ points_balance }} คะแนน สัปดาห์นี้ทุกการซื้อได้รับ {{ offer }}\nลองแลก {{ recommended_reward }} ดูสิ!\n\nแล้วพบกัน\nBønne & Brød",
    ),
}


def _segment(name: str, conditions: list[dict]) -> Segment:
    segment, created = Segment.objects.get_or_create(name=name)
    if created:
        for condition in conditions:
            SegmentCondition.objects.create(segment=segment, **condition)
    return segment


def _content(campaign: Campaign, texts: dict) -> None:
    for language, (subject, body) in texts.items():
        CampaignContent.objects.get_or_create(
            campaign=campaign, language=language, defaults={"subject": subject, "body": body}
        )


def demo_campaigns_ensure() -> list[str]:
    if Campaign.objects.exists():
        return ["Campaigns already exist: left as they are."]
    segments = {name: _segment(name, conditions) for name, conditions in SEGMENTS.items()}
    now = timezone.now()
    past = now - dt.timedelta(days=40)
    autumn = Campaign.objects.create(
        name="Autumn double points (in-app)",
        segment=segments["Consented members"],
        channel=Campaign.Channel.IN_APP,
        holdout_percent=20,
        # A fixed salt: the same seed holds out the same members (and sends the same messages).
        holdout_salt="demo-autumn",
        offer=Campaign.Offer.MULTIPLIER,
        offer_multiplier=2,
        offer_starts_at=past,
        offer_ends_at=past + dt.timedelta(days=7),
        status=Campaign.Status.ACTIVE,
        launched_at=past,
    )
    _content(autumn, AUTUMN)
    delivery.dispatch(now=past)
    while delivery.deliveries_send(now=past)["claimed"]:
        pass
    newsletter = Campaign.objects.create(
        name="Monday newsletter",
        segment=segments["Consented members"],
        schedule=Campaign.Schedule.RECURRING,
        recur_weekdays="0",
        recur_time=dt.time(9, 0),
        holdout_percent=10,
    )
    _content(
        newsletter,
        {"en": ("This week at Bønne & Brød", "Hi {{ first_name }}, you have {{ points_balance }} points.")},
    )
    comeback = Campaign.objects.create(
        name="We miss you",
        segment=segments["At risk: no purchase for 60 days"],
        schedule=Campaign.Schedule.TRIGGERED,
        trigger=Campaign.Trigger.AFTER_LAST_PURCHASE,
        trigger_days=60,
        offer=Campaign.Offer.POINTS,
        offer_points=100,
    )
    _content(
        comeback, {"en": ("We miss you, {{ first_name }}", "Here is {{ offer }}. Come by for a coffee!")}
    )
    lines = [
        f"{Segment.objects.count()} segments, {Campaign.objects.count()} campaigns "
        f"({autumn.deliveries.count()} in-app messages sent by the autumn campaign, {autumn.audience.filter(holdout=True).count()} held out)."
    ]
    anna = Customer.objects.filter(user__username="customer").first()
    if anna is not None and not InboxMessage.objects.filter(customer=anna, delivery__isnull=True).exists():
        InboxMessage.objects.create(
            customer=anna,
            subject="Welcome to Bønne & Brød Club",
            body="Thank you for joining! Show your member card at the till and collect points on every coffee.",
            link_url="/me/rewards/",
            link_label="See the rewards",
        )
    return lines
