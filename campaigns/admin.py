"""Staff pages for campaigns: segments with a live count, campaigns with a preview for any
customer, a test send to the staff member's own address, launch and pause, and results.
Launch and pause need campaigns.launch_campaign (accounts/roles.py); every create, change,
launch and pause is in the audit log (accounts/audit.py)."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.mail import EmailMessage
from django.db import transaction
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts import roles
from accounts.audit import Action, AuditedAdminMixin, audit_record, snapshot
from accounts.models import Customer
from rewards.errors import DomainError

from .models import Campaign, CampaignContent, Delivery, InboxMessage, Segment, SegmentCondition
from .rendering import FIELDS, recipient_values, render, template_check
from .results import campaign_results
from .segments import Condition, ConditionError, segment_customers, segment_preview
from .services import campaign_launch, campaign_pause, campaign_problems


class SegmentConditionForm(forms.ModelForm):
    class Meta:
        model = SegmentCondition
        fields = ["group", "negate", "field", "operator", "value", "days"]

    def clean(self):
        data = super().clean()
        if data.get("field") and not self.cleaned_data.get("DELETE"):
            try:
                from .segments import condition_check

                condition_check(
                    Condition(
                        data["field"], data.get("operator") or "is", data.get("value") or "", data.get("days")
                    )
                )
            except ConditionError as error:
                raise forms.ValidationError(str(error)) from error
        return data


class SegmentConditionInline(admin.TabularInline):
    model = SegmentCondition
    form = SegmentConditionForm
    extra = 1


def _conditions_from_post(data) -> list[Condition]:
    """The conditions being edited (the inline formset's fields), for the live count."""
    prefix = "conditions"
    try:
        total = int(data.get(f"{prefix}-TOTAL_FORMS", 0))
    except ValueError:
        total = 0
    conditions = []
    for i in range(min(total, 200)):
        row = lambda name, i=i: data.get(f"{prefix}-{i}-{name}", "")  # noqa: E731
        if not row("field") or row("DELETE"):
            continue
        days = row("days")
        conditions.append(
            Condition(
                field=row("field"),
                operator=row("operator") or "is",
                value=row("value"),
                days=int(days) if days.isdigit() else None,
                negate=bool(row("negate")),
                group=int(row("group")) if row("group").isdigit() else 1,
            )
        )
    return conditions


@admin.register(Segment)
class SegmentAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_inlines = (SegmentCondition,)
    list_display = ["name", "description", "updated_at"]
    search_fields = ["name"]
    inlines = [SegmentConditionInline]
    change_form_template = "admin/campaigns/segment/change_form.html"

    def get_urls(self):
        return [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="campaigns_segment_preview"),
            *super().get_urls(),
        ]

    def preview_view(self, request):
        """POST the editor's form: the live count and a sample of matching customers."""
        if request.method != "POST":
            return JsonResponse(
                {"error": {"code": "method", "message": "POST the segment form."}}, status=405
            )
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            return JsonResponse(segment_preview(_conditions_from_post(request.POST)))
        except ConditionError as error:
            return JsonResponse({"error": {"code": "incomplete", "message": str(error)}}, status=422)


class CampaignContentForm(forms.ModelForm):
    class Meta:
        model = CampaignContent
        fields = ["language", "subject", "body"]
        widgets = {"body": forms.Textarea(attrs={"rows": 8, "cols": 80})}

    def _checked(self, name):
        value = self.cleaned_data[name]
        try:
            template_check(value)
        except ValueError as error:
            raise forms.ValidationError(str(error)) from error
        return value

    def clean_subject(self):
        return self._checked("subject")

    def clean_body(self):
        return self._checked("body")


class CampaignContentInline(admin.StackedInline):
    model = CampaignContent
    form = CampaignContentForm
    extra = 1
    # Lazy: formatted in the staff member's language when shown, not at import.
    verbose_name_plural = lazy(
        lambda: (
            gettext("Messages per language (fields: %(fields)s)")
            % {"fields": ", ".join("{{ %s }}" % f for f in FIELDS)}  # noqa: UP031 - braces are the point
        ),
        str,
    )()


