"""The address of a MAIL FROM, RCPT TO or VRFY, parsed by RFC 5321's grammar.

A path is ``<`` [source route ``:``] Mailbox ``>`` (RFC 5321 4.1.2), a Mailbox
is Local-part ``@`` Domain or address literal, with RFC 6531's UTF-8 in local
parts and domain labels (whether the client may use it, having declared
``SMTPUTF8``, is the handlers' business). One regular expression per form,
without nested quantifiers over the same characters, so the time is linear in
the argument: aiosmtpd's stdlib parser (``email._header_value_parser``, an RFC
5322 parser with comments, folding whitespace and obsolete syntax) took
milliseconds of the event loop for one crafted argument, repeatable on every
command (docs/performance.md), and it accepted what no SMTP path can be (``<a@b c>``, ``<a@-b>``,
``<a.@b>``, an unclosed ``<a@b``, comments).

What is read as RFC 5321 says, or more leniently where clients and other
servers (Postfix, aiosmtpd) do:

* a source route (``<@relay:a@b>``) is accepted and dropped (RFC 5321 4.1.2
  and C: "MUST accept ... SHOULD ignore");
* a quoted local part whose content would do as a dot-string is given without
  its quotes (``"ab"@c`` is ``ab@c``, the same mailbox, as the stdlib parser
  gave it), any other with its quoting made canonical;
* an address literal must be an IPv4 or an ``IPv6:`` address (no other tag is
  registered);
* lenient: no angle brackets (``MAIL FROM:a@b``), and no domain
  (``<postmaster>``, a VRFY of a user name): taken here so that the handler can
  answer what is wrong with it (a recipient must name a domain; a sender must be
  the inbox's address) rather than "malformed";
* lenient: the parameters after ``>`` need not be separated by a space.

Anything else is None, which the session answers with ``553 5.1.3``; never an
exception. ``tests/test_addresses.py`` holds the cases, compares with the stdlib
parser on generated input, and sends them over a live session.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

# RFC 6531's UTF8-non-ascii, as Python text, without the C1 control characters
# (RFC 5198) and the surrogates aiosmtpd decodes bytes that are not UTF-8 to. No
# class below holds an ASCII control character either: a mailbox may hold none of
# these, and PostgreSQL would store neither NUL nor surrogates (such a message
# got 451 on every retry).
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~" + _UTF8 + "-"
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
# qtextSMTP (%d32-33 / %d35-91 / %d93-126, and UTF-8) or a quoted-pair (backslash, %d32-126).
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
# A label starts with a letter or digit; that it does not end with a hyphen is
# checked after the match, which keeps the expression free of backtracking.
_LABEL = rf"[A-Za-z0-9{_UTF8}][A-Za-z0-9{_UTF8}-]*"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"  # dcontent; checked as an address after the match
_MAILBOX = rf"(?P<mailbox>(?:{_DOT_STRING}|(?P<quoted>{_QUOTED_STRING}))(?:@(?P<domain>{_DOMAIN}|{_LITERAL}))?)"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_IN_BRACKETS = re.compile(rf"<(?:{_ROUTE})?{_MAILBOX}>")
_BARE = re.compile(rf"{_MAILBOX}(?=[ \t]|$)")
_DOT_STRING_ONLY = re.compile(_DOT_STRING)
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_path(arg: str) -> tuple[str, str] | None:
    """``(address, the rest of the argument)``, or None if ``arg`` does not start
    with a path. The rest is what follows, leading whitespace removed. The null
    path is ``("<>", rest)``, as aiosmtpd expects it."""
    if arg.startswith("<>"):
        return "<>", arg[2:].lstrip(" \t")
    match = (_IN_BRACKETS if arg.startswith("<") else _BARE).match(arg)
    if match is None:
        return None
    mailbox, quoted, domain = match.groups()
    # A label must not end with a hyphen; a literal must be an address.
    if domain is not None and (
        domain[-1] == "-" or "-." in domain or (domain[0] == "[" and not _literal_is_valid(domain[1:-1]))
    ):
        return None
    if quoted is not None:
        mailbox = _canonical_quoted(quoted) + mailbox[len(quoted) :]
    rest = arg[match.end() :]
    return mailbox, rest.lstrip(" \t") if rest else rest


def _canonical_quoted(quoted: str) -> str:
    """A quoted local part as its content unquoted if that is a dot-string,
    otherwise quoted again with only the backslashes RFC 5321 requires."""
    content = _QUOTED_PAIR.sub(r"\1", quoted[1:-1])
    if _DOT_STRING_ONLY.fullmatch(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal_is_valid(literal: str) -> bool:
    """An address literal's content: IPv4, or IPv6 after the tag ``IPv6:``
    (RFC 5321 4.1.3; no other tag is registered, and no IPv6 zone is allowed)."""
    tag, colon, address = literal.partition(":")
    try:
        if not colon:
            IPv4Address(tag)
        elif tag.upper() == "IPV6" and "%" not in address:
            IPv6Address(address)
        else:
            return False
    except ValueError:
        return False
    return True
