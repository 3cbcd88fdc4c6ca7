"""The deployment files of deploy/: the systemd units pass ``systemd-analyze
verify``, the HAProxy configuration passes ``haproxy -c``, the commands the units
run are this project's, the admin runs under gunicorn as its unit starts it, and
agentmail-manage passes the EnvironmentFile's settings to manage.py.

The units name their files under the install prefix /opt/agentmail, and
``systemd-analyze verify`` checks that each ExecStart binary exists: they are
verified rendered to a prefix that is this checkout (with the running venv)."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from tests.helpers import database_url, free_port
from tests.runsmtp import ROOT

DEPLOY = ROOT / "deploy"
PREFIX = "/opt/agentmail"
ENV_FILE = "/etc/agentmail/agentmail.env"
UNITS = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)",
)
needs_haproxy = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)"
)


def make_prefix(directory: Path, with_venv: bool = True) -> Path:
    """An install prefix that is this checkout: a link to each of its entries,
    and .venv the virtualenv running these tests (it has the requirements)."""
    directory.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != ".venv":
            (directory / entry.name).symlink_to(entry)
    if with_venv:
        (directory / ".venv").symlink_to(Path(sys.prefix))
    return directory


def render(unit: Path, prefix: Path, into: Path) -> Path:
    text = unit.read_text().replace(PREFIX, str(prefix))
    assert PREFIX not in text
    into.mkdir(exist_ok=True)
    rendered = into / unit.name
    rendered.write_text(text)
    return rendered


def verify(units: list[Path]) -> list[str]:
    """What ``systemd-analyze verify`` finds wrong with ``units``: its exit status
    if not 0, and every line it says about them (an unknown or misspelled key is
    only a warning to systemd: here it fails too). Only the given units, not the
    host's units they order themselves after."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = [str(unit) for unit in units] + [unit.name for unit in units]
    said = [line for line in (result.stdout + result.stderr).splitlines() if any(name in line for name in names)]
    return said + ([f"exit status {result.returncode}"] if result.returncode else [])


def directives(unit: Path) -> list[tuple[str, str]]:
    return [
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in unit.read_text().splitlines())
        if value and not key.startswith(("#", "["))
    ]


def unit_environment(unit: Path) -> dict[str, str]:
    """The unit's own Environment= defaults."""
    found: dict[str, str] = {}
    for key, value in directives(unit):
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, assigned = assignment.partition("=")
                found[name] = assigned
    return found


def exec_start(unit: Path) -> list[str]:
    """ExecStart as systemd runs it, with ${VAR} from the unit's Environment=."""
    (command,) = [value for key, value in directives(unit) if key == "ExecStart"]
    environment = unit_environment(unit)
    return [re.sub(r"\$\{(\w+)\}", lambda match: environment[match[1]], word) for word in shlex.split(command)]


@needs_systemd_analyze
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert {unit.name for unit in UNITS} == {
        "agentmail-smtp.service",
        "agentmail-deliver.service",
        "agentmail-admin.service",
        "agentmail-pruneattempts.service",
        "agentmail-pruneattempts.timer",
    }
    prefix = make_prefix(tmp_path / "prefix")
    rendered = [render(unit, prefix, tmp_path / "units") for unit in UNITS]
    assert verify(rendered) == []


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: on an ExecStart binary that is not there (an install
    prefix without the venv), and on a misspelled directive."""
    unit = DEPLOY / "agentmail-smtp.service"
    without_venv = render(unit, make_prefix(tmp_path / "bare", with_venv=False), tmp_path / "bare-units")
    problems = verify([without_venv])
    assert "exit status 1" in problems
    assert any("is not executable" in line and "/bare/.venv/bin/python" in line for line in problems), problems

    misspelled = render(unit, make_prefix(tmp_path / "prefix"), tmp_path / "misspelled")
    misspelled.write_text(misspelled.read_text().replace("LimitNOFILE=", "LimitNOFILES="))
    assert any("LimitNOFILES" in line for line in verify([misspelled]))


def test_the_units_run_this_projects_commands() -> None:
    """Every manage.py command line of a unit parses with that command's own
    options (systemd cannot tell a misspelled option), the gunicorn unit names
    this project's WSGI application, and every unit reads the EnvironmentFile."""
    commands = get_commands()
    ran = set()
    for unit in UNITS:
        if unit.suffix != ".service":
            continue
        assert ("EnvironmentFile", ENV_FILE) in directives(unit), unit.name
        argv = exec_start(unit)
        if argv[0] == f"{PREFIX}/.venv/bin/python":
            assert argv[1] == f"{PREFIX}/manage.py", unit.name
            name, options = argv[2], argv[3:]
            command = load_command_class(commands[name], name)
            command.create_parser("manage.py", name).parse_args(options)  # SystemExit on a bad option
            ran.add(name)
        else:
            assert argv == [f"{PREFIX}/.venv/bin/gunicorn", "agentmail_site.wsgi:application"], unit.name
            ran.add("gunicorn")
    assert ran == {"runsmtp", "deliver", "pruneattempts", "gunicorn"}
    smtp = DEPLOY / "agentmail-smtp.service"
    assert exec_start(smtp)[3:] == ["--workers", "2"]
    assert {"LimitNOFILE", "AmbientCapabilities"} <= {key for key, _ in directives(smtp)}
    assert ("AmbientCapabilities", "CAP_NET_BIND_SERVICE") in directives(smtp)
    timer = DEPLOY / "agentmail-pruneattempts.timer"
    assert ("OnCalendar", "daily") in directives(timer)


