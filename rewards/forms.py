"""Forms of the staff admin: translated names, points corrections, the earnings preview."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

from django import forms
from django.conf import settings
from django.core.validators import RegexValidator
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _

from . import rules
from .models import Reward, Tier


def translated_languages() -> list[tuple[str, str]]:
    """(code, name) of every configured language but the default one, which the plain fields hold."""
    return [(code, name) for code, name in settings.LANGUAGES if code != settings.LANGUAGE_CODE]


def _per_language(label, language_name) -> str:
    """A label such as "Name (Danish)", translated when shown, not when this module is imported."""
    return lazy(lambda: str(label) % {"language": language_name}, str)()


# --- Translations as one field per language --------------------------------------------
#
# The models keep translations in a JSON field; staff get one text box per language
# instead of hand-written JSON. Keys of languages no longer configured are kept.


def _tier_name_field(code: str) -> str:
    return f"name_{code}"


class _TierAdminFormBase(forms.ModelForm):
    class Meta:
        model = Tier
        fields = ["code", "name", "min_qualifying_spend", "multiplier"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for code, _name in translated_languages():
            self.fields[_tier_name_field(code)].initial = (self.instance.name_translations or {}).get(
                code, ""
            )

    def save(self, commit=True):
        translations = dict(self.instance.name_translations or {})
        for code, _name in translated_languages():
            value = self.cleaned_data.get(_tier_name_field(code), "").strip()
            if value:
                translations[code] = value
            else:
                translations.pop(code, None)
        self.instance.name_translations = translations
        return super().save(commit)


TierAdminForm = type(
    "TierAdminForm",
    (_TierAdminFormBase,),
    {
        "__module__": __name__,
        **{
            _tier_name_field(code): forms.CharField(
                label=_per_language(_("Name (%(language)s)"), name), max_length=64, required=False
            )
            for code, name in translated_languages()
        },
    },
)


class _RewardAdminFormBase(forms.ModelForm):
    class Meta:
        model = Reward
        fields = [
            "name",
            "description",
            "image",
            "cost_points",
            "active_from",
            "active_until",
            "stock",
            "per_customer_limit",
            "min_tier",
            "validity_days",
            "is_active",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for code, _name in translated_languages():
            current = (self.instance.translations or {}).get(code) or {}
            self.fields[f"name_{code}"].initial = current.get("name", "")
            self.fields[f"description_{code}"].initial = current.get("description", "")

    def save(self, commit=True):
        translations = dict(self.instance.translations or {})
        for code, _name in translated_languages():
            values = {
                key: self.cleaned_data.get(f"{key}_{code}", "").strip() for key in ("name", "description")
            }
            values = {key: value for key, value in values.items() if value}
            if values:
                translations[code] = values
            else:
                translations.pop(code, None)
        self.instance.translations = translations
        return super().save(commit)


def _reward_translation_fields() -> dict:
    fields = {}
    for code, name in translated_languages():
        fields[f"name_{code}"] = forms.CharField(
            label=_per_language(_("Name (%(language)s)"), name), max_length=120, required=False
        )
        fields[f"description_{code}"] = forms.CharField(
            label=_per_language(_("Description (%(language)s)"), name),
            required=False,
            widget=forms.Textarea(attrs={"rows": 3}),
        )
    return fields


RewardAdminForm = type(
    "RewardAdminForm", (_RewardAdminFormBase,), {"__module__": __name__, **_reward_translation_fields()}
)


# --- Staff corrections -------------------------------------------------------------------


class PointsAdjustForm(forms.Form):
    """A correction of a member's balance. The hidden key makes a double submit adjust once."""

    points = forms.IntegerField(
        label=_("Points"),
        help_text=_("Positive to add points, negative to take points away."),
        min_value=-1_000_000,
        max_value=1_000_000,
    )
    reason = forms.CharField(
        label=_("Reason"),
        help_text=_("Shown to the member in their points history."),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
    )
    idempotency_key = forms.CharField(
        widget=forms.HiddenInput,
        validators=[RegexValidator(r"^[0-9a-f]{32}$", _("This form has expired; reload the page."))],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("idempotency_key", uuid.uuid4().hex)

    def clean_points(self) -> int:
        points = self.cleaned_data["points"]
        if points == 0:
            raise forms.ValidationError(
                _("An adjustment must change the balance: enter a number other than 0.")
            )
        return points

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."))
        return reason


# --- The earnings preview ----------------------------------------------------------------


class EarningsPreviewForm(forms.Form):
    """A purchase to try the earn rules on; nothing is recorded."""

    customer = forms.CharField(
        label=_("Customer number"),
        required=False,
        max_length=64,
        help_text=_("Optional. Empty: a new member at the lowest tier."),
    )
    amount = forms.DecimalField(
        label=_("Amount"), min_value=Decimal("0"), max_digits=12, decimal_places=2, localize=False
    )
    lines = forms.CharField(
        label=_("Lines"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "cols": 40, "placeholder": "coffee 45\npastry 32"}),
        help_text=_('Optional. One line per item: "category amount", e.g. "coffee-beans 120".'),
    )
    at = forms.DateTimeField(
        label=_("When"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=_("Optional. Empty: now. Promotions in force at that time apply."),
    )

    def clean_lines(self) -> list[rules.Line]:
        parsed = []
        for number, raw in enumerate(self.cleaned_data.get("lines", "").splitlines(), start=1):
            text = raw.strip()
            if not text:
                continue
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise forms.ValidationError(
                    _('Line %(number)s: expected "category amount", got "%(text)s".'),
                    params={"number": number, "text": text},
                )
            category, amount_text = parts
            try:
                amount = Decimal(amount_text.replace(",", "."))
            except InvalidOperation:
                amount = None
            if amount is None or not amount.is_finite() or amount < 0:
                raise forms.ValidationError(
                    _('Line %(number)s: "%(amount)s" is not an amount.'),
                    params={"number": number, "amount": amount_text},
                )
            parsed.append(rules.Line(category.strip(), rules.money(amount)))
        return parsed
