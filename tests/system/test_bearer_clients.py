"""The API key as an OAuth bearer token, from real clients against `runsmtp`:
curl (`--oauth2-bearer`, OAUTHBEARER and XOAUTH2) and nodemailer (`type:
'OAuth2'`), and nodemailer's plain login with the inbox's address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, eventually
from tests.runsmtp import ROOT, RunSmtp

NODE_CLIENTS = ROOT / "tests" / "node"
NOT_FOUND_KEY = "am_doesnotexist0123456789012345678901"


def curl(port: int, user: str, token: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    message = tmp_path / "message.eml"
    message.write_text(f"From: {VALID_EMAIL}\r\nTo: a@example.com\r\nSubject: from curl\r\n\r\nhello\r\n")
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--verbose",
            f"smtp://127.0.0.1:{port}",
            "--mail-from",
            VALID_EMAIL,
            "--mail-rcpt",
            "a@example.com",
            "--upload-file",
            str(message),
            "--user",
            f"{user}:",
            "--oauth2-bearer",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_oauth2_bearer(runsmtp: RunSmtp, tmp_path: Path) -> None:
    """curl picks OAUTHBEARER whenever it is offered (7.88 does so even when asked
    for XOAUTH2 with --login-options); XOAUTH2 comes from nodemailer below."""
    mechanism = "OAUTHBEARER"
    sent = curl(runsmtp.port, VALID_INBOX, VALID_KEY, tmp_path)
    assert sent.returncode == 0, sent.stderr[-800:]
    assert "< 235 2.7.0 Authentication successful" in sent.stderr
    refused = curl(runsmtp.port, VALID_EMAIL, NOT_FOUND_KEY, tmp_path)
    assert refused.returncode != 0 and "< 535 5.7.8 Authentication credentials invalid" in refused.stderr
    eventually(lambda: AuthAttempt.objects.count() == 2)
    assert list(AuthAttempt.objects.order_by("id").values_list("mechanism", "username", "reason")) == [
        (mechanism, VALID_INBOX, "OK"),
        (mechanism, VALID_EMAIL, "API_KEY_NOT_FOUND"),
    ]
    assert Message.objects.count() == 1


def node(port: int, auth_type: str, user: str, key: str) -> dict[str, object]:
    result = subprocess.run(
        ["node", str(NODE_CLIENTS / "send.js")],
        env={
            **os.environ,
            "SMTP_PORT": str(port),
            "AUTH_TYPE": auth_type,
            "SMTP_USER": user,
            "SMTP_KEY": key,
            "MAIL_FROM": VALID_EMAIL,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-800:]
    outcome: dict[str, object] = json.loads(result.stdout)
    return outcome


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_CLIENTS / "node_modules" / "nodemailer").is_dir(),
    reason="nodemailer is not installed (.ci/run runs npm ci in tests/node)",
)
def test_nodemailer_oauth2_and_login_by_address(runsmtp: RunSmtp) -> None:
    oauth2 = node(runsmtp.port, "oauth2", VALID_EMAIL, VALID_KEY)
    assert oauth2["ok"] is True and str(oauth2["response"]).startswith("250 2.0.0 Ok: queued as ")
    login = node(runsmtp.port, "login", VALID_EMAIL, VALID_KEY)
    assert login["ok"] is True
    refused = node(runsmtp.port, "oauth2", VALID_INBOX, NOT_FOUND_KEY)
    assert refused["ok"] is False and refused["code"] == 535
    # nodemailer answers the error 334 with the empty dummy, and after the 535
    # tries its token once more (it would refresh one it could): two attempts.
    eventually(lambda: AuthAttempt.objects.count() == 4)
    rows = list(AuthAttempt.objects.order_by("id").values_list("mechanism", "username", "reason"))
    assert rows[0] == ("XOAUTH2", VALID_EMAIL, "OK")  # nodemailer's OAuth2 is XOAUTH2
    assert rows[1][1:] == (VALID_EMAIL, "OK") and rows[1][0] in ("PLAIN", "LOGIN")
    assert rows[2:] == [("XOAUTH2", VALID_INBOX, "API_KEY_NOT_FOUND")] * 2
    assert Message.objects.count() == 2
