from django import forms
from django.utils.translation import gettext_lazy as _


class SurveyAnswerForm(forms.Form):
    """One score on the survey's scale (radio buttons) and an optional comment."""

    score = forms.TypedChoiceField(coerce=int, widget=forms.RadioSelect, label=_("Your answer"))
    comment = forms.CharField(
        label=_("Anything you want to tell us? (optional)"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 4}),
    )

    def __init__(self, *args, survey, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["score"].choices = [(n, str(n)) for n in survey.scale]
