"""The guided campaign builder (campaigns/builder.py): every step through the test client
with valid and invalid input, errors next to their fields, a draft that resumes, the roles
(Marketing builds and launches; Support and Analyst are refused; without the launch
permission the review says whom to ask and the server refuses), and the audit entries."""

import re

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from accounts import roles
from accounts.models import AuditEntry
from campaigns.models import Campaign, CampaignContent, Segment
from tests.factories import CustomerFactory, UserFactory, campaign_make

pytestmark = pytest.mark.django_db

START = "admin:campaigns_campaign_builder"


def staff(role: str, username: str | None = None):
    user = UserFactory(
        username=username or role.lower().replace(" ", ""), is_staff=True, email="m@shop.example"
    )
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def marketing(client):
    client.force_login(staff(roles.MARKETING))
    return client


def step_url(campaign, step: str) -> str:
    return reverse("admin:campaigns_campaign_builder_step", args=[campaign.pk, step])


def audience(conditions=(), **fields) -> dict:
    data = {
        "name": "Come back",
        "channel": "email",
        "is_marketing": "on",
        "segment_name": "Lapsed Danes",
        "conditions-TOTAL_FORMS": str(len(conditions)),
        "conditions-INITIAL_FORMS": "0",
        "conditions-MIN_NUM_FORMS": "0",
        "conditions-MAX_NUM_FORMS": "1000",
        "_continue": "1",
        **fields,
    }
    for i, row in enumerate(conditions):
        for key, value in row.items():
            data[f"conditions-{i}-{key}"] = value
    return data


def messages_data(**languages) -> dict:
    data = {"_continue": "1"}
    for code in ("en", "da", "sv", "ru", "th"):
        subject, body = languages.get(code, ("", ""))
        data[f"{code}-subject"], data[f"{code}-body"] = subject, body
    return data


def error_next_to(html: str, field: str) -> str:
    """The text of the form row of `field` when it is marked as having errors ('' if not)."""
    match = re.search(rf'<div class="form-row errors field-{field}"[^>]*>(.*?)</div>\s*</div>', html, re.S)
    return match.group(1) if match else ""


DANES = [{"group": "1", "field": "language", "operator": "is", "value": "da"}]


