"""Bounce messages (RFC 3464 delivery status notifications).

A DSN goes to the original envelope sender, from ``MAILER-DAEMON@<SMTP_HOSTNAME>``
with a null reverse-path, as ``multipart/report; report-type=delivery-status``:
a human-readable part, the ``message/delivery-status`` part (one block per
failed recipient, with the upstream's reply), and the original headers
(``text/rfc822-headers``). It is queued like any message and never bounced
itself: a DSN's envelope sender is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

HEADER_LIMIT = 64 * 1024  # of the original message's headers, in the DSN


@dataclass(frozen=True, slots=True)
class Failure:
    address: str
    expired: bool
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # the upstream's reply, or what went wrong
    upstream: str
    last_attempt: datetime


def status_code(enhanced: str, code: int | None, expired: bool) -> str:
    """The Status: field: the upstream's enhanced code if it gave a permanent one."""
    if expired:
        return "4.4.7"  # delivery time expired
    if enhanced.startswith("5."):
        return enhanced
    return "5.0.0" if code is None or code >= 500 else "5.4.7"


def _fields(*fields: tuple[str, str]) -> EmailMessage:
    block = EmailMessage(policy=SMTP)
    for name, value in fields:
        block[name] = value
    return block


def build_dsn(
    *, original: bytes, queue_id: str, sender: str, arrival: datetime, failures: list[Failure], hostname: str
) -> bytes:
    """The DSN for ``failures`` of the message ``original`` (queued as ``queue_id``)."""
    report = EmailMessage(policy=SMTP)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(datetime.now().astimezone())
    report["Message-ID"] = make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: never answered automatically
    lines = [
        f"This is the mail system at {hostname}.",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    for failure in failures:
        reason = "it could not be delivered in time" if failure.expired else failure.diagnostic
        lines.append(f"<{failure.address}>: {reason}")
    report.set_content("\n".join(lines) + "\n")
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    # message/delivery-status: blocks of fields, the first for the message and
    # one per recipient (the stdlib writes each block as a header section).
    per_message = _fields(
        ("Reporting-MTA", f"dns; {hostname}"), ("X-Queue-ID", queue_id), ("Arrival-Date", format_datetime(arrival))
    )
    blocks = [per_message]
    for failure in failures:
        fields = [("Final-Recipient", f"rfc822; {failure.address}"), ("Action", "failed"), ("Status", failure.status)]
        if failure.upstream:
            fields.append(("Remote-MTA", f"dns; {failure.upstream.rsplit(':', 1)[0]}"))
        if failure.diagnostic:
            fields.append(("Diagnostic-Code", f"smtp; {failure.diagnostic}"))
        fields.append(("Last-Attempt-Date", format_datetime(failure.last_attempt)))
        blocks.append(_fields(*fields))
    status = EmailMessage(policy=SMTP)
    status.set_type("message/delivery-status")
    status.set_payload(blocks)  # type: ignore[arg-type]  # typeshed: a list of Message[str, str] only
    report.attach(status)

    headers = EmailMessage(policy=SMTP)
    headers.set_type("text/rfc822-headers")
    end = original.find(b"\r\n\r\n", 0, HEADER_LIMIT)
    header_block = original[: end + 2] if end >= 0 else original[:HEADER_LIMIT]
    headers.set_payload(header_block.decode("utf-8", "replace"))
    report.attach(headers)
    return report.as_bytes()
