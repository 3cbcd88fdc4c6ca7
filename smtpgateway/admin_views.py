"""The admin's overview page (``/admin/overview/``, staff only): the last 24
hours at a glance. The reads are ``smtpgateway.overview``; the charts are drawn
here, as SVG (``smtpgateway.svgchart``)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.safestring import mark_safe

from smtpgateway.overview import OUTCOMES, Hour, read_overview
from smtpgateway.svgchart import Series, stacked_bars

AUTH_SERIES = [Series(name, color) for name, color in zip(OUTCOMES, ("#417690", "#ba2121", "#e0a030"), strict=True)]
MESSAGE_SERIES = [Series("messages", "#417690")]


def _labels(hours: list[Hour]) -> list[str]:
    return [f"{hour.start:%H}:00" for hour in hours]


def overview(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    data = read_overview(now)
    auth_chart = stacked_bars(
        "AUTH attempts per hour, last 24 hours (UTC), by outcome",
        _labels(data.auth_hours),
        AUTH_SERIES,
        [[hour.counts[name] for name in OUTCOMES] for hour in data.auth_hours],
    )
    message_chart = stacked_bars(
        "Messages accepted per hour, last 24 hours (UTC)",
        _labels(data.message_hours),
        MESSAGE_SERIES,
        [[hour.total] for hour in data.message_hours],
    )
    context = {
        **admin.site.each_context(request),
        "title": "Overview",
        "now": now,
        "overview": data,
        # Markup built by stacked_bars, which escapes every text it puts in.
        "auth_chart": mark_safe(auth_chart),  # noqa: S308
        "message_chart": mark_safe(message_chart),  # noqa: S308
    }
    return TemplateResponse(request, "admin/overview.html", context)
