from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.utils.translation import gettext_lazy as _

from accounts.models import Customer
from accounts.services import email_normalise, user_for_email


class SignupForm(forms.Form):
    """Join: a new member, or (with a card number) a shopper linking the card they use."""

    first_name = forms.CharField(label=_("First name"), max_length=150)
    last_name = forms.CharField(label=_("Last name"), max_length=150, required=False)
    email = forms.EmailField(label=_("Email"), max_length=254)
    password1 = forms.CharField(
        label=_("Password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("At least 8 characters, not only digits, not a common password."),
    )
    password2 = forms.CharField(
        label=_("Password again"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    card_number = forms.CharField(
        label=_("Customer number (optional)"),
        max_length=64,
        required=False,
        help_text=_(
            "Already shopping with us? Enter the number on your card or receipt to keep your history."
        ),
    )
    referral_code = forms.CharField(
        label=_("Friend's referral code (optional)"), max_length=16, required=False
    )
    language = forms.ChoiceField(label=_("Language"), choices=settings.LANGUAGES)
    marketing_consent = forms.BooleanField(label=_("Send me offers and news by email"), required=False)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["first_name"].widget.attrs["autocomplete"] = "given-name"
        self.fields["last_name"].widget.attrs["autocomplete"] = "family-name"
        self.fields["email"].widget.attrs["autocomplete"] = "email"

    def clean_email(self):
        email = email_normalise(self.cleaned_data["email"])
        if user_for_email(email) is not None:
            raise forms.ValidationError(
                _("An account with this email address exists already. Log in or reset your password.")
            )
        return email

    def clean_referral_code(self):
        code = self.cleaned_data["referral_code"].strip().upper()
        if code and not Customer.objects.filter(referral_code=code).exists():
            raise forms.ValidationError(_("We do not know this referral code. Please check it."))
        return code

    def clean(self):
        data = super().clean()
        p1, p2 = data.get("password1"), data.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords differ."))
        elif p1:
            from accounts.models import User

            probe = User(
                username=data.get("email") or "",
                email=data.get("email") or "",
                first_name=data.get("first_name") or "",
                last_name=data.get("last_name") or "",
            )
            try:
                password_validation.validate_password(p1, probe)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return data
