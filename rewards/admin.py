"""The staff admin of the loyalty core.

Every write that moves points goes through `services` (adjustments, cancellations,
voucher use, integration tokens); what the ledger recorded is shown, never edited.
The custom actions check their own permissions (accounts/roles.py) and, with every change
of rules, tiers, rewards and tokens, are written to the audit log (accounts/audit.py).
The Customer admin lives here rather than in accounts because it shows balances and
tiers, and accounts must not import rewards.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from accounts import roles
from accounts.audit import Action, AuditedAdminMixin, audit_record, snapshot
from accounts.models import Customer

from . import rules, selectors, services
from .errors import DomainError
from .forms import EarningsPreviewForm, PointsAdjustForm, RewardAdminForm, TierAdminForm, translated_languages
from .models import (
    CategoryMultiplier,
    EventRule,
    Integration,
    LedgerEntry,
    PointsAccount,
    ProgramRules,
    Promotion,
    Purchase,
    PurchaseLine,
    Redemption,
    Refund,
    Reward,
    Tier,
)


class ReadOnlyAdminMixin:
    """What the ledger and the integrations recorded: staff may look, never add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _explanation_html(explanation) -> str:
    lines = rules.explain(explanation or [])
    if not lines:
        return "–"
    return format_html(
        "<ul style='margin:0;padding-left:1.2em'>{}</ul>",
        format_html_join("", "<li>{}</li>", ((line,) for line in lines)),
    )


def _change_link(obj, label=None) -> str:
    if obj is None:
        return "–"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[quote(obj.pk)])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else obj)


# --- The program's rules -------------------------------------------------------------


@admin.register(ProgramRules)
class ProgramRulesAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """A single row: the list goes straight to it, and it can be neither added twice nor deleted."""

    fieldsets = [
        (_("Earning"), {"fields": ["points_per_unit", "minimum_spend", "expiry_months"]}),
        (
            _("Bonuses"),
            {
                "fields": [
                    "signup_bonus",
                    "birthday_bonus",
                    "referral_bonus_referrer",
                    "referral_bonus_referee",
                ]
            },
        ),
        (None, {"fields": ["updated_at"]}),
    ]
    readonly_fields = ["updated_at"]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if ProgramRules.objects.filter(pk=1).exists():
            return redirect("admin:rewards_programrules_change", object_id="1")
        return redirect("admin:rewards_programrules_add")

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not ProgramRules.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def response_post_save_change(self, request, obj):
        # The list is the object itself: stay on it.
        return redirect("admin:rewards_programrules_change", object_id="1")

    response_post_save_add = response_post_save_change


