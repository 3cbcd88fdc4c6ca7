"""What one SMTP session left behind, found from either end: the successful AUTH
that a message was submitted under, and the messages a session submitted.

Neither table has an index on ``session_id`` (each would cost every AUTH or
message a write, see AuthAttempt), so both reads also give the inbox and a time
window, which are indexed: a session's AUTH comes before its messages, and a
session lasts as long as its client keeps sending (the idle timeout ends it
otherwise). Sessions longer than SESSION_WINDOW are not followed past it."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import QuerySet

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason

SESSION_WINDOW = timedelta(days=1)


def submitting_attempt(message: Message) -> AuthAttempt | None:
    """The successful AUTH of the session that submitted ``message``."""
    if not message.session_id:
        return None
    return (
        AuthAttempt.objects.filter(
            inbox_id=message.inbox_id,
            session_id=message.session_id,
            reason=Reason.OK,
            created_at__range=(message.created_at - SESSION_WINDOW, message.created_at),
        )
        .select_related("api_key")
        .order_by("-created_at")
        .first()
    )


def session_messages(attempt: AuthAttempt) -> QuerySet[Message]:
    """The messages submitted in ``attempt``'s session after it (none after a failure)."""
    if attempt.reason != Reason.OK or attempt.inbox_id is None:
        return Message.objects.none()
    return Message.objects.filter(
        inbox_id=attempt.inbox_id,
        session_id=attempt.session_id,
        created_at__range=(attempt.created_at, attempt.created_at + SESSION_WINDOW),
    ).defer("raw")
