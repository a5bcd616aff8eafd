"""Who people are: logins (User). Customers and staff roles build on it."""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _


class User(AbstractUser):
    """A login: a member using the portal or a staff member using the panel.

    Custom from the very first migration so that fields can be added later
    without the pain of swapping the user model.
    """

    email = models.EmailField(_("email address"), blank=True, db_index=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


def referral_code_new() -> str:
    """A short code a member shares with friends: 8 characters, no look-alikes."""
    import secrets

    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


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
