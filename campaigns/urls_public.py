from django.urls import path

from . import views

urlpatterns = [
    path("c/<str:signed>/", views.click, name="campaign-click"),
    path("unsubscribe/<str:token>/", views.unsubscribe, name="campaign-unsubscribe"),
]