def test_marketing_builds_a_campaign_step_by_step_and_launches_it(marketing, program):
    CustomerFactory(first_name="Mads", language="da", email="mads@example.com", external_ref="DK-7")
    CustomerFactory.create_batch(2, language="sv")

    # Audience: an invalid condition is refused next to its row, nothing is saved.
    page = marketing.get(reverse(START))
    assert page.status_code == 200 and 'id="segment-preview"' in page.content.decode()
    wrong = marketing.post(
        reverse(START), audience([{"group": "1", "field": "birthday_month", "operator": "is", "value": "13"}])
    )
    assert wrong.status_code == 200
    row = re.search(r'<tr class="row-errors">(.*?)</tr>', wrong.content.decode(), re.S)
    assert row and "1 to 12" in row.group(1)
    assert not Segment.objects.exists() and not Campaign.objects.exists()
    nameless = marketing.post(reverse(START), audience(DANES, name=""))
    assert "This field is required" in error_next_to(nameless.content.decode(), "name")

    done = marketing.post(reverse(START), audience(DANES))
    campaign = Campaign.objects.get()
    assert done.status_code == 302 and done["Location"] == step_url(campaign, "message")
    assert campaign.status == Campaign.Status.DRAFT and campaign.created_by.username == "marketing"
    assert campaign.segment.name == "Lapsed Danes" and campaign.segment.conditions.get().value == "da"

    # Message: a template that will not render, half a message, no message at all.
    url = step_url(campaign, "message")
    broken = marketing.post(url, messages_data(en=("Hi {% load static %}", "Body")))
    assert "Only {{ fields }}" in error_next_to(broken.content.decode(), "subject")
    half = marketing.post(url, messages_data(da=("Hej {{ first_name }}", "")))
    assert "Write the message too" in error_next_to(half.content.decode(), "body")
    empty = marketing.post(url, messages_data())
    assert "Write the message in at least one language." in empty.content.decode()
    assert not CampaignContent.objects.exists()
    saved = marketing.post(
        url,
        messages_data(
            en=("Hi {{ first_name }}", "You have {{ points_balance }} points."),
            da=("Hej {{ first_name }}", "Du har {{ points_balance }} point."),
        ),
    )
    assert saved["Location"] == step_url(campaign, "offer")
    assert set(campaign.contents.values_list("language", flat=True)) == {"en", "da"}

    # The preview for a customer found by email or customer number, in each language.
    for query in ("MADS@example.com", "DK-7"):
        preview = marketing.get(url, {"customer": query}).content.decode()
        danish = re.search(r'<article[^>]*data-language="da"[^>]*>(.*?)</article>', preview, re.S).group(1)
        assert "Hej Mads" in danish and "Du har 0 point." in danish
        assert "Hi Mads" in preview
    missing = marketing.get(url, {"customer": "nobody@example.com"}).content.decode()
    assert "No customer with this email or customer number." in missing

    # Offer: a multiplier needs its window; a points gift goes through.
    url = step_url(campaign, "offer")
    window = marketing.post(url, {"offer": "multiplier", "offer_multiplier": "2", "_continue": "1"})
    assert "its date window" in error_next_to(window.content.decode(), "offer_starts_at")
    assert "its date window" in error_next_to(window.content.decode(), "offer_ends_at")
    backwards = marketing.post(
        url,
        {
            "offer": "multiplier",
            "offer_multiplier": "2",
            "offer_starts_at": "2026-12-10T09:00",
            "offer_ends_at": "2026-12-01T09:00",
        },
    )
    assert "end after it starts" in error_next_to(backwards.content.decode(), "offer_ends_at")
    gift = marketing.post(url, {"offer": "points", "offer_points": "150", "_continue": "1"})
    assert gift["Location"] == step_url(campaign, "schedule")

    # Schedule: recurring needs weekdays and a time.
    url = step_url(campaign, "schedule")
    bare = marketing.post(url, {"schedule": "recurring", "_continue": "1"})
    assert "weekdays and the time" in error_next_to(bare.content.decode(), "recur_weekdays")
    assert "weekdays and the time" in error_next_to(bare.content.decode(), "recur_time")
    weekly = marketing.post(
        url, {"schedule": "recurring", "recur_weekdays": ["0", "3"], "recur_time": "09:00", "_continue": "1"}
    )
    assert weekly["Location"] == step_url(campaign, "holdout")
    campaign.refresh_from_db()
    assert campaign.recur_weekdays == "0,3" and campaign.offer_points == 150

    # Holdout: at most 90 %.
    url = step_url(campaign, "holdout")
    greedy = marketing.post(url, {"holdout_percent": "95", "attribution_days": "7", "_continue": "1"})
    assert "90" in error_next_to(greedy.content.decode(), "holdout_percent")
    fair = marketing.post(url, {"holdout_percent": "20", "attribution_days": "7", "_continue": "1"})
    assert fair["Location"] == step_url(campaign, "review")

    # Review: everything listed, nothing blocks, every step complete; Launch.
    review = marketing.get(step_url(campaign, "review")).content.decode()
    assert "Before launching" not in review and 'name="_launch"' in review
    assert "Lapsed Danes" in review and "Hej {{ first_name }}" in review and "20 %" in review
    assert review.count("builder-step complete") + review.count("builder-step current complete") == 6
    launched = marketing.post(step_url(campaign, "review"), {"_launch": "1"})
    assert launched["Location"] == reverse("admin:campaigns_campaign_results", args=[campaign.pk])
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.ACTIVE and campaign.launched_at is not None
    assert marketing.get(launched["Location"]).status_code == 200

    # Every write is in the audit log, by the marketer.
    entries = AuditEntry.objects.filter(username="marketing")
    actions = list(entries.order_by("pk").values_list("action", "content_type__model"))
    assert actions[:2] == [("create", "segment"), ("create", "campaign")]
    assert actions.count(("change", "campaign")) == 4  # message, offer, schedule, holdout
    assert actions[-1] == ("launch", "campaign")
    message_entry = entries.filter(action="change").order_by("pk").first()
    assert len(message_entry.after["campaigncontent"]) == 2 and message_entry.before["campaigncontent"] == []


