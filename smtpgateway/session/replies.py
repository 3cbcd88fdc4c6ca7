"""Every SMTP reply the gateway sends, each with its RFC 3463 enhanced status code.

aiosmtpd sends some replies of its own without an enhanced code (``250 OK``,
``503 Error: need MAIL command``, ``552 Error: Too much mail data`` ...). Rather
than re-implement every command, the server passes each reply through
:func:`with_enhanced_code`, which swaps the known ones for ours and gives any other
a code fitting its reply code. So this module is the one place reply texts live.

Not given an enhanced code, as RFC 2034 section 3 and RFC 3463 allow: the 220
greeting and the EHLO/HELO lines (RFC 2034 exempts them), and the intermediate
334 (AUTH challenge) and 354 (start mail input) replies, for which RFC 3463 defines
no class.
"""

from __future__ import annotations

import re

from smtpgateway.reasons import Reason

# --- Session ----------------------------------------------------------------------
# The greeting is "220 <hostname> <GREETING_TEXT>"; aiosmtpd composes it.
GREETING_TEXT = "ESMTP agentmail-smtp ready"
OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
LINE_TOO_LONG = "500 5.5.2 Line too long"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
GREETING_SYNTAX = "501 5.5.4 Syntax: {command} hostname"
# A reply that comes with closing the connection is a 421 (RFC 5321 3.8), so the
# client knows not to send more; aiosmtpd said 502 and closed. Postfix says 421 too.
TOO_MANY_UNRECOGNIZED = "421 4.7.0 Too many unrecognized commands, closing connection"
TIMEOUT = "421 4.4.2 {hostname} Error: timeout exceeded"
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_UNAUTHENTICATED_COMMANDS = "421 4.7.0 Too many commands without authentication"
# aiosmtpd echoed an argument that is no address ("502 Could not VRFY <arg>"):
# a bare CR in it broke the reply line, bytes that are not UTF-8 the reply.
VRFY_NOT_AN_ADDRESS = "502 5.1.3 Could not VRFY: not an address"


def unrecognized(command: str | None) -> str:
    """Echo the command word only when it is a plain word (never client bytes)."""
    return (
        f'500 5.5.2 Error: command "{command}" not recognized' if command else "500 5.5.2 Error: command not recognized"
    )


# --- TLS --------------------------------------------------------------------------
STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"
TLS_NOT_AVAILABLE = "454 4.7.0 TLS not available"
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS already active"

# --- AUTH -------------------------------------------------------------------------
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_INSUFFICIENT_PERMISSIONS = "535 5.7.8 Insufficient permissions"
AUTH_TEMPORARY_FAILURE = "454 4.7.0 Temporary authentication failure"
AUTH_BAD_BASE64 = "501 5.5.2 Can't decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Can't split auth value"
AUTH_ABORTED = "501 5.7.0 Auth aborted"
AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_UNSUPPORTED = "504 5.5.4 Unrecognized authentication type"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
AUTH_NEEDS_EHLO = "503 5.5.1 Error: send EHLO first"
AUTH_ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many authentication failures"
# RFC 4954 section 6: an AUTH command or response line over 12,288 octets.
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
AUTH_BAD_XOAUTH2 = "501 5.5.2 Can't read the XOAUTH2 response"
AUTH_BAD_OAUTHBEARER = "501 5.5.2 Can't read the OAUTHBEARER response"
# RFC 7628 section 3.1: OAUTHBEARER has no channel binding.
AUTH_NO_CHANNEL_BINDING = "501 5.5.4 Channel binding is not supported"


def auth_reply(reason: Reason) -> str:
    """The reply for a validated AUTH. Every failure reads the same, so the client
    cannot tell which check failed; only a missing scope is said, as specified."""
    if reason is Reason.OK:
        return AUTH_OK
    if reason is Reason.INSUFFICIENT_PERMISSIONS:
        return AUTH_INSUFFICIENT_PERMISSIONS
    if reason in (Reason.TEMPORARY_FAILURE, Reason.RATE_LIMITED):
        return AUTH_TEMPORARY_FAILURE
    return AUTH_INVALID


# --- Mail transaction ---------------------------------------------------------------
SENDER_OK = "250 2.1.0 Sender OK"
SENDER_NOT_OWNED = "553 5.7.1 Sender address not allowed for this inbox"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
RECIPIENT_WITHOUT_DOMAIN = "553 5.1.3 Recipient address must name a domain"
# RFC 6531 3.5: an address beyond ASCII needs SMTPUTF8 on MAIL (Postfix words it so).
UNDECLARED_SMTPUTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
RECIPIENT_NOT_HELD = "451 4.3.0 Temporary failure, recipient not accepted, try again later"


def daily_limit_reached(scope: str, limit: int, retry_after: float) -> str:
    """A RCPT over the daily recipient limit: temporary (450 4.7.1), since the
    window rolls: room comes back within the day, and says when."""
    minutes = max(1, int(-(-retry_after // 60)))
    return (
        f"450 4.7.1 Daily recipient limit of {limit} reached for this {scope}; "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}"
    )


MESSAGE_TOO_LARGE = "552 5.2.3 Message too large"
# The bodies in memory over all sessions reached SMTP_MAX_BUFFERED_DATA (RFC 5321
# 452: insufficient system storage; RFC 3463 4.3.1: mail system full).
NO_ROOM_FOR_MESSAGE = "452 4.3.1 Insufficient system storage, try again later"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
START_MAIL_INPUT = "354 End data with <CR><LF>.<CR><LF>"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"


def author_not_the_inbox(header: str, inbox_email: str) -> str:
    """A message whose From: (or Sender:) names someone other than its inbox."""
    if header == "Sender":
        return f"550 5.7.1 The Sender header must be absent or {inbox_email}"
    return f"550 5.7.1 The From header must be exactly one address, {inbox_email}"


STORE_TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, message not accepted, try again later"

# aiosmtpd's own reply texts, as it sends them, and what the gateway sends instead.
_AIOSMTPD_REPLIES: dict[str, str] = {
    "250 OK": OK,
    "221 Bye": BYE,
    "500 Command line too long": LINE_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "552 Error: Too much mail data": MESSAGE_TOO_LARGE,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_LARGE,
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": TLS_NOT_AVAILABLE,
    "503 Already authenticated": AUTH_ALREADY,
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "554 Command refused due to lack of security": "554 5.7.0 Command refused due to lack of security",
}

# aiosmtpd answers HELP with 250; RFC 5321 (4.2.2, 4.3.2) gives HELP 214.
_AIOSMTPD_HELP_PREFIXES = ("250 Supported commands: ", "250 Syntax: ")

# For any other reply without an enhanced code: the code that fits its reply code.
_ENHANCED_FOR_REPLY_CODE: dict[str, str] = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_CLASS_DEFAULT = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}
_HAS_ENHANCED_CODE = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """Return ``reply`` as the gateway sends it: with an RFC 3463 enhanced code."""
    replacement = _AIOSMTPD_REPLIES.get(reply)
    if replacement is not None:
        return replacement
    if reply.startswith(_AIOSMTPD_HELP_PREFIXES):
        return f"214 2.0.0 {reply[4:]}"
    code = reply[:3]
    if code == "220" or code[:1] not in _CLASS_DEFAULT or _HAS_ENHANCED_CODE.match(reply):
        return reply
    enhanced = _ENHANCED_FOR_REPLY_CODE.get(code) or _CLASS_DEFAULT[code[0]]
    return f"{code} {enhanced} {reply[4:]}".rstrip()
