"""Member-facing analytics pages, included at /surveys/."""

from django.urls import path

from . import views_portal

urlpatterns = [
    path("<str:token>/", views_portal.survey_answer, name="survey-answer"),
]
