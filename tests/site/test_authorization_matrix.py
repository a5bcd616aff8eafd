"""Who may do what: every URL pattern of the site × every kind of caller → the expected answer.

The rows are generated from the URL configuration (get_resolver(), walked recursively,
the admin and the API included); a pattern with no row fails
test_every_url_pattern_has_a_row, so a new endpoint cannot be forgotten. The admin's model
URLs (changelist, add, change, delete, history) get their rows generically from
admin.site._registry; its other URLs and every other pattern have a row below.

Columns are callers (PRINCIPALS): besides the public and the members, a superuser, a staff
login in no group, one staff login per role of accounts.roles (a member of that group only;
the program admin signed in with an authenticator code, as production requires), and an
integration token. What a role gets is derived from ROLE_PERMISSIONS: an admin model page
from the model's add/change/delete/view permissions (admin_row), any other staff page from
the permission its view checks (the `perm` of staff_only). A role added to ROLE_PERMISSIONS
becomes a column by itself; test_every_row_covers_every_column fails until each row says
what a new column gets.

URL arguments come from a world of fixtures: customer A's voucher, inbox message, survey
link, tracked link, unsubscribe link, email confirmation and password reset links;
customer B is a member with a login who must never see A's objects (404).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import roles

# --- Walking the URL configuration ---------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    route: str  # the full route as written, e.g. "me/vouchers/<str:code>/"
    name: str  # "namespace:name" or ""


def _route(pattern) -> str:
    """The route as written; a regex's named groups read as <name> (the admin's app index
    lists every app label in its regex, which would change with each app)."""
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", str(pattern.pattern))
    return route.replace("^", "").replace("$", "")


def url_patterns() -> list[Pattern]:
    found: list[Pattern] = []

    def walk(resolver: URLResolver, prefix: str, namespace: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}:{entry.namespace}" if namespace and entry.namespace else namespace
                walk(entry, prefix + _route(entry), entry.namespace and inner or namespace or "")
            elif isinstance(entry, URLPattern):
                name = f"{namespace}:{entry.name}" if namespace and entry.name else (entry.name or "")
                found.append(Pattern(prefix + _route(entry), name))

    walk(get_resolver(), "", "")
    return found


def fill(route: str, values: dict[str, str]) -> str:
    """The route with its <converter:name> parts replaced by values."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)


# --- Expected answers --------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """An answer: a status, and for a redirect where it must lead."""

    status: int
    to: str | None = None  # the redirect target's start (a path), for 301/302
    json_error: str | None = None  # the API error code, for API errors

    def check(self, response) -> str | None:
        if response.status_code != self.status:
            where = f" → {response.get('Location')}" if response.status_code in (301, 302) else ""
            return f"got {response.status_code}{where}, expected {self}"
        if self.to is not None and not response["Location"].startswith(self.to):
            return f"redirected to {response['Location']}, expected {self}"
        if self.json_error is not None:
            if response.get("Content-Type", "").split(";")[0] != "application/json":
                return f"not JSON ({response.get('Content-Type')}), expected {self}"
            code = response.json().get("error", {}).get("code")
            if code != self.json_error:
                return f"error code {code!r}, expected {self}"
        return None

    def __str__(self) -> str:
        to = f" → {self.to}" if self.to else ""
        return f"{self.status}{to}{' ' + self.json_error if self.json_error else ''}"


OK = Expect(200)
CREATED = Expect(201)
NOT_FOUND = Expect(404)
FORBIDDEN = Expect(403)
BAD_REQUEST = Expect(400)
NOT_ALLOWED = Expect(405)
LOGIN = Expect(302, "/account/login/?next=")
ADMIN_LOGIN = Expect(302, "/admin/login/?next=")
PENDING = Expect(302, "/me/pending/")
MY_POINTS = Expect(302, "/me/")
ADMIN_INDEX = Expect(302, "/admin/")
API_401 = Expect(401, json_error="not_authenticated")
API_NOT_FOUND = Expect(404, json_error="not_found")


def redirect(to: str | None = None) -> Expect:
    return Expect(302, to)


@dataclass(frozen=True)
class KnownGap(Expect):
    """A cell where the answer today is not the one it should be. The matrix checks today's
    answer (so nothing else changes unnoticed) and test_no_known_gaps_remain lists every gap
    as an expected failure until it is closed: then set the cell to `should`."""

    should: Expect | None = None
    why: str = ""

    def __str__(self) -> str:
        return f"{super().__str__()} (known gap: should be {self.should})"


