"""Links between the admin's records: a key to its attempts, an inbox to its
messages, a message to the AUTH that submitted it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.db.models import Model
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString


def changelist_url(model: type[Model], **filters: Any) -> str:
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def change_url(obj: Model) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def link(url: str, text: object) -> SafeString:
    return format_html('<a href="{}">{}</a>', url, text)


def link_to(obj: Model | None, text: object = None) -> SafeString | str:
    """A link to ``obj``'s page, or "-" when there is none."""
    if obj is None:
        return "-"
    return link(change_url(obj), obj if text is None else text)
