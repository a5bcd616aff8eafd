"""Demo data of the analytics: an NPS and a CSAT survey answered by members over the months
of the demo history, the monthly costs behind CAC and the program's ROI, and a first
computation so that every dashboard has a snapshot to show. Idempotent."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from django.db.models import Count, Min
from django.utils import timezone

from accounts.models import Customer

from .models import MonthlyCost, Survey, SurveyResponse
from .services import analytics_refresh

NPS_QUESTION = {
    "en": "How likely are you to recommend Bønne & Brød to a friend?",
    "da": "Hvor sandsynligt er det, at du vil anbefale Bønne & Brød til en ven?",
    "sv": "Hur troligt är det att du skulle rekommendera Bønne & Brød till en vän?",
    "ru": "Насколько вероятно, что вы порекомендуете Bønne & Brød другу?",
    "th": "คุณมีแนวโน้มจะแนะนำ Bønne & Brød ให้เพื่อนมากน้อยเพียงใด",
}
CSAT_QUESTION = {
    "en": "How satisfied were you with your last visit?",
    "da": "Hvor tilfreds var du med dit seneste besøg?",
    "sv": "Hur nöjd var du med ditt senaste besök?",
    "ru": "Насколько вы довольны последним визитом?",
    "th": "คุณพึงพอใจกับการมาที่ร้านครั้งล่าสุดมากน้อยเพียงใด",
}
COMMENTS = [
    "The cinnamon buns are the best in town.",
    "Friendly staff, but the queue on Saturday mornings is long.",
    "Love that the points never get lost.",
    "Coffee was a bit cold today.",
    "Great sourdough!",
    "",
    "",
    "",
]


def _survey(name: str, kind: str, questions: dict) -> Survey:
    survey, _created = Survey.objects.get_or_create(
        name=name,
        defaults={
            "kind": kind,
            "question": questions["en"],
            "question_translations": {code: text for code, text in questions.items() if code != "en"},
        },
    )
    return survey


def _score(rng: random.Random, kind: str, purchases: int) -> int:
    """Frequent buyers are happier: scores drift up with the number of purchases."""
    lift = min(purchases, 40) / 40
    if kind == Survey.Kind.NPS:
        return max(0, min(10, round(rng.gauss(6.5 + 3 * lift, 1.8))))
    return max(1, min(5, round(rng.gauss(3.4 + 1.3 * lift, 0.8))))


def surveys_ensure(*, seed: int = 42) -> list[str]:
    if SurveyResponse.objects.exists():
        return ["Survey answers already exist: left as they are."]
    rng = random.Random(seed)
    nps = _survey("Would you recommend us? (NPS)", Survey.Kind.NPS, NPS_QUESTION)
    csat = _survey("Last visit (CSAT)", Survey.Kind.CSAT, CSAT_QUESTION)
    now = timezone.now()
    members = list(
        Customer.objects.filter(enrolled_at__isnull=False)
        .annotate(n=Count("purchases"), first=Min("purchases__occurred_at"))
        .order_by("pk")
    )
    answers = []
    for customer in members:
        start = max(customer.enrolled_at, customer.first or customer.enrolled_at)
        for survey, chance in ((nps, 0.55), (csat, 0.45)):
            if rng.random() > chance or start >= now:
                continue
            answered_at = start + (now - start) * rng.random()
            answers.append(
                SurveyResponse(
                    survey=survey,
                    customer=customer,
                    score=_score(rng, survey.kind, customer.n),
                    comment=rng.choice(COMMENTS),
                    answered_at=answered_at,
                )
            )
    SurveyResponse.objects.bulk_create(answers, ignore_conflicts=True)
    return [f"2 surveys (NPS, CSAT) with {len(answers)} answers."]


def costs_ensure(*, months: int, seed: int = 42) -> list[str]:
    """Acquisition spend (ads, flyers) and the program's running cost, month by month."""
    if MonthlyCost.objects.exists():
        return ["Monthly costs already exist: left as they are."]
    rng = random.Random(seed)
    today = timezone.localdate()
    month = today.replace(day=1)
    rows = []
    for _ in range(months + 1):
        rows.append(
            MonthlyCost(
                month=month,
                kind=MonthlyCost.Kind.ACQUISITION,
                amount=Decimal(rng.randrange(3000, 6000)),
                note="Instagram ads and flyers",
            )
        )
        rows.append(
            MonthlyCost(
                month=month,
                kind=MonthlyCost.Kind.PROGRAM,
                amount=Decimal("900"),
                note="Loyalty hosting and card printing",
            )
        )
        month = (month - dt.timedelta(days=1)).replace(day=1)
    MonthlyCost.objects.bulk_create(rows)
    return [f"{months + 1} months of acquisition and program costs."]


def demo_analytics_ensure(*, months: int, seed: int = 42) -> list[str]:
    lines = [*surveys_ensure(seed=seed), *costs_ensure(months=months, seed=seed)]
    run = analytics_refresh(as_of=timezone.localdate())
    lines.append(f"Analytics computed as of {run.as_of} (the nightly job refreshes it).")
    return lines
