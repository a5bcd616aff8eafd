"""What staff enter for the analytics: the money assumptions and the monthly costs."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _


class AnalyticsSettings(models.Model):
    """The single row of assumptions every computation run copies into its parameters."""

    margin = models.DecimalField(
        _("gross margin"),
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.3000"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text=_("Share of net revenue kept as margin, 0 to 1. Used for CLV and ROI."),
    )
    annual_discount_rate = models.DecimalField(
        _("annual discount rate"),
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.1000"),
        validators=[MinValueValidator(Decimal("0"))],
    )
    clv_horizon_months = models.PositiveSmallIntegerField(_("CLV horizon (months)"), default=12)
    churn_days = models.PositiveSmallIntegerField(
        _("churned after (days without purchase)"), default=90, validators=[MinValueValidator(1)]
    )
    point_cost = models.DecimalField(
        _("cost of one point"),
        max_digits=8,
        decimal_places=4,
        default=Decimal("0.0500"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("What a redeemed point costs the shop, in the program currency."),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("analytics settings")
        verbose_name_plural = _("analytics settings")
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="analytics_settings_single_row")]

    def __str__(self) -> str:
        return str(_("Analytics settings"))

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def current(cls) -> "AnalyticsSettings":
        obj, _created = cls.objects.get_or_create(pk=1)
        return obj


class MonthlyCost(models.Model):
    """Money spent in a month: on acquiring customers (for CAC) or on running the program (for ROI)."""

    class Kind(models.TextChoices):
        ACQUISITION = "acquisition", _("acquisition")
        PROGRAM = "program", _("program")

    month = models.DateField(_("month"), help_text=_("Any day of the month; stored as its first day."))
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    amount = models.DecimalField(
        _("amount"), max_digits=14, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )
    currency = models.CharField(_("currency"), max_length=3, default=settings.PROGRAM_CURRENCY)
    note = models.CharField(_("note"), max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("monthly cost")
        verbose_name_plural = _("monthly costs")
        ordering = ["-month", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["month", "kind"], name="monthly_cost_unique"),
            models.CheckConstraint(condition=models.Q(amount__gte=0), name="monthly_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.kind}: {self.amount}"

    def save(self, *args, **kwargs):
        self.month = self.month.replace(day=1)
        super().save(*args, **kwargs)

    def clean(self):
        # Before the uniqueness check (full_clean runs clean first): the 15th and the 28th
        # of a month are the same month.
        if self.month:
            self.month = self.month.replace(day=1)
