"""`manage.py runsmtp` in a subprocess, as the system tests start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import (
    database_url,
    free_port,
)

ROOT = Path(__file__).resolve().parent.parent


NO_TLS = {"SMTP_TLS_CERT_FILE": "", "SMTP_TLS_KEY_FILE": "", "SMTP_TLS_PORT": "0", "SMTP_AUTH_REQUIRE_TLS": "false"}


# No metrics port unless the test asks (a developer's .env may set one).
NO_METRICS = {"SMTP_METRICS_PORT": "0"}

# As the demo runs (.env.example): loopback is never throttled.
DEMO_THROTTLING = {"SMTP_THROTTLE_EXEMPT": "127.0.0.0/8,::1"}


class RunSmtp:
    """`manage.py runsmtp` in a subprocess, using this test run's database. Its
    output goes to files, as under a service manager; with ``unread_stderr`` its
    stderr is a pipe that nobody reads until ``stop()``, like a stalled log reader."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        unread_stderr: bool = False,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        self.port = free_port()
        # Independent of the developer's .env: no TLS unless the test asks.
        environment = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DEBUG": "true",
            **NO_TLS,
            **NO_METRICS,
            **DEMO_THROTTLING,
            **(env or {}),
        }
        self._out = tempfile.NamedTemporaryFile("w+", prefix="runsmtp-out-", suffix=".log")
        self._err = tempfile.NamedTemporaryFile("w+", prefix="runsmtp-err-", suffix=".log")
        # A limit on open files as a shell's `ulimit -n` or a service manager's
        # LimitNOFILE= would set it (prlimit, util-linux: no preexec_fn in a
        # process with threads).
        limit = ["prlimit", f"--nofile={open_files[0]}:{open_files[1]}"] if open_files else []
        self.process = subprocess.Popen(
            [*limit, sys.executable, "manage.py", "runsmtp", "--port", str(self.port), *args],
            cwd=ROOT,
            env=environment,
            stdout=self._out,
            stderr=subprocess.PIPE if unread_stderr else self._err,
            text=True,
        )
        deadline = time.monotonic() + 60
        while "Quit with" not in self.stdout():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"runsmtp did not start: {self.stderr()[-2000:]}")
            time.sleep(0.05)
        self.banner = self.stdout().splitlines()

    def stdout(self) -> str:
        return Path(self._out.name).read_text()

    def stderr(self) -> str:
        return Path(self._err.name).read_text()

    @property
    def output(self) -> str:
        return self.stdout() + self.stderr()

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        if self.process.stderr is not None:  # the unread pipe: read it now
            _, piped = self.process.communicate(timeout=30)
            return self.process.returncode, self.stdout(), piped
        code = self.process.wait(timeout=30)
        return code, self.stdout(), self.stderr()
