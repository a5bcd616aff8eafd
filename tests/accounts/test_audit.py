"""The audit log: staff changes of points, rules, tiers, rewards, campaigns, tokens and roles
are written with who, what, before and after; the log is read-only in the admin (program
admins only) and append-only in the database."""

import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from accounts import roles
from accounts.models import AuditEntry, User
from campaigns.models import Campaign
from rewards.models import Integration, Tier
from tests.factories import TierFactory, UserFactory, campaign_make

pytestmark = pytest.mark.django_db


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def role_login(client, role: str, username: str | None = None) -> User:
    user = UserFactory(username=username or role.lower().replace(" ", ""), is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return user


def only_entry(**filters) -> AuditEntry:
    entries = list(AuditEntry.objects.filter(**filters))
    assert len(entries) == 1, [e.summary for e in AuditEntry.objects.all()]
    return entries[0]


def test_a_points_adjustment_is_logged_with_the_balance_before_and_after(client, member):
    staff = role_login(client, roles.SUPPORT)
    response = client.post(
        reverse("admin:accounts_customer_adjust_points", args=[member.pk]),
        {"points": "-20", "reason": "Double scan", "idempotency_key": "a" * 32},
    )
    assert response.status_code == 302
    # The same form posted again adjusts nothing and logs nothing.
    client.post(
        reverse("admin:accounts_customer_adjust_points", args=[member.pk]),
        {"points": "-20", "reason": "Double scan", "idempotency_key": "a" * 32},
    )

    entry = only_entry(action="adjust_points")
    assert entry.user == staff and entry.username == staff.username
    assert entry.content_type.model == "customer" and entry.object_id == str(member.pk)
    assert entry.before == {"balance": 50}
    assert (
        entry.after["balance"] == 30
        and entry.after["points"] == -20
        and entry.after["reason"] == "Double scan"
    )
    assert "-20" in entry.summary and "Double scan" in entry.summary


def test_a_tier_change_is_logged_with_the_fields_that_changed(client, program):
    role_login(client, roles.PROGRAM_ADMIN)
    tier = TierFactory(code="gold-x", name="Gold X", multiplier="1.5", min_qualifying_spend="8000")
    response = client.post(
        admin_url(Tier, "change", tier.pk),
        {"code": "gold-x", "name": "Gold X", "min_qualifying_spend": "8000", "multiplier": "2"},
    )
    assert response.status_code == 302

    entry = only_entry(action="change")
    assert entry.before["multiplier"] == "1.50" and entry.after["multiplier"] == "2.00"
    assert entry.before["name"] == entry.after["name"] == "Gold X"
    assert "1.50 → 2.00" in entry.summary


def test_a_tier_created_and_deleted_is_logged(client, program):
    role_login(client, roles.PROGRAM_ADMIN)
    client.post(
        admin_url(Tier, "add"),
        {"code": "platinum", "name": "Platinum", "min_qualifying_spend": "20000", "multiplier": "3"},
    )
    tier = Tier.objects.get(code="platinum")
    client.post(admin_url(Tier, "delete", tier.pk), {"post": "yes"})

    created, deleted = AuditEntry.objects.order_by("pk")
    assert (created.action, created.before, created.after["code"]) == ("create", None, "platinum")
    assert (deleted.action, deleted.before["code"], deleted.after) == ("delete", "platinum", None)
    assert deleted.object_id == str(tier.pk) and not Tier.objects.filter(code="platinum").exists()


def test_campaign_launch_and_pause_are_logged(client, program):
    role_login(client, roles.MARKETING)
    campaign = campaign_make()
    client.post(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]))
    client.post(
        admin_url(Campaign, "changelist"), {"action": "pause_selected", "_selected_action": [campaign.pk]}
    )

    launch, pause = AuditEntry.objects.order_by("pk")
    assert (launch.action, launch.before["status"], launch.after["status"]) == ("launch", "draft", "active")
    assert (pause.action, pause.before["status"], pause.after["status"]) == ("pause", "active", "paused")


