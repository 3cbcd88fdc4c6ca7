"""URL routes: the operator's admin is the only web UI."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from smtpgateway.admin_views import overview

admin.site.site_header = "agentmail-smtp"
admin.site.site_title = "agentmail-smtp admin"
admin.site.index_title = "Gateway administration"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before the admin's own routes, under its login: staff only.
    path("admin/overview/", admin.site.admin_view(overview), name="admin-overview"),
    path("admin/", admin.site.urls),
]
