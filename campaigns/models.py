"""Action: segments of customers, campaigns to them, deliveries exactly once, the inbox.

A campaign's audience is its segment minus its holdout; each send of a campaign is an
occurrence ("once", a recurring date, a triggering event), and each recipient of an
occurrence is one Delivery row, unique per (campaign, customer, occurrence): the database
itself makes a second dispatcher's insert a no-op.
"""

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer
from rewards.models import Promotion, Reward


def holdout_salt_new() -> str:
    return secrets.token_hex(16)


def delivery_token_new() -> str:
    """144 random bits, URL-safe: the key of a message's tracked and unsubscribe links."""
    return secrets.token_urlsafe(18)


class Segment(models.Model):
    """Customers matching conditions, built in the admin without code. Conditions with the
    same group number must all hold (AND); a customer in any group matches (OR); each
    condition can be negated (NOT)."""

    name = models.CharField(_("name"), max_length=120, unique=True)
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SegmentCondition(models.Model):
    class Field(models.TextChoices):
        TIER = "tier", _("tier is one of (codes)")
        MEMBER = "member", _("is a member")
        ENROLLED_WITHIN = "enrolled_within", _("joined within the last N days")
        DAYS_SINCE_PURCHASE = "days_since_purchase", _("days since the last purchase")
        PURCHASES = "purchases", _("number of purchases in the last N days")
        SPEND = "spend", _("spend in the last N days")
        CATEGORY = "category", _("bought in category (in the last N days)")
        REDEEMED = "redeemed", _("has redeemed (in the last N days)")
        BIRTHDAY_MONTH = "birthday_month", _("birthday month is one of (1–12)")
        LANGUAGE = "language", _("language is one of (codes)")
        CONSENT = "consent", _("gave marketing consent")
        RFM = "rfm", _("RFM score (analytics)")
        CLV = "clv", _("predicted CLV (analytics)")
        P_ALIVE = "p_alive", _("P(alive) (analytics)")
        CHURN_RISK = "churn_risk", _("churn risk is one of (low, medium, high, churned) (analytics)")
        EXPECTED_30 = "expected_30", _("expected purchase days, next 30 days (analytics)")
        EXPECTED_90 = "expected_90", _("expected purchase days, next 90 days (analytics)")
        EXPECTED_365 = "expected_365", _("expected purchase days, next 365 days (analytics)")

    class Operator(models.TextChoices):
        GTE = "gte", "≥"
        LTE = "lte", "≤"
        IS = "is", _("is / has")

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="conditions")
    group = models.PositiveSmallIntegerField(
        _("group"), default=1, help_text=_("Same group: all must hold. Different groups: any.")
    )
    negate = models.BooleanField(_("NOT"), default=False)
    field = models.CharField(_("condition"), max_length=32, choices=Field.choices)
    operator = models.CharField(_("operator"), max_length=4, choices=Operator.choices, default=Operator.IS)
    value = models.CharField(_("value"), max_length=200, blank=True)
    days = models.PositiveIntegerField(_("in the last N days"), null=True, blank=True)

    class Meta:
        verbose_name = _("condition")
        verbose_name_plural = _("conditions")
        ordering = ["group", "id"]

    def __str__(self) -> str:
        negate = "NOT " if self.negate else ""
        return f"{negate}{self.get_field_display()} {self.get_operator_display()} {self.value}"


