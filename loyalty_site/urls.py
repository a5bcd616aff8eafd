"""The site's URLs: each app contributes its own; this module wires them together."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views
from .health import healthz

admin.site.site_header = _("Loyalty program administration")
admin.site.site_title = _("Loyalty admin")
admin.site.index_title = _("Run the program")

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("i18n/", include("django.conf.urls.i18n")),
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


if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