def test_a_draft_resumes_at_its_first_incomplete_step_and_saving_stays(marketing, program):
    marketing.post(reverse(START), audience(DANES))
    campaign = Campaign.objects.get()
    resume = marketing.get(reverse("admin:campaigns_campaign_builder_resume", args=[campaign.pk]))
    assert resume["Location"] == step_url(campaign, "message")

    start = marketing.get(reverse(START)).content.decode()
    assert (
        "Continue a draft" in start
        and reverse("admin:campaigns_campaign_builder_resume", args=[campaign.pk]) in start
    )

    page = marketing.get(step_url(campaign, "message")).content.decode()
    assert re.search(r'builder-step complete" data-step="segment"', page)
    assert re.search(r'builder-step current" data-step="message"', page)

    # "Save" stays on the step; the segment step shows what was saved.
    data = audience(DANES, name="Come back soon", segment_name="Lapsed Danes")
    data.pop("_continue")
    data.update(
        {
            "conditions-TOTAL_FORMS": "1",
            "conditions-INITIAL_FORMS": "1",
            "conditions-0-id": str(campaign.segment.conditions.get().pk),
            "conditions-0-segment": str(campaign.segment.pk),
        }
    )
    stay = marketing.post(step_url(campaign, "segment"), data)
    assert stay["Location"] == step_url(campaign, "segment")
    again = marketing.get(step_url(campaign, "segment")).content.decode()
    assert 'value="Come back soon"' in again and 'value="da"' in again
    campaign.refresh_from_db()
    assert campaign.name == "Come back soon" and campaign.segment.conditions.count() == 1


def test_removing_a_condition_and_a_taken_segment_name(marketing, program):
    Segment.objects.create(name="Everyone")
    marketing.post(reverse(START), audience(DANES))
    campaign = Campaign.objects.get()
    row = campaign.segment.conditions.get()
    data = audience(
        [{"id": str(row.pk), "segment": str(campaign.segment.pk), **DANES[0], "DELETE": "on"}],
        segment_name="Everyone",
    )
    data["conditions-INITIAL_FORMS"] = "1"
    taken = marketing.post(step_url(campaign, "segment"), data)
    assert "exists already" in error_next_to(taken.content.decode(), "segment_name")
    data["segment_name"] = "All of them"
    marketing.post(step_url(campaign, "segment"), data)
    campaign.segment.refresh_from_db()
    assert campaign.segment.name == "All of them" and not campaign.segment.conditions.exists()


def test_review_lists_the_problems_and_launch_is_refused_until_they_are_solved(marketing, program):
    campaign = campaign_make(name="Half done", schedule="at")
    campaign.contents.all().delete()
    page = marketing.get(step_url(campaign, "review")).content.decode()
    assert "Before launching" in page
    assert "Write the message in at least one language." in page and "Choose the date and time" in page
    refused = marketing.post(step_url(campaign, "review"), {"_launch": "1"})
    assert refused["Location"] == step_url(campaign, "review")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert not AuditEntry.objects.filter(action="launch").exists()


@pytest.mark.parametrize("role", [roles.SUPPORT, roles.ANALYST])
def test_support_and_analyst_may_not_use_the_builder(client, program, role):
    campaign = campaign_make(name="Someone else's")
    client.force_login(staff(role))
    assert client.get(reverse(START)).status_code == 403
    assert client.post(reverse(START), audience(DANES)).status_code == 403
    for step in ("segment", "message", "review"):
        assert client.get(step_url(campaign, step)).status_code == 403
    assert client.post(step_url(campaign, "review"), {"_launch": "1"}).status_code == 403
    assert not Segment.objects.exclude(pk=campaign.segment_id).exists()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert "New campaign (guided)" not in client.get(reverse("admin:index")).content.decode()


