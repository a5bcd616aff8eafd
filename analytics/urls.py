"""Staff analytics pages, included at /staff/analytics/."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.overview, name="analytics-overview"),
    path("cohorts/", views.cohorts, name="analytics-cohorts"),
    path("effect/", views.effect, name="analytics-effect"),
    path("customers/", views.customers, name="analytics-customers"),
    path("csv/<slug:table>.csv", views.csv_download, name="analytics-csv"),
]
