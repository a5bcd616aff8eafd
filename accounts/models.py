"""Who people are: logins (User), customers, and the audit log of what staff did."""

import unicodedata

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class User(AbstractUser):
    """A login: a member using the portal or a staff member using the panel.

    Custom from the very first migration so that fields can be added later
    without the pain of swapping the user model.
    """

    email = models.EmailField(_("email address"), blank=True, db_index=True)
    # Set when the member followed the link sent to `email`; redeeming needs it.
    email_confirmed_at = models.DateTimeField(_("email confirmed at"), null=True, blank=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


def referral_code_new() -> str:
    """A short code a member shares with friends: 8 characters, no look-alikes."""
    import secrets

    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    # 32 symbols: each random byte's low 5 bits pick one uniformly (256 = 8 × 32). One call for
    # the 8 bytes: secrets.choice per character cost 8 system calls, a sixth of an import's time.
    return "".join(alphabet[byte & 31] for byte in secrets.token_bytes(8))


# Control characters (and surrogates, private-use, unassigned, line and paragraph separators)
# never belong in a customer reference; format characters (zero-width joiners in emoji, bidi
# marks) may, but not a reference made of nothing else, which would print as an empty one.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})


def external_ref_is_printable(value: str) -> bool:
    """Whether `value` may be a customer's external_ref (the API and the imports both ask)."""
    if value.isascii():
        return value.isprintable() and not value.isspace()
    categories = [unicodedata.category(ch) for ch in value]
    if any(category in _UNPRINTABLE_CATEGORIES for category in categories):
        return False
    return any(category != "Cf" and not ch.isspace() for category, ch in zip(categories, value, strict=True))


class Customer(models.Model):
    """A shopper the shop's systems know by `external_ref`; a member once enrolled.

    Non-members (``enrolled_at`` empty) are recorded too: their purchases earn
    nothing but are the comparison group for measuring the program's effect.
    """

    external_ref = models.CharField(_("customer number"), max_length=64, unique=True)
    email = models.EmailField(_("email"), blank=True, db_index=True)
    first_name = models.CharField(_("first name"), max_length=150, blank=True)
    last_name = models.CharField(_("last name"), max_length=150, blank=True)
    birthday = models.DateField(_("birthday"), null=True, blank=True)
    language = models.CharField(
        _("preferred language"), max_length=8, choices=settings.LANGUAGES, default="en"
    )
    time_zone = models.CharField(_("time zone"), max_length=64, default="Europe/Copenhagen")
    marketing_consent = models.BooleanField(_("marketing consent"), default=False)
    # When consent was last given or withdrawn (the proof a regulator asks for).
    marketing_consent_changed_at = models.DateTimeField(_("consent changed at"), null=True, blank=True)
    enrolled_at = models.DateTimeField(_("enrolled at"), null=True, blank=True, db_index=True)
    referral_code = models.CharField(
        _("referral code"), max_length=16, unique=True, default=referral_code_new
    )
    referred_by = models.ForeignKey(
        "self",
        verbose_name=_("referred by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="referrals",
    )
    user = models.OneToOneField(
        User,
        verbose_name=_("portal login"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="customer",
    )
    # The member asked to close the account; support handles it (the ledger is kept).
    closure_requested_at = models.DateTimeField(_("closure requested at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("customer")
        verbose_name_plural = _("customers")
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(referred_by=models.F("pk")), name="customer_not_self_referred"
            ),
        ]

    def __str__(self) -> str:
        name = f"{self.first_name} {self.last_name}".strip()
        return f"{name} ({self.external_ref})" if name else self.external_ref

    @property
    def is_member(self) -> bool:
        return self.enrolled_at is not None

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.external_ref


class AuditEntry(models.Model):
    """One staff action that changed points, rules, tiers, rewards, campaigns, tokens or roles.

    Append-only: the database refuses UPDATE and DELETE (migration 0006), the admin shows the
    log read-only. `user` is PROTECT: a staff login that acted cannot be deleted (deactivate it),
    and its name is also kept as text.
    """

    class Action(models.TextChoices):
        CREATE = "create", _("created")
        CHANGE = "change", _("changed")
        DELETE = "delete", _("deleted")
        ADJUST_POINTS = "adjust_points", _("points adjusted")
        ENROLL = "enroll", _("customer enrolled")
        CANCEL_REDEMPTION = "cancel_redemption", _("voucher cancelled")
        MARK_USED = "mark_used", _("voucher marked used")
        RESEND_CONFIRMATION = "resend_confirmation", _("confirmation email resent")
        LAUNCH = "launch", _("campaign launched")
        PAUSE = "pause", _("campaign paused")
        CREATE_TOKEN = "create_token", _("API token created")
        REVOKE_TOKEN = "revoke_token", _("API token revoked")
        ROLES = "roles", _("roles or permissions changed")

    at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)
    user = models.ForeignKey(
        User,
        verbose_name=_("staff member"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    username = models.CharField(_("username"), max_length=150, blank=True)
    action = models.CharField(_("action"), max_length=32, choices=Action.choices, db_index=True)
    content_type = models.ForeignKey(
        ContentType,
        verbose_name=_("object type"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    summary = models.TextField(_("summary"), blank=True)
    before = models.JSONField(_("before"), null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(_("after"), null=True, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["content_type", "object_id"], name="auditentry_object_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username}: {self.get_action_display()} {self.object_repr}"