@admin.register(CategoryMultiplier)
class CategoryMultiplierAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["category", "multiplier", "is_active"]
    list_editable = ["multiplier", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["category"]


@admin.register(Tier)
class TierAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = TierAdminForm
    list_display = ["name", "code", "min_qualifying_spend", "multiplier", "translated_names", "member_count"]
    prepopulated_fields = {"code": ["name"]}
    fieldsets = [
        (None, {"fields": ["code", "name", "min_qualifying_spend", "multiplier"]}),
        (_("Names in other languages"), {"fields": [f"name_{code}" for code, _n in translated_languages()]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(members=Count("pointsaccount"))

    @admin.display(description=_("translations"))
    def translated_names(self, tier):
        return (
            ", ".join(f"{code}: {name}" for code, name in sorted((tier.name_translations or {}).items()))
            or "–"
        )

    @admin.display(description=_("members"), ordering="members")
    def member_count(self, tier):
        return tier.members

    def has_delete_permission(self, request, obj=None):
        # A tier that members hold is protected by the database; say so before trying.
        if obj is not None and PointsAccount.objects.filter(tier=obj).exists():
            return False
        return super().has_delete_permission(request, obj)


@admin.register(Promotion)
class PromotionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "multiplier", "starts_at", "ends_at", "audience", "is_active", "source"]
    list_filter = ["is_active", "starts_at"]
    search_fields = ["name", "source"]
    autocomplete_fields = ["customers"]
    date_hierarchy = "starts_at"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(audience_size=Count("customers"))

    @admin.display(description=_("for"), ordering="audience_size")
    def audience(self, promotion):
        if not promotion.audience_size:
            return gettext("every member")
        return ngettext("%(count)d customer", "%(count)d customers", promotion.audience_size) % {
            "count": promotion.audience_size
        }


@admin.register(EventRule)
class EventRuleAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["event_type", "name", "points", "cap_count", "cap_period", "is_active"]
    list_filter = ["is_active", "cap_period"]
    search_fields = ["event_type", "name"]


# --- Rewards and vouchers --------------------------------------------------------------


def _image_tag(reward: Reward, height: int) -> str:
    if not reward.image:
        return "–"
    return format_html(
        '<img src="{}" alt="{}" style="height:{}px;width:auto;border-radius:4px;object-fit:cover">',
        reward.image.url,
        reward.name,
        height,
    )


@admin.register(Reward)
class RewardAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = RewardAdminForm
    list_display = ["thumbnail", "name", "cost_points", "min_tier", "stock", "validity_days", "is_active"]
    list_display_links = ["thumbnail", "name"]
    list_filter = ["is_active", "min_tier"]
    search_fields = ["name", "description"]
    list_select_related = ["min_tier"]
    readonly_fields = ["image_preview"]
    fieldsets = [
        (None, {"fields": ["name", "description", "image", "image_preview", "cost_points", "is_active"]}),
        (
            _("Availability"),
            {
                "fields": [
                    "active_from",
                    "active_until",
                    "stock",
                    "per_customer_limit",
                    "min_tier",
                    "validity_days",
                ]
            },
        ),
        (
            _("Translations"),
            {
                "fields": [
                    field
                    for code, _n in translated_languages()
                    for field in (f"name_{code}", f"description_{code}")
                ],
                "classes": ["collapse"],
            },
        ),
    ]

    @admin.display(description=_("image"))
    def thumbnail(self, reward):
        return _image_tag(reward, 40)

    @admin.display(description=_("preview"))
    def image_preview(self, reward):
        return _image_tag(reward, 160)


@admin.register(Redemption)
class RedemptionAdmin(admin.ModelAdmin):
    """Vouchers are issued by the portal and the API; staff cancel them or mark them used,
    through the services."""

    list_display = [
        "voucher_code",
        "customer",
        "reward",
        "points",
        "state",
        "created_at",
        "expires_at",
        "used_at",
    ]
    list_filter = ["state", "reward", "created_at"]
    search_fields = ["=voucher_code", "=customer__external_ref", "customer__email"]
    list_select_related = ["customer", "reward"]
    date_hierarchy = "created_at"
    actions = ["cancel_vouchers", "mark_used"]
    readonly_fields = [
        "voucher_code",
        "customer",
        "reward",
        "points",
        "state",
        "integration",
        "idempotency_key",
        "created_at",
        "expires_at",
        "used_at",
        "cancelled_at",
        "cancel_reason",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_cancel_permission(self, request):
        return request.user.has_perm(roles.CANCEL_REDEMPTION)

    def has_mark_used_permission(self, request):
        return request.user.has_perm(roles.MARK_REDEMPTION_USED)

    def _each_voucher(self, request, queryset, action, change) -> int:
        """Apply `change` to each selected redemption in its own transaction, with an audit entry
        where it changed the state; a voucher the service refuses gets its message and the
        others go on. Returns how many were changed or already so."""
        done = 0
        for redemption in queryset.order_by("pk"):
            with transaction.atomic():
                before = snapshot(redemption)
                try:
                    changed = change(redemption)
                except DomainError as error:
                    # Caught inside the transaction: the service undid its own writes, but what
                    # it recorded before refusing stays (a voucher past its validity is expired,
                    # as the nightly job would have, and the job writes no audit entry either).
                    self.message_user(request, f"{redemption.voucher_code}: {error.message}", messages.ERROR)
                    continue
                if before["state"] != changed.state:
                    audit_record(
                        user=request.user,
                        action=action,
                        obj=changed,
                        before=before,
                        after=snapshot(changed),
                    )
            done += 1
        return done

    @admin.action(description=_("Cancel selected vouchers (points returned)"), permissions=["cancel"])
    def cancel_vouchers(self, request, queryset):
        # The admin offers the action only with the permission; a forged POST meets this.
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        reason = gettext("Cancelled by staff (%(user)s)") % {"user": request.user.get_username()}
        done = self._each_voucher(
            request,
            queryset,
            Action.CANCEL_REDEMPTION,
            lambda redemption: services.redemption_cancel(redemption_id=redemption.pk, reason=reason),
        )
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(count)d voucher cancelled; its points were returned.",
                    "%(count)d vouchers cancelled; their points were returned.",
                    done,
                )
                % {"count": done},
                messages.SUCCESS,
            )

    @admin.action(description=_("Mark used"), permissions=["mark_used"])
    def mark_used(self, request, queryset):
        if not self.has_mark_used_permission(request):
            raise PermissionDenied
        done = self._each_voucher(
            request,
            queryset,
            Action.MARK_USED,
            lambda redemption: services.voucher_use(code=redemption.voucher_code),
        )
        if done:
            self.message_user(
                request,
                ngettext("%(count)d voucher marked used.", "%(count)d vouchers marked used.", done)
                % {"count": done},
                messages.SUCCESS,
            )


# --- Integrations ----------------------------------------------------------------------


@admin.register(Integration)
class IntegrationAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Tokens are made by `services.integration_token_create` and shown once, in a message;
    only their hash is kept."""

    list_display = ["name", "token_prefix_display", "is_active", "created_at", "last_used_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "token_prefix"]
    actions = ["issue_new_token"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name"]
        return ["name", "is_active", "token_prefix_display", "created_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["token_prefix_display", "created_at", "last_used_at"]

    @admin.display(description=_("token starts with"))
    def token_prefix_display(self, integration):
        return f"{integration.token_prefix}…" if integration.token_prefix else gettext("(no token)")

    def has_add_permission(self, request):
        # Adding an integration creates its token.
        return super().has_add_permission(request) and self.has_issue_token_permission(request)

    def audit_action(self, request, obj, before, after):
        if before is None:
            return Action.CREATE_TOKEN if obj.token_prefix else Action.CREATE
        if before.get("is_active") and not after.get("is_active"):
            return Action.REVOKE_TOKEN
        return Action.CHANGE

    def save_model(self, request, obj, form, change):
        if change or obj.name == services.IMPORT_INTEGRATION_NAME:
            super().save_model(request, obj, form, change)
            return
        integration, token = services.integration_token_create(name=obj.name)
        # Hand the saved row back to the admin (for its log and redirect), without the token.
        obj.pk = integration.pk
        obj.__dict__.update(
            {f.attname: getattr(integration, f.attname) for f in Integration._meta.concrete_fields}
        )
        obj._state.adding = False
        self._token_message(request, integration, token)

    def _token_message(self, request, integration: Integration, token: str) -> None:
        messages.success(
            request,
            format_html(
                "{} <code style='user-select:all;font-size:1.1em'>{}</code> {}",
                gettext("The API token of %(name)s is:") % {"name": integration.name},
                token,
                gettext("Copy it now: it is shown only this once and cannot be seen again."),
            ),
        )

    def has_issue_token_permission(self, request):
        return request.user.has_perm(roles.CREATE_INTEGRATION_TOKEN)

    @admin.action(
        description=_("Issue a new token (the current one stops working)"), permissions=["issue_token"]
    )
    def issue_new_token(self, request, queryset):
        if not self.has_issue_token_permission(request):
            raise PermissionDenied
        for integration in queryset.order_by("name"):
            try:
                with transaction.atomic():
                    before = snapshot(integration)
                    integration, token = services.integration_token_create(name=integration.name)
                    audit_record(
                        user=request.user,
                        action=Action.CREATE_TOKEN,
                        obj=integration,
                        before=before,
                        after=snapshot(integration),
                    )
            except DomainError as exc:
                messages.error(request, f"{integration.name}: {exc.message}")
                continue
            self._token_message(request, integration, token)


# --- Purchases and the ledger (read-only) ------------------------------------------------


class PurchaseLineInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PurchaseLine
    fields = ["sku", "category", "quantity", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False


class RefundInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Refund
    fields = ["refund_id", "amount", "points_clawed_back", "balance_after", "occurred_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "external_id",
        "customer",
        "amount",
        "currency",
        "occurred_at",
        "points_earned",
        "refunded_amount",
        "was_member",
        "integration",
    ]
    list_filter = ["was_member", "integration", "currency"]
    search_fields = ["^external_id", "=customer__external_ref", "customer__email"]
    list_select_related = ["customer", "integration"]
    date_hierarchy = "occurred_at"
    inlines = [PurchaseLineInline, RefundInline]
    fields = [
        "integration",
        "external_id",
        "customer",
        "amount",
        "currency",
        "occurred_at",
        "was_member",
        "points_earned",
        "explanation_display",
        "refunded_amount",
        "points_clawed_back",
        "balance_after",
        "created_at",
    ]
    readonly_fields = fields

    @admin.display(description=_("explanation"))
    def explanation_display(self, purchase):
        return _explanation_html(purchase.explanation)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "refund_id",
        "purchase",
        "amount",
        "points_clawed_back",
        "balance_after",
        "occurred_at",
        "integration",
    ]
    list_filter = ["integration"]
    search_fields = ["^refund_id", "^purchase__external_id", "=purchase__customer__external_ref"]
    list_select_related = ["purchase", "integration"]
    date_hierarchy = "occurred_at"
    fields = [
        "integration",
        "refund_id",
        "purchase",
        "amount",
        "points_clawed_back",
        "balance_after",
        "occurred_at",
        "created_at",
    ]
    readonly_fields = fields


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Append-only: the database refuses changes, and so does the admin. Corrections are new entries
    (Customer → Adjust points)."""

    list_display = ["created_at", "customer", "kind", "points", "balance_after", "summary"]
    list_filter = ["kind", "created_at"]
    search_fields = ["=account__customer__external_ref", "account__customer__email", "=idempotency_key"]
    list_select_related = ["account__customer"]
    date_hierarchy = "created_at"
    fields = [
        "customer",
        "kind",
        "points",
        "balance_after",
        "created_at",
        "explanation_display",
        "reason",
        "staff_user",
        "purchase",
        "refund",
        "redemption",
        "event",
        "reverses",
        "idempotency_key",
    ]
    readonly_fields = fields

    @admin.display(description=_("customer"), ordering="account__customer__last_name")
    def customer(self, entry):
        return _change_link(entry.account.customer)

    @admin.display(description=_("explanation"))
    def summary(self, entry):
        return rules.explain_summary(entry.points, entry.explanation or [])

    @admin.display(description=_("explanation"))
    def explanation_display(self, entry):
        return _explanation_html(entry.explanation)


@admin.register(PointsAccount)
class PointsAccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["customer", "balance", "tier", "tier_changed_at", "updated_at"]
    list_filter = ["tier"]
    search_fields = ["=customer__external_ref", "customer__email", "customer__last_name"]
    list_select_related = ["customer", "tier"]
    fields = ["customer", "balance", "tier", "tier_changed_at", "created_at", "updated_at"]
    readonly_fields = fields


# --- Customers -------------------------------------------------------------------------


class MemberFilter(admin.SimpleListFilter):
    title = _("membership")
    parameter_name = "member"

    def lookups(self, request, model_admin):
        return [("yes", _("members")), ("no", _("non-members"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(enrolled_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(enrolled_at__isnull=True)
        return queryset


class PointsAccountInline(ReadOnlyAdminMixin, admin.StackedInline):
    model = PointsAccount
    fields = ["balance", "tier", "tier_changed_at", "updated_at"]
    readonly_fields = fields
    can_delete = False
    verbose_name_plural = _("points account")


if admin.site.is_registered(Customer):
    admin.site.unregister(Customer)


@admin.register(Customer)
class CustomerAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = [
        "display_name",
        "external_ref",
        "email",
        "is_member_display",
        "balance",
        "tier",
        "enrolled_at",
        "language",
    ]
    list_display_links = ["display_name", "external_ref"]
    list_filter = [MemberFilter, "points_account__tier", "language", "marketing_consent"]
    # Support finds a customer by email, customer number, voucher code or name.
    search_fields = [
        "^external_ref",
        "email",
        "first_name",
        "last_name",
        "=referral_code",
        "=redemptions__voucher_code",
    ]
    list_select_related = ["points_account__tier"]
    autocomplete_fields = ["referred_by", "user"]
    date_hierarchy = "enrolled_at"
    inlines = [PointsAccountInline]
    actions = ["enroll", "resend_confirmation"]
    change_form_template = "admin/rewards/customer/change_form.html"
    change_list_template = "admin/rewards/customer/change_list.html"
    readonly_fields = [
        "enrolled_at",
        "referral_code",
        "marketing_consent_changed_at",
        "created_at",
        "balance",
        "tier",
        "points_expiring_soon",
        "recent_ledger",
        "customer_360_link",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "external_ref",
                    "first_name",
                    "last_name",
                    "email",
                    "birthday",
                    "language",
                    "time_zone",
                ]
            },
        ),
        (_("Consent"), {"fields": ["marketing_consent", "marketing_consent_changed_at"]}),
        (
            _("Membership"),
            {
                "fields": [
                    "enrolled_at",
                    "balance",
                    "tier",
                    "points_expiring_soon",
                    "referral_code",
                    "referred_by",
                    "user",
                    "created_at",
                ]
            },
        ),
        (_("Latest points"), {"fields": ["recent_ledger"]}),
    ]

    def _account(self, customer) -> PointsAccount | None:
        try:
            return customer.points_account
        except PointsAccount.DoesNotExist:
            return None

    # The customer 360 page (loyalty_site/staff.py): offered to those who may open it.
    @admin.display(description=_("360"))
    def customer_360_link(self, customer):
        return format_html(
            '<a href="{}">{}</a>', reverse("staff-customer-360", args=[customer.pk]), gettext("Customer 360")
        )

    def _may_open_360(self, request) -> bool:
        # As loyalty_site.staff.CUSTOMER_360_PERMISSIONS (rewards does not import the wiring).
        return request.user.has_perms(("accounts.view_customer", "rewards.view_ledgerentry"))

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        return [*columns, "customer_360_link"] if self._may_open_360(request) else columns

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not self._may_open_360(request):
            return fieldsets
        first_name, first = fieldsets[0]
        return [(first_name, {**first, "fields": ["customer_360_link", *first["fields"]]}), *fieldsets[1:]]

    @admin.display(description=_("member"), boolean=True, ordering="enrolled_at")
    def is_member_display(self, customer):
        return customer.is_member

    @admin.display(description=_("balance"), ordering="points_account__balance")
    def balance(self, customer):
        account = self._account(customer)
        return account.balance if account else "–"

    @admin.display(description=_("tier"), ordering="points_account__tier__min_qualifying_spend")
    def tier(self, customer):
        account = self._account(customer)
        return account.tier if account and account.tier else "–"

    @admin.display(description=_("expiring within 30 days"))
    def points_expiring_soon(self, customer):
        if self._account(customer) is None:
            return "–"
        return selectors.points_expiring(customer_id=customer.pk, within_days=30)

    @admin.display(description=_("latest entries"))
    def recent_ledger(self, customer):
        if self._account(customer) is None:
            return "–"
        entries = list(selectors.ledger_list(customer_id=customer.pk)[:10])
        if not entries:
            return "–"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td style='text-align:right'>{}</td>"
            "<td style='text-align:right'>{}</td><td>{}</td></tr>",
            (
                (
                    timezone.localtime(entry.created_at).strftime("%Y-%m-%d %H:%M"),
                    entry.get_kind_display(),
                    f"{entry.points:+d}",
                    entry.balance_after,
                    rules.explain_summary(entry.points, entry.explanation or []),
                )
                for entry in entries
            ),
        )
        all_url = (
            reverse("admin:rewards_ledgerentry_changelist") + "?" + urlencode({"q": customer.external_ref})
        )
        return format_html(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead>"
            "<tbody>{}</tbody></table><p><a href='{}'>{}</a></p>",
            gettext("at"),
            gettext("kind"),
            gettext("points"),
            gettext("balance after"),
            gettext("explanation"),
            rows,
            all_url,
            gettext("All ledger entries"),
        )

    def save_model(self, request, obj, form, change):
        if "marketing_consent" in form.changed_data:
            obj.marketing_consent_changed_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description=_("Enroll selected customers in the program"), permissions=["change"])
    def enroll(self, request, queryset):
        enrolled = 0
        for customer in queryset.filter(enrolled_at__isnull=True).order_by("pk"):
            with transaction.atomic():
                before = snapshot(customer)
                customer, created = services.customer_enroll(customer=customer)
                if created:
                    audit_record(
                        user=request.user,
                        action=Action.ENROLL,
                        obj=customer,
                        before=before,
                        after=snapshot(customer),
                    )
            enrolled += created
        self.message_user(
            request,
            ngettext("%(count)d customer enrolled.", "%(count)d customers enrolled.", enrolled)
            % {"count": enrolled},
            messages.SUCCESS,
        )

    def has_resend_confirmation_permission(self, request):
        return request.user.has_perm(roles.RESEND_CONFIRMATION)

    @admin.action(
        description=_("Resend the email confirmation to the selected customers"),
        permissions=["resend_confirmation"],
    )
    def resend_confirmation(self, request, queryset):
        """A new confirmation link for members whose portal login has an unconfirmed address."""
        from accounts.services import confirmation_email_send, confirmation_token_make

        if not self.has_resend_confirmation_permission(request):
            raise PermissionDenied
        sent = 0
        waiting = queryset.filter(
            user__isnull=False, user__email_confirmed_at__isnull=True, user__is_active=True
        ).exclude(user__email="")
        for customer in waiting.select_related("user").order_by("pk"):
            token = confirmation_token_make(user=customer.user)
            confirmation_email_send(
                request=request, user=customer.user, token=token, language=customer.language
            )
            audit_record(
                user=request.user,
                action=Action.RESEND_CONFIRMATION,
                obj=customer,
                summary=gettext("Confirmation link sent to %(email)s for %(customer)s")
                % {"email": customer.user.email, "customer": customer},
            )
            sent += 1
        skipped = queryset.count() - sent
        if sent:
            self.message_user(
                request,
                ngettext("%(count)d confirmation link sent.", "%(count)d confirmation links sent.", sent)
                % {"count": sent},
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d customer skipped: no portal login waiting for confirmation.",
                    "%(count)d customers skipped: no portal login waiting for confirmation.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    # --- Object tools: adjust points, preview earnings -----------------------------------

    def get_urls(self):
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/adjust-points/",
                self.admin_site.admin_view(self.adjust_points_view),
                name=f"{info}_adjust_points",
            ),
            path(
                "preview-earnings/",
                self.admin_site.admin_view(self.preview_earnings_view),
                name=f"{info}_preview_earnings",
            ),
            *super().get_urls(),
        ]

    def has_adjust_points_permission(self, request) -> bool:
        return request.user.has_perm(roles.ADJUST_POINTS)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_adjust_points": self.has_adjust_points_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def adjust_points_view(self, request, object_id):
        """A staff correction through `services.points_adjust`; the form's one-time key makes a
        double submit (or a reload of the POST) adjust once."""
        if not self.has_adjust_points_permission(request):
            raise PermissionDenied
        customer = get_object_or_404(Customer, pk=object_id)
        change_url = reverse("admin:accounts_customer_change", args=[quote(customer.pk)])
        # Back where the staff member came from (the customer 360 page), if it is this site.
        next_url = request.GET.get("next", "")
        done_url = (
            next_url
            if url_has_allowed_host_and_scheme(
                next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
            )
            else change_url
        )
        form = PointsAdjustForm(request.POST or None)
        limit = roles.adjust_limit_for(request.user)
        if limit is not None:
            limit_text = gettext("Your role may adjust at most %(limit)d points at once.") % {"limit": limit}
            form.fields["points"].help_text = f"{form.fields['points'].help_text} {limit_text}"
            if request.method == "POST" and form.is_valid() and abs(form.cleaned_data["points"]) > limit:
                form.add_error(
                    "points",
                    gettext(
                        "Your role may adjust at most %(limit)d points at once; ask a program admin "
                        "for a larger correction."
                    )
                    % {"limit": limit},
                )
        if request.method == "POST" and form.is_valid():
            key = f"admin:{customer.pk}:{form.cleaned_data['idempotency_key']}"
            already = LedgerEntry.objects.filter(idempotency_key=f"adjust:{key}").exists()
            try:
                with transaction.atomic():
                    entry = services.points_adjust(
                        customer=customer,
                        points=form.cleaned_data["points"],
                        reason=form.cleaned_data["reason"],
                        staff_user=request.user,
                        idempotency_key=key,
                    )
                    if not already:
                        audit_record(
                            user=request.user,
                            action=Action.ADJUST_POINTS,
                            obj=customer,
                            before={"balance": entry.balance_after - entry.points},
                            after={
                                "balance": entry.balance_after,
                                "points": entry.points,
                                "reason": entry.reason,
                                "ledger_entry": entry.pk,
                            },
                            summary=gettext("%(points)+d points for %(customer)s (%(reason)s)")
                            % {"points": entry.points, "customer": customer, "reason": entry.reason},
                        )
            except DomainError as error:
                fields = [name for name in error.fields if name in form.fields] or [None]
                for name in fields:
                    form.add_error(name, error.message)
            else:
                if already:
                    self.message_user(
                        request,
                        gettext("This adjustment was already recorded; nothing was changed."),
                        messages.WARNING,
                    )
                else:
                    self.message_user(
                        request,
                        gettext("%(points)+d points for %(customer)s. New balance: %(balance)d.")
                        % {
                            "points": entry.points,
                            "customer": customer.display_name,
                            "balance": entry.balance_after,
                        },
                        messages.SUCCESS,
                    )
                return HttpResponseRedirect(done_url)
        account = self._account(customer)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Adjust points"),
            "subtitle": customer.display_name,
            "original": customer,
            "account": account,
            "form": form,
            "change_url": change_url,
            "has_view_permission": self.has_view_permission(request, customer),
            "adjust_limit": limit,
        }
        return TemplateResponse(request, "admin/rewards/customer/adjust_points.html", context)

    def preview_earnings_view(self, request):
        """What a purchase would earn and why, under the rules in force, without recording anything."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        submitted = "amount" in request.GET
        form = EarningsPreviewForm(
            request.GET if submitted else None, initial={"customer": request.GET.get("customer", "")}
        )
        result = explanation = customer = None
        if submitted and form.is_valid():
            ref = form.cleaned_data["customer"].strip()
            at = form.cleaned_data["at"] or timezone.now()
            tier = None
            if ref:
                customer = Customer.objects.filter(external_ref=ref).first()
                if customer is None:
                    form.add_error("customer", gettext("No customer with this number."))
                else:
                    account = self._account(customer)
                    tier = account.tier if account else None
            else:
                # A new member: enrolled now, at the lowest tier, in the reader's language.
                customer = Customer(
                    external_ref="",
                    enrolled_at=timezone.now(),
                    language=getattr(request, "LANGUAGE_CODE", "en"),
                )
                tier = selectors.tier_lowest()
            if not form.errors:
                ctx = selectors.earn_context_get(customer=customer, tier=tier, at=at)
                result = rules.purchase_points(
                    amount=form.cleaned_data["amount"], lines=form.cleaned_data["lines"], ctx=ctx
                )
                explanation = rules.explain(result.explanation)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Preview earnings"),
            "form": form,
            "result": result,
            "explanation": explanation,
            "preview_customer": customer if customer is not None and customer.pk else None,
            "changelist_url": reverse("admin:accounts_customer_changelist"),
        }
        return TemplateResponse(request, "admin/rewards/preview_earnings.html", context)
