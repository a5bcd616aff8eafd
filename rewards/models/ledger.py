"""The points ledger: accounts, append-only entries, lots, and what caused them.

Integrity lives in the database: entries cannot be updated or deleted (a trigger,
see migration 0002), an entry's points are never zero, every write carries a
unique idempotency key, and lots never hold negative or more than their points.
"""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer

from .program import Integration, Tier


class PointsAccount(models.Model):
    """A member's balance row: every change happens with its entries, behind a lock on this row.

    A negative balance is points debt (a refund clawed back points already spent);
    later earnings repay it first and no redemption is possible until it is repaid.
    """

    customer = models.OneToOneField(
        Customer, primary_key=True, on_delete=models.PROTECT, related_name="points_account"
    )
    balance = models.IntegerField(_("balance"), default=0)
    tier = models.ForeignKey(Tier, verbose_name=_("tier"), null=True, blank=True, on_delete=models.PROTECT)
    tier_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("points account")
        verbose_name_plural = _("points accounts")

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.balance}"


class Purchase(models.Model):
    """A completed purchase as the shop's system reported it, member or not."""

    # No single-column indexes on these two: the unique (integration, external_id) and the
    # (customer, occurred_at) index lead with them. Fewer indexes, faster imports.
    integration = models.ForeignKey(
        Integration, on_delete=models.PROTECT, related_name="purchases", db_index=False
    )
    external_id = models.CharField(_("external id"), max_length=100)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="purchases", db_index=False)
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
    currency = models.CharField(_("currency"), max_length=3)
    occurred_at = models.DateTimeField(_("occurred at"))
    refunded_amount = models.DecimalField(_("refunded"), max_digits=12, decimal_places=2, default=0)
    points_earned = models.IntegerField(_("points earned"), default=0)
    points_clawed_back = models.IntegerField(_("points clawed back"), default=0)
    was_member = models.BooleanField(_("member at purchase"), default=False)
    # SHA-256 of the normalised request: the same id with another body is a conflict.
    request_hash = models.CharField(max_length=64, editable=False)
    balance_after = models.IntegerField(null=True, blank=True)
    explanation = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("purchase")
        verbose_name_plural = _("purchases")
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "external_id"], name="purchase_unique_per_integration"
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="purchase_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0) & Q(refunded_amount__lte=F("amount")),
                name="purchase_refund_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(points_clawed_back__gte=0) & Q(points_clawed_back__lte=F("points_earned")),
                name="purchase_clawback_within_earned",
            ),
        ]
        indexes = [models.Index(fields=["customer", "occurred_at"]), models.Index(fields=["occurred_at"])]

    def __str__(self) -> str:
        return f"{self.external_id} ({self.amount} {self.currency})"

    @property
    def net_amount(self):
        return self.amount - self.refunded_amount


class PurchaseLine(models.Model):
    """A line item of a purchase: what category multipliers and segments look at."""

    purchase = models.ForeignKey(Purchase, on_delete=models.CASCADE, related_name="lines")
    sku = models.CharField(max_length=64, blank=True)
    # Indexed in Meta: db_index=True would add a second index on PostgreSQL, for LIKE queries,
    # which nothing makes (segments filter categories with IN), and every imported line paid for.
    category = models.CharField(max_length=64, blank=True)
    quantity = models.DecimalField(max_digits=10, decimal_places=3, default=1)
    amount = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        verbose_name = _("purchase line")
        verbose_name_plural = _("purchase lines")
        indexes = [models.Index(fields=["category"], name="purchaseline_category_idx")]

    def __str__(self) -> str:
        return f"{self.category or self.sku}: {self.amount}"


class Refund(models.Model):
    """A full or partial refund of a purchase, by amount."""

    integration = models.ForeignKey(
        Integration, on_delete=models.PROTECT, related_name="refunds", db_index=False
    )
    refund_id = models.CharField(_("refund id"), max_length=100)
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
    points_clawed_back = models.IntegerField(default=0)
    request_hash = models.CharField(max_length=64, editable=False)
    balance_after = models.IntegerField(null=True, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("refund")
        verbose_name_plural = _("refunds")
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "refund_id"], name="refund_unique_per_integration"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.refund_id} ({self.amount})"


class CustomerEvent(models.Model):
    """A custom event an integration posted (review, newsletter signup, cart abandoned...)."""

    integration = models.ForeignKey(Integration, on_delete=models.PROTECT, related_name="events")
    external_id = models.CharField(max_length=100)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="events")
    event_type = models.SlugField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now)
    points_awarded = models.IntegerField(default=0)
    request_hash = models.CharField(max_length=64, editable=False)
    explanation = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("customer event")
        verbose_name_plural = _("customer events")
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "external_id"], name="event_unique_per_integration"
            )
        ]
        indexes = [models.Index(fields=["customer", "event_type", "occurred_at"])]

    def __str__(self) -> str:
        return f"{self.event_type} {self.external_id}"


