"""Property-based fuzzing of a live gateway with hypothesis.

Each example opens a session and sends a random sequence of chunks (commands
from the protocol, random AUTH payloads, raw bytes with NUL, invalid UTF-8, lone
CR or LF, huge base64, pipelined bursts, such bytes in a mechanism's name, an
address or a header). Afterwards:

* every line the server sent is a well-formed SMTP reply, and each carries an
  RFC 3463 enhanced code unless RFC 2034 exempts it (greeting, HELO/EHLO, 334, 354);
* a fresh session still gets ``250 2.0.0 OK`` for NOOP;
* nothing was logged at ERROR: the database took every record and message.

Bounded by default (``FUZZ_EXAMPLES`` examples); ``--run-slow`` runs ten times more.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, GatewayFactory, LiveGateway, b64

FUZZ_EXAMPLES = 60

REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][\x20-\x7e]*")
ENHANCED = re.compile(rb"[2-5]\d\d [245]\.\d{1,3}\.\d{1,3}( |$)")
EXEMPT = re.compile(rb"(220|334|354)( |$)|250-")

commands = st.sampled_from(
    [
        b"EHLO fuzz.example",
        b"HELO fuzz.example",
        b"NOOP",
        b"RSET",
        b"HELP",
        b"VRFY someone",
        b"STARTTLS",
        b"QUIT",
        b"DATA",
        b"AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}").encode(),
        b"AUTH PLAIN",
        b"AUTH LOGIN",
        b"AUTH LOGIN " + b64(VALID_INBOX).encode(),
        b64(VALID_KEY).encode(),
        b"*",
        b"AUTH XOAUTH2 abc",
        f"MAIL FROM:<{VALID_EMAIL}>".encode(),
        f"MAIL FROM:<{VALID_EMAIL}> SIZE=99999999999".encode(),
        b"MAIL FROM:<evil@example.com>",
        b"RCPT TO:<a@example.com>",
        b"RCPT TO:<>",
        b"From: test@agentmail.dev\r\nSubject: fuzz\r\n\r\nbody\r\n.",
        b".",
    ]
)
auth_payloads = st.binary(max_size=200).map(lambda raw: b"AUTH PLAIN " + b64(raw).encode())
junk = st.binary(min_size=1, max_size=300)
text_junk = st.text(max_size=120).map(lambda text: text.encode("utf-8", "surrogatepass"))
# Client text that the gateway stores (a mechanism's name, addresses, headers),
# with whatever bytes: what a database cannot hold must be refused or made safe
# before the commit.
hostile_mechanism = st.binary(min_size=1, max_size=40).map(lambda raw: b"AUTH " + raw)
hostile_recipient = st.binary(max_size=40).map(lambda raw: b"RCPT TO:<" + raw + b"@example.com>")
hostile_header = st.binary(max_size=60).map(
    lambda raw: (
        b"From: test@agentmail.dev\r\nSubject: "
        + raw.replace(b"\r", b"").replace(b"\n", b"")
        + b"\r\nMessage-ID: <"
        + raw[:20].replace(b"\r", b"").replace(b"\n", b"")
        + b">\r\n\r\nbody\r\n."
    )
)
huge_base64 = st.integers(min_value=900, max_value=20000).map(lambda n: b"AUTH PLAIN " + b"QUFB" * (n // 4))
line_endings = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\n\r\n"])

stored_text = st.one_of(hostile_mechanism, hostile_recipient, hostile_header)
chunk = st.tuples(st.one_of(commands, commands, auth_payloads, junk, text_junk, huge_base64, stored_text), line_endings)
session_plan = st.lists(st.lists(chunk, min_size=1, max_size=4), min_size=1, max_size=8)


def run_session(port: int, plan: list[list[tuple[bytes, bytes]]]) -> bytes:
    """Send each burst (pipelined), collect everything the server sends."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.05)
        try:
            for burst in plan:
                sock.sendall(b"".join(data + ending for data, ending in burst))
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                    break  # the server closed the connection
                except TimeoutError:
                    continue
        except (ConnectionResetError, BrokenPipeError):
            pass
    return received


def check_replies(received: bytes, hostname: str) -> None:
    # Exempt by RFC 2034: the greeting, 334/354, the EHLO lines and the HELO reply
    # (the last EHLO line is "250 ENHANCEDSTATUSCODES"; HELO's is "250 <hostname>").
    exempt_last_lines = {b"250 ENHANCEDSTATUSCODES", b"250 " + hostname.encode()}
    lines = received.split(b"\r\n")
    assert lines[-1] == b"", f"a reply line was not CRLF-terminated: {lines[-1][:80]!r}"
    for number, line in enumerate(lines[:-1]):
        assert REPLY_LINE.fullmatch(line), f"malformed reply line: {line[:120]!r}"
        if number == 0 or EXEMPT.match(line) or line in exempt_last_lines:
            continue
        assert ENHANCED.match(line), f"reply without an enhanced status code: {line[:120]!r}"


def fresh_noop(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NOOP\r\n")
        received = b""
        while received.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, "the server closed a fresh session"
            received += chunk
        return received.split(b"\r\n")[1]


@pytest.fixture
def fuzz_gateway(gateway_factory: GatewayFactory, scenarios: None) -> LiveGateway:
    # Small limits so the fuzzer reaches them too (they close sessions with 421).
    return gateway_factory(max_message_size=4096, idle_timeout=5, data_timeout=5)


def examples(request: pytest.FixtureRequest) -> int:
    return FUZZ_EXAMPLES * (10 if request.config.getoption("--run-slow") else 1)


def test_fuzzed_sessions_get_well_formed_replies(
    fuzz_gateway: LiveGateway, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    port = fuzz_gateway.port

    @settings(
        max_examples=examples(request),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=session_plan)
    def property_holds(plan: list[list[tuple[bytes, bytes]]]) -> None:
        check_replies(run_session(port, plan), fuzz_gateway.config.hostname)
        assert fresh_noop(port) == b"250 2.0.0 OK"

    property_holds()
    # ...and the database took everything the sessions left: no record or
    # message was refused, no batch failed on a bug.
    fuzz_gateway.settle()
    errors = [record.getMessage()[:200] for record in caplog.get_records("call") if record.levelno >= logging.ERROR]
    assert not errors, errors
    # Every fuzzed session has ended on the server's side too.
    deadline = time.monotonic() + 5
    while fuzz_gateway.server.handler.connections.total:
        assert time.monotonic() < deadline, "fuzzed sessions were left open"
        time.sleep(0.05)