def gap(now: Expect, should: Expect, why: str) -> KnownGap:
    return KnownGap(now.status, now.to, now.json_error, should=should, why=why)


# --- Callers (the columns) ------------------------------------------------------------------

ANONYMOUS, CUSTOMER_A, CUSTOMER_B, SUPERUSER, STAFF_NO_PERMS, API_TOKEN = (
    "anonymous",
    "customer A",
    "customer B",
    "superuser",
    "staff, no permissions",
    "integration token",
)
# One column per staff role, named after its group.
ROLE_COLUMNS = {f"role {role}": role for role in roles.ROLE_PERMISSIONS}
PROGRAM_ADMIN = f"role {roles.PROGRAM_ADMIN}"
PRINCIPALS = (ANONYMOUS, CUSTOMER_A, CUSTOMER_B, SUPERUSER, STAFF_NO_PERMS, *ROLE_COLUMNS, API_TOKEN)
STAFF_LOGINS = (SUPERUSER, STAFF_NO_PERMS, *ROLE_COLUMNS)


def role_may(column: str, *permissions: str) -> bool:
    """Whether the role of `column` holds any of `permissions` ("app_label.codename")."""
    return bool(set(roles.ROLE_PERMISSIONS[ROLE_COLUMNS[column]]) & set(permissions))


def staff(expect: Expect) -> dict[str, Expect]:
    """The same answer for every staff login, whatever its permissions (a portal page)."""
    return dict.fromkeys(STAFF_LOGINS, expect)


@dataclass
class Row:
    expect: dict[str, Expect]
    method: str = "GET"
    data: Callable[[World], dict] | None = None  # the body (form fields, or JSON for the API)

    def __post_init__(self):
        missing = set(PRINCIPALS) - set(self.expect)
        assert not missing, f"a row leaves out {missing}"


def everyone(expect: Expect, **row) -> Row:
    return Row(dict.fromkeys(PRINCIPALS, expect), **row)


def member_page(a: Expect = OK, b: Expect = OK, anonymous: Expect = LOGIN, **row) -> Row:
    """A page of the signed-in member's own: anonymous callers (a token is no session) go to
    the login page, staff logins without a customer to the page that says so."""
    return Row(
        {
            ANONYMOUS: anonymous,
            CUSTOMER_A: a,
            CUSTOMER_B: b,
            **staff(PENDING),
            API_TOKEN: anonymous,
        },
        **row,
    )


def api(token: Expect, **row) -> Row:
    """The integration API: only a token authenticates, never a session."""
    return Row({**dict.fromkeys(PRINCIPALS, API_401), API_TOKEN: token}, **row)


def staff_only(
    superuser: Expect = OK,
    staff_no_perms: Expect = FORBIDDEN,
    others: Expect = ADMIN_LOGIN,
    *,
    perm: str | tuple[str, ...] | None = None,
    all_of: bool = False,
    **row,
):
    """A staff page. `perm`: the permission the view checks (a tuple: any of them, or with
    `all_of` all of them); a role holding it gets the superuser's answer, any other role the
    answer of a staff login without permissions. Without `perm` the page asks for none: every
    role gets what a staff login without permissions gets."""
    wanted = (perm,) if isinstance(perm, str) else perm

    def role_answer(column: str) -> Expect:
        if wanted is None:
            return staff_no_perms
        held = set(roles.ROLE_PERMISSIONS[ROLE_COLUMNS[column]])
        allowed = set(wanted) <= held if all_of else bool(set(wanted) & held)
        return superuser if allowed else staff_no_perms

    return Row(
        {
            ANONYMOUS: others,
            CUSTOMER_A: others,
            CUSTOMER_B: others,
            API_TOKEN: others,
            SUPERUSER: superuser,
            STAFF_NO_PERMS: staff_no_perms,
            **{column: role_answer(column) for column in ROLE_COLUMNS},
        },
        **row,
    )


def purchase_body(w: World) -> dict:
    return {
        "external_id": "matrix-p2",
        "customer": w.a.external_ref,
        "amount": "50.00",
        "currency": "DKK",
        "occurred_at": timezone.now().isoformat(),
    }


VERBS = ("view", "add", "change", "delete")
REWARDS_MODELS = [m for m in admin.site._registry if m._meta.app_label == "rewards"]
SEGMENT_EDITING = ("campaigns.add_segment", "campaigns.change_segment")

