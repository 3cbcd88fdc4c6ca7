"""Accepting a message: the author check, the trace header, the parsed summary,
the row to store and its recipients.

:func:`message_row` checks and builds the row; ``smtpgateway.storage.commits`` stores it (with
``smtpgateway.storage.message_inserts``) in a transaction that has committed before the server
answers ``250``.
"""

from __future__ import annotations

import re
import secrets
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import format_datetime
from typing import Any

from django.utils import timezone

from inboxes.models import Message
from smtpgateway.safetext import CONTROL_OR_UNDECODABLE
from smtpgateway.storage.jobs import AuthorRefused, Submission
from smtpgateway.storage.message_inserts import NewMessage

_HEADER_LIMIT = 998  # RFC 5322 line length; longer values are cut for display


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, with each header class made once.

    ``HeaderRegistry`` builds a new class on every lookup, so every header read
    cost a class creation, and left a reference cycle (a class and its MRO) for the
    garbage collector. Made per kind of header (about 20), not per name, so that a client
    inventing header names cannot grow this."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type[BaseHeader]] = {}
        # Shown, not interpreted: read as plain text. The stdlib's msg-id parser
        # takes quadratic time on crafted values: a long run of backslashes in
        # one Message-ID held the committer (and the GIL) for minutes.
        self.map_to_type("message-id", UnstructuredHeader)  # type: ignore[arg-type]  # typeshed: a BaseHeader subclass; the registry takes any

    def __call__(self, name: str, value: str) -> BaseHeader:
        # Only the first _HEADER_LIMIT characters are kept, so no more is parsed
        # (room for encoded words, which decode shorter): a crafted Subject of
        # encoded words took seconds to parse whole.
        return super().__call__(name, value[: 2 * _HEADER_LIMIT])

    def __getitem__(self, name: str) -> type[BaseHeader]:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:  # two threads racing here each make a correct class
            made = self._made[kind] = type("_" + kind.__name__, (kind, self.base_class), {})
        return made


_POLICY = default_policy.clone(header_factory=_HeaderClasses())
_header_parser = BytesHeaderParser(policy=_POLICY)


def new_queue_id() -> str:
    return secrets.token_hex(8).upper()


def received_header(submission: Submission, queue_id: str) -> bytes:
    """The trace header RFC 5321 section 4.4 asks a receiving server to prepend."""
    # The client's HELO name: a line break would start a header of its own.
    helo = CONTROL_OR_UNDECODABLE.sub("?", submission.helo_name)[:255]
    lines = [
        f"Received: from {helo} ([{submission.remote_addr or 'unknown'}])",
        f"\tby {submission.hostname} (agentmail-smtp) with {submission.protocol} id {queue_id}",
    ]
    if submission.tls_note:
        lines.append(f"\t{submission.tls_note}")
    # Name the recipient only when there is one, as Postfix does: listing all
    # would disclose Bcc recipients to each other.
    target = f"for <{submission.rcpt_tos[0]}>" if len(submission.rcpt_tos) == 1 else ""
    lines.append(f"\t{target}; {format_datetime(timezone.now())}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", errors="surrogateescape")


_HEADER_BLOCK_LIMIT = 256 * 1024


def read_headers(content: bytes | bytearray) -> EmailMessage | None:
    """The header block, parsed with the stdlib (None if it cannot be). Only the
    header block is parsed (the parser would otherwise decode the whole message
    into a string: tens of megabytes for a large one)."""
    end = content.find(b"\r\n\r\n", 0, _HEADER_BLOCK_LIMIT)
    header_block = content[: end + 4] if end >= 0 else content[:_HEADER_BLOCK_LIMIT]
    try:
        return _header_parser.parsebytes(header_block)
    except Exception:
        return None


def summarize(content: bytes | bytearray) -> tuple[str, str]:
    """Message-ID and Subject; unparsable headers give ''."""
    return summary(read_headers(content))


def summary(headers: EmailMessage | None) -> tuple[str, str]:
    if headers is None:
        return "", ""
    try:
        message_id = str(headers.get("Message-ID", "") or "").strip()
        subject = str(headers.get("Subject", "") or "").strip()
    except Exception:  # a malformed header must not lose an otherwise fine message
        return "", ""
    return _storable(message_id[:_HEADER_LIMIT]), _storable(subject[:_HEADER_LIMIT])


