"""The staff admin: every page renders, writes go through the services, the ledger stays read-only."""

import datetime as dt
import hashlib
import io
import re
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from accounts.models import AuditEntry, Customer
from rewards import rules, services
from rewards.models import (
    CustomerEvent,
    Integration,
    LedgerEntry,
    PointsAccount,
    ProgramRules,
    Promotion,
    Purchase,
    PurchaseLine,
    Redemption,
    Reward,
    Tier,
)
from tests.factories import CategoryMultiplierFactory, CustomerFactory, RewardFactory, TierFactory

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"lyt_[A-Za-z0-9_-]{20,}")


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def balance(customer) -> int:
    return PointsAccount.objects.get(pk=customer.pk).balance


def assert_every_page_renders(client, user, *, with_objects: bool) -> None:
    request = RequestFactory().get("/")
    request.user = user
    failures = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        response = client.get(url(model, "changelist"), follow=True)
        if response.status_code != 200:
            failures.append(f"{label} changelist: {response.status_code}")
        expected = 200 if model_admin.has_add_permission(request) else 403
        response = client.get(url(model, "add"))
        if response.status_code != expected:
            failures.append(f"{label} add: {response.status_code}, expected {expected}")
        obj = model_admin.get_queryset(request).first()
        if with_objects and obj is not None:
            response = client.get(url(model, "change", obj.pk))
            if response.status_code != 200:
                failures.append(f"{label} change: {response.status_code}")
    assert failures == []


def test_every_registered_model_renders_its_list_and_add_page_on_an_empty_database(admin_client, admin_user):
    assert_every_page_renders(admin_client, admin_user, with_objects=False)


def test_every_registered_model_renders_its_pages_on_the_seeded_demo(admin_client, admin_user):
    call_command("seed_demo", customers=12, months=1, seed=3, stdout=StringIO())
    assert_every_page_renders(admin_client, admin_user, with_objects=True)
    # The reward list shows each picture as a thumbnail.
    html = admin_client.get(url(Reward, "changelist")).content.decode()
    assert html.count('<img src="/media/rewards/demo-') == 10


def test_program_rules_list_goes_to_the_single_row_which_cannot_be_added_again_or_deleted(admin_client):
    response = admin_client.get(url(ProgramRules, "changelist"))
    assert response.status_code == 302 and response.url == url(ProgramRules, "add")
    ProgramRules.current()
    response = admin_client.get(url(ProgramRules, "changelist"))
    assert response.status_code == 302 and response.url == url(ProgramRules, "change", 1)
    assert admin_client.get(url(ProgramRules, "add")).status_code == 403
    assert admin_client.get(url(ProgramRules, "delete", 1)).status_code == 403


# --- Adjust points ---------------------------------------------------------------------


def adjust_url(customer) -> str:
    return reverse("admin:accounts_customer_adjust_points", args=[customer.pk])


def test_adjust_points_without_a_reason_shows_the_error_next_to_the_field_and_writes_nothing(
    admin_client, member
):
    entries = LedgerEntry.objects.count()
    response = admin_client.post(
        adjust_url(member), {"points": "50", "reason": "  ", "idempotency_key": "a" * 32}
    )
    assert response.status_code == 200
    assert list(response.context["form"].errors) == ["reason"]
    html = response.content.decode()
    row = re.search(
        r'<div class="form-row errors field-reason">\s*<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', html, re.S
    )
    assert row is not None and "A reason is required." in row.group(1)
    assert 'class="form-row errors field-points"' not in html
    assert LedgerEntry.objects.count() == entries and balance(member) == 50


def test_adjust_points_refuses_zero_points(admin_client, member):
    response = admin_client.post(
        adjust_url(member), {"points": "0", "reason": "x", "idempotency_key": "b" * 32}
    )
    assert response.status_code == 200 and list(response.context["form"].errors) == ["points"]
    assert not LedgerEntry.objects.filter(kind="adjust").exists()


