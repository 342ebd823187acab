"""How the API serves the dashboard (api/routes/ui.py): every page path is the same index.html,
no token needed, none of it in the OpenAPI description; the files it loads are all served from
/ui itself (nothing from a CDN), and each vendored package is the version ui/package.json pins,
with its licence. The pages themselves are tested in a browser in tests/service/test_dashboard.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "api" / "ui"
JOB_ID = "0123456789abcdef0123456789abcdef"
PAGES = ["/ui/", f"/ui/jobs/{JOB_ID}", "/ui/compare?jobs=a,b", "/ui/leaderboard", "/ui/submit?from=x"]
# Static imports, dynamic imports and re-exports of the dashboard's modules.
IMPORT = re.compile(
    r"""(?:^|\s)(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)""", re.M
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from api.main import create_app
    from store.settings import Settings

    settings = Settings.from_env({"CSSL_STATE_DIR": str(tmp_path_factory.mktemp("state"))})
    with TestClient(create_app(settings, sweep=False), follow_redirects=False) as client:
        yield client


@pytest.mark.parametrize("path", PAGES)
def test_each_page_path_is_the_index_without_a_token(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (UI / "index.html").read_text()
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-cache"


def test_ui_without_a_slash_redirects(client):
    response = client.get("/ui")
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


def test_files_are_served_and_a_missing_one_is_a_problem(client):
    script = client.get("/ui/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/ui/vendor/uplot/uPlot.esm.js").status_code == 200
    missing = client.get("/ui/js/nothing.js")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    # Page paths are not files, and files are not pages.
    assert client.get(f"/ui/jobs/{JOB_ID}/extra").status_code == 404


def test_the_api_still_needs_a_token_and_the_ui_is_not_in_the_openapi(client):
    assert client.get("/v1/jobs").status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_every_module_import_and_asset_is_local_and_exists():
    modules = sorted(UI.glob("js/**/*.js"))
    assert modules, "no modules under api/ui/js"
    for module in modules:
        for static, dynamic in IMPORT.findall(module.read_text()):
            target = static or dynamic
            assert target.startswith("."), (
                f"{module.relative_to(ROOT)} imports {target!r}: only files of the dashboard itself"
            )
            assert (module.parent / target).resolve().is_file(), f"{module.relative_to(ROOT)}: {target} does not exist"
    index = (UI / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]+)"', index):
        if url.startswith("/ui/") and "." in url.rsplit("/", 1)[-1]:  # a file, not a page
            assert (UI / url.removeprefix("/ui/")).is_file(), url
        else:
            assert not re.match(r"(https?:)?//", url), f"index.html loads {url} from elsewhere"
    for text in [index, *(m.read_text() for m in modules), (UI / "style.css").read_text()]:
        assert not re.search(r"""(?:src=|href=|url\(|import\s*\(?|from\s)\s*["']?(?:https?:)?//""", text)


def test_vendored_files_are_the_pinned_versions_with_their_licences():
    pins = json.loads((ROOT / "ui" / "package.json").read_text())["dependencies"]
    lock = json.loads((ROOT / "ui" / "package-lock.json").read_text())["packages"]
    for package, version in pins.items():
        folder = UI / "vendor" / package.removesuffix("-dist")  # swagger-ui-dist's files are in vendor/swagger-ui
        assert lock[f"node_modules/{package}"]["version"] == version
        assert (folder / "VERSION").read_text().strip() == version, package
        assert (folder / "LICENSE").stat().st_size > 500, package
    assert (UI / "vendor" / "uplot" / "uPlot.esm.js").is_file() and (
        UI / "vendor" / "axe-core" / "axe.min.js"
    ).is_file()


def _imports() -> dict[str, set[str]]:
    """Each dashboard module (relative to api/ui/js) with the modules it imports."""
    js = UI / "js"
    graph = {}
    for module in js.glob("**/*.js"):
        targets = {static or dynamic for static, dynamic in IMPORT.findall(module.read_text())}
        graph[module.relative_to(js).as_posix()] = {
            (module.parent / t).resolve().relative_to(js.resolve()).as_posix() for t in targets if "vendor" not in t
        }
    return graph


def test_no_module_imports_itself_through_others():
    graph = _imports()
    assert "router.js" in graph and "pages/run.js" in graph

    def circle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(module: str) -> list[str] | None:
            for target in sorted(graph.get(module, ())):
                if target == start:
                    return [*path, start]
                if target not in seen:
                    seen.add(target)
                    path.append(target)
                    if found := walk(target):
                        return found
                    path.pop()
            return None

        return walk(start)

    circles = [" -> ".join(c) for m in sorted(graph) if (c := circle_from(m))]
    assert not circles, circles


def test_the_shipped_modules_carry_no_test_hooks():
    # Tests and benchmarks wait on what a user sees (aria-busy, the drawn points), not on globals set for them.
    for module in (UI / "js").glob("**/*.js"):
        assert not re.search(r"\bwindow\.\w+\s*=", module.read_text()), module.name


def test_docs_loads_only_same_origin_files_and_they_are_served(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sorted(urls) == [
        "/ui/vendor/swagger-ui/favicon-32x32.png",
        "/ui/vendor/swagger-ui/swagger-ui-bundle.js",
        "/ui/vendor/swagger-ui/swagger-ui.css",
    ]
    assert not re.search(r"(https?:)?//[a-z]", docs.text.replace("window.location.origin", ""))
    types = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        served = client.get(url)
        assert served.status_code == 200 and types[Path(url).suffix] in served.headers["content-type"], url
        assert served.content == (UI / url.removeprefix("/ui/")).read_bytes()
    assert "url: '/openapi.json'" in docs.text and client.get("/openapi.json").status_code == 200
    # ReDoc would load its script from a CDN, which the policy refuses: the API serves no /redoc.
    assert client.get("/redoc").status_code == 404
    # The one inline script runs by its hash; nothing else inline, nothing from elsewhere.
    [inline] = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    policy = dict(part.strip().split(" ", 1) for part in docs.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert policy["connect-src"] == "'self'" and policy["img-src"] == "'self' data:"
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "script-src 'self' 'sha256-" in redirect.headers["content-security-policy"]
