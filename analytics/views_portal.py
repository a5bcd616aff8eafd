"""The member-facing survey page: /surveys/<token>/ (see urls_portal.py).

The token is signed (services.survey_token_make): it names the survey and, in a link sent
in a message, the member it was sent to; the page then answers only for that member when
signed in. One answer per member and survey."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from accounts.decorators import customer_required

from . import services
from .forms import SurveyAnswerForm
from .models import Survey, SurveyResponse


@customer_required
def survey_answer(request, token: str):
    try:
        survey_id, customer_id = services.survey_token_read(token)
    except services.SurveyError as exc:
        return render(request, "analytics/survey_answer.html", {"problem": str(exc)}, status=404)
    survey = get_object_or_404(Survey, pk=survey_id)
    customer = request.customer
    if customer_id is not None and customer_id != customer.pk:
        problem = _("This survey link was sent to another member. Sign in as that member to answer it.")
        return render(request, "analytics/survey_answer.html", {"problem": problem}, status=403)
    context = {"survey": survey, "question": survey.question_in(get_language()), "token": token}
    answer = SurveyResponse.objects.filter(survey=survey, customer=customer).first()
    if answer is not None:
        return render(request, "analytics/survey_answer.html", {**context, "answer": answer})
    if not survey.is_active:
        return render(
            request, "analytics/survey_answer.html", {**context, "problem": _("This survey is closed.")}
        )
    form = SurveyAnswerForm(request.POST or None, survey=survey)
    if request.method == "POST" and form.is_valid():
        try:
            services.survey_answer(
                survey=survey,
                customer=customer,
                score=form.cleaned_data["score"],
                comment=form.cleaned_data["comment"],
            )
        except services.SurveyError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Thank you for your answer!"))
            return redirect("survey-answer", token=token)
    return render(request, "analytics/survey_answer.html", {**context, "form": form})
