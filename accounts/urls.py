from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "password-reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("password-reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("confirmation/resend/", views.confirmation_resend, name="confirmation-resend"),
    path("profile/", views.profile, name="profile"),
    path("profile/consent/withdraw/", views.consent_withdraw, name="consent-withdraw"),
    path("profile/close/", views.closure_request, name="closure-request"),
]
