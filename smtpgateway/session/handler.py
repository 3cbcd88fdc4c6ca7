"""The handler every session of a server shares: the mail transaction's rules
(MAIL, RCPT, DATA: aiosmtpd's hooks) and the server's shared state.

No ORM: a message goes to the database threads as a ``StoreJob``, and the
``250`` is said only after its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from smtpgateway.auth.limits import Client, ConnectionRegistry
from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import GatewayMetrics
from smtpgateway.session import replies
from smtpgateway.session.body import BodyBudget, inbox_share
from smtpgateway.session.host import DatabaseJobs, LiveSession
from smtpgateway.session.protocol import GatewaySMTP
from smtpgateway.session.state import GatewayEnvelope, GatewaySession
from smtpgateway.storage.jobs import NOT_STORED, AuthorRefused, Held, HoldJob, LimitReached, StoreJob, Submission

log = logging.getLogger("smtpgateway.server")


class GatewayHandler:
    """aiosmtpd's handler: the hooks for MAIL, RCPT and DATA, and what every
    session consults (a :class:`~smtpgateway.session.host.SessionHost`). No
    per-session state."""

    def __init__(self, config: GatewayConfig, db: DatabaseJobs, metrics: GatewayMetrics) -> None:
        self.config = config
        self.db = db
        self.metrics = metrics
        self.connections = ConnectionRegistry(config.max_connections, config.max_connections_per_ip)
        self.body_budget = BodyBudget(
            config.max_buffered_data, inbox_share(config.max_buffered_data, config.max_message_size)
        )
        self.sessions: set[LiveSession] = set()
        self.shutting_down = False
        # aiosmtpd's hook table ("MAIL" -> handle_MAIL), built once, not per connection.
        self.hooks: dict[str, Callable[..., Awaitable[str]]] = {
            name[7:]: getattr(self, name)
            for name in dir(self)
            if name.startswith("handle_") and name != "handle_exception"
        }

    def admission_refusal(self, client: Client) -> str | None:
        """The reply that refuses a new connection, or None to admit it."""
        if self.shutting_down:
            self.metrics.connections_refused["shutting_down"].pending += 1
            return replies.SHUTTING_DOWN
        if not self.connections.admit(client):
            self.metrics.connections_refused[self.connections.refused_by()].pending += 1
            return replies.TOO_MANY_CONNECTIONS
        self.metrics.sessions.pending += 1
        return None

    async def handle_MAIL(
        self,
        server: GatewaySMTP,
        session: GatewaySession,
        envelope: GatewayEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        identity = session.identity
        assert identity is not None  # check_auth_needed ran first
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.UNDECLARED_SMTPUTF8
        # Domains are case-insensitive; local parts too at every provider we know.
        if address.lower() != identity.email.lower():
            log.warning(
                "Sender rejected: %s may only send as %s (session %s)",
                identity.inbox_id,
                identity.email,
                session.session_id,
                extra=session.log_fields(),
            )
            self.metrics.messages_refused["sender_not_owned"].pending += 1
            return replies.SENDER_NOT_OWNED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: GatewaySession,
        envelope: GatewayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.UNDECLARED_SMTPUTF8
        # The parser takes a bare local part ("<postmaster>", "someone"), so that
        # this says what is wrong: a message for it could never be delivered.
        local_part, at, domain = address.rpartition("@")
        if not (local_part and at and domain):
            return replies.RECIPIENT_WITHOUT_DOMAIN
        # A repeated recipient is accepted and kept once, as Postfix's cleanup
        # does, so that nothing downstream delivers the message to it twice. Only
        # the domain is compared without regard to case (RFC 5321 2.4: a local
        # part may be case-sensitive).
        mailbox = f"{local_part}@{domain.lower()}"
        if mailbox in envelope.mailboxes:
            return replies.RECIPIENT_OK
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        refusal = await self._hold(session, envelope)
        if refusal is not None:
            return refusal
        envelope.mailboxes.add(mailbox)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def _hold(self, session: GatewaySession, envelope: GatewayEnvelope) -> str | None:
        """Room for one more recipient under the daily limits, held in the
        database; or the reply that refuses it. No limit: no database work."""
        identity = session.identity
        assert identity is not None
        if not (identity.inbox_recipient_limit or identity.organization_recipient_limit):
            return None
        result = await self.db.commit(
            HoldJob(
                identity.inbox_pk,
                identity.organization_id,
                identity.inbox_recipient_limit,
                identity.organization_recipient_limit,
                session.session_id,
                released=tuple(session.released_holds),
            )
        )
        session.released_holds.clear()
        if isinstance(result, Held):
            envelope.hold_ids.append(result.hold_id)
            return None
        if isinstance(result, LimitReached):
            log.warning(
                "Recipient refused: the daily limit of %d for its %s is reached (inbox %s, session %s)",
                result.limit,
                result.scope,
                identity.inbox_id,
                session.session_id,
                extra=session.log_fields() | {"reason": "DAILY_LIMIT"},
            )
            self.metrics.recipients_refused[f"daily_limit_{result.scope}"].pending += 1
            return replies.daily_limit_reached(result.scope, result.limit, result.retry_after)
        log.error(
            "Recipient not held: database unavailable (session %s); answered 451",
            session.session_id,
            extra=session.log_fields(),
        )
        self.metrics.recipients_refused["not_held"].pending += 1
        return replies.RECIPIENT_NOT_HELD

    async def handle_DATA(self, server: GatewaySMTP, session: GatewaySession, envelope: GatewayEnvelope) -> str:
        identity = session.identity
        assert identity is not None and envelope.mail_from is not None
        submission = Submission(
            inbox_pk=identity.inbox_pk,
            helo_name=session.host_name or "unknown",
            remote_addr=session.remote_addr,
            hostname=self.config.hostname,
            protocol="ESMTPSA" if session.tls else "ESMTPA",
            tls_note=session.tls.received_note() if session.tls else "",
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
            author=identity.email,
            session_id=session.session_id,
            hold_ids=tuple(envelope.hold_ids),
            organization_pk=identity.organization_id,
        )
        queue_id = await self.db.commit(StoreJob(submission))
        if queue_id is not NOT_STORED:
            envelope.hold_ids.clear()  # gone with that commit (stored or refused)
        if queue_id is NOT_STORED:  # the storage layer has logged why
            log.error("Message not stored (session %s); answered 451", session.session_id, extra=session.log_fields())
            self.metrics.messages_refused["not_stored"].pending += 1
            return replies.STORE_TEMPORARY_FAILURE
        if isinstance(queue_id, AuthorRefused):
            log.warning(
                "Message refused: its %s header does not name %s only (inbox %s, session %s)",
                queue_id.header,
                identity.email,
                identity.inbox_id,
                session.session_id,
                extra=session.log_fields(),
            )
            self.metrics.messages_refused["author_not_inbox"].pending += 1
            return replies.author_not_the_inbox(queue_id.header, identity.email)
        self.metrics.messages_accepted.pending += 1
        self.metrics.message_size.observe(len(submission.content))
        log.info(
            "Queued %s from %s: %d bytes, %d recipients (session %s)",
            queue_id,
            identity.inbox_id,
            len(submission.content),
            len(submission.rcpt_tos),
            session.session_id,
            extra=session.log_fields() | {"queue_id": queue_id},
        )
        return replies.QUEUED.format(queue_id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        # The traceback goes to our log; the client gets a generic reply.
        log.error("Unexpected error in an SMTP session", exc_info=error)
        return replies.INTERNAL_ERROR
