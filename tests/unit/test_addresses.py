"""MAIL/RCPT/VRFY addresses: RFC 5321's path grammar (``smtpgateway.session.addresses``),
case by case and on generated input against the stdlib parser aiosmtpd uses; a
live session stores what was sent and answers 553 5.1.3 to what is no path."""

from __future__ import annotations

import re
from email._header_value_parser import get_addr_spec, get_angle_addr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpgateway.session.addresses import parse_path

ACCEPTED = [
    ("<a@example.com>", "a@example.com", ""),
    (
        "<first.last+tag@mail.example.co.uk> SIZE=1000 BODY=8BITMIME",
        "first.last+tag@mail.example.co.uk",
        "SIZE=1000 BODY=8BITMIME",
    ),
    ("<a@example.com>\tSIZE=1000", "a@example.com", "SIZE=1000"),
    ("<a@example.com>SIZE=1000", "a@example.com", "SIZE=1000"),  # lenient: no space before the parameters
    ("<o'brien!#$%&*/=?^_`{|}~-@example.com>", "o'brien!#$%&*/=?^_`{|}~-@example.com", ""),
    ("<A@Example.COM>", "A@Example.COM", ""),  # as sent: the handler compares domains without case
    ("<a@sub-domain.example9.com>", "a@sub-domain.example9.com", ""),
    ('<"two words"@example.com>', '"two words"@example.com', ""),
    ('<"a\\"b"@example.com>', '"a\\"b"@example.com', ""),
    ('<"ab"@example.com>', "ab@example.com", ""),  # quotes that are not needed are dropped
    ('<"a\\b"@example.com>', "ab@example.com", ""),
    ('<"a..b"@example.com>', '"a..b"@example.com', ""),  # not a dot-string: stays quoted
    ('<""@example.com>', '""@example.com', ""),
    ('<"a@b"@example.com>', '"a@b"@example.com', ""),
    ("<a@[192.0.2.1]>", "a@[192.0.2.1]", ""),
    ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", ""),
    ("<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]", ""),
    ("<@relay.example,@other.example:a@example.com>", "a@example.com", ""),  # source route dropped
    ("<josé@exämple.com>", "josé@exämple.com", ""),  # RFC 6531; SMTPUTF8 is the handler's check
    ('<"josé"@example.com>', "josé@example.com", ""),
    ("<>", "<>", ""),
    ("<> SIZE=10", "<>", "SIZE=10"),
    ("a@example.com", "a@example.com", ""),  # lenient: no brackets
    ("a@example.com SIZE=5", "a@example.com", "SIZE=5"),
    ("<postmaster>", "postmaster", ""),  # lenient: no domain, for the handler to refuse
    ("someone", "someone", ""),
    ("<a@example.com>>", "a@example.com", ">"),  # the rest is the parameters' business
]


REFUSED = [
    "",
    "<",
    ">",
    "<a@",
    "<@",
    "< ",
    '<"',
    '<"x',
    "a@[",
    "<a@example.com",
    "<<a@example.com>>",
    "<a..b@example.com>",
    "<.a@example.com>",
    "<a.@example.com>",
    '<"a"."b"@example.com>',
    "<a@example..com>",
    "<a@example.com.>",
    "<a@.example.com>",
    "<a@-example.com>",
    "<a@example-.com>",
    "<a@exa_mple.com>",
    "<a@exa!mple.com>",
    "<a@b@example.com>",
    "<a@>",
    "<@example.com>",
    "<a b@example.com>",
    "< a@example.com>",
    "<a@example.com >",
    "<a@ example.com>",
    "<a@example.com c>",
    "<(comment)a@example.com>",
    "<a(comment)@example.com>",
    "<a@example.com(comment)>",
    "a(c)@example.com",
    "<a@[192.0.2]>",
    "<a@[192.0.2.256]>",
    "<a@[ 192.0.2.1 ]>",
    "<a@[]>",
    "<a@[IPv6:zz::1]>",
    "<a@[IPv6:fe80::1%eth0]>",
    "<a@[tag:value]>",
    "<mailto:a@example.com>",
    '<"a"b@example.com>',
    '<"a\\é"@example.com>',
    "a@example.com=SIZE",
    "<@relay.example a@example.com>",
    "<a\x85b@example.com>",
    "<a@exa\u009fmple.com>",
    "<a\udce9@example.com>",
]


@pytest.mark.parametrize(("arg", "address", "rest"), ACCEPTED)
def test_a_path_gives_its_address_and_the_rest(arg: str, address: str, rest: str) -> None:
    assert parse_path(arg) == (address, rest)


@pytest.mark.parametrize("arg", REFUSED)
def test_what_is_no_path_is_refused(arg: str) -> None:
    assert parse_path(arg) is None


def stdlib_address(arg: str) -> str | None:
    """The address aiosmtpd's parser (RFC 5322, stdlib) reads from ``arg``."""
    try:
        parsed, _ = (get_angle_addr if arg.startswith("<") else get_addr_spec)(arg)
        return str(parsed.addr_spec)
    except Exception:
        return None


def unquoted(address: str) -> str:
    """A quoted local part's content, as the stdlib parser gives it."""
    if not address.startswith('"'):
        return address
    end = address.rindex('"')  # no domain holds a quote
    return re.sub(r"\\(.)", r"\1", address[1:end]) + address[end + 1 :]


# Built from the characters that matter to the grammar, so that most examples are
# near misses of a path rather than noise.
fragments = st.sampled_from(
    [
        "<",
        ">",
        "@",
        ".",
        " ",
        "\t",
        "(",
        ")",
        '"',
        "\\",
        "[",
        "]",
        ":",
        ",",
        ";",
        "a",
        "b",
        "z9",
        "+",
        "-",
        "_",
        "'",
        "é",
        "SIZE=1",
        "example.com",
        "x.y",
        "192.0.2.1",
        "IPv6:",
        "::1",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(parts=st.lists(fragments, max_size=14))
def test_every_path_accepted_means_what_the_stdlib_parser_reads(parts: list[str]) -> None:
    """Nothing is accepted that aiosmtpd's parser would not have accepted, and
    with the same address (up to the quoting of a local part that is no dot-string,
    which the stdlib parser gives unquoted even where that is no longer a valid
    address, e.g. ``a..b``). The reverse does not hold: it accepts much that no
    SMTP path can be."""
    arg = "".join(parts)
    parsed = parse_path(arg)
    if parsed is not None and parsed[0] != "<>":
        address, rest = parsed
        path = arg[: len(arg) - len(rest)].rstrip(" \t")  # what was read as the path
        assert stdlib_address(path) in (address, unquoted(address))


@settings(max_examples=1500, deadline=None)
@given(
    local=st.from_regex(r"[A-Za-z0-9.+_'=-]{1,20}", fullmatch=True),
    domain=st.from_regex(r"[A-Za-z0-9.-]{1,20}", fullmatch=True),
)
def test_address_shaped_input(local: str, domain: str) -> None:
    """Such an address is accepted exactly when it is RFC 5321's dot-string @ domain."""
    labels = domain.split(".")
    valid = (
        all(local.split(".")) and all(labels) and all(label[0].isalnum() and label[-1].isalnum() for label in labels)
    )
    assert parse_path(f"<{local}@{domain}> SIZE=10") == ((f"{local}@{domain}", "SIZE=10") if valid else None)
