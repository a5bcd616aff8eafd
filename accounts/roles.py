"""Staff roles: Django groups whose permissions come from one table.

A role is a group; what a role may do is the list of permissions below. The admin checks
the permissions on the server (ModelAdmin.has_*_permission, the custom views and actions),
so a hidden button is never the only guard. Superusers keep everything.

The groups are made by the data migration accounts/0007_staff_roles (and again after a
`flush`, see AccountsConfig.ready). Once made, a group belongs to the program admins: a
later deploy never takes back what they added nor re-adds what they removed; a change to
this table reaches existing databases through a new data migration calling `roles_ensure`.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.translation import gettext_lazy as _

SUPPORT = "Support"
MARKETING = "Marketing"
ANALYST = "Analyst"
PROGRAM_ADMIN = "Program admin"

# Names shown to staff; the group names themselves stay English (they are looked up by name).
ROLE_LABELS = {
    SUPPORT: _("Support"),
    MARKETING: _("Marketing"),
    ANALYST: _("Analyst"),
    PROGRAM_ADMIN: _("Program admin"),
}

# Permissions for the actions that are not add / change / delete / view of a model:
# (app label, model, codename, name). Checked as "<app label>.<codename>".
CUSTOM_PERMISSIONS = [
    ("accounts", "customer", "adjust_points", "Can adjust a customer's points"),
    (
        "accounts",
        "customer",
        "adjust_points_unlimited",
        "Can adjust points beyond STAFF_ADJUST_LIMIT_SUPPORT",
    ),
    ("accounts", "customer", "resend_confirmation", "Can resend a customer's email confirmation"),
    ("rewards", "redemption", "cancel_redemption", "Can cancel a voucher (its points are returned)"),
    ("rewards", "redemption", "mark_redemption_used", "Can mark a voucher used"),
    ("rewards", "integration", "create_integration_token", "Can create or replace an API token"),
    ("campaigns", "campaign", "launch_campaign", "Can launch and pause a campaign"),
    ("analytics", "analyticsrun", "view_dashboards", "Can view the analytics dashboards"),
    ("analytics", "analyticsrun", "export_dashboards", "Can download the analytics as CSV"),
]

ADJUST_POINTS = "accounts.adjust_points"
ADJUST_POINTS_UNLIMITED = "accounts.adjust_points_unlimited"
RESEND_CONFIRMATION = "accounts.resend_confirmation"
CANCEL_REDEMPTION = "rewards.cancel_redemption"
MARK_REDEMPTION_USED = "rewards.mark_redemption_used"
CREATE_INTEGRATION_TOKEN = "rewards.create_integration_token"  # noqa: S105 - a permission's name
LAUNCH_CAMPAIGN = "campaigns.launch_campaign"
VIEW_DASHBOARDS = "analytics.view_dashboards"
EXPORT_DASHBOARDS = "analytics.export_dashboards"


def _view(*models: str) -> list[str]:
    """'app.model' → ['app.view_model']."""
    return [f"{m.split('.')[0]}.view_{m.split('.')[1]}" for m in models]


def _manage(*models: str, delete: bool = True) -> list[str]:
    """'app.model' → add, change, (delete,) view."""
    verbs = ["add", "change", "view"] + (["delete"] if delete else [])
    return [f"{m.split('.')[0]}.{verb}_{m.split('.')[1]}" for m in models for verb in verbs]


# What each role may do, as "app_label.codename".
ROLE_PERMISSIONS: dict[str, list[str]] = {
    SUPPORT: [
        # Find a customer and see everything about them.
        *_view(
            "accounts.customer",
            "rewards.pointsaccount",
            "rewards.ledgerentry",
            "rewards.purchase",
            "rewards.purchaseline",
            "rewards.refund",
            "rewards.redemption",
            "rewards.reward",
            "rewards.tier",
            "campaigns.delivery",
            "campaigns.inboxmessage",
            "analytics.surveyresponse",
        ),
        ADJUST_POINTS,
        CANCEL_REDEMPTION,
        MARK_REDEMPTION_USED,
        RESEND_CONFIRMATION,
    ],
    MARKETING: [
        *_manage(
            "campaigns.segment",
            "campaigns.segmentcondition",
            "campaigns.campaign",
            "campaigns.campaigncontent",
            "rewards.reward",
            "analytics.survey",
        ),
        LAUNCH_CAMPAIGN,
        # Previews for a chosen customer, segment samples, what was sent and answered.
        *_view(
            "accounts.customer",
            "campaigns.delivery",
            "campaigns.inboxmessage",
            "analytics.surveyresponse",
            "rewards.tier",
            "rewards.promotion",
            "rewards.redemption",
        ),
    ],
    ANALYST: [
        VIEW_DASHBOARDS,
        EXPORT_DASHBOARDS,
        *_view(
            "analytics.monthlycost",
            "analytics.analyticssettings",
            "analytics.survey",
            "analytics.surveyresponse",
            "campaigns.segment",
            "campaigns.campaign",
        ),
    ],
    PROGRAM_ADMIN: [
        # Earn rules, tiers, expiry (on the program rules), event rules, integrations.
        *_manage("rewards.programrules", delete=False),
        *_manage(
            "rewards.categorymultiplier",
            "rewards.tier",
            "rewards.promotion",
            "rewards.eventrule",
            "rewards.integration",
        ),
        CREATE_INTEGRATION_TOKEN,
        # Staff accounts and roles, and a lost authenticator removed.
        *_manage("accounts.user", "auth.group"),
        *_view("auth.permission", "otp_totp.totpdevice", "accounts.auditentry"),
        "otp_totp.delete_totpdevice",
        # The customer desk, without the support limit.
        "accounts.view_customer",
        "accounts.change_customer",
        ADJUST_POINTS,
        ADJUST_POINTS_UNLIMITED,
        RESEND_CONFIRMATION,
        CANCEL_REDEMPTION,
        MARK_REDEMPTION_USED,
        *_view(
            "rewards.pointsaccount",
            "rewards.ledgerentry",
            "rewards.purchase",
            "rewards.purchaseline",
            "rewards.refund",
            "rewards.redemption",
            "rewards.reward",
            "campaigns.segment",
            "campaigns.campaign",
            "campaigns.delivery",
        ),
        # The inputs of the analytics and its pages.
        *_manage("analytics.monthlycost"),
        "analytics.change_analyticssettings",
        "analytics.view_analyticssettings",
        VIEW_DASHBOARDS,
        EXPORT_DASHBOARDS,
    ],
}


def is_program_admin(user) -> bool:
    """Superusers count as program admins (for the two-factor requirement)."""
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return False
    return user.is_superuser or user.groups.filter(name=PROGRAM_ADMIN).exists()


def adjust_limit_for(user) -> int | None:
    """The largest adjustment (in points, either sign) `user` may make; None: no limit."""
    if user.has_perm(ADJUST_POINTS_UNLIMITED):
        return None
    return settings.STAFF_ADJUST_LIMIT_SUPPORT


def _models(apps):
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    return (
        apps.get_model("auth", "Permission"),
        apps.get_model("auth", "Group"),
        apps.get_model("contenttypes", "ContentType"),
    )


def custom_permissions_ensure(apps=None) -> None:
    """Create the permissions of CUSTOM_PERMISSIONS that are missing. Idempotent."""
    Permission, _Group, ContentType = _models(apps)  # noqa: N806 - model classes
    for app_label, model, codename, name in CUSTOM_PERMISSIONS:
        content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
        Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )


def _model_missing(apps, codename: str, app_label: str) -> bool:
    if apps is None:
        return False
    verb, _sep, model = codename.partition("_")
    if verb not in {"add", "change", "delete", "view"}:
        return False
    try:
        apps.get_model(app_label, model)
    except LookupError:
        return True
    return False


def roles_ensure(apps=None, *, missing_groups_only: bool = False) -> None:
    """Create the custom permissions and the role groups, and give each group the permissions
    of ROLE_PERMISSIONS it lacks (never removing any). With `missing_groups_only`, groups
    that exist are left as they are. Idempotent. Raises LookupError naming a permission of
    the table that does not exist (a typo)."""
    Permission, Group, _ContentType = _models(apps)  # noqa: N806 - model classes
    custom_permissions_ensure(apps)
    for role, names in ROLE_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=role)
        if missing_groups_only and not created:
            continue
        wanted = []
        for name in names:
            app_label, codename = name.split(".", 1)
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is None:
                if _model_missing(apps, codename, app_label):
                    # A model of a later migration: the migration that adds it to this table
                    # hands it out. (tests/accounts/test_roles.py checks the whole table.)
                    continue
                raise LookupError(f"role {role!r}: no permission {name!r}")
            wanted.append(permission)
        have = set(group.permissions.values_list("pk", flat=True))
        missing = [p for p in wanted if p.pk not in have]
        if missing:
            group.permissions.add(*missing)


def model_permissions_create(apps=None, using: str = "default") -> None:
    """Django creates the add/change/delete/view permissions after *all* migrations ran
    (post_migrate); a data migration that hands them out must create them first."""
    from django.contrib.auth.management import create_permissions

    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    for app_config in apps.get_app_configs():
        # Historical app configs (AppConfigStub) have no models module, and create_permissions
        # skips an app without one.
        models_module = getattr(app_config, "models_module", None)
        app_config.models_module = models_module or True
        try:
            create_permissions(app_config, verbosity=0, using=using, apps=apps)
        finally:
            app_config.models_module = models_module
