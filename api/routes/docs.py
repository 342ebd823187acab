"""/docs: Swagger UI from the service's own copy (``api/ui/vendor/swagger-ui/``, put there by
``scripts/vendor_ui.sh``), so that the page works without internet access and loads nothing
from another origin. Its one inline script (the call that starts Swagger UI) is allowed by its
hash in the page's Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

SWAGGER_UI = "/ui/vendor/swagger-ui"
DOCS, OAUTH2_REDIRECT = "/docs", "/docs/oauth2-redirect"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def csp(page: bytes) -> str:
    """Same-origin files only, plus the page's inline scripts by hash; Swagger UI sets styles
    from script and draws icons from data: URLs."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


def with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = csp(page.body)
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def install(app: FastAPI) -> None:
    """For an app made with ``docs_url=None``: /docs and its OAuth2 redirect page."""
    page = with_csp(
        get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            oauth2_redirect_url=OAUTH2_REDIRECT,
            # No validator badge: it would load an image from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )
    redirect = with_csp(get_swagger_ui_oauth2_redirect_html())

    @app.get(DOCS, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page.body, headers=dict(page.headers))

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return HTMLResponse(redirect.body, headers=dict(redirect.headers))
