"""Admin lists that answer a malformed filter in their URL like any other bad
filter, with Django's "invalid lookup" redirect (``?e=1``), not a server error.

Django's admin takes any lookup on a model's own fields from the query string
(``?remote_addr=...``, ``?username__regex=...``) and builds the query from it.
Three kinds of value pass that step and then fail inside the database driver,
which Django's admin does not catch, so the page was a 500 on PostgreSQL:

* a NUL character (PostgreSQL text cannot hold one; no stored value has one);
* a value that is not an IP address, for the ``inet`` column ``remote_addr``;
* a regular expression PostgreSQL cannot compile. Regex lookups are refused
  outright (a 400): none of our filters uses one, and a pathological pattern
  would run over every row of a table with millions.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import NotRelationField, get_fields_from_path
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.validators import validate_ipv46_address
from django.db.models import GenericIPAddressField, Model
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest

REFUSED_LOOKUPS = frozenset({"regex", "iregex"})
# Lookups on an IP address column that compare text, so any text is valid.
_TEXT_LOOKUPS = frozenset({"contains", "icontains", "startswith", "istartswith", "endswith", "iendswith", "isnull"})


class CheckedChangeList(ChangeList):
    def get_filters_params(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        lookup_params = super().get_filters_params(params)
        for lookup, given in lookup_params.items():
            values = given if isinstance(given, list) else [given]
            if any("\x00" in value for value in values):
                raise IncorrectLookupParameters(f"{lookup}: a NUL character")
            if _compares_ip_addresses(self.model, lookup):
                try:
                    for value in values:
                        for address in value.split(","):  # "__in" takes a comma-separated list
                            validate_ipv46_address(address)
                except ValidationError:
                    raise IncorrectLookupParameters(f"{lookup}: not an IP address") from None
        return lookup_params


_M = TypeVar("_M", bound=Model)


class CheckedLookupsAdmin(admin.ModelAdmin[_M]):
    """The base of this project's model admins."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CheckedChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        if lookup.rsplit(LOOKUP_SEP, 1)[-1] in REFUSED_LOOKUPS:
            return False
        return super().lookup_allowed(lookup, value, request)


def _compares_ip_addresses(model: type, lookup: str) -> bool:
    """Whether ``lookup`` (``remote_addr``, ``remote_addr__in``) compares an IP
    address column with addresses rather than with text."""
    parts = lookup.split(LOOKUP_SEP)
    for length in range(len(parts), 0, -1):
        try:
            field = get_fields_from_path(model, LOOKUP_SEP.join(parts[:length]))[-1]
        except (FieldDoesNotExist, NotRelationField):
            continue
        transforms = parts[length:]
        return isinstance(field, GenericIPAddressField) and not (transforms and transforms[-1] in _TEXT_LOOKUPS)
    return False
