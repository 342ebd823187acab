"""/ui: the dashboard, static files from ``api/ui/`` (no build step; third-party files in
``api/ui/vendor/``, copied there by ``scripts/vendor_ui.sh``).

The pages need no token: the page asks for one and sends it with each API request. Every
page path answers with the same ``index.html``, so links into the app and reloads work; the
modules route in the browser. None of it is in the OpenAPI description.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
# The pages the browser-side router knows; each is index.html.
PAGES = ("/ui/", "/ui/jobs/{job_id}", "/ui/compare", "/ui/leaderboard", "/ui/submit")
# Scripts, styles and API calls from this origin only; uPlot sets styles from script, and a
# checkpoint download goes through a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Revalidate every time (a 304 when unchanged), so a browser open all day gets an upgrade's files.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def index() -> FileResponse:
    return FileResponse(
        UI_DIR / "index.html",
        media_type="text/html",
        headers={**HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


for _page in PAGES:
    router.add_api_route(_page, index, methods=["GET"], name=f"ui:{_page}")


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """The page routes, then the files under them (after, so that a page path is never looked
    up as a file)."""
    app.include_router(router)
    app.mount("/ui", _Assets(directory=UI_DIR), name="ui")