class LedgerEntry(models.Model):
    """One change of a member's points. Append-only: a mistake is corrected by a new entry."""

    class Kind(models.TextChoices):
        EARN = "earn", _("earned")
        BONUS = "bonus", _("bonus")
        REDEEM = "redeem", _("redeemed")
        EXPIRE = "expire", _("expired")
        CLAWBACK = "clawback", _("clawed back")
        ADJUST = "adjust", _("adjusted")
        REVERSAL = "reversal", _("returned")

    # Indexed by (account, created_at, id) below.
    account = models.ForeignKey(
        PointsAccount, on_delete=models.PROTECT, related_name="entries", db_index=False
    )
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    points = models.IntegerField(_("points"))
    balance_after = models.IntegerField(_("balance after"))
    created_at = models.DateTimeField(_("at"), default=timezone.now)
    # Writing the same key twice is writing once: purchase:17:earn, expire:lot:9, ...
    idempotency_key = models.CharField(max_length=160, unique=True)
    # Structured lines (code + values) rendered in the reader's language by rules.explain().
    explanation = models.JSONField(default=list, blank=True)
    # The cause: exactly the relevant ones are set.
    purchase = models.ForeignKey(
        Purchase, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    refund = models.ForeignKey(
        Refund, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    redemption = models.ForeignKey(
        "rewards.Redemption", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    event = models.ForeignKey(
        CustomerEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    lot = models.ForeignKey(
        "rewards.PointsLot", null=True, blank=True, on_delete=models.PROTECT, related_name="expiry_entries"
    )
    reverses = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversals"
    )
    staff_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField(_("reason"), blank=True)

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        constraints = [
            models.CheckConstraint(condition=~Q(points=0), name="entry_points_not_zero"),
            models.CheckConstraint(
                condition=~Q(kind__in=["earn", "bonus"]) | Q(points__gt=0), name="entry_credit_positive"
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["redeem", "expire", "clawback"]) | Q(points__lt=0),
                name="entry_debit_negative",
            ),
            models.CheckConstraint(
                condition=~Q(kind="adjust") | (Q(staff_user__isnull=False) & ~Q(reason="")),
                name="entry_adjust_has_staff_and_reason",
            ),
        ]
        indexes = [models.Index(fields=["account", "created_at", "id"])]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.points:+d}"


class PointsLot(models.Model):
    """Points credited by one entry; spending takes from the oldest lots first, expiry takes what is left."""

    account = models.ForeignKey(PointsAccount, on_delete=models.PROTECT, related_name="lots")
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="lot_created")
    points = models.PositiveIntegerField()
    remaining = models.PositiveIntegerField()
    earned_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("points lot")
        verbose_name_plural = _("points lots")
        constraints = [
            models.CheckConstraint(
                condition=Q(remaining__lte=F("points")), name="lot_remaining_within_points"
            ),
        ]
        indexes = [
            models.Index(
                fields=["account", "earned_at", "id"], condition=Q(remaining__gt=0), name="lot_open_fifo"
            ),
            models.Index(fields=["expires_at"], condition=Q(remaining__gt=0), name="lot_open_expiry"),
        ]

    def __str__(self) -> str:
        return f"lot {self.pk}: {self.remaining}/{self.points}"


class LotConsumption(models.Model):
    """How many points a debit entry took from which lot (to return them on cancellation)."""

    entry = models.ForeignKey(LedgerEntry, on_delete=models.PROTECT, related_name="consumptions")
    lot = models.ForeignKey(PointsLot, on_delete=models.PROTECT, related_name="consumptions")
    points = models.PositiveIntegerField()

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(points__gt=0), name="consumption_positive")]

    def __str__(self) -> str:
        return f"{self.points} from lot {self.lot_id}"


class LedgerCheck(models.Model):
    """One run of the daily ledger check (rewards.tasks.ledger_check) and what it found, so the
    staff dashboard can show a failure after the log line and the email are gone."""

    checked_at = models.DateTimeField(_("checked at"), default=timezone.now, db_index=True)
    violations = models.PositiveIntegerField(_("accounts in error"), default=0)
    # The first accounts found: [{"customer_id": 17, "problems": ["balance 10 != ..."]}, ...]
    details = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = _("ledger check")
        verbose_name_plural = _("ledger checks")
        ordering = ["-checked_at", "-id"]

    def __str__(self) -> str:
        return f"{self.checked_at:%Y-%m-%d %H:%M}: {self.violations}"
