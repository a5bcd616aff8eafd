"""The program's rules as staff edit them: earn rates, tiers, promotions, events, integrations."""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer


class ProgramRules(models.Model):
    """The single row of program-wide earn settings (pk is always 1)."""

    points_per_unit = models.DecimalField(
        _("points per currency unit"),
        max_digits=8,
        decimal_places=2,
        default=Decimal("1.00"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Points for each whole unit of the program currency spent, rounded down per purchase."),
    )
    minimum_spend = models.DecimalField(
        _("minimum spend"),
        max_digits=12,
        decimal_places=2,
        default=Decimal("0.00"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Purchases below this amount earn nothing."),
    )
    expiry_months = models.PositiveSmallIntegerField(
        _("points expire after (months)"), default=24, help_text=_("0 means points never expire.")
    )
    signup_bonus = models.PositiveIntegerField(_("signup bonus"), default=0)
    birthday_bonus = models.PositiveIntegerField(_("birthday bonus"), default=0)
    referral_bonus_referrer = models.PositiveIntegerField(_("referral bonus for the referrer"), default=0)
    referral_bonus_referee = models.PositiveIntegerField(_("referral bonus for the new member"), default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("program rules")
        verbose_name_plural = _("program rules")
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="program_rules_single_row")]

    def __str__(self) -> str:
        return str(_("Program rules"))

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def current(cls) -> "ProgramRules":
        obj, _created = cls.objects.get_or_create(pk=1)
        return obj


class CategoryMultiplier(models.Model):
    """Extra (or fewer) points for line items of a product category."""

    category = models.CharField(_("category"), max_length=64, unique=True)
    multiplier = models.DecimalField(
        _("multiplier"), max_digits=5, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("category multiplier")
        verbose_name_plural = _("category multipliers")
        ordering = ["category"]

    def __str__(self) -> str:
        return f"{self.category} × {self.multiplier}"


class Tier(models.Model):
    """A level reached by qualifying spend over a rolling 12 months."""

    code = models.SlugField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=64)
    # {"da": "Guld", "th": "ทอง", ...}: shown to customers in their language.
    name_translations = models.JSONField(_("translated names"), default=dict, blank=True)
    min_qualifying_spend = models.DecimalField(
        _("qualifying spend from"),
        max_digits=12,
        decimal_places=2,
        unique=True,
        validators=[MinValueValidator(Decimal("0"))],
    )
    multiplier = models.DecimalField(
        _("points multiplier"),
        max_digits=5,
        decimal_places=2,
        default=Decimal("1.00"),
        validators=[MinValueValidator(Decimal("0"))],
    )

    class Meta:
        verbose_name = _("tier")
        verbose_name_plural = _("tiers")
        ordering = ["min_qualifying_spend"]

    def __str__(self) -> str:
        return self.name

    def name_in(self, language: str | None) -> str:
        return self.name_translations.get(language or "", "") or self.name


class Promotion(models.Model):
    """A time-limited multiplier (e.g. double points), for everyone or a list of customers."""

    name = models.CharField(_("name"), max_length=120)
    multiplier = models.DecimalField(
        _("multiplier"), max_digits=5, decimal_places=2, validators=[MinValueValidator(Decimal("1"))]
    )
    starts_at = models.DateTimeField(_("starts at"))
    ends_at = models.DateTimeField(_("ends at"))
    # Empty: applies to every member. The campaigns app fills it for treated customers.
    customers = models.ManyToManyField(Customer, verbose_name=_("only for"), blank=True, related_name="+")
    is_active = models.BooleanField(_("active"), default=True)
    # What created it ("campaign:42"); empty when staff made it by hand.
    source = models.CharField(_("source"), max_length=64, blank=True)

    class Meta:
        verbose_name = _("promotion")
        verbose_name_plural = _("promotions")
        ordering = ["-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="promotion_window"
            )
        ]
        indexes = [models.Index(fields=["starts_at", "ends_at"])]

    def __str__(self) -> str:
        return self.name


class EventRule(models.Model):
    """Fixed points for a custom event an integration posts (a review, a newsletter signup)."""

    class CapPeriod(models.TextChoices):
        NONE = "none", _("no cap")
        DAY = "day", _("per day")
        WEEK = "week", _("per week")
        MONTH = "month", _("per month")
        YEAR = "year", _("per year")

    event_type = models.SlugField(_("event type"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=120)
    points = models.PositiveIntegerField(_("points"))
    cap_count = models.PositiveIntegerField(
        _("at most this many times"), null=True, blank=True, help_text=_("Empty: no cap.")
    )
    cap_period = models.CharField(
        _("cap period"), max_length=8, choices=CapPeriod.choices, default=CapPeriod.NONE
    )
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("event rule")
        verbose_name_plural = _("event rules")
        ordering = ["event_type"]

    def __str__(self) -> str:
        return f"{self.name} ({self.points})"


class Integration(models.Model):
    """A point of sale, web shop or importer that talks to the API with its own token.

    Only a SHA-256 hash of the token is stored; the token is shown once.
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False)
    # The first characters, to recognise a token in a list without revealing it.
    token_prefix = models.CharField(_("token starts with"), max_length=12, blank=True, editable=False)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    # Calls that failed on the integration's side (invalid, malformed, conflicting, refused by
    # the rate limit, or a server error), counted by rewards.api_errors; the staff dashboard
    # alerts on a recent failure. A member's own refusal (too few points) is not a failure.
    failed_calls = models.PositiveIntegerField(_("failed calls"), default=0, editable=False)
    last_failure_at = models.DateTimeField(_("last failed call"), null=True, blank=True, editable=False)
    last_failure = models.CharField(_("last failure"), max_length=200, blank=True, editable=False)

    class Meta:
        verbose_name = _("integration")
        verbose_name_plural = _("integrations")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # DRF treats the authenticated integration as the request's user.
    is_authenticated = True
    is_anonymous = False
