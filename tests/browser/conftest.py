"""Fixtures of the browser tier: one Chromium for the whole run, a live Django
server on loopback, a logged-in operator, and a screenshot of any failure."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.signals import request_finished
from django.db import connections
from pytest_django.live_server_helper import LiveServer
from selenium import webdriver

from tests.browser.pages import AdminBrowser, browser_available, chromium, failure_screenshot_path


def _close_this_threads_connections(**kwargs: Any) -> None:
    connections.close_all()


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """pytest-django's live server, on 127.0.0.1 only (its default is localhost).
    Each request's thread closes its database connections when it is done
    (CONN_MAX_AGE would keep them: Chromium's keep-alive connections keep those
    threads, and so their SQLite handles, alive past the tier, and SQLite then
    reuses handles that other connections close, which test_thread_start counts)."""
    request_finished.connect(_close_this_threads_connections, dispatch_uid="browser-tier")
    server = LiveServer("127.0.0.1")
    yield server
    server.stop()
    request_finished.disconnect(dispatch_uid="browser-tier")


@pytest.fixture(scope="session", autouse=True)
def quiet_webdriver_logs() -> None:
    """Selenium and urllib3 log every WebDriver response at DEBUG, page sources
    included: the leak guard captures DEBUG, and a page may hold a key shown once."""
    for name in ("selenium", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def chromium_driver() -> Iterator[webdriver.Chrome]:
    """Started once (about a second) and shared: each test clears its cookies."""
    if not browser_available():
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    with chromium() as driver:
        yield driver


@pytest.fixture
def browser(chromium_driver: webdriver.Chrome, live_server: LiveServer) -> Iterator[AdminBrowser]:
    """The shared browser for one test (the live server uses transactional_db:
    the server's thread reads what the test wrote, and the gateway's threads too)."""
    chromium_driver.delete_all_cookies()
    yield AdminBrowser(chromium_driver, live_server.url)
    chromium_driver.delete_all_cookies()


@pytest.fixture(autouse=True)
def quick_password_hashing(settings: Any) -> None:
    """The default hasher takes most of a second per password on a shared
    machine; logging in is not what these tests measure."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(browser: AdminBrowser, admin_user: User) -> AdminBrowser:
    """The browser logged in as a superuser."""
    browser.log_in_as(admin_user)
    return browser


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing browser test leaves a picture of the page it failed on, taken
    before teardown moves the browser on: var/test-screenshots/<test>.png."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        page = next(
            (value for value in getattr(item, "funcargs", {}).values() if isinstance(value, AdminBrowser)), None
        )
        if page is not None:
            try:
                path = page.save_screenshot(failure_screenshot_path(item.nodeid))
                report.sections.append(("browser", f"screenshot of the failing page: {path}"))
            except Exception as error:  # noqa: BLE001 - a dead browser must not hide the failure itself
                report.sections.append(("browser", f"no screenshot: {error!r}"))
    return report
