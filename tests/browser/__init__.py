"""The admin in a real browser: headless Chromium through Selenium, against a live Django server."""
