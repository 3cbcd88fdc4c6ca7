"""A headless Chromium for the browser tier, and the few moves the tests make
with it: open a page, fill a form, follow a link, wait for the next page."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

# Debian's packages (`apt-get install chromium chromium-driver`; .ci/run does).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)  # the screen the admin is checked at (issue 24)
# Nothing the browser does on its own: no update checks, no sync, no QUIC, no GPU.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)
PAGE_TIMEOUT = 15.0

ROOT = Path(__file__).resolve().parents[2]
# Where a failing browser test leaves its screenshot (var/ is not tracked).
FAILURE_SCREENSHOTS = ROOT / "var" / "test-screenshots"
# Where SAVE_SCREENSHOTS=1 puts the pictures docs/admin.md shows.
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """One headless Chromium with a profile of its own, removed afterwards."""
    profile = tempfile.mkdtemp(prefix="browser-tier-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # The driver is given, so Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class AdminBrowser:
    """The shared Chromium pointed at one test's live server."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    # --- going places -----------------------------------------------------------
    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def log_in_as(self, user: User) -> None:
        """A session made by Django's test client, handed to the browser as its
        cookie: the login form has a test of its own, the others skip it."""
        client = Client()
        client.force_login(user)
        self.open("/admin/login/")
        name = settings.SESSION_COOKIE_NAME
        self.driver.add_cookie({"name": name, "value": client.cookies[name].value, "path": "/"})

    def follow(self, element: WebElement) -> None:
        """Click something that loads a page, and wait until the new one is there."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(self.driver, PAGE_TIMEOUT).until(expected_conditions.staleness_of(old))
        self.wait_loaded()

    def wait_loaded(self) -> None:
        WebDriverWait(self.driver, PAGE_TIMEOUT).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete"
        )

    def link(self, text: str) -> WebElement:
        return self.driver.find_element(By.LINK_TEXT, text)

    def follow_link(self, text: str) -> None:
        self.follow(self.link(text))

    def submit(self, selector: str = "input[type=submit], button[type=submit]") -> None:
        self.follow(self.css(selector))

    def reload(self) -> None:
        """What the reload button does: on a page that answered a POST, Chromium
        sends the POST again."""
        self.driver.refresh()
        self.wait_loaded()

    def back(self) -> None:
        self.driver.back()
        self.wait_loaded()

    # --- reading and filling ------------------------------------------------------
    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    @property
    def text(self) -> str:
        """What the page shows, as the browser renders it."""
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    @property
    def html(self) -> str:
        return str(self.driver.page_source)

    def fill(self, name: str, value: str) -> None:
        field = self.css(f'[name="{name}"]')
        field.clear()
        field.send_keys(value)

    def choose(self, name: str, visible_text: str) -> None:
        Select(self.css(f'select[name="{name}"]')).select_by_visible_text(visible_text)

    def tick(self, name: str, value: str, on: bool = True) -> None:
        box = self.css(f'input[name="{name}"][value="{value}"]')
        if box.is_selected() != on:
            box.click()

    def rows(self) -> list[str]:
        """The rendered text of each row of a change list."""
        return [str(row.text) for row in self.all("#result_list tbody tr")]

    def fits_the_window(self) -> bool:
        """Nothing to scroll sideways to."""
        width, inner = self.driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        return bool(width <= inner)

    # --- pictures -----------------------------------------------------------------
    def save_screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def document(self, name: str) -> None:
        """With SAVE_SCREENSHOTS=1, the page as it is now becomes
        docs/screenshots/<name>.png (shown in docs/admin.md)."""
        if os.environ.get("SAVE_SCREENSHOTS") == "1":
            self.driver.execute_script("window.scrollTo(0, 0)")
            self.save_screenshot(DOC_SCREENSHOTS / f"{name}.png")


def failure_screenshot_path(nodeid: str) -> Path:
    return FAILURE_SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_") + ".png")
