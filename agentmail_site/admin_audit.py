"""The admin's history for actions: Django writes a LogEntry for what its own
forms change, not for actions, which run as one UPDATE. These write one entry
per object an action changed, saying what changed, so "Recent actions" and each
object's History show who revoked a key or disabled an inbox, and when."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.http import HttpRequest


def log_action_changes(request: HttpRequest, changes: Iterable[tuple[Model, str]]) -> int:
    """One CHANGE entry per ``(object, what changed)``, in one INSERT."""
    user_id = request.user.pk
    assert user_id is not None, "actions run for a logged-in operator"
    entries = [
        LogEntry(
            user_id=user_id,
            content_type_id=ContentType.objects.get_for_model(obj, for_concrete_model=False).pk,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            action_flag=CHANGE,
            change_message=message,
        )
        for obj, message in changes
    ]
    LogEntry.objects.bulk_create(entries)
    return len(entries)
