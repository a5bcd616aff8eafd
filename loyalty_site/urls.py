"""The site's URLs: each app contributes its own; this module wires them together."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import views as account_views

from . import staff, views
from .health import healthz

admin.site.site_header = _("Loyalty program administration")
admin.site.site_title = _("Loyalty admin")
admin.site.index_title = _("Run the program")

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    # Browsers ask for /favicon.ico whatever the page says.
    path("favicon.ico", views.favicon),
    # The language switcher also saves a signed-in member's choice in their profile.
    path("i18n/setlang/", account_views.language_set, name="set_language"),
    path("account/", include("accounts.urls")),
    path("me/profile/data.json", views.my_data, name="my-data"),
    path("me/inbox/", include("campaigns.urls_portal")),
    path("m/", include("campaigns.urls_public")),
    path("surveys/", include("analytics.urls_portal")),
    path("", include("rewards.portal.urls")),
    path("staff/analytics/", include("analytics.urls")),
    # Staff two-factor sign-in: enrol an authenticator, enter a code (accounts/two_factor.py).
    path("admin/2fa/", include("accounts.two_factor")),
    # The staff panel's own pages (loyalty_site/staff.py), under /admin/ so that the admin's
    # login and the two-factor middleware guard them; before admin.site.urls, which would 404.
    path("admin/today/", staff.dashboard, name="staff-dashboard"),
    path("admin/customer/<int:customer_id>/360/", staff.customer_360, name="staff-customer-360"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("rewards.urls_api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]


def handler404(request, exception=None):
    """JSON for unknown API URLs, the normal page otherwise."""
    if request.path.startswith("/api/"):
        from rewards.api_errors import api_not_found

        return api_not_found(request, exception)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler400(request, exception=None):
    """JSON for API requests Django refuses before their view, the normal page otherwise."""
    if request.path.startswith("/api/"):
        from rewards.api_errors import api_bad_request

        return api_bad_request(request, exception)
    from django.views.defaults import bad_request

    return bad_request(request, exception)


# A database outage that breaks a request before its view (loading a session) gets the calm
# 503 page too; any other error keeps Django's 500 page.
handler500 = "loyalty_site.outages.server_error"


if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
