from django.urls import path

from . import views

urlpatterns = [
    path("join/", views.signup, name="signup"),
    path("confirm/<str:token>/", views.confirm_email, name="confirm-email"),
    path("me/", views.home, name="portal-home"),
    path("me/pending/", views.pending, name="portal-pending"),
    path("me/enroll/", views.join, name="portal-join"),
    path("me/history/", views.history, name="portal-history"),
    path("me/rewards/", views.catalog, name="portal-catalog"),
    path("me/rewards/<int:reward_id>/", views.reward_detail, name="portal-reward"),
    path("me/vouchers/", views.vouchers, name="portal-vouchers"),
    path("me/vouchers/<str:code>/", views.voucher, name="portal-voucher"),
    path("me/referral/", views.referral, name="portal-referral"),
]
