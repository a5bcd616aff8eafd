"""The guided campaign builder in a real browser (Debian's Chromium, headless) against a
live server on PostgreSQL: a marketer signs in, builds a campaign through every step,
watches the live count follow the conditions, previews the message for a customer in
Danish, launches, and lands on the results page. The site's strict CSP must not refuse
anything on the way.

A screenshot of every step is kept in memory and written under test-artifacts/ only when
the test fails (BUILDER_SCREENSHOTS=1 writes them anyway, to look at the pages)."""

import os
import re

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from playwright.sync_api import expect

from accounts import roles
from campaigns.models import Campaign
from tests.conftest import ARTIFACTS
from tests.factories import CustomerFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class Shots:
    def __init__(self, page):
        self.page = page
        self.taken: list[tuple[str, bytes]] = []

    def __call__(self, name: str) -> None:
        self.taken.append((name, self.page.screenshot(full_page=True)))

    def write(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, (name, png) in enumerate(self.taken, start=1):
            (ARTIFACTS / f"builder-{i:02d}-{name}.png").write_bytes(png)


def test_marketer_builds_previews_in_danish_launches_and_sees_results(page, live_server, program):
    CustomerFactory(first_name="Mette", language="da", email="mette@example.com", external_ref="DK-1")
    CustomerFactory.create_batch(2, language="da")
    CustomerFactory.create_batch(2, language="sv")
    marketer = UserFactory(username="marketer", is_staff=True)
    marketer.groups.add(Group.objects.get(name=roles.MARKETING))

    refused = []
    page.on(
        "console",
        lambda m: (
            refused.append(m.text) if "Content Security Policy" in m.text or "Refused" in m.text else None
        ),
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    shots = Shots(page)
    try:
        build_and_launch(page, live_server.url, shots)
        assert not refused, refused
    except BaseException:
        shots.write()
        raise
    if os.environ.get("BUILDER_SCREENSHOTS"):
        shots.write()

    campaign = Campaign.objects.get()
    assert campaign.status == Campaign.Status.ACTIVE and campaign.segment.conditions.get().value == "da"
    assert campaign.offer_points == 100 and campaign.holdout_percent == 25


def build_and_launch(page, base: str, shots: Shots) -> None:
    page.goto(f"{base}{reverse('admin:login')}")
    page.get_by_label("Username").fill("marketer")
    page.get_by_label("Password").fill("pw-for-tests-123")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="New campaign (guided)").first.click()

    # Audience: the live count follows the conditions as they are edited.
    count = page.get_by_test_id("segment-count")
    expect(count).to_have_text("5")  # no condition: every customer
    page.locator("#id_name").fill("Come back to the café")
    page.locator("#id_segment_name").fill("Danes")
    page.locator("#id_conditions-0-field").select_option("language")
    page.locator("#id_conditions-0-value").fill("da")
    expect(count).to_have_text("3")
    page.locator("#id_conditions-0-value").fill("sv")
    expect(count).to_have_text("2")
    page.locator("#id_conditions-0-negate").check()
    expect(count).to_have_text("3")
    page.locator("#id_conditions-0-value").fill("da,sv")
    expect(count).to_have_text("0")
    page.locator("#id_conditions-0-negate").uncheck()
    expect(count).to_have_text("5")
    page.locator("#id_conditions-0-value").fill("da")
    expect(count).to_have_text("3")
    expect(page.locator("#segment-preview tbody tr")).to_have_count(3)
    shots("audience")
    page.get_by_role("button", name="Save and continue").click()

    # Message: English and Danish, then the preview for Mette, found by her email.
    expect(page.locator("[aria-current=step]")).to_have_text("Message")
    page.locator("#id_en-subject").fill("Hi {{ first_name }}")
    page.locator("#id_en-body").fill("You have {{ points_balance }} points.")
    page.locator("#id_da-subject").fill("Hej {{ first_name }}")
    page.locator("#id_da-body").fill("Du har {{ points_balance }} point.")
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_label("Email or customer number").fill("mette@example.com")
    page.get_by_role("button", name="Show").click()
    danish = page.locator("article[data-language=da]")
    expect(danish).to_contain_text("Hej Mette")
    expect(danish).to_contain_text("Du har 0 point.")
    expect(danish).to_contain_text("the customer's language")
    shots("message")
    page.get_by_role("button", name="Save and continue").click()

    # Offer: the points field appears once "points gift" is chosen.
    expect(page.locator("[aria-current=step]")).to_have_text("Offer")
    points = page.locator("#id_offer_points")
    expect(points).to_be_hidden()
    page.get_by_role("radio", name="points gift").check()
    expect(points).to_be_visible()
    points.fill("100")
    shots("offer")
    page.get_by_role("button", name="Save and continue").click()

    # Schedule: now (the default).
    expect(page.locator("[aria-current=step]")).to_have_text("Schedule")
    expect(page.locator("#id_send_at")).to_be_hidden()
    shots("schedule")
    page.get_by_role("button", name="Save and continue").click()

    # Holdout: a quarter kept back; a wrong value first, refused next to the field.
    expect(page.locator("[aria-current=step]")).to_have_text("Holdout")
    page.locator("#id_holdout_percent").fill("95")
    page.get_by_role("button", name="Save and continue").click()
    expect(page.locator(".field-holdout_percent .errorlist")).to_contain_text("90")
    page.locator("#id_holdout_percent").fill("25")
    shots("holdout")
    page.get_by_role("button", name="Save and continue").click()

    # Review: everything listed, every step complete, no problem; launch.
    expect(page.locator("[aria-current=step]")).to_have_text("Review and launch")
    expect(page.locator(".builder-steps li.complete")).to_have_count(6)
    expect(page.locator(".builder-problems")).to_have_count(0)
    expect(page.get_by_test_id("review-count")).to_have_text("3")
    shots("review")
    page.get_by_role("button", name="Launch").click()

    expect(page).to_have_url(re.compile(r"/admin/campaigns/campaign/\d+/results/$"))
    expect(page.get_by_text("Lift on conversion")).to_be_visible()
    expect(page.locator(".messagelist")).to_contain_text("is active")
    shots("results")