def test_a_campaign_change_includes_its_messages(client, program):
    role_login(client, roles.MARKETING)
    campaign = campaign_make()
    page = client.get(admin_url(Campaign, "change", campaign.pk))
    data = {}
    for form in [page.context["adminform"].form] + [
        f
        for fs in page.context["inline_admin_formsets"]
        for f in [fs.formset.management_form, *fs.formset.forms]
    ]:
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else value
    data["contents-0-subject"] = "Hello again {{ first_name }}"
    response = client.post(admin_url(Campaign, "change", campaign.pk), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""

    entry = only_entry(action="change")
    assert entry.before["campaigncontent"][0]["subject"] == "Hi {{ first_name }}"
    assert entry.after["campaigncontent"][0]["subject"] == "Hello again {{ first_name }}"


def test_tokens_created_and_revoked_are_logged_without_the_token(client, program):
    role_login(client, roles.PROGRAM_ADMIN)
    response = client.post(admin_url(Integration, "add"), {"name": "Webshop"}, follow=True)
    token = next(str(m) for m in response.context["messages"]).split("<code")[1].split(">")[1].split("<")[0]
    integration = Integration.objects.get(name="Webshop")
    client.post(admin_url(Integration, "change", integration.pk), {"name": "Webshop"})  # is_active off
    client.post(
        admin_url(Integration, "changelist"),
        {"action": "issue_new_token", "_selected_action": [integration.pk]},
    )

    created, revoked, reissued = AuditEntry.objects.order_by("pk")
    assert created.action == "create_token" and created.after["token_prefix"] == token[:10]
    assert revoked.action == "revoke_token" and revoked.after["is_active"] is False
    assert reissued.action == "create_token" and reissued.before["token_prefix"] == token[:10]
    everything = json.dumps(list(AuditEntry.objects.values("summary", "before", "after")))
    assert token not in everything and "token_hash" not in everything


def test_group_membership_and_role_permissions_are_logged(client):
    role_login(client, roles.PROGRAM_ADMIN)
    clerk = UserFactory(username="clerk", is_staff=True)
    support = Group.objects.get(name=roles.SUPPORT)
    response = client.post(
        admin_url(User, "change", clerk.pk),
        {
            "username": "clerk",
            "email": "clerk@example.com",
            "is_active": "on",
            "is_staff": "on",
            "groups": [support.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "09:00",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    entry = only_entry(action="roles")
    assert entry.before["groups"] == [] and entry.after["groups"] == [roles.SUPPORT]
    assert "password" not in entry.after and "pbkdf2" not in json.dumps(entry.after)

    marketing = Group.objects.get(name=roles.MARKETING)
    wanted = list(marketing.permissions.values_list("pk", flat=True))
    view_tier = Permission.objects.get(codename="view_tier")
    wanted_without = [pk for pk in wanted if pk != view_tier.pk]
    response = client.post(
        admin_url(Group, "change", marketing.pk), {"name": roles.MARKETING, "permissions": wanted_without}
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.filter(action="roles").latest("pk")
    assert "rewards.view_tier" in entry.before["permissions"]
    assert "rewards.view_tier" not in entry.after["permissions"]


# --- Reading the log ----------------------------------------------------------------------


@pytest.fixture
def entries(member, client):
    """Two entries by two staff members."""
    for role, points, reason in (
        (roles.SUPPORT, 5, "Spilt-coffee"),
        (roles.PROGRAM_ADMIN, 7, "Birthday-gift"),
    ):
        role_login(client, role)
        client.post(
            reverse("admin:accounts_customer_adjust_points", args=[member.pk]),
            {"points": str(points), "reason": reason, "idempotency_key": str(points) * 32},
        )
        client.logout()
    assert AuditEntry.objects.count() == 2
    return AuditEntry.objects.order_by("pk")


def test_program_admins_read_filter_and_search_the_log(client, entries):
    role_login(client, roles.PROGRAM_ADMIN, username="reader")
    url = admin_url(AuditEntry, "changelist")
    assert len(client.get(url).context["cl"].result_list) == 2
    support_entry = entries[0]
    for params in (
        {"user__id__exact": support_entry.user_id},
        {"q": "Spilt-coffee"},
        {"action__exact": "adjust_points", "q": "Spilt-coffee"},
        {"content_type__id__exact": support_entry.content_type_id, "q": "Spilt-coffee"},
        {"at__year": support_entry.at.year, "at__month": support_entry.at.month, "q": "Spilt-coffee"},
    ):
        response = client.get(url, params)
        assert response.status_code == 200
        assert [e.pk for e in response.context["cl"].result_list] == [support_entry.pk], params
    assert client.get(admin_url(AuditEntry, "change", support_entry.pk)).status_code == 200


@pytest.mark.parametrize("role", [roles.SUPPORT, roles.MARKETING, roles.ANALYST])
def test_other_roles_cannot_see_the_log(client, entries, role):
    role_login(client, role, username="other")
    assert client.get(admin_url(AuditEntry, "changelist")).status_code == 403
    assert client.get(admin_url(AuditEntry, "change", entries[0].pk)).status_code == 403


@pytest.mark.parametrize("who", ["programadmin", "superuser"])
def test_nobody_can_add_change_or_delete_an_entry_in_the_admin(client, entries, who):
    if who == "superuser":
        client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    else:
        role_login(client, roles.PROGRAM_ADMIN, username="reader")
    entry = entries[0]
    assert client.get(admin_url(AuditEntry, "add")).status_code == 403
    assert client.post(admin_url(AuditEntry, "add"), {"action": "change"}).status_code == 403
    assert client.post(admin_url(AuditEntry, "delete", entry.pk), {"post": "yes"}).status_code == 403
    client.post(admin_url(AuditEntry, "change", entry.pk), {"summary": "rewritten"})
    client.post(
        admin_url(AuditEntry, "changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    entry.refresh_from_db()
    assert entry.summary != "rewritten" and AuditEntry.objects.count() == 2


@pytest.mark.parametrize(
    "sql",
    ["UPDATE accounts_auditentry SET summary = 'rewritten'", "DELETE FROM accounts_auditentry"],
    ids=["update", "delete"],
)
def test_the_database_refuses_changes_to_the_log(entries, sql):
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert AuditEntry.objects.count() == 2
    assert not AuditEntry.objects.filter(summary="rewritten").exists()


def test_a_staff_member_who_acted_cannot_be_deleted(entries):
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        entries[0].user.delete()
