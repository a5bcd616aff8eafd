"""Staff pages for campaigns: the segment editor's live count, preview for a chosen customer
in their language, a test send to the staff member's own address, launch, results."""

import pytest
from django.urls import reverse

from accounts.models import Customer
from campaigns.models import Campaign, Segment
from tests.factories import CustomerFactory, StaffFactory, campaign_make


@pytest.fixture
def staff_client(client, db):
    client.force_login(StaffFactory(email="sofie@shop.example"))
    return client


def formset(rows):
    data = {
        "name": "At risk",
        "description": "",
        "conditions-TOTAL_FORMS": str(len(rows)),
        "conditions-INITIAL_FORMS": "0",
        "conditions-MIN_NUM_FORMS": "0",
        "conditions-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"conditions-{i}-{key}"] = value
    return data


def test_live_count_follows_the_conditions_being_edited(staff_client, program):
    CustomerFactory.create_batch(3, language="da")
    CustomerFactory.create_batch(2, language="sv")
    url = reverse("admin:campaigns_segment_preview")
    danish = staff_client.post(
        url, formset([{"group": "1", "field": "language", "operator": "is", "value": "da"}])
    )
    assert danish.json()["count"] == 3 and len(danish.json()["sample"]) == 3
    either = formset(
        [
            {"group": "1", "field": "language", "operator": "is", "value": "da"},
            {"group": "2", "field": "language", "operator": "is", "value": "sv"},
        ]
    )
    assert staff_client.post(url, either).json()["count"] == 5
    negated = formset([{"group": "1", "field": "language", "operator": "is", "value": "da", "negate": "on"}])
    assert staff_client.post(url, negated).json()["count"] == 2
    broken = staff_client.post(
        url, formset([{"group": "1", "field": "purchases", "operator": "gte", "value": "2"}])
    )
    assert broken.status_code == 422 and "days" in broken.json()["error"]["message"]


def test_an_incomplete_condition_is_refused_next_to_its_row(staff_client, program):
    response = staff_client.post(
        reverse("admin:campaigns_segment_add"),
        formset([{"group": "1", "field": "birthday_month", "operator": "is", "value": "13"}]),
    )
    assert response.status_code == 200
    assert "1 to 12" in response.content.decode()
    assert not Segment.objects.exists()


def test_segment_editor_page_has_the_live_panel(staff_client, program):
    response = staff_client.get(reverse("admin:campaigns_segment_add"))
    assert 'id="segment-preview"' in response.content.decode()


def test_preview_renders_for_a_chosen_customer_in_their_language(staff_client, program):
    campaign = campaign_make(
        contents={"en": ("Hello {{ first_name }}", "English"), "da": ("Hej {{ first_name }}", "Dansk")}
    )
    CustomerFactory(external_ref="DK-1", first_name="Mads", language="da")
    response = staff_client.get(
        reverse("admin:campaigns_campaign_preview", args=[campaign.pk]) + "?customer=DK-1"
    )
    body = response.content.decode()
    assert "Hej Mads" in body and "Dansk" in body


def test_a_test_send_goes_to_the_staff_members_own_address(staff_client, program, mailoutbox):
    campaign = campaign_make(contents={"en": ("Hello {{ first_name }}", "Body")})
    CustomerFactory(external_ref="C-1", first_name="Ida")
    staff_client.post(reverse("admin:campaigns_campaign_test_send", args=[campaign.pk]), {"customer": "C-1"})
    (message,) = mailoutbox
    assert message.to == ["sofie@shop.example"] and message.subject == "[TEST] Hello Ida"
    assert Customer.objects.get(external_ref="C-1").deliveries.count() == 0


def test_launch_from_the_change_page_and_see_results(staff_client, program):
    campaign = campaign_make()
    staff_client.post(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]))
    assert Campaign.objects.get(pk=campaign.pk).status == "active"
    response = staff_client.get(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))
    assert response.status_code == 200 and "Lift on conversion" in response.content.decode()
    assert staff_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).status_code == 200


def test_launch_refusal_is_shown(staff_client, program):
    campaign = campaign_make(schedule="at")
    response = staff_client.post(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]), follow=True)
    assert "Choose the date and time" in response.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"


def test_campaign_pages_need_staff(client, program):
    campaign = campaign_make()
    for url in (
        reverse("admin:campaigns_campaign_preview", args=[campaign.pk]),
        reverse("admin:campaigns_campaign_results", args=[campaign.pk]),
    ):
        assert client.get(url).status_code == 302
    assert client.post(reverse("admin:campaigns_segment_preview")).status_code == 302