class Campaign(models.Model):
    class Channel(models.TextChoices):
        EMAIL = "email", _("email")
        IN_APP = "in_app", _("in-app message")

    class Status(models.TextChoices):
        DRAFT = "draft", _("draft")
        ACTIVE = "active", _("active")
        PAUSED = "paused", _("paused")
        FINISHED = "finished", _("finished")

    class Schedule(models.TextChoices):
        NOW = "now", _("now")
        AT = "at", _("at a date and time")
        RECURRING = "recurring", _("recurring")
        TRIGGERED = "triggered", _("triggered")

    class Trigger(models.TextChoices):
        AFTER_LAST_PURCHASE = "after_last_purchase", _("N days after the last purchase")
        BIRTHDAY = "birthday", _("on the birthday")
        AFTER_SIGNUP = "after_signup", _("N days after joining")
        POINTS_EXPIRING = "points_expiring", _("points expire within N days")
        EVENT = "event", _("an integration event")

    class Offer(models.TextChoices):
        NONE = "none", _("no offer")
        MULTIPLIER = "multiplier", _("bonus points multiplier")
        POINTS = "points", _("points gift")
        VOUCHER = "voucher", _("reward voucher")

    name = models.CharField(_("name"), max_length=120)
    segment = models.ForeignKey(Segment, verbose_name=_("segment"), on_delete=models.PROTECT)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    is_marketing = models.BooleanField(
        _("marketing"), default=True, help_text=_("Marketing goes only to customers who consented.")
    )
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.DRAFT)

    schedule = models.CharField(_("schedule"), max_length=10, choices=Schedule.choices, default=Schedule.NOW)
    send_at = models.DateTimeField(_("send at"), null=True, blank=True)
    # Recurring: on these weekdays (0 = Monday … 6 = Sunday, comma-separated) at this time.
    recur_weekdays = models.CharField(
        _("weekdays"),
        max_length=20,
        blank=True,
        validators=[
            RegexValidator(r"^[0-6](,[0-6])*$", _("Weekday numbers 0 (Monday) to 6, comma-separated."))
        ],
    )
    recur_time = models.TimeField(_("time of day"), null=True, blank=True)
    trigger = models.CharField(_("trigger"), max_length=24, choices=Trigger.choices, blank=True)
    trigger_days = models.PositiveIntegerField(_("N days"), null=True, blank=True)
    trigger_event_type = models.SlugField(_("event type"), max_length=64, blank=True)
    # Triggered by events: the last CustomerEvent id the dispatcher has looked at.
    trigger_watermark = models.BigIntegerField(default=0, editable=False)
    ends_at = models.DateTimeField(_("stop sending after"), null=True, blank=True)

    holdout_percent = models.PositiveSmallIntegerField(
        _("holdout %"), default=10, validators=[MaxValueValidator(90)]
    )
    # Draws the holdout: a customer's group is a hash of this salt and their id, so it is
    # random across customers and fixed for the campaign's life.
    holdout_salt = models.CharField(max_length=32, default=holdout_salt_new, editable=False)

    offer = models.CharField(_("offer"), max_length=12, choices=Offer.choices, default=Offer.NONE)
    offer_multiplier = models.DecimalField(
        _("multiplier"),
        max_digits=4,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    offer_starts_at = models.DateTimeField(_("offer from"), null=True, blank=True)
    offer_ends_at = models.DateTimeField(_("offer until"), null=True, blank=True)
    offer_points = models.PositiveIntegerField(_("points gift"), null=True, blank=True)
    offer_reward = models.ForeignKey(
        Reward, verbose_name=_("reward voucher"), null=True, blank=True, on_delete=models.PROTECT
    )
    # A survey link in the message ({{ survey_link }}): signed for each recipient, so the
    # answer is theirs (analytics' surveys feed NPS and CSAT).
    survey = models.ForeignKey(
        "analytics.Survey",
        verbose_name=_("survey"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text=_("Recipients answer it from the link {{ survey_link }} in the message."),
    )
    promotion = models.OneToOneField(
        Promotion, null=True, blank=True, on_delete=models.PROTECT, editable=False
    )

    attribution_days = models.PositiveSmallIntegerField(_("attribution window (days)"), default=7)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    launched_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class CampaignContent(models.Model):
    """The message in one language. Subject and body may use {{ first_name }},
    {{ points_balance }}, {{ tier }}, {{ points_to_next_tier }}, {{ points_expiring }},
    {{ recommended_reward }}, {{ offer }}, {{ basket }} (a triggering event's items)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="contents")
    language = models.CharField(_("language"), max_length=8, choices=settings.LANGUAGES)
    subject = models.CharField(_("subject"), max_length=200)
    body = models.TextField(_("message"))

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages per language")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "language"], name="content_one_per_language")
        ]

    def __str__(self) -> str:
        return f"{self.campaign} [{self.language}]"


class Audience(models.Model):
    """A customer's group in a campaign, drawn once and kept: treated or holdout."""

    # Indexed by the unique (campaign, customer) constraint.
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="audience", db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+")
    holdout = models.BooleanField(default=False)
    # When the customer was drawn: both groups' results are counted from here.
    assigned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "customer"], name="audience_once")]
        indexes = [models.Index(fields=["campaign", "holdout"])]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.customer_id} {'holdout' if self.holdout else 'treated'}"


