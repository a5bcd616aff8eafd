"""The logins' admin (staff accounts and their roles), the audit log, and the admin's sign-in
with a TOTP code. The Customer admin is registered by rewards/admin.py: it shows balances and
tiers, and accounts must not import rewards."""

import json

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .audit import Action, AuditedAdminMixin, roles_changed
from .models import AuditEntry, User
from .two_factor import StaffAuthenticationForm

# Staff with an authenticator enter its code with their password (accounts/two_factor.py).
admin.site.login_form = StaffAuthenticationForm
admin.site.login_template = "admin/two_factor/login.html"


@admin.register(User)
class LoyaltyUserAdmin(AuditedAdminMixin, UserAdmin):
    """Program admins manage staff accounts and their roles (groups); only a superuser may
    make or change a superuser, so a role can never grant more than it holds."""

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields.append("is_superuser")
        return fields

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def audit_action(self, request, obj, before, after):
        if before is not None and roles_changed(before, after):
            return Action.ROLES
        return super().audit_action(request, obj, before, after)


if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class RoleAdmin(AuditedAdminMixin, GroupAdmin):
    """A role is a group; every change of its permissions is in the audit log."""

    def audit_action(self, request, obj, before, after):
        return Action.ROLES


def _json_html(value) -> str:
    if value is None:
        return "–"
    return format_html(
        "<pre style='white-space:pre-wrap;margin:0'>{}</pre>",
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only for everyone (the database refuses changes too); visible with the
    accounts.view_auditentry permission, which only the Program admin role holds."""

    list_display = ["at", "username", "action", "content_type", "object_repr", "summary"]
    list_filter = [
        ("user", admin.RelatedOnlyFieldListFilter),
        "action",
        ("content_type", admin.RelatedOnlyFieldListFilter),
        "at",
    ]
    search_fields = ["summary", "object_repr", "username", "=object_id"]
    date_hierarchy = "at"
    list_select_related = ["content_type"]
    actions = None
    fields = [
        "at",
        "user",
        "username",
        "action",
        "content_type",
        "object_id",
        "object_repr",
        "summary",
        "before_display",
        "after_display",
    ]
    readonly_fields = fields

    @admin.display(description=_("before"))
    def before_display(self, entry):
        return _json_html(entry.before)

    @admin.display(description=_("after"))
    def after_display(self, entry):
        return _json_html(entry.after)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