# Every pattern that is not an admin model URL, by route. The admin's model URLs: admin_row().
ROWS: dict[str, Row] = {
    # Public pages.
    "": Row({**dict.fromkeys(PRINCIPALS, OK), CUSTOMER_A: MY_POINTS, CUSTOMER_B: MY_POINTS}),
    "healthz": everyone(OK),
    "favicon.ico": everyone(Expect(301, "/static/img/favicon.svg")),
    "i18n/setlang/": everyone(redirect(), method="POST", data=lambda w: {"language": "da", "next": "/"}),
    "join/": Row(
        {
            ANONYMOUS: OK,
            CUSTOMER_A: MY_POINTS,
            CUSTOMER_B: MY_POINTS,
            **staff(MY_POINTS),
            API_TOKEN: OK,
        }
    ),
    # The link in the confirmation mail is its own key; it confirms A's address for anyone.
    "confirm/<str:token>/": Row(
        {
            ANONYMOUS: LOGIN,
            CUSTOMER_A: MY_POINTS,
            CUSTOMER_B: LOGIN,
            **staff(LOGIN),
            API_TOKEN: LOGIN,
        }
    ),
    # Signing in and out, password reset.
    "account/login/": Row(
        {
            ANONYMOUS: OK,
            CUSTOMER_A: MY_POINTS,
            CUSTOMER_B: MY_POINTS,
            **staff(MY_POINTS),
            API_TOKEN: OK,
        }
    ),
    "account/logout/": everyone(redirect("/"), method="POST"),
    "account/password-reset/": everyone(OK),
    "account/password-reset/sent/": everyone(OK),
    # A's reset link; signing A in changes A's last login, which voids the link (200: "invalid").
    "account/password-reset/<uidb64>/<token>/": Row(
        {**{p: redirect("/account/password-reset/") for p in PRINCIPALS}, CUSTOMER_A: OK}
    ),
    "account/password-reset/done/": everyone(OK),
    "account/confirmation/resend/": Row(
        {
            ANONYMOUS: LOGIN,
            CUSTOMER_A: MY_POINTS,
            CUSTOMER_B: MY_POINTS,
            **staff(MY_POINTS),
            API_TOKEN: LOGIN,
        },
        method="POST",
    ),
    # The member's own pages.
    "account/profile/": member_page(),
    "account/profile/consent/withdraw/": member_page(
        a=redirect("/account/profile/"), b=redirect("/account/profile/"), method="POST"
    ),
    "account/profile/close/": member_page(),
    "me/profile/data.json": member_page(),
    "me/": member_page(),
    "me/pending/": Row({**member_page(a=MY_POINTS, b=MY_POINTS).expect, **staff(OK)}),
    "me/enroll/": member_page(a=MY_POINTS, b=MY_POINTS, method="POST"),
    "me/history/": member_page(),
    "me/rewards/": member_page(),
    "me/rewards/<int:reward_id>/": member_page(),
    "me/vouchers/": member_page(),
    "me/vouchers/<str:code>/": member_page(b=NOT_FOUND),
    "me/referral/": member_page(),
    "me/inbox/": member_page(),
    "me/inbox/<int:message_id>/": member_page(b=NOT_FOUND),
    # A survey link names the member it was sent to (A): another member is told so.
    "surveys/<str:token>/": member_page(b=FORBIDDEN),
    # Links in A's messages are keys of their own (a mail client follows them signed out).
    "m/c/<str:signed>/": everyone(redirect("https://shop.example.com/")),
    "m/unsubscribe/<str:token>/": everyone(OK),
    # Staff analytics (issue 5), with analytics.view_dashboards / export_dashboards (issue 7).
    # No snapshot has been computed in this world: the CSV is 404 for those who may have it.
    "staff/analytics/": staff_only(perm=roles.VIEW_DASHBOARDS),
    "staff/analytics/cohorts/": staff_only(perm=roles.VIEW_DASHBOARDS),
    "staff/analytics/effect/": staff_only(perm=roles.VIEW_DASHBOARDS),
    "staff/analytics/customers/": staff_only(perm=roles.VIEW_DASHBOARDS),
    "staff/analytics/csv/<slug:table>.csv": staff_only(superuser=NOT_FOUND, perm=roles.EXPORT_DASHBOARDS),
    # Staff two-factor sign-in (issue 7).
    "admin/2fa/setup/": staff_only(staff_no_perms=OK),
    "admin/2fa/verify/": staff_only(superuser=ADMIN_INDEX, staff_no_perms=ADMIN_INDEX),
    # The admin's own pages.
    "admin/": staff_only(staff_no_perms=OK),
    "admin/login/": Row(
        {
            ANONYMOUS: OK,
            CUSTOMER_A: OK,
            CUSTOMER_B: OK,
            **staff(ADMIN_INDEX),
            API_TOKEN: OK,
        }
    ),
    "admin/logout/": everyone(redirect(), method="POST"),
    "admin/password_change/": staff_only(staff_no_perms=OK),
    "admin/password_change/done/": staff_only(staff_no_perms=OK),
    "admin/autocomplete/": staff_only(superuser=FORBIDDEN),
    "admin/jsi18n/": staff_only(staff_no_perms=OK),
    "admin/r/<path:content_type_id>/<path:object_id>/": staff_only(
        staff_no_perms=NOT_FOUND, superuser=NOT_FOUND
    ),
    # An app's index (rewards): 404 for a login that may see none of the app's models.
    "admin/<app_label>/": staff_only(
        staff_no_perms=NOT_FOUND,
        perm=tuple(f"rewards.{verb}_{m._meta.model_name}" for m in REWARDS_MODELS for verb in VERBS),
    ),
    "admin/<url>": staff_only(superuser=NOT_FOUND, staff_no_perms=NOT_FOUND),  # the catch-all
    # Another login's password (A's): whoever may change logins.
    "admin/accounts/user/<id>/password/": staff_only(perm="accounts.change_user"),
    "admin/accounts/customer/<path:object_id>/adjust-points/": staff_only(perm=roles.ADJUST_POINTS),
    "admin/accounts/customer/preview-earnings/": staff_only(perm="accounts.view_customer"),
    # The editor's live count: for whoever may see segments (an empty form: everyone).
    "admin/campaigns/segment/preview/": staff_only(perm="campaigns.view_segment", method="POST"),
    "admin/campaigns/campaign/<path:object_id>/preview/": staff_only(perm="campaigns.view_campaign"),
    # Done, then back to the campaign's pages; a test send changes nothing but needs the
    # right to change the campaign (it mails the sender).
    "admin/campaigns/campaign/<path:object_id>/test_send/": staff_only(
        superuser=redirect("/admin/campaigns/campaign/"), perm="campaigns.change_campaign", method="POST"
    ),
    "admin/campaigns/campaign/<path:object_id>/launch/": staff_only(
        superuser=redirect("/admin/campaigns/campaign/"),
        perm=("campaigns.view_campaign", roles.LAUNCH_CAMPAIGN),
        all_of=True,
        method="POST",
    ),
    "admin/campaigns/campaign/<path:object_id>/results/": staff_only(perm="campaigns.view_campaign"),
    # The guided campaign builder: a new draft, then its steps. It makes and changes
    # campaigns and their segments: it needs the rights to all of that.
    "admin/campaigns/campaign/builder/": staff_only(
        perm=("campaigns.add_campaign", *SEGMENT_EDITING), all_of=True
    ),
    "admin/campaigns/campaign/<int:object_id>/builder/": staff_only(
        superuser=redirect("/admin/campaigns/campaign/"),  # to the draft's first open step
        perm=("campaigns.change_campaign", *SEGMENT_EDITING),
        all_of=True,
    ),
    "admin/campaigns/campaign/<int:object_id>/builder/<slug:step>/": staff_only(
        perm=("campaigns.change_campaign", *SEGMENT_EDITING), all_of=True
    ),
    # The staff panel's own pages: today's work (like the index, for any staff login; each
    # alert only with its permission), a customer's 360° view (customer A).
    "admin/today/": staff_only(staff_no_perms=OK),
    "admin/customer/<int:customer_id>/360/": staff_only(
        perm=("accounts.view_customer", "rewards.view_ledgerentry"), all_of=True
    ),
    # A device's secret is never shown again, not even to superusers (OTP_ADMIN_HIDE_SENSITIVE_DATA).
    "admin/otp_totp/totpdevice/<int:pk>/config/": staff_only(superuser=FORBIDDEN),
    "admin/otp_totp/totpdevice/<int:pk>/qrcode/": staff_only(superuser=FORBIDDEN),
    # The program's rules are one row: the list leads to it.
    "admin/rewards/programrules/": staff_only(
        superuser=redirect("/admin/rewards/programrules/"),
        perm=("rewards.view_programrules", "rewards.change_programrules"),
    ),
    # The integration API: a token, never a session. Bodies are valid, so a token gets in.
    "api/v1/purchases": api(CREATED, method="POST", data=purchase_body),
    "api/v1/purchases/batch": api(OK, method="POST", data=lambda w: {"purchases": [purchase_body(w)]}),
    "api/v1/purchases/<str:external_id>/refunds": api(
        CREATED, method="POST", data=lambda w: {"refund_id": "matrix-r1", "amount": "10.00"}
    ),
    "api/v1/customers/<str:external_ref>": api(OK),
    "api/v1/customers/<str:external_ref>/ledger": api(OK),
    "api/v1/customers/<str:external_ref>/enroll": api(OK, method="POST", data=lambda w: {}),
    "api/v1/customers/<str:external_ref>/redemptions": api(
        CREATED, method="POST", data=lambda w: {"reward": w.reward.pk}
    ),
    "api/v1/rewards": api(OK),
    "api/v1/vouchers/<str:code>/use": api(OK, method="POST"),
    "api/v1/redemptions/<int:redemption_id>/cancel": api(OK, method="POST", data=lambda w: {}),
    "api/v1/events": api(
        CREATED,
        method="POST",
        data=lambda w: {"customer": w.a.external_ref, "type": "review", "external_id": "matrix-e1"},
    ),
    "api/v1/preview": api(OK, method="POST", data=lambda w: {"amount": "10.00"}),
    # The schema and its docs page are public: they describe the API, they open nothing.
    "api/schema/": everyone(OK),
    "api/docs/": everyone(OK),
}