class Occurrence(models.Model):
    """One send of a campaign ("once", "2026-11-30T09:00", "event:123"). Created by exactly
    one dispatcher (unique), which then materialises its deliveries."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="occurrences")
    key = models.CharField(max_length=64)
    due_at = models.DateTimeField()
    # Large segments are materialised in chunks of customers by id: the last id done.
    cursor = models.BigIntegerField(default=0)
    materialised_at = models.DateTimeField(null=True, blank=True)
    recipients = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "key"], name="occurrence_once")]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.key}"


class Delivery(models.Model):
    """One message to one customer for one occurrence: pending → sending → sent | failed;
    suppressed when a policy says no (consent, frequency cap, no address)."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        SENDING = "sending", _("sending")
        SENT = "sent", _("sent")
        FAILED = "failed", _("failed")
        SUPPRESSED = "suppressed", _("suppressed")

    # Indexed by the unique (campaign, customer, occurrence) constraint.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="deliveries")
    occurrence = models.CharField(max_length=64)
    channel = models.CharField(max_length=8, choices=Campaign.Channel.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Not before (quiet hours, retry backoff).
    due_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    # The payload of a triggering event (a basket), for the message.
    context = models.JSONField(default=dict, blank=True)
    # Tracked links and the unsubscribe link carry this, not the customer's id.
    token = models.CharField(max_length=32, unique=True, default=delivery_token_new)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "customer", "occurrence"], name="delivery_exactly_once"
            )
        ]
        indexes = [
            models.Index(
                fields=["status", "due_at"],
                condition=Q(status__in=["pending", "sending"]),
                name="delivery_todo",
            ),
            models.Index(
                fields=["customer", "sent_at"], condition=Q(status="sent"), name="delivery_sent_per_customer"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.customer_id}:{self.occurrence} ({self.status})"


class Click(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="clicks")
    url = models.CharField(max_length=500)
    clicked_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} → {self.url}"


class Unsubscribe(models.Model):
    """A customer withdrew consent from a message's link (kept for the campaign's results)."""

    delivery = models.OneToOneField(Delivery, on_delete=models.CASCADE, related_name="unsubscribe")
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"unsubscribe {self.delivery_id}"


class InboxMessage(models.Model):
    """An in-app message in a member's portal inbox (a campaign's in-app channel, or staff)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="inbox_messages")
    delivery = models.OneToOneField(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="inbox_message"
    )
    subject = models.CharField(_("subject"), max_length=200)
    body = models.TextField(_("message"))
    # Where the "open" button leads (a reward, a survey), if anywhere; a path on this site.
    link_url = models.CharField(
        _("link"),
        max_length=500,
        blank=True,
        validators=[RegexValidator(r"^(/|https://)", _("A path on this site (/…) or an https:// address."))],
    )
    link_label = models.CharField(_("link text"), max_length=100, blank=True)
    created_at = models.DateTimeField(_("sent at"), auto_now_add=True, db_index=True)
    read_at = models.DateTimeField(_("read at"), null=True, blank=True)

    class Meta:
        verbose_name = _("inbox message")
        verbose_name_plural = _("inbox messages")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["customer"],
                condition=models.Q(read_at__isnull=True),
                name="inbox_unread_per_customer",
            )
        ]

    def __str__(self) -> str:
        return self.subject
