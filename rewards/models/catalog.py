"""The rewards catalog and the redemptions that turn points into vouchers."""

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer

from .program import Integration, Tier


class Reward(models.Model):
    name = models.CharField(_("name"), max_length=120)
    description = models.TextField(_("description"), blank=True)
    # {"da": {"name": "...", "description": "..."}, ...}
    translations = models.JSONField(_("translations"), default=dict, blank=True)
    image = models.ImageField(_("image"), upload_to="rewards/", blank=True)
    cost_points = models.PositiveIntegerField(_("cost in points"))
    active_from = models.DateTimeField(_("available from"), null=True, blank=True)
    active_until = models.DateTimeField(_("available until"), null=True, blank=True)
    stock = models.PositiveIntegerField(_("stock"), null=True, blank=True, help_text=_("Empty: unlimited."))
    per_customer_limit = models.PositiveIntegerField(
        _("limit per customer"), null=True, blank=True, help_text=_("Empty: no limit.")
    )
    min_tier = models.ForeignKey(
        Tier, verbose_name=_("minimum tier"), null=True, blank=True, on_delete=models.PROTECT
    )
    validity_days = models.PositiveIntegerField(
        _("voucher valid for (days)"),
        null=True,
        blank=True,
        help_text=_("Empty: the voucher does not expire."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("reward")
        verbose_name_plural = _("rewards")
        ordering = ["cost_points", "name"]
        constraints = [models.CheckConstraint(condition=Q(cost_points__gt=0), name="reward_cost_positive")]

    def __str__(self) -> str:
        return self.name

    def name_in(self, language: str | None) -> str:
        return (self.translations.get(language or "") or {}).get("name") or self.name

    def description_in(self, language: str | None) -> str:
        return (self.translations.get(language or "") or {}).get("description") or self.description


class Redemption(models.Model):
    """Points exchanged for a reward: a voucher with an unguessable code."""

    class State(models.TextChoices):
        ISSUED = "issued", _("issued")
        USED = "used", _("used")
        CANCELLED = "cancelled", _("cancelled")
        EXPIRED = "expired", _("expired")

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="redemptions")
    reward = models.ForeignKey(Reward, on_delete=models.PROTECT, related_name="redemptions")
    points = models.PositiveIntegerField()
    voucher_code = models.CharField(_("voucher code"), max_length=20, unique=True)
    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.ISSUED)
    # Null when redeemed in the portal; set for redemptions through the API.
    integration = models.ForeignKey(Integration, null=True, blank=True, on_delete=models.PROTECT)
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(_("valid until"), null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = _("redemption")
        verbose_name_plural = _("redemptions")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="redemption_idempotent_per_customer",
            )
        ]
        indexes = [models.Index(fields=["customer", "state"])]

    def __str__(self) -> str:
        return f"{self.voucher_code} ({self.get_state_display()})"
