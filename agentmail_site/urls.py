"""URL routes: the operator's admin is the only web UI."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

admin.site.site_header = "agentmail-smtp"
admin.site.site_title = "agentmail-smtp admin"
admin.site.index_title = "Gateway administration"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
]