def test_adjust_points_posted_twice_with_the_same_key_adjusts_once(admin_client, admin_user, member):
    page = admin_client.get(adjust_url(member))
    key = page.context["form"]["idempotency_key"].value()
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    data = {"points": "-30", "reason": "Coffee machine double-scanned the card", "idempotency_key": key}

    first = admin_client.post(adjust_url(member), data)
    second = admin_client.post(adjust_url(member), data, follow=True)

    assert first.status_code == 302 and first.url == url(Customer, "change", member.pk)
    entries = LedgerEntry.objects.filter(account_id=member.pk, kind="adjust")
    assert entries.count() == 1
    entry = entries.get()
    assert entry.points == -30 and entry.staff_user == admin_user and entry.reason == data["reason"]
    assert balance(member) == 50 - 30
    assert "already recorded" in second.content.decode()


def test_a_new_form_has_a_new_key(admin_client, member):
    keys = {admin_client.get(adjust_url(member)).context["form"]["idempotency_key"].value() for _ in range(2)}
    assert len(keys) == 2


def test_adjust_points_of_a_non_member_is_refused_with_a_message(admin_client, program):
    shopper = CustomerFactory()
    response = admin_client.post(
        adjust_url(shopper), {"points": "10", "reason": "Goodwill", "idempotency_key": "c" * 32}
    )
    assert response.status_code == 200
    assert "not a member" in " ".join(response.context["form"].non_field_errors())
    assert not LedgerEntry.objects.exists()


# --- Preview earnings ------------------------------------------------------------------


def test_preview_earnings_shows_points_and_explanation_and_records_nothing(admin_client, member):
    CategoryMultiplierFactory(category="pastry", multiplier=Decimal("1.5"))
    counts = [m.objects.count() for m in (LedgerEntry, Purchase, PurchaseLine, Customer, CustomerEvent)]

    response = admin_client.get(
        reverse("admin:accounts_customer_preview_earnings"),
        {"customer": member.external_ref, "amount": "100", "lines": "coffee 40\npastry 60"},
    )

    assert response.status_code == 200
    result = response.context["result"]
    # 100 base + 60 × 0.5 extra for pastry, Bronze × 1
    assert result.points == 130
    html = response.content.decode()
    assert "130 points" in html
    lines = rules.explain(result.explanation)
    assert "Category pastry (60.00) × 1.5: 30 extra points" in lines
    for line in lines:
        assert line in html
    assert [
        m.objects.count() for m in (LedgerEntry, Purchase, PurchaseLine, Customer, CustomerEvent)
    ] == counts


def test_preview_earnings_without_a_customer_uses_a_new_member(admin_client, program):
    response = admin_client.get(reverse("admin:accounts_customer_preview_earnings"), {"amount": "49.90"})
    assert response.context["result"].points == 49
    assert not Customer.objects.exists()


def test_preview_earnings_shows_errors_next_to_the_fields(admin_client, program):
    response = admin_client.get(
        reverse("admin:accounts_customer_preview_earnings"),
        {"customer": "NOPE", "amount": "10", "lines": "coffee forty"},
    )
    assert response.context["result"] is None
    errors = response.context["form"].errors
    assert set(errors) == {"lines"}  # the customer is looked up only when the input is valid
    response = admin_client.get(
        reverse("admin:accounts_customer_preview_earnings"), {"customer": "NOPE", "amount": "10"}
    )
    assert list(response.context["form"].errors) == ["customer"]


# --- Integrations ----------------------------------------------------------------------


def test_adding_an_integration_shows_its_token_once_and_stores_only_its_hash(admin_client):
    response = admin_client.post(url(Integration, "add"), {"name": "Webshop"}, follow=True)

    assert response.status_code == 200
    tokens = TOKEN.findall(response.content.decode())
    assert len(tokens) == 1
    token = tokens[0]
    integration = Integration.objects.get(name="Webshop")
    assert integration.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert integration.token_prefix == token[:10]
    stored = [
        str(v) for v in Integration.objects.values_list(*[f.attname for f in Integration._meta.fields]).get()
    ]
    assert token not in stored
    assert not any(token in (entry.change_message + entry.object_repr) for entry in LogEntry.objects.all())
    for page in (url(Integration, "change", integration.pk), url(Integration, "changelist")):
        assert token not in admin_client.get(page).content.decode()