def test_the_environment_file_sets_only_known_settings() -> None:
    """A misspelled variable in the template would be ignored silently: each one
    is one that docs/configuration.md describes: a setting, or a variable the units read."""
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", (ROOT / "docs" / "configuration.md").read_text(), re.M))
    assigned = [
        line.split("=", 1)[0]
        for line in (DEPLOY / "agentmail.env").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "SECRET_KEY" in assigned and "DEBUG" in assigned
    assert [name for name in assigned if name not in documented] == []


@pytest.fixture
def collected_static(tmp_path: Path) -> Path:
    """``manage.py collectstatic`` as an install runs it, into a STATIC_ROOT of its own."""
    static_root = tmp_path / "static"
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "STATIC_ROOT": str(static_root)},
        check=True,
        timeout=120,
    )
    return static_root


@pytest.fixture
def admin_under_gunicorn(transactional_db: None, collected_static: Path, tmp_path: Path) -> Iterator[str]:
    """The admin unit's command line, rendered to this checkout, with production
    settings (DEBUG off): the base URL it serves."""
    unit = render(DEPLOY / "agentmail-admin.service", make_prefix(tmp_path / "prefix"), tmp_path / "units")
    port = free_port()
    arguments = unit_environment(unit)["GUNICORN_CMD_ARGS"].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    environment = {
        **os.environ,
        "GUNICORN_CMD_ARGS": arguments,
        "DEBUG": "false",
        "SECRET_KEY": "a-test-secret-key-for-the-admin-under-gunicorn",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": database_url(),
        "STATIC_ROOT": str(collected_static),
    }
    log = tmp_path / "gunicorn.log"
    with log.open("w") as output:
        process = subprocess.Popen(exec_start(unit), cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/admin/login/", timeout=5).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_admin_runs_under_gunicorn_with_its_static_files(admin_under_gunicorn: str) -> None:
    with urllib.request.urlopen(f"{admin_under_gunicorn}/admin/login/", timeout=10) as page:
        assert page.status == 200
        html = page.read().decode()
    assert 'name="username"' in html
    stylesheet = re.search(r'href="(/static/admin/css/[^"]+\.css)"', html)
    assert stylesheet, "the login page links the admin's stylesheet"
    with urllib.request.urlopen(f"{admin_under_gunicorn}{stylesheet[1]}", timeout=10) as css:
        assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
        assert len(css.read()) > 100


@needs_haproxy
def test_the_haproxy_configuration_passes_haproxy_check(tmp_path: Path) -> None:
    """Beside a global section that logs, as Debian's /etc/haproxy/haproxy.cfg
    has, the file is valid without a warning."""
    assert haproxy_check(tmp_path, DEPLOY / "haproxy.cfg") == (0, [])


@needs_haproxy
def test_haproxy_check_catches_a_broken_configuration(tmp_path: Path) -> None:
    broken = tmp_path / "broken.cfg"
    broken.write_text((DEPLOY / "haproxy.cfg").read_text().replace("send-proxy-v2", "send-proxy-v3"))
    status, problems = haproxy_check(tmp_path, broken)
    assert status != 0 and any("send-proxy-v3" in line for line in problems), problems


def haproxy_check(tmp_path: Path, config: Path) -> tuple[int, list[str]]:
    debian_global = tmp_path / "global.cfg"
    debian_global.write_text("global\n    log /dev/log local0\n")
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(debian_global), "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in output if "[WARNING]" in line or "[ALERT]" in line]


@pytest.mark.skipif(os.geteuid() != 0, reason="agentmail-manage switches user with runuser, which needs root")
def test_agentmail_manage_runs_manage_py_with_the_environment_file(transactional_db: None, tmp_path: Path) -> None:
    env_file = tmp_path / "agentmail.env"
    env_file.write_text(
        "# as in deploy/agentmail.env\n"
        "DEBUG=true\n"
        "SMTP_HOSTNAME=from-the-env-file.example\n"
        f"DATABASE_URL={database_url()}\n"
        'GUNICORN_CMD_ARGS="--bind 127.0.0.1:8000 --workers 2"\n'
    )
    environment = {
        **os.environ,
        "AGENTMAIL_PREFIX": str(make_prefix(tmp_path / "prefix")),
        "AGENTMAIL_ENV_FILE": str(env_file),
        "AGENTMAIL_USER": pwd.getpwuid(os.geteuid()).pw_name,
    }
    environment.pop("SMTP_HOSTNAME", None)
    show = "from django.conf import settings; print(settings.SMTP_HOSTNAME); import os; print(os.environ['GUNICORN_CMD_ARGS'])"
    result = subprocess.run(
        [str(DEPLOY / "agentmail-manage"), "shell", "--no-imports", "-c", show],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["from-the-env-file.example", "--bind 127.0.0.1:8000 --workers 2"]
