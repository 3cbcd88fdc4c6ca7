"""The address of a MAIL FROM or RCPT TO, parsed as aiosmtpd parses it.

aiosmtpd parses these with the stdlib's RFC 5322 parser
(``email._header_value_parser``), which builds a token tree for every address:
12% of the event loop's time in a session that sends one message. Nearly every
address a client sends is the plain form ``<local@domain>`` with dot-atoms on
both sides, for which that parser returns the text between the brackets as it
is. :func:`parse_path` answers that form with one regular expression and hands
everything else (quoted local parts, comments, domain literals, non-ASCII, no
brackets, ``<>``) to the stdlib parser, so the result is always the parser's.
``tests/test_addresses.py`` checks the two agree, on generated input too. Input
the parser cannot take is None (a syntax error for the client), never an
exception.
"""

from __future__ import annotations

import re
from email._header_value_parser import get_addr_spec, get_angle_addr  # as aiosmtpd does

# RFC 5322 atext, ASCII only; dot-atoms: no leading, trailing or doubled dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_ANGLE_ADDR = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")


def parse_path(arg: str) -> tuple[str, str] | None:
    """``(address, the rest of the argument)``, or None if it does not parse.
    The rest has its leading whitespace removed, as the parser does."""
    plain = _PLAIN_ANGLE_ADDR.match(arg)
    if plain is not None:
        rest = arg[plain.end() :]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()
        if not rest.startswith("("):  # a comment: the parser's business
            return plain.group(1), rest
    return parse_path_by_stdlib(arg)


def parse_path_by_stdlib(arg: str) -> tuple[str, str] | None:
    """The same, always by the stdlib parser (aiosmtpd's way)."""
    try:
        if arg.lstrip().startswith("<"):
            address, rest = get_angle_addr(arg)
        else:
            address, rest = get_addr_spec(arg)
        return address.addr_spec, rest
    except Exception:
        # Not only HeaderParseError: on input that stops inside an address the
        # stdlib parser reads past its end ("<", "<a@", '<"': IndexError) or trips
        # over its own defect objects ("a@[": AttributeError). aiosmtpd let these
        # escape, and the client got an internal error for a syntax error. The
        # input is a line from the client and nothing else, so any failure to
        # parse it means it is not an address.
        return None