# --- The admin's model URLs, generically ---------------------------------------------------

ADMIN_VIEWS = {
    "": "changelist",
    "add/": "add",
    "<path:object_id>/history/": "history",
    "<path:object_id>/delete/": "delete",
    "<path:object_id>/change/": "change",
    "<path:object_id>/": "object",  # Django's redirect to the change page
}
# Records the admin shows but never lets anyone add or delete by hand, superusers included:
# the ledger and what the API, the workers and the login guard write.
ADMIN_NO_ADD = {
    "accounts.auditentry",
    "axes.accessattempt",
    "axes.accesslog",
    "axes.accessfailurelog",
    "campaigns.delivery",
    "rewards.ledgerentry",
    "rewards.pointsaccount",
    "rewards.purchase",
    "rewards.redemption",
    "rewards.refund",
    "analytics.analyticssettings",  # one row of settings, which exists
    "rewards.programrules",  # one row of rules, which exists
}
ADMIN_NO_DELETE = ADMIN_NO_ADD - {
    "axes.accessattempt",  # lifting a lockout is deleting its attempt
    "axes.accesslog",
    "axes.accessfailurelog",
    "campaigns.delivery",
} | {"rewards.tier"}  # a tier members are in (the world's members are in Bronze)


# What each admin view asks of a login that is not a superuser: any of these permissions on
# the model (Django's ModelAdmin.has_*_permission; the object redirect asks nothing).
ADMIN_VIEW_NEEDS = {
    "changelist": ("view", "change"),
    "change": ("view", "change"),
    "history": ("view", "change"),
    "add": ("add",),
    "delete": ("delete",),
    "object": (),
}
# Beyond the model's own permission, what a ModelAdmin asks of everyone but superusers.
ADMIN_ALSO_NEEDS = {
    # Adding an integration creates its API token (IntegrationAdmin.has_add_permission).
    ("rewards.integration", "add"): roles.CREATE_INTEGRATION_TOKEN,
}


