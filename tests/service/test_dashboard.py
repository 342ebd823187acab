"""The dashboard (/ui) end to end in a real headless browser (Debian's chromium, driven by
Playwright) against a real API server and Celery worker: sign in with a token; submit a job
from the form and watch its loss chart gain points; an API validation error beside its field;
cancel a second job from its row; download a checkpoint; an embedding plot; a ViT's attention maps;
compare; the leaderboard and the protocols it offers; an API error shown where its answer would go;
the submit form's recipe hint; run again with changes; the banner of a service without authentication;
and axe-core (vendored) finds no serious or critical accessibility violation on the main pages.
Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import httpx
import pytest
import torch

from .support import TINY, auth, read_events, start_api

CHROMIUM = os.environ.get("CSSL_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The test job of the task: 128 images in batches of 32 for 3 epochs, 12 steps.
FORM_CONFIG = {"backbone": "small", "epochs": "3", "batch_size": "32", "subset": "128", "precision": "fp32"}
STEPS = 12
AXE = "/ui/vendor/axe-core/axe.min.js"


def _why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev extra: pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        failed = os.environ.get("CSSL_TEST_CHROMIUM_UNAVAILABLE")
        if failed:
            return f"chromium could not be installed: {failed}"
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)"
    return None


WHY_NO_BROWSER = _why_no_browser()
pytestmark = pytest.mark.skipif(WHY_NO_BROWSER is not None, reason=WHY_NO_BROWSER or "")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def owner_token(settings) -> str:
    """An owner of this module's alone, so that the jobs table holds only its jobs."""
    from store import tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return tokens.create_token(session, "dashboard-user")


@pytest.fixture(scope="module")
def shared() -> dict:
    """What one test leaves for the next (the job submitted from the form)."""
    return {}