def author_problem(headers: EmailMessage | None, inbox_email: str) -> str | None:
    """The header that does not name the inbox as the author, or None. ``From:``
    must be exactly one mailbox, the inbox's address (display name free, domain
    compared without case); a ``Sender:`` may only name the same address. So a
    key for one inbox cannot put another's name on a message (AgentMail checks
    the same). Unparsable headers fail the check: nothing shows who wrote it."""
    if headers is None:
        return "From"
    try:
        authors: list[str] = []
        senders: list[str] = []
        for name, value in headers.raw_items():  # one pass, values unparsed
            lowered = name.lower()
            if lowered == "from":
                authors.append(value)
            elif lowered == "sender":
                senders.append(value)
        if len(authors) != 1 or not _names_only(authors[0], inbox_email):
            return "From"
        if senders and (len(senders) != 1 or not _names_only(senders[0], inbox_email)):
            return "Sender"
    except Exception:  # a header the parser cannot read
        return "From"
    return None


# The forms nearly every client writes, ``addr`` and ``Display Name <addr>``,
# read with a regular expression; anything else (comments, groups, encoded
# words, folding, quoted pairs, obsolete syntax) goes to the stdlib's parser.
# The stdlib's address parser cost a third of the committer's time per message
# (docs/performance.md); the two agree on every header the expression matches
# (tests/unit/test_author.py checks that by generating headers).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL, _DOMAIN = rf"{_ATEXT}+(?:\.{_ATEXT}+)*", r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# A display name of atoms without "." (an obsolete form, a defect to the stdlib)
# or one quoted string of printable ASCII without quoted pairs.
_DISPLAY_NAME = r"""(?:[A-Za-z0-9!#$%&'*+/^_`{|}~ \t-]*|"[ !#-\[\]-~]+")"""
_PLAIN_MAILBOX = re.compile(
    rf"(?:(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})"
    rf"|{_DISPLAY_NAME}[ \t]*<(?P<angle_local>{_LOCAL})@(?P<angle_domain>{_DOMAIN})>)[ \t]*"
)


def _names_only(raw_value: str, inbox_email: str) -> bool:
    """Whether an address header's value is one mailbox, outside any group, equal to ``inbox_email``."""
    plain = _PLAIN_MAILBOX.fullmatch(raw_value) if "=?" not in raw_value else None
    if plain is not None:
        local, domain = plain["local"] or plain["angle_local"], plain["domain"] or plain["angle_domain"]
        return _is_inbox(local, domain, inbox_email)
    return _parsed_names_only(raw_value, inbox_email)


def _parsed_names_only(raw_value: str, inbox_email: str) -> bool:
    """``_names_only`` by the stdlib's parser."""
    header: Any = _POLICY.header_fetch_parse("From", raw_value)
    groups = getattr(header, "groups", None)
    if not groups or len(groups) != 1 or groups[0].display_name is not None or header.defects:
        return False
    addresses = groups[0].addresses
    if len(addresses) != 1:
        return False
    return _is_inbox(addresses[0].username, addresses[0].domain, inbox_email)


def _is_inbox(local: str, domain: str, inbox_email: str) -> bool:
    inbox_local, _, inbox_domain = inbox_email.rpartition("@")
    return local == inbox_local and domain.lower() == inbox_domain.lower()


def _storable(text: str) -> str:
    """A header value as a text column can hold it: PostgreSQL refuses NUL (sent
    as is or RFC 2047-encoded), and retrying would never help. Shown as U+FFFD,
    like undecodable bytes; ``raw`` keeps the bytes as sent."""
    return text.replace("\x00", "\ufffd")


def message_row(submission: Submission) -> NewMessage | AuthorRefused:
    """The Message to store for ``submission`` (not saved; its queue_id is new),
    or why it is refused. ``raw`` is written by
    ``smtpgateway.storage.message_inserts``, from the header and the body as they
    are, so that a large body is not copied to be joined."""
    headers = read_headers(submission.content)
    problem = author_problem(headers, submission.author)
    if problem is not None:
        return AuthorRefused(problem)
    queue_id = new_queue_id()
    message_id, subject = summary(headers)
    row = Message(
        queue_id=queue_id,
        inbox_id=submission.inbox_pk,
        envelope_from=submission.mail_from,
        envelope_to=list(submission.rcpt_tos),
        size=len(submission.content),
        message_id=message_id,
        subject=subject,
        session_id=submission.session_id,
    )
    return NewMessage(row, received_header(submission, queue_id), submission.content, submission.organization_pk)