def admin_answer(model, view: str, exists: bool, held: set[str] | None) -> Expect:
    """The answer of one admin model URL to a staff login holding `held` (None: a superuser)."""
    label = model._meta.label_lower
    app_label, model_name = label.split(".")
    if view == "object":
        return redirect("/admin/")  # Django's redirect to the change page, for any staff login
    if view == "add" and label in ADMIN_NO_ADD or view == "delete" and label in ADMIN_NO_DELETE:
        return FORBIDDEN
    allowed = held is None or (
        any(f"{app_label}.{verb}_{model_name}" in held for verb in ADMIN_VIEW_NEEDS[view])
        and ADMIN_ALSO_NEEDS.get((label, view), "") in held | {""}
    )
    if not exists and view in ("change", "delete", "history"):
        # Nothing to point at (a model the world cannot make): those allowed go back to the
        # index; Django's history page does so before it checks permissions.
        return ADMIN_INDEX if allowed or view == "history" else FORBIDDEN
    return OK if allowed else FORBIDDEN


def admin_row(model, view: str, exists: bool = True) -> Row:
    """Anyone who is not staff goes to the admin's login page; a staff login gets what its
    permissions on the model allow (a role: from ROLE_PERMISSIONS), the index aside;
    superusers may do all but what the admin itself forbids."""
    row = staff_only(
        superuser=admin_answer(model, view, exists, None),
        staff_no_perms=admin_answer(model, view, exists, set()),
    )
    for column, role in ROLE_COLUMNS.items():
        row.expect[column] = admin_answer(model, view, exists, set(roles.ROLE_PERMISSIONS[role]))
    return row