@pytest.fixture()
def page(browser, owner_token, tmp_path):
    """A signed-in tab: the token is in its sessionStorage before any page script runs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.add_init_script(f"sessionStorage.setItem('cssl.token', {owner_token!r})")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    context.close()
    assert not errors, errors


def test_sign_in_with_a_token(server, browser, owner_token, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/ui/")
    page.get_by_label("API token").fill("cssl_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("That token was refused").wait_for()
    page.get_by_label("API token").fill(owner_token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#jobs-table").wait_for()
    page.screenshot(path=str(tmp_path / "jobs.png"))
    # Kept in the tab's session storage, never in a URL; a reload stays signed in.
    assert page.evaluate("sessionStorage.getItem('cssl.token')") == owner_token
    assert owner_token not in page.url
    page.reload()
    page.locator("#jobs-table").wait_for()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    assert page.evaluate("sessionStorage.getItem('cssl.token')") is None
    context.close()


def test_submit_from_the_form_shows_errors_beside_fields_and_the_loss_chart_grows(
    server, worker, page, owner_token, shared, tmp_path
):
    page.goto(f"{server}/ui/submit")
    page.locator("#submit-form").wait_for()
    page.select_option("#f-method", "simclr")
    page.select_option("#f-dataset", "builtin:synthetic")
    for key, value in FORM_CONFIG.items():
        page.get_by_label(key, exact=True).fill(value)
    page.get_by_label("linear", exact=True).uncheck()

    # The API's 422 names body.config.temperature: shown under that field, which is marked invalid.
    temperature = page.get_by_label("temperature", exact=True)
    temperature.fill("-1")
    page.get_by_role("button", name="Submit job").click()
    error = page.locator('[data-loc="body.config.temperature"] .field-error')
    error.get_by_text("temperature must be greater than 0").wait_for()
    assert temperature.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "c-temperature"
    page.screenshot(path=str(tmp_path / "submit-error.png"), full_page=True)

    temperature.fill("")
    page.fill("#f-name", "form run")
    page.fill("#f-tags", "source:form, note: a b")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/ui/jobs/*")
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    shared["job"] = job_id

    # Points arrive with the progress events while it trains: the chart is seen at several sizes.
    chart = page.locator("#chart-loss")
    sizes = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        points = int(chart.get_attribute("data-points") or 0)
        if not sizes or sizes[-1] != points:
            sizes.append(points)
        if points == STEPS:
            break
        page.wait_for_timeout(50)
    assert sizes[-1] == STEPS, sizes
    assert len([s for s in sizes if s > 0]) >= 2, f"the chart went straight to its last size: {sizes}"
    page.locator("h1 .status-succeeded").wait_for(timeout=60_000)
    page.locator("#evaluations").get_by_text("knn").wait_for()
    page.locator("#checkpoints").wait_for()
    page.get_by_text("succeeded (attempt 1)").wait_for()
    # What the worker recorded as the attempt started: a row per key, data and flags one level down.
    provenance = page.locator("#provenance")
    provenance.get_by_role("cell", name=torch.__version__, exact=True).wait_for()
    provenance.get_by_role("cell", name="data.fingerprint", exact=True).wait_for()
    assert "knn top-1" in page.locator("#log").inner_text() or "succeeded" in page.locator("#log").inner_text()
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    job = httpx.get(f"{server}/v1/jobs/{job_id}", headers=auth(owner_token)).json()
    assert job["evaluate"] == ["knn"] and job["config"]["temperature"] == 0.2  # the small-image recipe's
    assert {k: str(job["config"][k]) for k in FORM_CONFIG} == FORM_CONFIG
    assert job["name"] == "form run" and job["tags"] == {"source": "form", "note": "a b"}


@pytest.fixture()
def trained(server, worker, owner_token, shared) -> str:
    """The job the form submitted, or (when that test did not run) one submitted here."""
    if "job" not in shared:
        body = {
            "kind": "pretrain",
            "method": "simclr",
            "dataset": {"name": "synthetic"},
            "config": {**TINY, "epochs": 3},
            "evaluate": ["knn"],
            "name": "form run",
            "tags": {"source": "form", "note": "a b"},
        }
        shared["job"] = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(owner_token)).json()["id"]
    read_events(server, f"/v1/jobs/{shared['job']}/events", auth(owner_token), timeout=180)
    return shared["job"]


def test_download_a_checkpoint(server, page, trained, tmp_path):
    page.goto(f"{server}/ui/jobs/{trained}")
    # The charts section stops being busy once its charts are drawn, with every point of the run.
    page.locator('#charts[aria-busy="false"]').wait_for()
    assert int(page.locator("#chart-loss").get_attribute("data-points")) == STEPS
    # The collapse guard measured at each epoch's end at least.
    assert int(page.locator("#chart-spread").get_attribute("data-points")) >= 3
    page.locator("#checkpoints tbody tr").first.wait_for()
    [checkpoint_id] = page.locator("#checkpoints tbody tr td:first-child").all_inner_texts()
    for name, check in [
        (f"Full checkpoint {checkpoint_id}", lambda state: state["config"]["method"] == "simclr"),
        (f"torchvision backbone of checkpoint {checkpoint_id}", lambda state: "optimizer" not in state),
    ]:
        with page.expect_download() as download:
            page.get_by_role("button", name=name).click()
        path = tmp_path / download.value.suggested_filename
        download.value.save_as(path)
        assert path.name.startswith(trained) and path.suffix == ".pt"
        assert check(torch.load(io.BytesIO(path.read_bytes()), weights_only=False))
    page.get_by_role("status").get_by_text("Saved").first.wait_for()


def test_an_embedding_of_a_checkpoint_is_computed_and_plotted(server, page, trained, tmp_path):
    page.goto(f"{server}/ui/jobs/{trained}")
    embedding = page.locator("#embedding")
    embedding.get_by_text("No embedding of this checkpoint yet").wait_for()
    # The attention protocol takes ViTs only (its facts' backbone), so this run offers no attention view.
    assert page.locator("#attention").count() == 0
    embedding.get_by_role("button", name="Compute embedding").click()
    embedding.get_by_text("queued").wait_for()
    # The eval job runs on the worker; the plot replaces the button once it has succeeded.
    embedding.locator("canvas").wait_for(timeout=90_000)
    assert embedding.get_by_role("listitem").count() == 10  # synthetic's classes, in the legend
    page.screenshot(path=str(tmp_path / "embedding.png"), full_page=True)
    # A reload finds it.
    page.reload()
    page.locator("#embedding canvas").wait_for()


def test_attention_maps_of_a_vit_checkpoint_are_computed_and_drawn(server, worker, page, owner_token, tmp_path):
    # One epoch of 20 images in batches of 10: two steps of a tiny DINO ViT.
    config = {
        "backbone": "vit_tiny",
        "epochs": 1,
        "batch_size": 10,
        "subset": 20,
        "precision": "fp32",
        "out_dim": 256,
        "hidden_dim": 64,
        "bottleneck_dim": 32,
        "local_crops": 2,
    }
    body = {"kind": "pretrain", "method": "dino", "dataset": {"name": "synthetic"}, "config": config, "evaluate": []}
    job = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(owner_token)).json()["id"]
    read_events(server, f"/v1/jobs/{job}/events", auth(owner_token), timeout=180)
    page.goto(f"{server}/ui/jobs/{job}")
    attention = page.locator("#attention")
    attention.get_by_text("No attention maps of this checkpoint yet").wait_for()
    attention.get_by_role("button", name="Attention maps").click()
    attention.get_by_text("queued").wait_for()
    # Six test images, each beside its mean map and its 3 heads' maps.
    attention.locator("figure").nth(5).wait_for(timeout=90_000)
    assert attention.locator("figure").count() == 6 and attention.locator("canvas").count() == 6 * 4
    assert attention.get_by_role("img", name="Test image 1, class").count() == 1
    assert attention.locator("img").first.evaluate("img => img.complete && img.naturalWidth") == 32
    page.screenshot(path=str(tmp_path / "attention.png"), full_page=True)


def test_cancel_a_second_job_from_its_row(server, worker, page, trained, owner_token, shared, tmp_path):
    body = {
        "kind": "pretrain",
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "config": {**TINY, "epochs": 500},
        "evaluate": [],
    }
    job_id = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(owner_token)).json()["id"]
    shared["second"] = job_id
    page.goto(f"{server}/ui/")
    row = page.locator(f'#jobs-table tr[data-job="{job_id}"]')
    # Followed live once it runs: its progress cell counts steps.
    row.get_by_text("step").wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "running.png"))
    row.get_by_role("button", name=f"Cancel job {job_id[:8]}").click()
    row.get_by_role("button", name=f"Confirm cancel of job {job_id[:8]}").click()
    row.locator(".status-cancelled").wait_for(timeout=30_000)
    assert httpx.get(f"{server}/v1/jobs/{job_id}", headers=auth(owner_token)).json()["status"] == "cancelled"
    assert not row.get_by_role("button", name=f"Cancel job {job_id[:8]}").is_visible()


def test_compare_runs_and_the_leaderboard(server, page, trained, owner_token, shared, tmp_path):
    second = shared.get("second")
    page.goto(f"{server}/ui/")
    for job_id in filter(None, [trained, second]):
        page.get_by_role("checkbox", name=f"Select job {job_id[:8]} to compare").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/ui/compare?jobs=*")
    page.locator("#compare-runs").wait_for()
    assert int(page.locator("#compare-loss").get_attribute("data-points")) >= STEPS
    if second:
        differences = [row.split() for row in page.locator("#compare-config tbody tr").all_inner_texts()]
        assert ["epochs", "3", "500"] in differences, differences
    page.get_by_label("epoch", exact=True).check()
    page.locator("#compare-loss figcaption").get_by_text("Loss by epoch").wait_for()
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    page.get_by_role("link", name="Leaderboard").click()
    page.wait_for_url("**/ui/leaderboard")
    page.select_option("#lb-dataset", "synthetic")
    page.select_option("#lb-protocol", "knn")
    page.wait_for_url("**/ui/leaderboard?dataset=synthetic&protocol=knn")
    best = page.locator("#leaderboard tbody tr")
    best.get_by_role("link", name=trained[:8]).wait_for()
    assert best.count() == 1 and best.get_by_role("cell", name="simclr").count() == 1
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
    # Ranked apart by what the runs' provenance records: here one torch, the tests' own.
    page.select_option("#lb-group", "torch")
    page.wait_for_url("**/ui/leaderboard?dataset=synthetic&protocol=knn&group_by=torch")
    page.locator("#leaderboard caption").get_by_text(f"torch {torch.__version__}").wait_for()


def test_delete_a_finished_job_from_its_page(server, worker, page, owner_token):
    body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}
    job_id = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(owner_token)).json()["id"]
    read_events(server, f"/v1/jobs/{job_id}/events", auth(owner_token), timeout=180)
    page.goto(f"{server}/ui/jobs/{job_id}")
    page.locator(".job-header .status-succeeded").wait_for()
    page.get_by_role("button", name="Delete job").click()
    # The first click only arms it.
    assert httpx.get(f"{server}/v1/jobs/{job_id}", headers=auth(owner_token)).status_code == 200
    page.get_by_role("button", name="Confirm delete: checkpoints and results too").click()
    page.wait_for_url(f"{server}/ui/")
    assert httpx.get(f"{server}/v1/jobs/{job_id}", headers=auth(owner_token)).status_code == 404
    assert page.locator(f'#jobs-table tr[data-job="{job_id}"]').count() == 0


def test_a_job_no_worker_fits_says_why_on_its_page(server, worker, page, owner_token):
    body = {"method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}
    body["resources"] = {"device": "gpu", "devices": 4}  # this module's worker takes no GPU jobs
    job_id = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(owner_token)).json()["id"]
    page.goto(f"{server}/ui/jobs/{job_id}")
    page.get_by_role("status").filter(has_text="Not started: waiting for a worker with 4 GPUs").wait_for()
    httpx.post(f"{server}/v1/jobs/{job_id}/cancel", headers=auth(owner_token))


def test_the_leaderboard_offers_the_protocols_with_an_accuracy(server, page, owner_token):
    protocols = httpx.get(f"{server}/v1/protocols", headers=auth(owner_token)).json()
    page.goto(f"{server}/ui/leaderboard")
    page.locator("#leaderboard > *").first.wait_for()
    offered = [o for o in page.locator("#lb-protocol option").evaluate_all("os => os.map(o => o.value)") if o]
    assert sorted(offered) == sorted(p["name"] for p in protocols if p["accuracy"])
    assert "knn" in offered and "embedding" not in offered and "attention" not in offered


def test_the_jobs_list_finds_a_run_by_its_tag_and_name(server, page, trained):
    from playwright.sync_api import expect

    page.goto(f"{server}/ui/")
    page.locator("#jobs-table").wait_for()
    page.fill("#filter-tag", "source:form")
    page.press("#filter-tag", "Tab")
    row = page.locator(f'#jobs-table tr[data-job="{trained}"]')
    row.locator(".job-name").get_by_text("form run").wait_for()
    assert "source=form" not in page.url and "tag=source%3Aform" in page.url
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    page.fill("#filter-name", "no such run")
    page.press("#filter-name", "Tab")
    page.get_by_text("No jobs match these filters.").wait_for()
    assert page.locator("#jobs-table tbody tr").count() == 0


def test_an_api_error_shows_in_its_part_of_the_page_which_stays_usable(server, page, trained, tmp_path):
    # The API refuses an unknown protocol (422): the leaderboard says so where its tables go.
    page.goto(f"{server}/ui/leaderboard?protocol=nosuch")
    alert = page.locator("#leaderboard").get_by_role("alert")
    alert.get_by_text("Could not load the leaderboard: query.protocol").wait_for()
    page.screenshot(path=str(tmp_path / "leaderboard-error.png"), full_page=True)
    page.select_option("#lb-protocol", "knn")
    page.locator("#leaderboard tbody tr").first.wait_for()
    assert alert.count() == 0

    # And an unknown status: the jobs table says why it is empty instead of showing no jobs.
    page.goto(f"{server}/ui/?status=bogus")
    page.get_by_role("alert").get_by_text("Could not load the jobs: query.status").wait_for()
    assert page.locator("#jobs-table tbody tr").count() == 0
    page.select_option("#filter-status", "succeeded")
    page.locator(f'#jobs-table tr[data-job="{trained}"]').wait_for()
    assert page.get_by_role("alert").count() == 0


def test_the_submit_forms_recipe_hint_comes_from_the_api(server, page, owner_token):
    datasets = {d["name"]: d for d in httpx.get(f"{server}/v1/datasets", headers=auth(owner_token)).json()}
    simclr = {m["name"]: m for m in httpx.get(f"{server}/v1/methods", headers=auth(owner_token)).json()}["simclr"]
    page.goto(f"{server}/ui/submit")
    page.locator("#c-temperature").wait_for()
    page.select_option("#f-method", "simclr")
    # A data set of small images (32 px) and one of larger ones (96 px): each gets the recipe the API names.
    for name in ("synthetic", "stl10"):
        page.select_option("#f-dataset", f"builtin:{name}")
        recipe = datasets[name]["recipe"]
        page.locator("#f-recipe-hint").get_by_text(recipe).wait_for()
        values = simclr["small_image_recipe"] if recipe == "small_images" else simclr["defaults"]
        assert page.locator("#c-temperature").get_attribute("placeholder") == str(values["temperature"]), name
    assert {datasets["synthetic"]["recipe"], datasets["stl10"]["recipe"]} == {"small_images", "paper"}


def test_run_again_with_changes_prefills_the_form(server, page, trained):
    page.goto(f"{server}/ui/jobs/{trained}")
    page.get_by_role("link", name="Run again with changes").click()
    page.wait_for_url(f"**/ui/submit?from={trained}")
    page.get_by_role("heading", name="Run again with changes").wait_for()
    assert page.locator("#f-method").input_value() == "simclr"
    assert page.locator("#f-dataset").input_value() == "builtin:synthetic"
    assert {key: page.get_by_label(key, exact=True).input_value() for key in FORM_CONFIG} == FORM_CONFIG
    assert (
        page.get_by_label("knn", exact=True).is_checked() and not page.get_by_label("linear", exact=True).is_checked()
    )


def test_no_serious_accessibility_violations(server, browser, page, trained, tmp_path):
    # Each page, once what it loads is on it.
    pages = {
        "jobs": ("/ui/", "#jobs-table tbody tr"),
        "run": (f"/ui/jobs/{trained}", "#checkpoints"),
        "submit": ("/ui/submit", "#c-temperature"),
        "compare": (f"/ui/compare?jobs={trained}", "#compare-runs"),
        "leaderboard": ("/ui/leaderboard", "#leaderboard > *"),
    }
    found = {}
    for name, (path, loaded) in pages.items():
        page.goto(server + path)
        page.locator(loaded).first.wait_for()
        found[name] = axe_violations(page)
    sign_in = browser.new_page()
    sign_in.goto(f"{server}/ui/")
    sign_in.get_by_label("API token").wait_for()
    found["sign in"] = axe_violations(sign_in)
    sign_in.close()
    serious = {
        name: [v for v in violations if v["impact"] in ("serious", "critical")] for name, violations in found.items()
    }
    assert not any(serious.values()), serious


def axe_violations(page) -> list[dict]:
    page.add_script_tag(url=AXE)  # from /ui itself, as the page's Content-Security-Policy allows
    return page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .map(v => ({id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))""")


def test_without_authentication_a_banner_says_so_and_no_token_is_asked(service_env, browser, tmp_path):
    """An embedded service (SQLite) started with authentication off."""
    from store import migrate

    state = tmp_path / "state"
    database = f"sqlite:///{state}/cssl.db"
    state.mkdir()
    migrate.upgrade(database)
    env = {
        **service_env,
        "CSSL_STATE_DIR": str(state),
        "CSSL_DATABASE_URL": database,
        "CSSL_BROKER_URL": "filesystem://",
        "CSSL_AUTH_DISABLED": "1",
        "CSSL_DATA_ROOTS": str(state / "data"),
    }
    process, base = start_api(env, tmp_path / "api.log")
    try:
        page = browser.new_page()
        page.goto(f"{base}/ui/")
        page.get_by_text("Authentication is off").wait_for()
        page.locator("#jobs-table").wait_for()
        assert page.get_by_label("API token").count() == 0
        page.screenshot(path=str(tmp_path / "no-auth.png"))
        page.close()
    finally:
        process.stop()
