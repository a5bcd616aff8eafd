"""The portal's account forms: sign-in by email, the member's profile."""

import datetime as dt
import zoneinfo

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .models import Customer
from .services import email_normalise


class EmailAuthenticationForm(AuthenticationForm):
    """Members sign in with their email address (their username); staff usernames work too."""

    username = forms.CharField(
        label=_("Email"),
        max_length=254,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "email", "inputmode": "email"}),
    )

    def __init__(self, request=None, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(request, *args, **kwargs)

    def clean_username(self):
        """The login to check: a member's is their address; a login named otherwise (staff,
        the demo's member) is found by its address too when exactly one login has it."""
        value = self.cleaned_data["username"].strip()
        if "@" not in value:
            return value
        value = email_normalise(value)
        users = get_user_model().objects
        if not users.filter(username=value).exists():
            named = list(users.filter(email__iexact=value).values_list("username", flat=True)[:2])
            if len(named) == 1:
                return named[0]
        return value


class MemberPasswordResetForm(PasswordResetForm):
    """Django's reset form; the address is matched case-insensitively (as stored)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def clean_email(self):
        return email_normalise(self.cleaned_data["email"])


def time_zone_choices():
    zones = sorted(z for z in zoneinfo.available_timezones() if "/" in z and not z.startswith("Etc/"))
    return [(z, z.replace("_", " ")) for z in zones]


class ProfileForm(forms.ModelForm):
    """Name, language, time zone, consent; the birthday only while it is not set (once)."""

    time_zone = forms.ChoiceField(label=_("Time zone"), choices=time_zone_choices)

    class Meta:
        model = Customer
        fields = ["first_name", "last_name", "language", "time_zone", "birthday", "marketing_consent"]
        labels = {"marketing_consent": _("Send me offers and news by email")}
        widgets = {"birthday": forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")}
        help_texts = {"birthday": _("Used for your birthday bonus. It can be set once.")}

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["language"].choices = settings.LANGUAGES
        self.fields["first_name"].widget.attrs["autocomplete"] = "given-name"
        self.fields["last_name"].widget.attrs["autocomplete"] = "family-name"
        if self.instance.birthday is not None:
            del self.fields["birthday"]

    def clean_birthday(self):
        birthday = self.cleaned_data.get("birthday")
        if birthday is None:
            return None
        today = timezone.localdate()
        if birthday > today:
            raise forms.ValidationError(_("A birthday cannot be in the future."))
        if birthday < dt.date(today.year - 120, 1, 1):
            raise forms.ValidationError(_("Please check the year."))
        return birthday
