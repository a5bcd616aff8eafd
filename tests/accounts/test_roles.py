"""Staff roles: each role × each action through the real admin URLs, allowed and refused.

The matrix is the table CASES below: one row per action, naming the roles that may do it.
Every other role is refused (403 for a page, no effect for an admin action). Superusers may
do everything. Add a row to cover a new action.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from accounts import roles
from accounts.models import AuditEntry, Customer, User
from analytics.models import AnalyticsSettings, MonthlyCost, Survey
from campaigns.models import Campaign, Delivery, Segment
from rewards import services
from rewards.models import EventRule, Integration, LedgerEntry, ProgramRules, Redemption, Reward, Tier
from tests.factories import CustomerFactory, RewardFactory, UserFactory, campaign_make

pytestmark = pytest.mark.django_db

S, M, A, P = "support", "marketing", "analyst", "programadmin"
ROLE_GROUPS = {S: roles.SUPPORT, M: roles.MARKETING, A: roles.ANALYST, P: roles.PROGRAM_ADMIN}
EVERY_ROLE = [S, M, A, P, "superuser"]


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def staff_login(role: str) -> User:
    if role == "superuser":
        return UserFactory(username="root", is_staff=True, is_superuser=True)
    user = UserFactory(username=role, is_staff=True)
    user.groups.add(Group.objects.get(name=ROLE_GROUPS[role]))
    return user


@dataclass
class World:
    """What the actions act on: a member with points, an issued voucher, an integration,
    a campaign ready to launch, a survey, a portal login waiting for its confirmation."""

    member: Customer
    redemption: Redemption
    integration: Integration
    campaign: Campaign
    survey: Survey
    tier: Tier


@pytest.fixture
def world(program, member) -> World:
    reward = RewardFactory(name="Coffee", cost_points=10)
    redemption = services.reward_redeem(customer=member, reward_id=reward.pk).redemption
    member.user = UserFactory(username="anna", email="anna@example.com")
    member.save()
    survey = Survey.objects.create(name="NPS", kind="nps", question="Would you recommend us?")
    AnalyticsSettings.objects.get_or_create(pk=1)
    return World(
        member=member,
        redemption=redemption,
        integration=Integration.objects.create(name="pos"),
        campaign=campaign_make(),
        survey=survey,
        tier=program[0],
    )


# --- The matrix -------------------------------------------------------------------------


@dataclass
class Page:
    """A request to an admin page: allowed → 200 or 302, refused → 403."""

    name: str
    allowed: set[str]
    url: Callable[[World], str]
    data: Callable[[World], dict] | None = None  # POST this when given

    def run(self, client, world) -> bool:
        url = self.url(world)
        response = client.post(url, self.data(world)) if self.data else client.get(url)
        assert response.status_code in (200, 302, 403), f"{self.name}: {response.status_code}"
        return response.status_code != 403


@dataclass
class Action:
    """An admin action posted on a changelist: allowed → it happened, refused → it did not."""

    name: str
    allowed: set[str]
    model: type
    action: str
    selected: Callable[[World], object]
    happened: Callable[[World], bool]

    def run(self, client, world) -> bool:
        obj = self.selected(world)
        client.post(
            admin_url(self.model, "changelist"), {"action": self.action, "_selected_action": [obj.pk]}
        )
        return self.happened(world)


def _state(obj) -> str:
    return type(obj).objects.get(pk=obj.pk).state


def _token_changed(world) -> bool:
    return Integration.objects.get(pk=world.integration.pk).token_prefix != world.integration.token_prefix


def _adjust_data(points: int):
    return lambda world: {"points": str(points), "reason": "Goodwill", "idempotency_key": "a" * 32}


SUPPORT_DESK = {S, M, P}
CASES = [
    # Customers: find, see, adjust, resend the confirmation, enroll.
    Page("customer list", SUPPORT_DESK, lambda w: admin_url(Customer, "changelist")),
    Page("customer page", SUPPORT_DESK, lambda w: admin_url(Customer, "change", w.member.pk)),
    Page("ledger list", {S, P}, lambda w: admin_url(LedgerEntry, "changelist")),
    Page(
        "adjust points form",
        {S, P},
        lambda w: reverse("admin:accounts_customer_adjust_points", args=[w.member.pk]),
    ),
    Page(
        "adjust points",
        {S, P},
        lambda w: reverse("admin:accounts_customer_adjust_points", args=[w.member.pk]),
        _adjust_data(100),
    ),
    Action(
        "resend confirmation",
        {S, P},
        Customer,
        "resend_confirmation",
        lambda w: w.member,
        lambda w: AuditEntry.objects.filter(action="resend_confirmation").exists(),
    ),
    Action(
        "enroll",
        {P},
        Customer,
        "enroll",
        lambda w: CustomerFactory(external_ref="NEW-1"),
        lambda w: Customer.objects.get(external_ref="NEW-1").enrolled_at is not None,
    ),
    # Vouchers.
    Page("redemption list", SUPPORT_DESK, lambda w: admin_url(Redemption, "changelist")),
    Action(
        "cancel voucher",
        {S, P},
        Redemption,
        "cancel_vouchers",
        lambda w: w.redemption,
        lambda w: _state(w.redemption) == "cancelled",
    ),
    Action(
        "mark voucher used",
        {S, P},
        Redemption,
        "mark_used",
        lambda w: w.redemption,
        lambda w: _state(w.redemption) == "used",
    ),
    # Rules, tiers, expiry, event rules, integrations and tokens: program admins.
    Page("program rules", {P}, lambda w: admin_url(ProgramRules, "change", 1)),
    Page(
        "program rules: change the expiry",
        {P},
        lambda w: admin_url(ProgramRules, "change", 1),
        lambda w: {
            "points_per_unit": "1",
            "minimum_spend": "0",
            "expiry_months": "12",
            "signup_bonus": "50",
            "birthday_bonus": "0",
            "referral_bonus_referrer": "0",
            "referral_bonus_referee": "0",
        },
    ),
    Page("tier list", {S, M, P}, lambda w: admin_url(Tier, "changelist")),
    Page("tier add", {P}, lambda w: admin_url(Tier, "add")),
    Page("event rule add", {P}, lambda w: admin_url(EventRule, "add")),
    Page("integration list", {P}, lambda w: admin_url(Integration, "changelist")),
    Page("integration add (creates a token)", {P}, lambda w: admin_url(Integration, "add")),
    Action(
        "issue a new token",
        {P},
        Integration,
        "issue_new_token",
        lambda w: w.integration,
        _token_changed,
    ),
    # Staff accounts, roles and the audit log.
    Page("staff accounts", {P}, lambda w: admin_url(User, "changelist")),
    Page("staff account add", {P}, lambda w: admin_url(User, "add")),
    Page("roles", {P}, lambda w: admin_url(Group, "changelist")),
    Page("audit log", {P}, lambda w: admin_url(AuditEntry, "changelist")),
    # Rewards catalog, segments, campaigns, surveys: marketing.
    Page("reward list", SUPPORT_DESK, lambda w: admin_url(Reward, "changelist")),
    Page("reward add", {M}, lambda w: admin_url(Reward, "add")),
    Page("segment list", {M, A, P}, lambda w: admin_url(Segment, "changelist")),
    Page("segment add", {M}, lambda w: admin_url(Segment, "add")),
    Page("campaign list", {M, A, P}, lambda w: admin_url(Campaign, "changelist")),
    Page("campaign add", {M}, lambda w: admin_url(Campaign, "add")),
    Page(
        "campaign results",
        {M, A, P},
        lambda w: reverse("admin:campaigns_campaign_results", args=[w.campaign.pk]),
    ),
    Page(
        "campaign launch",
        {M},
        lambda w: reverse("admin:campaigns_campaign_launch", args=[w.campaign.pk]),
        lambda w: {},
    ),
    Action(
        "launch selected campaigns",
        {M},
        Campaign,
        "launch_selected",
        lambda w: w.campaign,
        lambda w: Campaign.objects.get(pk=w.campaign.pk).status == "active",
    ),
    Action(
        "pause selected campaigns",
        {M},
        Campaign,
        "pause_selected",
        lambda w: Campaign.objects.filter(pk=w.campaign.pk).update(status="active") and w.campaign,
        lambda w: Campaign.objects.get(pk=w.campaign.pk).status == "paused",
    ),
    Page("deliveries", SUPPORT_DESK, lambda w: admin_url(Delivery, "changelist")),
    Page("survey list", {M, A}, lambda w: admin_url(Survey, "changelist")),
    Page("survey add", {M}, lambda w: admin_url(Survey, "add")),
    # The analytics inputs.
    Page("monthly costs", {A, P}, lambda w: admin_url(MonthlyCost, "changelist")),
    Page("monthly cost add", {P}, lambda w: admin_url(MonthlyCost, "add")),
    Page("analytics settings", {A, P}, lambda w: admin_url(AnalyticsSettings, "changelist")),
]


@pytest.mark.parametrize("role", EVERY_ROLE)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_role_may_do_exactly_what_its_row_says(client, world, case, role):
    client.force_login(staff_login(role))
    expected = role == "superuser" or role in case.allowed
    assert case.run(client, world) is expected, (
        f"{role} {'should' if expected else 'should not'} be able to: {case.name}"
    )


@pytest.mark.parametrize("role", EVERY_ROLE)
def test_every_role_reaches_the_admin_index(client, role):
    client.force_login(staff_login(role))
    assert client.get(reverse("admin:index")).status_code == 200


# --- The adjustment limit ---------------------------------------------------------------


def _adjust(client, member, points: int, key: str):
    return client.post(
        reverse("admin:accounts_customer_adjust_points", args=[member.pk]),
        {"points": str(points), "reason": "Goodwill", "idempotency_key": key * 32},
    )


def test_support_over_the_limit_is_refused_next_to_the_points_field(client, member, settings):
    settings.STAFF_ADJUST_LIMIT_SUPPORT = 1000
    client.force_login(staff_login(S))

    response = _adjust(client, member, 1001, "a")

    assert response.status_code == 200
    assert list(response.context["form"].errors) == ["points"]
    html = response.content.decode()
    row = re.search(r'<div class="form-row errors field-points">(.*?)</div>', html, re.S)
    assert row is not None and "at most 1000 points" in row.group(1)
    assert not LedgerEntry.objects.filter(kind="adjust").exists()
    assert not AuditEntry.objects.exists()


def test_support_at_the_limit_either_way_is_allowed(client, member, settings):
    settings.STAFF_ADJUST_LIMIT_SUPPORT = 1000
    client.force_login(staff_login(S))
    assert _adjust(client, member, 1000, "b").status_code == 302
    assert _adjust(client, member, -1000, "c").status_code == 302
    assert _adjust(client, member, -1001, "d").status_code == 200
    assert list(
        LedgerEntry.objects.filter(kind="adjust").values_list("points", flat=True).order_by("pk")
    ) == [
        1000,
        -1000,
    ]


def test_the_limit_is_a_setting(client, member, settings):
    settings.STAFF_ADJUST_LIMIT_SUPPORT = 20
    client.force_login(staff_login(S))
    assert _adjust(client, member, 21, "e").status_code == 200
    assert _adjust(client, member, 20, "f").status_code == 302


def test_program_admin_has_no_limit(client, member, settings):
    settings.STAFF_ADJUST_LIMIT_SUPPORT = 1000
    client.force_login(staff_login(P))
    response = _adjust(client, member, 50_000, "a")
    assert response.status_code == 302
    assert LedgerEntry.objects.get(kind="adjust").points == 50_000


# --- Finding a customer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["anna.larsen@example.com", "C-4711", "Anna Larsen", "Larsen", "VOUCHER"], ids=str
)
def test_support_finds_a_customer_by_email_number_name_or_voucher_code(client, world, query):
    Customer.objects.filter(pk=world.member.pk).update(
        email="anna.larsen@example.com", external_ref="C-4711", first_name="Anna", last_name="Larsen"
    )
    CustomerFactory(first_name="Bo", last_name="Holm")
    if query == "VOUCHER":
        query = world.redemption.voucher_code.lower()
    client.force_login(staff_login(S))
    response = client.get(admin_url(Customer, "changelist"), {"q": query})
    assert [c.pk for c in response.context["cl"].result_list] == [world.member.pk]


# --- The roles themselves ------------------------------------------------------------------


def test_every_permission_of_the_table_is_in_its_group():
    for role, names in roles.ROLE_PERMISSIONS.items():
        have = {
            f"{app}.{codename}"
            for app, codename in Group.objects.get(name=role).permissions.values_list(
                "content_type__app_label", "codename"
            )
        }
        assert set(names) <= have, f"{role} lacks {sorted(set(names) - have)}"


def test_roles_ensure_again_changes_nothing_and_keeps_what_admins_changed():
    support = Group.objects.get(name=roles.SUPPORT)
    extra = Permission.objects.get(content_type__app_label="rewards", codename="view_promotion")
    support.permissions.add(extra)
    before = {g.name: set(g.permissions.values_list("pk", flat=True)) for g in Group.objects.all()}
    permissions = Permission.objects.count()

    roles.roles_ensure()
    roles.roles_ensure(missing_groups_only=True)

    after = {g.name: set(g.permissions.values_list("pk", flat=True)) for g in Group.objects.all()}
    assert after == before and Permission.objects.count() == permissions


def test_a_program_admin_cannot_make_or_change_a_superuser(client):
    admin_user = staff_login(P)
    root = UserFactory(username="boss", is_staff=True, is_superuser=True)
    clerk = UserFactory(username="clerk", is_staff=True)
    client.force_login(admin_user)

    assert client.get(admin_url(User, "change", root.pk)).status_code in (200, 403)
    response = client.post(
        admin_url(User, "change", root.pk),
        {
            "username": "boss",
            "is_active": "on",
            "is_staff": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "0:00",
        },
    )
    assert response.status_code == 403
    page = client.get(admin_url(User, "change", clerk.pk)).content.decode()
    assert 'name="is_superuser"' not in page


def test_the_launch_button_shows_only_to_those_who_may_launch(client, db):
    from tests.factories import campaign_make

    campaign = campaign_make(name="Button")
    url = admin_url(campaign, "change", campaign.pk)
    launch = reverse("admin:campaigns_campaign_launch", args=[campaign.pk])
    client.force_login(staff_login(A))
    page = client.get(url)
    assert page.status_code == 200 and launch not in page.content.decode()
    client.force_login(staff_login(M))
    assert launch in client.get(url).content.decode()
