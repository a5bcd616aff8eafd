from django.urls import path

from . import views

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("<int:message_id>/", views.inbox_message, name="inbox-message"),
]
