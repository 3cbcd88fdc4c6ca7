"""Logging in to the admin, as an operator would."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tests.browser.pages import AdminBrowser


@pytest.mark.django_db(transaction=True)
def test_log_in_through_the_form(browser: AdminBrowser, admin_user: User) -> None:
    browser.open("/admin/")
    assert browser.driver.current_url.endswith("/admin/login/?next=/admin/")
    browser.fill("username", "admin")
    browser.fill("password", "wrong password")
    browser.submit()
    assert "Please enter the correct username and password" in browser.text
    browser.fill("password", "password")  # pytest-django's admin_user
    browser.submit()
    assert browser.driver.current_url.endswith("/admin/")
    assert "Gateway administration" in browser.text and browser.all("#logout-form")
