"""The guided campaign builder: a few admin pages on top of CampaignAdmin that walk a
marketer from the audience to the launch.

audience (segment with the live count) → message per language (with a preview for a chosen
customer) → offer → schedule → holdout → review and launch, then the results page.

The campaign is a draft saved at every step, so leaving and coming back resumes where the
marketer stopped; the step list says which steps are complete. Each step is a server-rendered
form that reuses the admin's validation (the segment conditions' check, `template_check`
through CampaignContentForm, the same rules as `campaign_problems`), every write is in the
audit log, and launching goes through CampaignAdmin's launch (permission
campaigns.launch_campaign, checked here on the server, audited there).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.forms.models import BaseInlineFormSet, inlineformset_factory
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dates import WEEKDAYS
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.audit import Action, audit_record, snapshot
from accounts.models import Customer
from rewards.errors import DomainError

from .admin import CampaignContentForm, SegmentConditionForm
from .models import Campaign, CampaignContent, Segment, SegmentCondition
from .rendering import FIELDS, recipient_values, render, template_check
from .segments import Condition, ConditionError, segment_customers, segment_q
from .services import campaign_problems

STEPS = [
    ("segment", _("Audience")),
    ("message", _("Message")),
    ("offer", _("Offer")),
    ("schedule", _("Schedule")),
    ("holdout", _("Holdout")),
    ("review", _("Review and launch")),
]
STEP_NAMES = [name for name, _label in STEPS]
# The builder edits campaigns that are not sending: a running campaign is changed in the
# admin's own form (or paused first).
EDITABLE = {Campaign.Status.DRAFT, Campaign.Status.PAUSED}


def _datetime_widget():
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


# --- Forms -----------------------------------------------------------------------------------


class AudienceForm(forms.ModelForm):
    """The campaign's name and channel, and the name of its segment (the conditions are a
    formset of the admin's SegmentConditionForm)."""

    segment_name = forms.CharField(
        label=_("Segment name"),
        max_length=120,
        help_text=_("The customers this campaign is for, saved as a segment others can reuse."),
    )

    class Meta:
        model = Campaign
        fields = ["name", "channel", "is_marketing"]

    def __init__(self, *args, segment: Segment | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.segment = segment
        if segment is not None:
            self.fields["segment_name"].initial = segment.name

    def clean_segment_name(self):
        name = self.cleaned_data["segment_name"].strip()
        taken = Segment.objects.filter(name=name)
        if self.segment is not None:
            taken = taken.exclude(pk=self.segment.pk)
        if taken.exists():
            raise forms.ValidationError(
                gettext("A segment with this name exists already: choose another name.")
            )
        return name


class ConditionFormSetBase(BaseInlineFormSet):
    def _construct_form(self, i, **kwargs):
        """The rows are a table: each control is named by its column and row for screen readers."""
        form = super()._construct_form(i, **kwargs)
        for field in form.fields.values():
            field.widget.attrs["aria-label"] = f"{capfirst(field.label)} ({i + 1})"
        return form

    def clean(self):
        """Each row is checked by SegmentConditionForm; here the conditions together must
        compile (conditions on analytics' scores need scores to exist)."""
        super().clean()
        if any(self.errors):
            return
        conditions = [
            Condition(
                field=form.cleaned_data["field"],
                operator=form.cleaned_data.get("operator") or "is",
                value=form.cleaned_data.get("value") or "",
                days=form.cleaned_data.get("days"),
                negate=bool(form.cleaned_data.get("negate")),
                group=form.cleaned_data.get("group") or 1,
            )
            for form in self.forms
            if form.cleaned_data.get("field") and not form.cleaned_data.get("DELETE")
        ]
        try:
            segment_q(conditions)
        except ConditionError as error:
            raise forms.ValidationError(str(error)) from error


ConditionFormSet = inlineformset_factory(
    Segment,
    SegmentCondition,
    form=SegmentConditionForm,
    formset=ConditionFormSetBase,
    fields=["group", "negate", "field", "operator", "value", "days"],
    extra=1,
    can_delete=True,
)


class MessageForm(CampaignContentForm):
    """The message in one language: the admin's form (its `template_check`), both fields
    optional together: a language left empty has no message and falls back to the default."""

    class Meta(CampaignContentForm.Meta):
        fields = ["subject", "body"]
        widgets = {"body": forms.Textarea(attrs={"rows": 6, "cols": 60})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False

    def clean(self):
        data = super().clean()
        subject, body = data.get("subject"), data.get("body")
        if subject and not body and "body" not in self.errors:
            self.add_error("body", gettext("Write the message too, or leave the subject empty."))
        if body and not subject and "subject" not in self.errors:
            self.add_error("subject", gettext("Write the subject too, or leave the message empty."))
        return data

    @property
    def is_empty(self) -> bool:
        return not (self.cleaned_data.get("subject") or self.cleaned_data.get("body"))


class OfferForm(forms.ModelForm):
    """Field by field, the offer rules of campaign_problems (same words)."""

    class Meta:
        model = Campaign
        fields = [
            "offer",
            "offer_multiplier",
            "offer_starts_at",
            "offer_ends_at",
            "offer_points",
            "offer_reward",
        ]
        widgets = {
            "offer": forms.RadioSelect,
            "offer_starts_at": _datetime_widget(),
            "offer_ends_at": _datetime_widget(),
        }

    def clean(self):
        data = super().clean()
        offer = data.get("offer")
        kind = Campaign.Offer
        if offer == kind.MULTIPLIER:
            for name in ("offer_multiplier", "offer_starts_at", "offer_ends_at"):
                if not data.get(name) and name not in self.errors:
                    self.add_error(
                        name, gettext("A multiplier offer needs the multiplier and its date window.")
                    )
            starts, ends = data.get("offer_starts_at"), data.get("offer_ends_at")
            if starts and ends and ends <= starts:
                self.add_error("offer_ends_at", gettext("The offer must end after it starts."))
        elif offer == kind.POINTS and not data.get("offer_points") and "offer_points" not in self.errors:
            self.add_error("offer_points", gettext("A points gift needs the number of points."))
        elif offer == kind.VOUCHER and not data.get("offer_reward") and "offer_reward" not in self.errors:
            self.add_error("offer_reward", gettext("A voucher offer needs the reward."))
        return data

    def save(self, commit=True):
        # What another kind of offer would use is cleared: the review shows one offer.
        campaign = super().save(commit=False)
        kind = Campaign.Offer
        if campaign.offer != kind.MULTIPLIER:
            campaign.offer_multiplier = campaign.offer_starts_at = campaign.offer_ends_at = None
        if campaign.offer != kind.POINTS:
            campaign.offer_points = None
        if campaign.offer != kind.VOUCHER:
            campaign.offer_reward = None
        if commit:
            campaign.save()
        return campaign


class ScheduleForm(forms.ModelForm):
    """Field by field, the schedule rules of campaign_problems (same words)."""

    recur_weekdays = forms.MultipleChoiceField(
        label=_("weekdays"),
        choices=[(str(day), name) for day, name in WEEKDAYS.items()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )

    class Meta:
        model = Campaign
        fields = [
            "schedule",
            "send_at",
            "recur_weekdays",
            "recur_time",
            "trigger",
            "trigger_days",
            "trigger_event_type",
            "ends_at",
        ]
        widgets = {
            "schedule": forms.RadioSelect,
            "send_at": _datetime_widget(),
            "recur_time": forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
            "ends_at": _datetime_widget(),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.recur_weekdays:
            self.initial["recur_weekdays"] = self.instance.recur_weekdays.split(",")

    def clean_recur_weekdays(self) -> str:
        return ",".join(sorted(self.cleaned_data["recur_weekdays"]))

    def clean(self):
        data = super().clean()
        kind, trigger = Campaign.Schedule, Campaign.Trigger
        schedule = data.get("schedule")

        def need(name, message):
            if data.get(name) in (None, "") and name not in self.errors:
                self.add_error(name, message)

        if schedule == kind.AT:
            need("send_at", gettext("Choose the date and time to send."))
        elif schedule == kind.RECURRING:
            message = gettext("Choose the weekdays and the time of a recurring campaign.")
            need("recur_weekdays", message)
            need("recur_time", message)
        elif schedule == kind.TRIGGERED:
            need("trigger", gettext("Choose what triggers the campaign."))
            if data.get("trigger") == trigger.EVENT:
                need("trigger_event_type", gettext("Name the event type that triggers the campaign."))
            elif data.get("trigger") in (trigger.AFTER_LAST_PURCHASE, trigger.AFTER_SIGNUP):
                need("trigger_days", gettext("Give the number of days."))
        return data


class HoldoutForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = ["holdout_percent", "attribution_days"]
        help_texts = {
            "holdout_percent": _(
                "Drawn at random from the segment and kept for the life of the campaign: they "
                "receive nothing and are the baseline of the lift (0 to 90)."
            ),
            "attribution_days": _("A purchase within this many days of being drawn counts as a conversion."),
        }


STEP_FORMS = {"offer": OfferForm, "schedule": ScheduleForm, "holdout": HoldoutForm}


# --- What is complete ------------------------------------------------------------------------


def _conditions(segment: Segment) -> list[Condition]:
    return [Condition.of(row) for row in segment.conditions.all()]


def segment_problem(segment: Segment) -> str | None:
    try:
        segment_q(_conditions(segment))
    except ConditionError as error:
        return str(error)
    return None


def message_complete(campaign: Campaign) -> bool:
    contents = list(campaign.contents.all())
    try:
        for content in contents:
            template_check(content.subject)
            template_check(content.body)
    except ValueError:
        return False
    return bool(contents)


def form_complete(form_class, campaign: Campaign) -> bool:
    """Would the step's form accept what the campaign holds now? (On a copy: a ModelForm
    writes its cleaned values into its instance.)"""
    unbound = form_class(instance=campaign)
    data = {}
    for name in unbound.fields:
        value = unbound[name].value()
        if value is None:
            continue
        data[name] = value
    return form_class(data=data, instance=copy.copy(campaign)).is_valid()


def steps_complete(campaign: Campaign | None) -> dict[str, bool]:
    if campaign is None:
        return dict.fromkeys(STEP_NAMES, False)
    done = {
        "segment": segment_problem(campaign.segment) is None,
        "message": message_complete(campaign),
        **{name: form_complete(form, campaign) for name, form in STEP_FORMS.items()},
    }
    done["review"] = all(done.values()) and not campaign_problems(campaign)
    return done


@dataclass
class StepLink:
    name: str
    label: str
    url: str | None
    complete: bool
    current: bool


# --- Audit -----------------------------------------------------------------------------------


def _segment_state(segment: Segment) -> dict:
    data = snapshot(segment)
    data["segmentcondition"] = [snapshot(row) for row in segment.conditions.order_by("pk")]
    return data


def _campaign_state(campaign: Campaign) -> dict:
    data = snapshot(campaign)
    data["campaigncontent"] = [snapshot(row) for row in campaign.contents.order_by("pk")]
    return data


def _audit(user, obj, before: dict | None, after: dict) -> None:
    if before == after:
        return  # saved without a change
    audit_record(
        user=user,
        action=Action.CREATE if before is None else Action.CHANGE,
        obj=obj,
        before=before,
        after=after,
    )


# --- Views -----------------------------------------------------------------------------------


class CampaignBuilder:
    """The builder's views, wired into CampaignAdmin.get_urls (admin_view: staff only)."""

    def __init__(self, model_admin):
        self.model_admin = model_admin
        self.admin_site = model_admin.admin_site

    def urls(self) -> list:
        def wrap(view):
            return self.admin_site.admin_view(view)

        return [
            path("builder/", wrap(self.start_view), name="campaigns_campaign_builder"),
            path(
                "<int:object_id>/builder/", wrap(self.resume_view), name="campaigns_campaign_builder_resume"
            ),
            path(
                "<int:object_id>/builder/<slug:step>/",
                wrap(self.step_view),
                name="campaigns_campaign_builder_step",
            ),
        ]

    # Permissions: the builder creates and changes campaigns and their segments.

    def _check_may_build(self, request, campaign: Campaign | None = None) -> None:
        admin = self.model_admin
        segments = request.user.has_perm("campaigns.change_segment") and request.user.has_perm(
            "campaigns.add_segment"
        )
        allowed = (
            admin.has_change_permission(request, campaign) if campaign else admin.has_add_permission(request)
        )
        if not (allowed and segments):
            raise PermissionDenied

    def _campaign(self, request, object_id) -> Campaign:
        campaign = get_object_or_404(Campaign.objects.select_related("segment"), pk=object_id)
        self._check_may_build(request, campaign)
        return campaign

    def _url(self, campaign: Campaign, step: str) -> str:
        return reverse("admin:campaigns_campaign_builder_step", args=[campaign.pk, step])

    def _render(self, request, template: str, step: str, campaign: Campaign | None, context: dict):
        complete = steps_complete(campaign)
        steps = [
            StepLink(
                name=name,
                label=label,
                url=self._url(campaign, name) if campaign else (request.path if name == "segment" else None),
                complete=complete[name],
                current=name == step,
            )
            for name, label in STEPS
        ]
        index = STEP_NAMES.index(step)
        return TemplateResponse(
            request,
            f"admin/campaigns/builder/{template}",
            {
                **self.admin_site.each_context(request),
                "opts": Campaign._meta,
                "title": gettext("New campaign (guided)") if campaign is None else campaign.name,
                "subtitle": dict(STEPS)[step],
                "original": campaign,
                "step": step,
                "step_label": dict(STEPS)[step],
                "steps": steps,
                "time_zone": settings.TIME_ZONE,
                "previous_url": self._url(campaign, STEP_NAMES[index - 1]) if campaign and index else None,
                **context,
            },
        )

    def _next(self, request, campaign: Campaign, step: str) -> HttpResponseRedirect:
        """After a save: the next step, or this one again ("Save")."""
        if "_continue" in request.POST and step != STEP_NAMES[-1]:
            return HttpResponseRedirect(self._url(campaign, STEP_NAMES[STEP_NAMES.index(step) + 1]))
        messages.success(request, gettext("Saved."))
        return HttpResponseRedirect(self._url(campaign, step))

    def start_view(self, request):
        """A new campaign starts with its audience; drafts are listed to be resumed."""
        self._check_may_build(request)
        drafts = Campaign.objects.filter(status=Campaign.Status.DRAFT).select_related("segment", "created_by")
        return self._segment_step(request, None, extra={"drafts": drafts[:20]})

    def resume_view(self, request, object_id):
        """Where this draft needs work: its first incomplete step (the review when none)."""
        campaign = self._campaign(request, object_id)
        complete = steps_complete(campaign)
        step = next((name for name in STEP_NAMES if not complete[name]), "review")
        return HttpResponseRedirect(self._url(campaign, step))

    def step_view(self, request, object_id, step):
        if step not in STEP_NAMES:
            raise Http404
        campaign = self._campaign(request, object_id)
        if campaign.status not in EDITABLE:
            messages.info(request, gettext("This campaign is running: here are its results."))
            return HttpResponseRedirect(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))
        if step == "segment":
            return self._segment_step(request, campaign)
        if step == "message":
            return self._message_step(request, campaign)
        if step == "review":
            return self._review_step(request, campaign)
        return self._form_step(request, campaign, step)

    # Audience.

    def _segment_step(self, request, campaign: Campaign | None, extra: dict | None = None):
        segment = campaign.segment if campaign else Segment()
        data = request.POST if request.method == "POST" else None
        form = AudienceForm(data, instance=campaign or Campaign(), segment=campaign and segment)
        formset = ConditionFormSet(data, instance=segment, prefix="conditions")
        if data is not None and form.is_valid() and formset.is_valid():
            campaign = self._segment_save(request, campaign, form, formset)
            return self._next(request, campaign, "segment")
        shared = []
        if campaign is not None:
            shared = list(
                Campaign.objects.filter(segment=segment)
                .exclude(pk=campaign.pk)
                .values_list("name", flat=True)
            )
        return self._render(
            request,
            "segment.html",
            "segment",
            campaign,
            {"form": form, "formset": formset, "shared_with": shared, **(extra or {})},
        )

    @transaction.atomic
    def _segment_save(self, request, campaign: Campaign | None, form, formset) -> Campaign:
        user = request.user
        name = form.cleaned_data["segment_name"]
        if campaign is None:
            segment = Segment.objects.create(name=name)
            formset.instance = segment
            formset.save()
            _audit(user, segment, None, _segment_state(segment))
            campaign = form.save(commit=False)
            campaign.segment = segment
            campaign.created_by = user
            campaign.save()
            _audit(user, campaign, None, _campaign_state(campaign))
            return campaign
        segment = campaign.segment
        before_segment, before_campaign = _segment_state(segment), _campaign_state(campaign)
        segment.name = name
        segment.save()
        formset.save()
        campaign = form.save()
        _audit(user, segment, before_segment, _segment_state(segment))
        _audit(user, campaign, before_campaign, _campaign_state(campaign))
        return campaign

    # Message.

    def _message_step(self, request, campaign: Campaign):
        contents = {c.language: c for c in campaign.contents.all()}
        data = request.POST if request.method == "POST" else None
        forms_ = [
            (code, name, MessageForm(data, prefix=code, instance=contents.get(code)))
            for code, name in settings.LANGUAGES
        ]
        missing = None
        if data is not None and all(form.is_valid() for _code, _name, form in forms_):
            if all(form.is_empty for _code, _name, form in forms_):
                missing = gettext("Write the message in at least one language.")
            else:
                self._message_save(request, campaign, forms_)
                return self._next(request, campaign, "message")
        query = (request.GET.get("customer") or "").strip()
        customer = self._preview_customer(campaign, query)
        previews = []
        if customer is not None and contents:
            values = recipient_values([customer])[customer.pk]
            previews = [
                (code, name, render(campaign, values, context={}, contents={code: contents[code]}))
                for code, name in settings.LANGUAGES
                if code in contents
            ]
        return self._render(
            request,
            "message.html",
            "message",
            campaign,
            {
                "languages": forms_,
                "missing": missing,
                "fields": ["{{ %s }}" % f for f in FIELDS],  # noqa: UP031 - braces are the point
                "query": query,
                "customer": customer,
                "previews": previews,
                "customer_language": dict(settings.LANGUAGES).get(customer.language) if customer else None,
            },
        )

    @staticmethod
    def _preview_customer(campaign: Campaign, query: str) -> Customer | None:
        """The customer found by email or customer number; without a query, the first
        customer of the segment."""
        if query:
            return (
                Customer.objects.filter(Q(external_ref=query) | Q(email__iexact=query)).order_by("pk").first()
            )
        try:
            return segment_customers(campaign.segment).order_by("pk").first()
        except ConditionError:
            return None

    @transaction.atomic
    def _message_save(self, request, campaign: Campaign, forms_) -> None:
        before = _campaign_state(campaign)
        for code, _name, form in forms_:
            if form.is_empty:
                CampaignContent.objects.filter(campaign=campaign, language=code).delete()
                continue
            content = form.save(commit=False)
            content.campaign = campaign
            content.language = code
            content.save()
        _audit(request.user, campaign, before, _campaign_state(campaign))

    # Offer, schedule, holdout: one ModelForm each.

    def _form_step(self, request, campaign: Campaign, step: str):
        form_class = STEP_FORMS[step]
        data = request.POST if request.method == "POST" else None
        form = form_class(data, instance=campaign)
        if data is not None and form.is_valid():
            with transaction.atomic():
                before = _campaign_state(Campaign.objects.get(pk=campaign.pk))
                campaign = form.save()
                _audit(request.user, campaign, before, _campaign_state(campaign))
            return self._next(request, campaign, step)
        context = {"form": form}
        if step == "holdout":
            context.update(self._audience_size(campaign))
        return self._render(request, f"{step}.html", step, campaign, context)

    @staticmethod
    def _audience_size(campaign: Campaign) -> dict:
        try:
            count = segment_customers(campaign.segment).count()
        except ConditionError:
            return {"segment_count": None}
        return {
            "segment_count": count,
            "holdout_count": round(count * campaign.holdout_percent / 100),
        }

    # Review and launch.

    def _review_step(self, request, campaign: Campaign):
        may_launch = self.model_admin.has_launch_permission(request, campaign)
        if request.method == "POST":
            if not may_launch:
                raise PermissionDenied
            try:
                self.model_admin._launch(request, campaign)
            except DomainError as error:
                messages.error(request, error.message)
                return HttpResponseRedirect(self._url(campaign, "review"))
            messages.success(request, gettext("%(name)s is active.") % {"name": campaign})
            return HttpResponseRedirect(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))
        contents = {c.language: c for c in campaign.contents.all()}
        problems = campaign_problems(campaign)
        segment_error = segment_problem(campaign.segment)
        if segment_error:
            problems.insert(0, segment_error)
        return self._render(
            request,
            "review.html",
            "review",
            campaign,
            {
                "problems": problems,
                "may_launch": may_launch,
                "conditions": list(campaign.segment.conditions.all()),
                "contents": [(name, contents[code]) for code, name in settings.LANGUAGES if code in contents],
                "weekdays": [WEEKDAYS[int(d)] for d in campaign.recur_weekdays.split(",") if d.isdigit()],
                **self._audience_size(campaign),
            },
        )