def test_without_the_launch_permission_the_review_says_whom_to_ask_and_launch_is_refused(client, program):
    junior = Group.objects.create(name="Marketing assistant")
    junior.permissions.set(
        Group.objects.get(name=roles.MARKETING).permissions.exclude(codename="launch_campaign")
    )
    user = UserFactory(username="assistant", is_staff=True)
    user.groups.add(junior)
    client.force_login(user)
    campaign = campaign_make(name="Ready")
    page = client.get(step_url(campaign, "review")).content.decode()
    assert "ask a marketing lead" in page and 'name="_launch"' not in page
    assert client.post(step_url(campaign, "review"), {"_launch": "1"}).status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert Permission.objects.filter(codename="launch_campaign").exists()


def test_marketing_finds_the_builder_from_the_index_and_the_campaign_list(marketing, program):
    link = reverse(START)
    assert f'href="{link}"' in marketing.get(reverse("admin:index")).content.decode()
    assert f'href="{link}"' in marketing.get(reverse("admin:campaigns_campaign_changelist")).content.decode()


def test_a_running_campaign_is_not_edited_in_the_builder(marketing, program):
    campaign = campaign_make(name="Running", status="active")
    response = marketing.get(step_url(campaign, "offer"))
    assert response["Location"] == reverse("admin:campaigns_campaign_results", args=[campaign.pk])
    assert (
        marketing.post(step_url(campaign, "offer"), {"offer": "points", "offer_points": "5"}).status_code
        == 302
    )
    campaign.refresh_from_db()
    assert campaign.offer == Campaign.Offer.NONE


def test_unknown_step_is_not_found(marketing, program):
    campaign = campaign_make(name="Any")
    assert marketing.get(step_url(campaign, "nonsense")).status_code == 404


def test_builder_pages_have_no_inline_script_or_style(marketing, program):
    marketing.post(reverse(START), audience(DANES))
    campaign = Campaign.objects.get()
    for step in ("segment", "message", "offer", "schedule", "holdout", "review"):
        html = marketing.get(step_url(campaign, step)).content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), step
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), step


def test_the_audience_targets_churn_risk_and_expected_purchases_once_analytics_scored(marketing, program):
    from django.utils import timezone

    from analytics.models import AnalyticsRun, CustomerScore
    from campaigns.segments import segment_customers

    at_risk = [{"group": "1", "field": "churn_risk", "operator": "is", "value": "high,churned"}]
    buyers = [{"group": "1", "field": "expected_90", "operator": "gte", "value": "2.5"}]
    before = marketing.post(reverse(START), audience(at_risk))
    assert "Analytics has not computed customer scores yet." in before.content.decode()
    assert not Campaign.objects.exists()

    run = AnalyticsRun.objects.create(as_of=timezone.localdate(), status="done")
    for ref, risk, e90 in (("ann", "churned", 0.1), ("bo", "low", 3.0)):
        CustomerScore.objects.create(
            run=run,
            customer=CustomerFactory(external_ref=ref),
            first_day=run.as_of,
            last_day=run.as_of,
            purchase_days=2,
            frequency=1,
            recency=1,
            age=9,
            net_revenue=1,
            historical_clv=1,
            rfm_r=1,
            rfm_f=1,
            rfm_m=1,
            rfm_score=3,
            churn_risk=risk,
            expected_90=e90,
        )
    wrong = marketing.post(reverse(START), audience([{**at_risk[0], "value": "lost"}]))
    row = re.search(r'<tr class="row-errors">(.*?)</tr>', wrong.content.decode(), re.S)
    assert row and "low, medium, high, churned" in row.group(1)
    done = marketing.post(reverse(START), audience(at_risk))
    campaign = Campaign.objects.get()
    assert done.status_code == 302
    assert list(campaign.segment.conditions.values_list("field", "value")) == [("churn_risk", "high,churned")]
    assert [c.external_ref for c in segment_customers(campaign.segment)] == ["ann"]
    preview = marketing.post(reverse("admin:campaigns_segment_preview"), audience(buyers))
    assert preview.json()["count"] == 1 and preview.json()["sample"][0]["ref"] == "bo"