def admin_model_patterns() -> dict[str, tuple]:
    """route → (model, view) for every registered ModelAdmin's standard URLs."""
    out = {}
    for model in admin.site._registry:
        prefix = f"admin/{model._meta.app_label}/{model._meta.model_name}/"
        for suffix, view in ADMIN_VIEWS.items():
            out[prefix + suffix] = (model, view)
    return out


def matrix(w: World | None = None) -> dict[str, Row]:
    rows = dict(ROWS)
    for route, (model, view) in admin_model_patterns().items():
        exists = w is None or w.admin_objects.get(model._meta.label_lower) is not None
        rows.setdefault(route, admin_row(model, view, exists))
    return rows


# --- The world the URLs point into ---------------------------------------------------------


@dataclass
class World:
    a: object = None
    b: object = None
    users: dict = field(default_factory=dict)
    token: str = ""
    reward: object = None
    values: dict = field(default_factory=dict)  # URL arguments by name
    route_values: dict = field(default_factory=dict)  # ... and for one route
    admin_objects: dict = field(default_factory=dict)
    devices: dict = field(default_factory=dict)  # principal → the authenticator it signed in with


def _admin_object(model, w: World):
    """An object of each admin model, made when the world has none."""
    from django_celery_beat import models as beat

    from tests.factories import UserFactory

    existing = model._default_manager.order_by("pk").first()
    if existing is not None:
        return existing
    now = timezone.now()
    label = model._meta.label_lower
    makers = {
        "auth.group": lambda: model.objects.create(name="Matrix group"),
        "django_celery_beat.intervalschedule": lambda: model.objects.create(every=10, period="seconds"),
        "django_celery_beat.crontabschedule": lambda: model.objects.create(minute="5"),
        "django_celery_beat.solarschedule": lambda: model.objects.create(
            event="sunrise", latitude=Decimal("55.6"), longitude=Decimal("12.5")
        ),
        "django_celery_beat.clockedschedule": lambda: model.objects.create(clocked_time=now),
        "django_celery_beat.periodictask": lambda: model.objects.create(
            name="matrix",
            task="loyalty_site.heartbeat",
            interval=beat.IntervalSchedule.objects.get_or_create(every=10, period="seconds")[0],
        ),
        "axes.accessattempt": lambda: model.objects.create(
            username="x",
            ip_address="10.0.0.1",
            user_agent="",
            http_accept="",
            path_info="/",
            get_data="",
            post_data="",
            failures_since_start=1,
        ),  # fmt: skip
        "axes.accesslog": lambda: model.objects.create(
            username="x", ip_address="10.0.0.1", user_agent="", http_accept="", path_info="/"
        ),
        "axes.accessfailurelog": lambda: model.objects.create(
            username="x",
            ip_address="10.0.0.1",
            user_agent="",
            http_accept="",
            path_info="/",
            locked_out=False,
        ),
        # Another staff login's device: a device of the superuser's own would ask it for a code.
        "otp_totp.totpdevice": lambda: model.objects.create(
            user=UserFactory(username="matrix-2fa", is_staff=True), name="phone"
        ),
        "rewards.promotion": lambda: model.objects.create(
            name="Double", multiplier=2, starts_at=now, ends_at=now + dt.timedelta(days=1)
        ),
        "rewards.eventrule": lambda: model.objects.create(event_type="review", name="Review", points=10),
        "rewards.categorymultiplier": lambda: model.objects.create(category="coffee", multiplier=2),
        "analytics.survey": lambda: model.objects.create(name="NPS", kind="nps", question="Recommend us?"),
        "analytics.monthlycost": lambda: model.objects.create(
            month=now.date().replace(day=1), kind="program", amount=100
        ),
        "analytics.analyticssettings": lambda: model.current(),
    }
    maker = makers.get(label)
    return maker() if maker else None


