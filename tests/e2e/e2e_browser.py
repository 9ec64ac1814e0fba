"""Headless Chromium for the e2e tests of pages: Debian's `chromium` driven by Playwright (never a
downloaded browser), and the Airflow UI's sign-in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_rest import Stack

CHROMIUM = os.environ.get("APR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _missing(reason: str) -> None:
    """In CI a missing browser is a failure (make test installs it); elsewhere the test is skipped."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright; never `playwright install`)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"{CHROMIUM} is missing (make browser, or apt-get install -y chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def sign_in(page: Any, stack: Stack) -> None:
    """Signs in at /auth/login as the stack's user and waits until the UI has left the login page."""
    page.goto(f"{stack.url}/auth/login")
    page.locator("input[name=username]").fill(stack.username)
    page.locator("input[name=password]").fill(str(stack.password))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
