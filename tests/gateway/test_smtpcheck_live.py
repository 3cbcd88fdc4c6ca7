"""The judgement of ``smtpcheck`` (``smtpgateway/runtime/smtpcheck.py``) against a
live gateway: what is a WARNING and what is CRITICAL. The command as a process,
with its OK and AUTH cases, is ``tests/system/test_smtpcheck.py``."""

from __future__ import annotations

from pathlib import Path

from smtpgateway.runtime.smtpcheck import CheckTarget, Status, Thresholds, check_smtp, parse_address
from smtpgateway.tls import write_self_signed
from tests.helpers import REVOKED_KEY, VALID_INBOX, VALID_KEY, GatewayFactory, LiveGateway
from tests.sinks import SilentServer


def test_a_gateway_at_its_connection_limit_is_a_warning(gateway_factory: GatewayFactory, scenarios: None) -> None:
    """421 says the gateway is there but will not serve this client now (full, or
    stopping): a WARNING, not the outage a CRITICAL would page someone for."""
    gateway = gateway_factory(max_connections_per_ip=1)
    held = gateway.wire()
    result = check_smtp(CheckTarget("127.0.0.1", gateway.port), Thresholds())
    held.close()
    assert result.status is Status.WARNING
    assert result.summary.startswith("greeting: 421 4.7.0 Too many connections, try again later in "), result.summary


def test_a_certificate_near_its_end_is_a_warning_that_auth_refused_overrides(
    gateway_factory: GatewayFactory, scenarios: None, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mail.test", days=5)
    gateway = gateway_factory(tls_cert_file=cert, tls_key_file=key, tls_port=0, auth_require_tls=True)
    target = CheckTarget("127.0.0.1", gateway.port, "starttls", VALID_INBOX, VALID_KEY, cafile=str(cert))
    result = check_smtp(target, Thresholds())
    assert result.status is Status.WARNING
    assert result.summary.startswith("235, certificate ends in 5.0 days, in "), result.summary
    assert check_smtp(target, Thresholds(certificate_days=3)).status is Status.OK
    refused = CheckTarget("127.0.0.1", gateway.port, "starttls", VALID_INBOX, REVOKED_KEY, cafile=str(cert))
    assert check_smtp(refused, Thresholds()).status is Status.CRITICAL
    assert "REVOKED" not in repr(refused) and REVOKED_KEY not in repr(refused)  # the key is kept out of repr


def test_a_slow_answer_is_a_warning_then_critical(gateway: LiveGateway) -> None:
    target = CheckTarget("127.0.0.1", gateway.port)
    assert check_smtp(target, Thresholds()).status is Status.OK
    slow = check_smtp(target, Thresholds(warning=0.0))
    assert slow.status is Status.WARNING and slow.summary.startswith("250, slower than 0 s, in "), slow.summary
    too_slow = check_smtp(target, Thresholds(warning=0.0, critical=0.0))
    assert too_slow.status is Status.CRITICAL and too_slow.summary.startswith("250, slower than 0 s in ")


def test_a_server_that_never_greets_is_critical() -> None:
    silent = SilentServer()
    try:
        result = check_smtp(CheckTarget("127.0.0.1", silent.port), Thresholds(timeout=0.3))
    finally:
        silent.close()
    assert result.status is Status.CRITICAL and result.summary.startswith("no answer within 0.3 s in ")
    assert 0.3 <= result.elapsed < 5


def test_addresses() -> None:
    assert parse_address("mail.example.com:587", None) == ("mail.example.com", 587)
    assert parse_address("mail.example.com", 465) == ("mail.example.com", 465)
    assert parse_address("[::1]:2525", None) == ("::1", 2525)
    assert parse_address("::1", 2525) == ("::1", 2525)
    for bad in ("mail.example.com", "host:0", "host:99999", ":25", "[::1]x"):
        try:
            parse_address(bad, None)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
