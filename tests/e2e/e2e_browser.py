"""Headless Chromium for the e2e tests of pages: Debian's `chromium` driven by Playwright (never a
downloaded browser), and the Airflow UI's sign-in."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
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


# A navigation is done once the server answered (`commit`); what the test needs next is then waited for
# as an element (a locator waits until it is there). Playwright's default, the page's `load` event, also
# waits for every script, style sheet, font and image of the Airflow UI (megabytes from a one-worker
# api-server): on a loaded 2-core machine the first load of the UI took longer than any timeout that
# still means something, while the element the test uses was there long before.
NAVIGATED = "commit"


def wait_for_route(page: Any, matches: Callable[[str], bool], timeout_s: float = 60.0) -> str:
    """Waits until the document's own URL (`location.href`, read in the page) matches, and returns it.

    The UI routes in the page (history API) and may rewrite its URL again once a view's iframe has loaded
    (a plugin page appends the iframe's path); reading the URL from the document does not depend on which
    navigation events Playwright reports. A route that never matches fails naming the URL the page has.
    """
    deadline = time.monotonic() + timeout_s
    href = ""
    while time.monotonic() < deadline:
        href = str(page.evaluate("location.href"))
        if matches(href):
            return href
        page.wait_for_timeout(200)
    raise AssertionError(f"the page did not route there within {timeout_s:.0f} s: it stayed on {href}")


def open_page(page: Any, url: str) -> None:
    """Navigates to `url`; the caller waits for the element it needs."""
    page.goto(url, wait_until=NAVIGATED)


def sign_in(page: Any, stack: Stack) -> None:
    """Signs in at /auth/login as the stack's user and waits until the UI has left the login page."""
    open_page(page, f"{stack.url}/auth/login")
    page.locator("input[name=username]").fill(stack.username)
    page.locator("input[name=password]").fill(str(stack.password))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, wait_until=NAVIGATED)