@pytest.fixture
def world(program):
    from django.contrib.contenttypes.models import ContentType

    from accounts.services import confirmation_token_make
    from analytics.services import survey_token_make
    from campaigns.models import Delivery, InboxMessage
    from campaigns.rendering import tracked_url
    from rewards.services import integration_token_create, purchase_record, purchase_refund, reward_redeem
    from tests.factories import RewardFactory, StaffFactory, UserFactory, campaign_make
    from tests.rewards.test_portal import member_with_login

    w = World()
    w.a = member_with_login(email="a.matrix@example.com")
    w.b = member_with_login(email="b.matrix@example.com")
    w.users = {
        CUSTOMER_A: w.a.user,
        CUSTOMER_B: w.b.user,
        SUPERUSER: StaffFactory(username="matrix-admin"),
        STAFF_NO_PERMS: UserFactory(username="matrix-staff", is_staff=True),
    }
    for column, role in ROLE_COLUMNS.items():
        user = UserFactory(username=f"matrix-{role.lower().replace(' ', '-')}", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        w.users[column] = user
    integration, w.token = integration_token_create(name="Matrix till")
    purchase_record(
        integration=integration,
        external_id="matrix-p1",
        customer_ref=w.a.external_ref,
        amount=Decimal("500.00"),
        currency="DKK",
        occurred_at=timezone.now(),
    )
    purchase_refund(
        integration=integration,
        purchase_external_id="matrix-p1",
        refund_id="matrix-r0",
        amount=Decimal("10.00"),
    )
    w.reward = RewardFactory(cost_points=100)
    to_use = reward_redeem(customer=w.a, reward_id=w.reward.pk).redemption
    to_cancel = reward_redeem(customer=w.a, reward_id=w.reward.pk).redemption
    campaign = campaign_make(name="Matrix campaign")
    delivery = Delivery.objects.create(
        campaign=campaign, customer=w.a, occurrence="once", channel="email", due_at=timezone.now()
    )
    message = InboxMessage.objects.create(customer=w.a, delivery=None, subject="Hi", body="Hello")
    for model in admin.site._registry:
        w.admin_objects[model._meta.label_lower] = _admin_object(model, w)
    # The program admin signs in with a code from an enrolled authenticator (required of
    # program admins in production; the test turns the requirement on for that column). Made
    # after the admin's objects, whose device stays another login's.
    w.devices[PROGRAM_ADMIN] = TOTPDevice.objects.create(
        user=w.users[PROGRAM_ADMIN], name="authenticator", confirmed=True
    )
    survey = w.admin_objects["analytics.survey"]
    customer_type = ContentType.objects.get_for_model(type(w.a))
    w.values = {
        "token": None,  # per route, below
        "code": to_use.voucher_code,
        "reward_id": w.reward.pk,
        "message_id": message.pk,
        "signed": tracked_url("", delivery.token, "https://shop.example.com/")
        .rsplit("/m/c/", 1)[1]
        .strip("/"),
        "external_id": "matrix-p1",
        "external_ref": w.a.external_ref,
        "redemption_id": to_cancel.pk,
        "uidb64": urlsafe_base64_encode(force_bytes(w.a.user.pk)),
        "content_type_id": customer_type.pk,
        "app_label": "rewards",
        "url": "no-such-page/",
        "id": w.a.user.pk,
        "table": "key-figures",
        "step": "segment",
        "customer_id": w.a.pk,
        "pk": getattr(w.admin_objects.get("otp_totp.totpdevice"), "pk", 0),
        "object_id": None,  # per admin model, below
    }
    w.route_values = {
        "confirm/<str:token>/": {"token": confirmation_token_make(user=w.a.user)},
        "account/password-reset/<uidb64>/<token>/": {"token": default_token_generator.make_token(w.a.user)},
        "surveys/<str:token>/": {"token": survey_token_make(survey=survey, customer=w.a)},
        "m/unsubscribe/<str:token>/": {"token": delivery.token},
        "admin/r/<path:content_type_id>/<path:object_id>/": {"object_id": w.a.pk},
        "admin/accounts/customer/<path:object_id>/adjust-points/": {"object_id": w.a.pk},
        "admin/campaigns/campaign/<path:object_id>/preview/": {"object_id": campaign.pk},
        "admin/campaigns/campaign/<path:object_id>/test_send/": {"object_id": campaign.pk},
        "admin/campaigns/campaign/<path:object_id>/launch/": {"object_id": campaign.pk},
        "admin/campaigns/campaign/<path:object_id>/results/": {"object_id": campaign.pk},
        "admin/campaigns/campaign/<int:object_id>/builder/": {"object_id": campaign.pk},
        "admin/campaigns/campaign/<int:object_id>/builder/<slug:step>/": {"object_id": campaign.pk},
    }
    for route, (model, _view) in admin_model_patterns().items():
        obj = w.admin_objects.get(model._meta.label_lower)
        w.route_values.setdefault(route, {"object_id": obj.pk if obj is not None else 0})
    return w


def path_for(route: str, row: Row, w: World) -> str:
    return fill(route, {**w.values, **w.route_values.get(route, {})})


class Caller:
    """One principal's browser (a session, signed in once) or integration (a token)."""

    def __init__(self, principal: str, w: World):
        self.principal, self.world = principal, w
        self.client = Client()
        self.signed_in = False

    def ask(self, route: str, row: Row):
        w = self.world
        headers = {}
        if self.principal == API_TOKEN:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {w.token}"
        elif self.principal in w.users and not self.signed_in:
            self.client.force_login(
                w.users[self.principal], backend="django.contrib.auth.backends.ModelBackend"
            )
            device = w.devices.get(self.principal)
            if device is not None:  # the code was entered (django_otp.login)
                session = self.client.session
                session[DEVICE_ID_SESSION_KEY] = device.persistent_id
                session.save()
            self.signed_in = True
        if route.endswith("logout/"):
            self.signed_in = False  # signed in again for the next row
        return ask(self.client, route, row, w, headers)


def ask(client: Client, route: str, row: Row, w: World, headers: dict):
    path = path_for(route, row, w)
    if row.method == "GET":
        return path, client.get(path, **headers)
    data = row.data(w) if row.data else {}
    if route.startswith("api/"):
        return path, client.post(path, data, content_type="application/json", **headers)
    return path, client.post(path, data, **headers)


# --- The tests -------------------------------------------------------------------------------


def test_every_url_pattern_has_a_row():
    rows = matrix()
    missing = [f"{p.route}  ({p.name or 'no name'})" for p in url_patterns() if p.route not in rows]
    assert not missing, (
        "URL patterns with no row in the authorization matrix (tests/site/test_authorization_matrix.py): "
        "say who may call them.\n" + "\n".join(missing)
    )


def test_every_row_names_a_url_pattern():
    routes = {p.route for p in url_patterns()}
    stale = [route for route in ROWS if route not in routes]
    assert not stale, "rows for URL patterns that no longer exist:\n" + "\n".join(stale)


def known_gaps() -> list[str]:
    return [
        f"{route} × {principal}: today {cell}; {cell.why}"
        for route, row in matrix().items()
        for principal, cell in row.expect.items()
        if isinstance(cell, KnownGap)
    ]


def test_no_known_gaps_remain():
    """Known gaps show as an expected failure in every run, listed, until they are closed."""
    gaps = known_gaps()
    if gaps:
        pytest.xfail("known authorization gaps:\n" + "\n".join(gaps))


def test_every_row_covers_every_column():
    for route, row in matrix().items():
        assert set(row.expect) == set(PRINCIPALS), route


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_who_may_do_what(principal, world, settings):
    settings.STAFF_2FA_REQUIRED_FOR_PROGRAM_ADMINS = principal == PROGRAM_ADMIN
    rows = matrix(world)
    caller = Caller(principal, world)
    wrong = []
    for pattern in url_patterns():
        row = rows.get(pattern.route)
        if row is None:
            continue  # test_every_url_pattern_has_a_row names it
        path, response = caller.ask(pattern.route, row)
        problem = row.expect[principal].check(response)
        if problem:
            wrong.append(f"{row.method} {path}  [{pattern.route}]: {problem}")
    assert not wrong, f"{principal}: {len(wrong)} answer(s) not as the matrix says:\n" + "\n".join(wrong)


@pytest.mark.django_db
@pytest.mark.parametrize("column", [STAFF_NO_PERMS, *ROLE_COLUMNS])
def test_the_analytics_settings_row_is_added_only_with_the_permission(client, column):
    """The world always has the settings row, so the matrix sees only "no second row"; before
    the first, its add page asked no permission of any staff login."""
    from analytics.models import AnalyticsSettings
    from tests.factories import UserFactory

    AnalyticsSettings.objects.all().delete()
    user = UserFactory(username="settings-probe", is_staff=True)
    held: set[str] = set()
    if column in ROLE_COLUMNS:
        user.groups.add(Group.objects.get(name=ROLE_COLUMNS[column]))
        held = set(roles.ROLE_PERMISSIONS[ROLE_COLUMNS[column]])
    client.force_login(user)

    response = client.post("/admin/analytics/analyticssettings/add/", {"margin": "0.3"})

    may = "analytics.add_analyticssettings" in held
    assert response.status_code == (200 if may else 403)
    assert not AnalyticsSettings.objects.exists()
