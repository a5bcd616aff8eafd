"""Satisfaction surveys: NPS (0–10) or CSAT (1–5), one answer per member."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer


class Survey(models.Model):
    class Kind(models.TextChoices):
        NPS = "nps", _("NPS (0–10)")
        CSAT = "csat", _("CSAT (1–5)")

    name = models.CharField(_("name"), max_length=120)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    question = models.CharField(_("question"), max_length=300)
    # {"da": "...", "sv": "..."}: shown to members in their language.
    question_translations = models.JSONField(_("translated questions"), default=dict, blank=True)
    is_active = models.BooleanField(_("open for answers"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("survey")
        verbose_name_plural = _("surveys")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def scale(self) -> range:
        return range(0, 11) if self.kind == self.Kind.NPS else range(1, 6)

    def question_in(self, language: str | None) -> str:
        return self.question_translations.get(language or "", "") or self.question


class SurveyResponse(models.Model):
    survey = models.ForeignKey(Survey, on_delete=models.PROTECT, related_name="responses")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="survey_responses")
    score = models.PositiveSmallIntegerField(_("score"))
    comment = models.TextField(_("comment"), blank=True, max_length=2000)
    answered_at = models.DateTimeField(_("answered at"))

    class Meta:
        verbose_name = _("survey answer")
        verbose_name_plural = _("survey answers")
        constraints = [
            models.UniqueConstraint(fields=["survey", "customer"], name="survey_one_answer_per_customer"),
            models.CheckConstraint(condition=Q(score__lte=10), name="survey_score_at_most_10"),
        ]
        indexes = [models.Index(fields=["survey", "answered_at"])]

    def __str__(self) -> str:
        return f"{self.survey_id}/{self.customer_id}: {self.score}"

    def clean(self):
        if self.survey_id and self.score not in self.survey.scale:
            raise ValidationError({"score": _("The score is outside the survey's scale.")})
