"""/docs in a real headless browser with every request to another origin refused: Swagger UI
draws the API from the service's own files, and its Content-Security-Policy blocks nothing the
page needs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from .test_dashboard import WHY_NO_BROWSER, browser  # noqa: F401  (the module's browser fixture)

pytestmark = pytest.mark.skipif(WHY_NO_BROWSER is not None, reason=WHY_NO_BROWSER or "")


def test_swagger_ui_works_offline_under_its_csp(server, browser):  # noqa: F811
    origin = urlsplit(server).netloc
    context = browser.new_context()
    page = context.new_page()
    elsewhere, problems = [], []

    def offline(route):
        if urlsplit(route.request.url).netloc == origin or route.request.url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(f"{server}/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="cssl").wait_for(timeout=30_000)
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() >= 10
    # An operation opens and shows its parameters: the bundle's scripts run, not just its styles.
    page.locator(".opblock-summary-path", has_text=re.compile(r"^/v1/jobs$")).first.click()
    page.locator(".opblock.is-open").first.wait_for()
    context.close()
    assert elsewhere == [] and problems == [], (elsewhere, problems)
