"""/api/v1/ routes of the loyalty core."""

from django.urls import path

from . import api

urlpatterns = [
    path("purchases", api.PurchaseCreateView.as_view(), name="api-purchase-create"),
    path("purchases/batch", api.PurchaseBatchView.as_view(), name="api-purchase-batch"),
    path("purchases/<str:external_id>/refunds", api.RefundCreateView.as_view(), name="api-refund-create"),
    path("customers/<str:external_ref>", api.CustomerDetailView.as_view(), name="api-customer"),
    path("customers/<str:external_ref>/ledger", api.CustomerLedgerView.as_view(), name="api-customer-ledger"),
    path("customers/<str:external_ref>/enroll", api.CustomerEnrollView.as_view(), name="api-customer-enroll"),
    path(
        "customers/<str:external_ref>/redemptions",
        api.RedemptionCreateView.as_view(),
        name="api-redemption-create",
    ),
    path("rewards", api.RewardListView.as_view(), name="api-reward-list"),
    path("vouchers/<str:code>/use", api.VoucherUseView.as_view(), name="api-voucher-use"),
    path(
        "redemptions/<int:redemption_id>/cancel",
        api.RedemptionCancelView.as_view(),
        name="api-redemption-cancel",
    ),
    path("events", api.EventCreateView.as_view(), name="api-event-create"),
    path("preview", api.PreviewView.as_view(), name="api-preview"),
]
