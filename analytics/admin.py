"""Staff admin of the analytics inputs: surveys (with their answers and a share link), the
monthly costs behind CAC and ROI, and the computation's settings."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import Avg, Count, Q
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from rewards.forms import _per_language, translated_languages

from . import services
from .models import AnalyticsSettings, MonthlyCost, Survey, SurveyResponse


def _question_field(code: str) -> str:
    return f"question_{code}"


class _SurveyAdminFormBase(forms.ModelForm):
    class Meta:
        model = Survey
        fields = ["name", "kind", "question", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.responses.exists():
            # Answers were given on this scale: changing it would mix 0–10 with 1–5.
            self.fields["kind"].disabled = True
        for code, _name in translated_languages():
            self.fields[_question_field(code)].initial = (self.instance.question_translations or {}).get(
                code, ""
            )

    def save(self, commit=True):
        translations = dict(self.instance.question_translations or {})
        for code, _name in translated_languages():
            value = self.cleaned_data.get(_question_field(code), "").strip()
            if value:
                translations[code] = value
            else:
                translations.pop(code, None)
        self.instance.question_translations = translations
        return super().save(commit)


SurveyAdminForm = type(
    "SurveyAdminForm",
    (_SurveyAdminFormBase,),
    {
        "__module__": __name__,
        **{
            _question_field(code): forms.CharField(
                label=_per_language(_("Question (%(language)s)"), name), max_length=300, required=False
            )
            for code, name in translated_languages()
        },
    },
)


class SurveyResponseInline(admin.TabularInline):
    model = SurveyResponse
    fields = ["customer", "score", "comment", "answered_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ["-answered_at"]
    max_num = 0

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Survey)
class SurveyAdmin(admin.ModelAdmin):
    form = SurveyAdminForm
    list_display = ["name", "kind", "is_active", "answers", "score", "created_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "question"]
    readonly_fields = ["share_link", "summary"]
    inlines = [SurveyResponseInline]
    fieldsets = [
        (None, {"fields": ["name", "kind", "question", "is_active"]}),
        (
            _("Translations"),
            {
                "fields": [_question_field(code) for code, _n in translated_languages()],
                "classes": ["collapse"],
            },
        ),
        (_("Answers"), {"fields": ["summary", "share_link"]}),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_answers=Count("responses"),
                n_promoters=Count("responses", filter=Q(responses__score__gte=9)),
                n_detractors=Count("responses", filter=Q(responses__score__lte=6)),
                n_satisfied=Count("responses", filter=Q(responses__score__gte=4)),
                mean_score=Avg("responses__score"),
            )
        )

    @admin.display(description=_("answers"), ordering="n_answers")
    def answers(self, survey):
        return survey.n_answers

    @admin.display(description=_("score"))
    def score(self, survey):
        """NPS = % promoters (9–10) − % detractors (0–6); CSAT = % answering 4 or 5 (METRICS.md)."""
        if not survey.n_answers:
            return "—"
        if survey.kind == Survey.Kind.NPS:
            nps = 100 * (survey.n_promoters - survey.n_detractors) / survey.n_answers
            return _("NPS %(nps)+.0f") % {"nps": nps}
        return _("CSAT %(csat).0f %%") % {"csat": 100 * survey.n_satisfied / survey.n_answers}

    @admin.display(description=_("summary"))
    def summary(self, survey):
        if not survey.pk:
            return "—"
        survey = self.get_queryset(None).get(pk=survey.pk)
        if not survey.n_answers:
            return _("No answers yet.")
        return format_html(
            "{} · {} · {}",
            ngettext("%(n)s answer", "%(n)s answers", survey.n_answers) % {"n": survey.n_answers},
            self.score(survey),
            _("mean %(mean).1f") % {"mean": survey.mean_score},
        )

    @admin.display(description=_("link for members"))
    def share_link(self, survey):
        """A link any signed-in member can answer once (for the website, a receipt or a
        newsletter); a campaign with this survey sends each recipient a link of their own."""
        if not survey.pk:
            return _("Save the survey first.")
        token = services.survey_portal_token(survey=survey)
        url = settings.SITE_URL.rstrip("/") + reverse("survey-answer", args=[token])
        return format_html('<a href="{}">{}</a>', url, url)


@admin.register(MonthlyCost)
class MonthlyCostAdmin(admin.ModelAdmin):
    list_display = ["month", "kind", "amount", "currency", "note"]
    list_filter = ["kind"]
    date_hierarchy = "month"
    ordering = ["-month", "kind"]


@admin.register(AnalyticsSettings)
class AnalyticsSettingsAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "margin",
        "annual_discount_rate",
        "clv_horizon_months",
        "churn_days",
        "point_cost",
    ]

    def has_add_permission(self, request):
        # One row: never a second one, and the first only for those who may add it (any
        # staff login could, before; tests/site/test_authorization_matrix.py).
        return super().has_add_permission(request) and not AnalyticsSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False