def test_issuing_a_new_token_replaces_the_old_hash_and_shows_the_new_token(admin_client):
    integration, old = services.integration_token_create(name="Shop POS")
    response = admin_client.post(
        url(Integration, "changelist"),
        {"action": "issue_new_token", "_selected_action": [integration.pk]},
        follow=True,
    )
    tokens = TOKEN.findall(response.content.decode())
    assert len(tokens) == 1 and tokens[0] != old
    integration.refresh_from_db()
    assert integration.token_hash == hashlib.sha256(tokens[0].encode()).hexdigest()


# --- The ledger is read-only -------------------------------------------------------------


def test_ledger_entries_cannot_be_added_changed_or_deleted_through_the_admin(admin_client, member):
    entry = LedgerEntry.objects.get(account_id=member.pk)
    assert admin_client.get(url(LedgerEntry, "change", entry.pk)).status_code == 200  # view only
    assert admin_client.post(url(LedgerEntry, "change", entry.pk), {"points": "5000"}).status_code == 403
    assert admin_client.get(url(LedgerEntry, "delete", entry.pk)).status_code == 403
    assert admin_client.post(url(LedgerEntry, "delete", entry.pk), {"post": "yes"}).status_code == 403
    assert admin_client.get(url(LedgerEntry, "add")).status_code == 403
    admin_client.post(
        url(LedgerEntry, "changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    entry.refresh_from_db()
    assert entry.points == 50 and LedgerEntry.objects.count() == 1


def test_ledger_list_shows_the_rendered_explanation(admin_client, member):
    html = admin_client.get(url(LedgerEntry, "changelist")).content.decode()
    assert rules.explain_summary(50, [{"code": "signup_bonus"}]) in html
    assert member.external_ref in html


# --- Vouchers ------------------------------------------------------------------------------


def test_cancel_action_returns_the_points_and_mark_used_uses_the_voucher(admin_client, member):
    reward = RewardFactory(cost_points=20)
    cancel = services.reward_redeem(customer=member, reward_id=reward.pk).redemption
    use = services.reward_redeem(customer=member, reward_id=reward.pk).redemption
    assert balance(member) == 10

    admin_client.post(
        url(Redemption, "changelist"), {"action": "cancel_vouchers", "_selected_action": [cancel.pk]}
    )
    admin_client.post(url(Redemption, "changelist"), {"action": "mark_used", "_selected_action": [use.pk]})
    response = admin_client.post(
        url(Redemption, "changelist"),
        {"action": "cancel_vouchers", "_selected_action": [use.pk]},
        follow=True,
    )

    cancel.refresh_from_db()
    use.refresh_from_db()
    assert cancel.state == Redemption.State.CANCELLED and use.state == Redemption.State.USED
    assert balance(member) == 30
    assert "cannot be cancelled" in response.content.decode()
    # Each change is audited with the state before and after; the refused one is not.
    audited = {
        (entry.action, entry.object_id, entry.before["state"], entry.after["state"])
        for entry in AuditEntry.objects.filter(
            action__in=[AuditEntry.Action.CANCEL_REDEMPTION, AuditEntry.Action.MARK_USED]
        )
    }
    assert audited == {
        (AuditEntry.Action.CANCEL_REDEMPTION, str(cancel.pk), "issued", "cancelled"),
        (AuditEntry.Action.MARK_USED, str(use.pk), "issued", "used"),
    }


def test_voucher_actions_on_vouchers_past_their_validity_expire_them_and_return_no_points(
    admin_client, member
):
    reward = RewardFactory(cost_points=20, validity_days=30)
    cancel = services.reward_redeem(customer=member, reward_id=reward.pk).redemption
    use = services.reward_redeem(customer=member, reward_id=reward.pk).redemption
    Redemption.objects.filter(pk__in=[cancel.pk, use.pk]).update(
        expires_at=timezone.now() - dt.timedelta(minutes=1)
    )
    entries = LedgerEntry.objects.count()

    cancelled = admin_client.post(
        url(Redemption, "changelist"),
        {"action": "cancel_vouchers", "_selected_action": [cancel.pk]},
        follow=True,
    )
    used = admin_client.post(
        url(Redemption, "changelist"), {"action": "mark_used", "_selected_action": [use.pk]}, follow=True
    )

    # Refused as vouchers the nightly job had expired are, and expired for good as the job would
    # have done: no points back, nothing for the job left to do, no audit entry (the job writes none).
    assert "cannot be cancelled" in cancelled.content.decode()
    assert "This voucher is expired." in used.content.decode()
    assert set(Redemption.objects.filter(pk__in=[cancel.pk, use.pk]).values_list("state", flat=True)) == {
        Redemption.State.EXPIRED
    }
    assert services.vouchers_expire() == 0
    assert balance(member) == 10 and LedgerEntry.objects.count() == entries
    assert not AuditEntry.objects.filter(
        action__in=[AuditEntry.Action.CANCEL_REDEMPTION, AuditEntry.Action.MARK_USED]
    ).exists()


# --- Customers -----------------------------------------------------------------------------


def test_customer_list_filters_members_and_finds_by_referral_code(admin_client, member):
    shopper = CustomerFactory()
    members = admin_client.get(url(Customer, "changelist"), {"member": "yes"}).context["cl"].result_list
    others = admin_client.get(url(Customer, "changelist"), {"member": "no"}).context["cl"].result_list
    assert list(members) == [member] and list(others) == [shopper]
    found = (
        admin_client.get(url(Customer, "changelist"), {"q": member.referral_code}).context["cl"].result_list
    )
    assert list(found) == [member]


def test_customer_page_shows_balance_tier_and_the_object_tools(admin_client, member):
    html = admin_client.get(url(Customer, "change", member.pk)).content.decode()
    assert adjust_url(member) in html
    assert reverse("admin:accounts_customer_preview_earnings") in html
    assert "Bronze" in html
    assert re.search(r"field-balance.*?<div class=\"readonly\">50</div>", html, re.S)


# --- Translations, one field per language ----------------------------------------------------


def test_tier_names_in_other_languages_are_edited_one_field_per_language(admin_client):
    tier = TierFactory(code="gold", name="Gold", name_translations={"da": "Gul", "xx": "kept"})
    response = admin_client.post(
        url(Tier, "change", tier.pk),
        {
            "code": "gold",
            "name": "Gold",
            "min_qualifying_spend": "8000",
            "multiplier": "1.5",
            "name_da": "Guld",
            "name_sv": "",
            "name_ru": "Золото",
            "name_th": "ทอง",
        },
    )
    assert response.status_code == 302
    tier.refresh_from_db()
    assert tier.name_translations == {"da": "Guld", "ru": "Золото", "th": "ทอง", "xx": "kept"}


def test_a_reward_added_with_a_picture_and_translations(admin_client):
    picture = io.BytesIO()
    Image.new("RGB", (30, 20), "#6F4E37").save(picture, format="PNG")
    response = admin_client.post(
        url(Reward, "add"),
        {
            "name": "Free espresso",
            "description": "A single shot.",
            "image": SimpleUploadedFile("espresso.png", picture.getvalue(), content_type="image/png"),
            "cost_points": "250",
            "is_active": "on",
            "name_da": "Gratis espresso",
            "description_da": "En enkelt shot.",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    reward = Reward.objects.get(name="Free espresso")
    assert reward.translations == {"da": {"name": "Gratis espresso", "description": "En enkelt shot."}}
    assert reward.image.storage.exists(reward.image.name)
    html = admin_client.get(url(Reward, "changelist")).content.decode()
    assert f'<img src="{reward.image.url}"' in html


def test_preview_earnings_at_a_future_time_applies_the_promotion_then_in_force(admin_client, member):
    starts = timezone.now() + dt.timedelta(days=3)
    Promotion.objects.create(
        name="Double points weekend",
        multiplier=Decimal("2"),
        starts_at=starts,
        ends_at=starts + dt.timedelta(days=2),
    )
    preview = reverse("admin:accounts_customer_preview_earnings")
    later = timezone.localtime(starts + dt.timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M")

    assert (
        admin_client.get(preview, {"customer": member.external_ref, "amount": "80"}).context["result"].points
        == 80
    )
    response = admin_client.get(preview, {"customer": member.external_ref, "amount": "80", "at": later})
    assert response.context["result"].points == 160
    assert "× 2 promotion: Double points weekend" in response.content.decode()