@admin.register(Campaign)
class CampaignAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_inlines = (CampaignContent,)
    list_display = ["name", "segment", "channel", "schedule", "status", "launched_at"]
    list_filter = ["status", "channel", "schedule"]
    search_fields = ["name"]
    autocomplete_fields = ["segment"]
    raw_id_fields = ["offer_reward"]
    readonly_fields = ["status", "launched_at"]
    inlines = [CampaignContentInline]
    actions = ["launch_selected", "pause_selected"]
    change_form_template = "admin/campaigns/campaign/change_form.html"
    # Links to the guided builder (campaigns/builder.py).
    change_list_template = "admin/campaigns/builder/campaign_change_list.html"
    fieldsets = [
        (None, {"fields": ["name", "segment", "channel", "is_marketing", "status", "launched_at"]}),
        (
            _("Schedule"),
            {
                "fields": [
                    "schedule",
                    "send_at",
                    ("recur_weekdays", "recur_time"),
                    ("trigger", "trigger_days", "trigger_event_type"),
                    "ends_at",
                ]
            },
        ),
        (_("Holdout and attribution"), {"fields": ["holdout_percent", "attribution_days"]}),
        (
            _("Offer"),
            {
                "fields": [
                    "offer",
                    ("offer_multiplier", "offer_starts_at", "offer_ends_at"),
                    "offer_points",
                    "offer_reward",
                ]
            },
        ),
        (_("Survey"), {"fields": ["survey"]}),
    ]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def has_launch_permission(self, request, obj=None):
        return request.user.has_perm(roles.LAUNCH_CAMPAIGN)

    def _launch(self, request, campaign) -> Campaign:
        """Launch and write the audit entry in one transaction (nothing written when refused)."""
        with transaction.atomic():
            before = snapshot(campaign)
            launched = campaign_launch(campaign=campaign, user=request.user)
            if before["status"] != launched.status:
                audit_record(
                    user=request.user,
                    action=Action.LAUNCH,
                    obj=launched,
                    before=before,
                    after=snapshot(launched),
                )
        return launched

    @admin.action(description=_("Launch the selected campaigns"), permissions=["launch"])
    def launch_selected(self, request, queryset):
        if not self.has_launch_permission(request):
            raise PermissionDenied
        for campaign in queryset:
            try:
                self._launch(request, campaign)
            except DomainError as error:
                self.message_user(request, f"{campaign}: {error.message}", messages.ERROR)
            else:
                self.message_user(
                    request, gettext("%(name)s is active.") % {"name": campaign}, messages.SUCCESS
                )

    @admin.action(description=_("Pause the selected campaigns"), permissions=["launch"])
    def pause_selected(self, request, queryset):
        if not self.has_launch_permission(request):
            raise PermissionDenied
        for campaign in queryset:
            with transaction.atomic():
                before = snapshot(campaign)
                campaign_pause(campaign=campaign)
                campaign.refresh_from_db()
                if before["status"] != campaign.status:
                    audit_record(
                        user=request.user,
                        action=Action.PAUSE,
                        obj=campaign,
                        before=before,
                        after=snapshot(campaign),
                    )

    def get_urls(self):
        def view(fn, name):
            return path(
                f"<path:object_id>/{name}/", self.admin_site.admin_view(fn), name=f"campaigns_campaign_{name}"
            )

        from .builder import CampaignBuilder  # imports this module's forms

        return [
            *CampaignBuilder(self).urls(),
            view(self.preview_view, "preview"),
            view(self.test_send_view, "test_send"),
            view(self.launch_view, "launch"),
            view(self.results_view, "results"),
            *super().get_urls(),
        ]

    def _campaign(self, request, object_id, *, change=False) -> Campaign:
        campaign = get_object_or_404(Campaign, pk=object_id)
        allowed = (
            self.has_change_permission(request, campaign) if change else self.has_view_permission(request)
        )
        if not allowed:
            raise PermissionDenied
        return campaign

    def _preview_customer(self, request, campaign):
        ref = (request.GET.get("customer") or request.POST.get("customer") or "").strip()
        if ref:
            return Customer.objects.filter(external_ref=ref).first(), ref
        return segment_customers(campaign.segment).order_by("pk").first(), ""

    def preview_view(self, request, object_id):
        """The message as a chosen customer will see it, in their language."""
        campaign = self._campaign(request, object_id)
        customer, ref = self._preview_customer(request, campaign)
        rendered = None
        if customer is not None:
            rendered = render(campaign, recipient_values([customer])[customer.pk], context={})
        return TemplateResponse(
            request,
            "admin/campaigns/campaign/preview.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": campaign,
                "title": gettext("Preview"),
                "customer": customer,
                "ref": ref,
                "rendered": rendered,
                "problems": campaign_problems(campaign),
            },
        )

    @staticmethod
    def _test_send(request, campaign, customer) -> str | None:
        if not request.user.email:
            return gettext("Your staff account has no email address.")
        rendered = render(campaign, recipient_values([customer])[customer.pk], context={})
        if rendered is None:
            return gettext("Write the message in at least one language.")
        EmailMessage(subject=f"[TEST] {rendered.subject}", body=rendered.body, to=[request.user.email]).send()
        return None

    def test_send_view(self, request, object_id):
        campaign = self._campaign(request, object_id, change=True)
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:campaigns_campaign_preview", args=[campaign.pk]))
        customer, ref = self._preview_customer(request, campaign)
        problem = gettext("No customer to render the message for.") if customer is None else None
        problem = problem or self._test_send(request, campaign, customer)
        if problem:
            self.message_user(request, problem, messages.ERROR)
        else:
            self.message_user(
                request,
                gettext("A test message went to %(email)s.") % {"email": request.user.email},
                messages.SUCCESS,
            )
        url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
        return HttpResponseRedirect(f"{url}?customer={ref}" if ref else url)

    def launch_view(self, request, object_id):
        campaign = self._campaign(request, object_id)
        if not self.has_launch_permission(request, campaign):
            raise PermissionDenied
        if request.method == "POST":
            try:
                self._launch(request, campaign)
            except DomainError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(
                    request, gettext("%(name)s is active.") % {"name": campaign}, messages.SUCCESS
                )
        return HttpResponseRedirect(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))

    def results_view(self, request, object_id):
        campaign = self._campaign(request, object_id)
        return TemplateResponse(
            request,
            "admin/campaigns/campaign/results.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": campaign,
                "title": gettext("Results"),
                "results": campaign_results(campaign),
            },
        )


# The admin index links to the guided campaign builder.
admin.site.index_template = "admin/campaigns/builder/admin_index.html"


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "campaign",
        "customer",
        "occurrence",
        "channel",
        "status",
        "attempts",
        "sent_at",
        "reason",
    ]
    list_filter = ["status", "channel"]
    search_fields = ["customer__external_ref", "customer__email", "campaign__name"]
    raw_id_fields = ["customer", "campaign"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    list_display = ["subject", "customer", "created_at", "read_at"]
    list_filter = ["read_at"]
    search_fields = ["subject", "customer__external_ref", "customer__email"]
    raw_id_fields = ["customer"]
    readonly_fields = ["read_at", "delivery"]
