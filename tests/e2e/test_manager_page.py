"""The manager page in a real browser: headless Chromium (Debian's package) driven by Playwright.

One small demo-like world for the module: a history simulated as `dealrisk demo` does (ending today),
imported into a SQLite store, one model trained and registered as champion, the service running under
uvicorn on a free port. Each test signs in as a manager would and checks what is on the screen; every
view is checked with axe-core (vendored from npm, injected by the test) and photographed into
tests/artifacts/screenshots/ (gitignored; README names it).

Without /usr/bin/chromium or the playwright package these tests skip on a developer machine, and fail
when CI=true: CI must run them.
"""

from __future__ import annotations

import csv
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
# The demo simulates 4,000 deals over two years; 1,600 over the same two years keep what matters here
# (30 to 50 deals going cold per pipeline to page through, and dead deals under 2% close probability in
# every pipeline, as in the demo) while the module's setup stays near a minute.
N_DEALS = 1600
DEMO_DAYS = 730


def _require_browser() -> Any:
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"no {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = problem or "the playwright package is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


@dataclass
class Site:
    url: str
    keys: dict[str, str]
    pipelines: list[str]
    deal_pipeline: dict[str, str]
    tracking_uri: str = ""
    model_version: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_browser()  # fail or skip before a minute of setup
    import uvicorn

    from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
    from serving.app import create_app
    from serving.settings import Settings
    from serving.store import Store
    from training.simulate import simulate_history
    from training.train import TrainConfig, train

    home = tmp_path_factory.mktemp("page-home")
    old_cwd = Path.cwd()
    os.chdir(home)  # MLflow writes run artifacts under the working directory
    end = pd.Timestamp.now(tz="UTC").normalize()
    start = end - pd.Timedelta(days=DEMO_DAYS)
    history = simulate_history(n_deals=N_DEALS, seed=7, start=start.isoformat(), end=end.isoformat())
    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'dealrisk.db'}",
        tracking_uri=f"sqlite:///{home / 'm.db'}",
        model_uri=f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", reload_interval_s=0,
    )
    store = Store(settings.database_url)
    store.create_schema()
    store.import_history(history)
    result = train(history, TrainConfig(seed=0), settings.tracking_uri)
    assert result.is_champion
    pipelines = sorted(history.pipelines)
    keys = {
        "manager": store.create_api_key("manager", ["*"])[0],
        "manager_one": store.create_api_key("manager", [pipelines[0]])[0],
    }
    store.close()
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):  # wait until it accepts connections (startup loads the model)
        if server.started:
            break
        time.sleep(0.05)
    deals = history.deals
    yield Site(f"http://127.0.0.1:{port}", keys, pipelines,
               dict(zip(deals["deal_id"].astype(str), deals["pipeline"].astype(str), strict=True)),
               settings.tracking_uri, str(result.model_version))
    server.should_exit = True
    thread.join(timeout=10)
    os.chdir(old_cwd)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp lets the test inject axe-core; the page itself never needs it.
    context = browser.new_context(viewport={"width": 1300, "height": 950}, accept_downloads=True,
                                  bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def sign_in(page: Any, site: Site, key: str = "manager", query: str = "") -> None:
    page.goto(f"{site.url}/{query}")
    page.fill("#api-key", site.keys[key])
    page.keyboard.press("Enter")
    wait_loaded(page)


def wait_loaded(page: Any) -> None:
    page.wait_for_selector("#view[aria-busy='false']")
    page.wait_for_function("document.querySelector('#status').textContent.includes('loaded')"
                           " || document.querySelector('#app-error').textContent !== ''")


def check_view(page: Any, name: str) -> None:
    """No serious or critical axe-core violation (WCAG 2.1 A and AA rules), and a screenshot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
    )
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{name}: {bad}"


def rows(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#deals tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")


def api_json(page: Any, site: Site, path: str, key: str = "manager") -> Any:
    res = page.request.get(f"{site.url}{path}", headers={"Authorization": f"Bearer {site.keys[key]}"})
    assert res.ok, res.text()
    return res.json()


def test_sign_in_puts_focus_on_the_view_and_the_form_is_in_main(page: Any, site: Site) -> None:
    page.goto(site.url)
    assert page.locator("main #key-form").count() == 1
    assert page.evaluate("document.activeElement.id") == "api-key"
    check_view(page, "01-sign-in")
    page.fill("#api-key", site.keys["manager"])
    page.keyboard.press("Enter")
    wait_loaded(page)
    assert page.evaluate("document.activeElement.id") == "view-title"
    assert "Going cold" in page.inner_text("#view-title")
    assert re.search(r"model version \d+", page.inner_text("#model"))
    check_view(page, "02-going-cold")


def test_default_order_puts_winnable_deals_first(page: Any, site: Site) -> None:
    sign_in(page, site)
    for pipeline in site.pipelines:
        page.select_option("#pipeline", pipeline)
        page.wait_for_function(f"document.querySelector('#deals')?.dataset.pipeline === {pipeline!r}")
        wait_loaded(page)
        shown = rows(page)[:10]
        expected = api_json(page, site, f"/v1/pipelines/{pipeline}/at-risk?limit=10")["deals"]
        assert [r[1] for r in shown] == [d["deal_id"] for d in expected]
        # No deal under 2% close probability in the top 10; ranked by value at risk.
        assert all(d["close_probability"] >= 0.02 for d in expected), (pipeline, expected)
        values = [d["value_at_risk"] for d in expected]
        assert values == sorted(values, reverse=True)
        assert all(float(r[8].rstrip("%")) >= 2.0 for r in shown)


def test_sort_filter_page_and_reload(page: Any, site: Site) -> None:
    sign_in(page, site)
    page.select_option("#sort", "amount")
    page.wait_for_url(re.compile(r"sort=amount"))
    wait_loaded(page)
    amounts = [float(r[5].replace(",", "")) for r in rows(page)]
    assert len(amounts) == 25 and amounts == sorted(amounts, reverse=True)

    owner = page.eval_on_selector("#f-owner", "s => [...s.options].map(o => o.value).filter(Boolean)[0]")
    page.select_option("#f-owner", owner)
    page.focus("#f-min")
    page.keyboard.type("1")
    page.keyboard.press("Enter")  # Enter applies the filters
    page.wait_for_url(re.compile(r"owner="))
    wait_loaded(page)
    assert "min_amount=1" in page.url
    assert {r[2] for r in rows(page)} == {owner}
    assert f"owner {owner}" in page.inner_text("#view-scope")

    totals = {p: api_json(page, site, f"/v1/pipelines/{p}/at-risk?limit=1")["total"] for p in site.pipelines}
    biggest = max(totals, key=lambda p: totals[p])
    page.goto(f"{site.url}/?pipeline={biggest}")
    wait_loaded(page)
    total = int(page.inner_text("#list-count").split()[0])
    assert total == totals[biggest] > 25
    page.click("text=Next")
    page.wait_for_url(re.compile(r"page=2"))
    wait_loaded(page)
    assert rows(page)[0][0] == "26" and "Page 2 of" in page.inner_text("#page-of")
    page.reload()  # the view lives in the URL: a reload (or a shared link) shows the same page
    wait_loaded(page)
    assert rows(page)[0][0] == "26" and page.input_value("#pipeline") == biggest


def test_open_a_deal_and_see_its_timeline_and_score_history(page: Any, site: Site) -> None:
    sign_in(page, site)
    first = rows(page)[0][1]
    page.click(f"#deals a:text-is('{first}')")
    page.wait_for_url(re.compile(r"view=deal"))
    wait_loaded(page)
    assert page.evaluate("document.activeElement.id") == "view-title"
    assert first in page.inner_text("#view-title")
    events = page.locator("#timeline li")
    assert events.count() >= 2
    assert "Created" in events.last.inner_text()
    history = api_json(page, site, f"/v1/deals/{first}/score-history")
    weeks = page.locator("#score-history tbody tr")
    assert weeks.count() >= 1 and page.locator("#score-chart polyline").count() == 2
    assert weeks.last.locator("td").first.inner_text() == history["points"][-1]["as_of"][:10]
    check_view(page, "03-deal")


def test_switching_pipelines_fast_never_shows_mixed_data(page: Any, site: Site) -> None:
    slow, fast = site.pipelines[0], site.pipelines[1]
    sign_in(page, site, query=f"?pipeline={fast}")
    held: list[Any] = []
    # Answers about the slow pipeline are held back and released after the fast one is on screen,
    # so they arrive out of order.
    page.route(re.compile(rf"/v1/pipelines/{re.escape(slow)}/"), lambda route: held.append(route))
    for view in ("cold", "teams", "forecast"):
        for _ in range(2):
            page.goto(f"{site.url}/?pipeline={fast}&view={view}")
            wait_loaded(page)
            page.select_option("#pipeline", slow)
            page.select_option("#pipeline", fast)
            page.wait_for_function(f"document.querySelector('#status').textContent.includes({fast!r})"
                                   " && document.querySelector('#status').textContent.includes('loaded')")
            for route in held:  # answer each held request now, after the fast pipeline's answers
                try:
                    route.fulfill(response=route.fetch())
                except Exception:  # noqa: BLE001 - the page already aborted that request
                    pass
            held.clear()
            page.wait_for_timeout(300)
            assert page.input_value("#pipeline") == fast
            assert fast in page.inner_text("#view-title")
            stamped = page.eval_on_selector_all("[data-pipeline]", "els => els.map(e => e.dataset.pipeline)")
            assert stamped and set(stamped) == {fast}, (view, stamped)
            if view == "cold":
                assert {site.deal_pipeline[r[1]] for r in rows(page)} == {fast}
    page.unroute(re.compile(rf"/v1/pipelines/{re.escape(slow)}/"))


def test_download_the_csv(page: Any, site: Site, tmp_path: Path) -> None:
    sign_in(page, site, query=f"?pipeline={site.pipelines[0]}")
    with page.expect_download() as info:
        page.click("#csv")
    download = info.value
    assert download.suggested_filename == f"at-risk-{site.pipelines[0]}.csv"
    target = tmp_path / "at-risk.csv"
    download.save_as(str(target))
    with target.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert "value_at_risk" in records[0]
    assert [r["deal_id"] for r in records[:25]] == [r[1] for r in rows(page)]


def shown(amount: float) -> str:
    """An amount as the page writes it: whole units, halves rounded away from zero, thousands commas."""
    return f"{math.floor(amount + 0.5):,}"


def test_forecast_numbers_and_model_card(page: Any, site: Site) -> None:
    pipeline = site.pipelines[0]
    sign_in(page, site, query=f"?pipeline={pipeline}")
    # The numbers to compare with are the answer the page got (a forecast "as of now" moves with time).
    with page.expect_response(lambda r: "/forecast" in r.url) as answer:
        page.click("#tabs a[data-view='forecast']")
    data = answer.value.json()
    wait_loaded(page)
    table = page.eval_on_selector_all("#forecast-table tbody tr",
                                      "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")
    first = data["periods"][0]
    assert table[0][0].startswith(first["period"])
    assert table[0][3] == shown(first["expected_won_amount"])
    assert table[0][4:7] == [shown(first[q]) for q in ("p10", "p50", "p90")]
    if "total" in first:  # open deals plus deals not created yet
        month_total = next(r for r in table if r[0] == f"{first['period']} · total")
        quantities = ("expected_won_amount", "p10", "p50", "p90")
        assert month_total[3:7] == [shown(first["total"][q]) for q in quantities]
    everything = next(r for r in table if r[0].startswith("All 3 months"))
    expected = sum(p.get("total", p)["expected_won_amount"] for p in data["periods"])
    assert everything[3] == shown(expected)
    assert "expected" in page.inner_text("figure.chart figcaption")
    check_view(page, "04-forecast")

    page.click("#tabs a[data-view='model']")
    wait_loaded(page)
    body = page.inner_text("#view-body")
    assert "stage_prior" in body and "logistic" in body and "Trained at" in body
    assert "lightgbm (served)" in body
    assert page.locator("figure.chart svg circle").count() >= 2  # calibration points
    check_view(page, "05-model")


def test_clean_up_lists_the_dead_deals(page: Any, site: Site) -> None:
    totals = {p: api_json(page, site, f"/v1/pipelines/{p}/stale?limit=1")["total"] for p in site.pipelines}
    pipeline = max(totals, key=lambda p: totals[p])
    sign_in(page, site, query=f"?pipeline={pipeline}&view=stale")
    shown = rows(page)
    assert 0 < len(shown) == min(25, totals[pipeline])
    assert all(float(r[8].rstrip("%")) < 2.0 for r in shown)  # close probability under 2%
    listed = api_json(page, site, f"/v1/pipelines/{pipeline}/at-risk?limit=1000")["deals"]
    going_cold = {d["deal_id"] for d in listed}
    assert not going_cold & {r[1] for r in shown}  # a dead deal is not "going cold"
    check_view(page, "06-clean-up")


@pytest.mark.parametrize(("view", "shot"), [("changes", "07-changes"), ("teams", "08-teams")])
def test_other_views_are_accessible(page: Any, site: Site, view: str, shot: str) -> None:
    sign_in(page, site, query=f"?pipeline={site.pipelines[0]}&view={view}")
    assert page.inner_text("#app-error") == ""
    check_view(page, shot)


def test_keyboard_reaches_the_views(page: Any, site: Site) -> None:
    sign_in(page, site)
    page.focus("#tabs a[data-view='teams']")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"view=teams"))
    wait_loaded(page)
    assert page.evaluate("document.activeElement.id") == "view-title"
    assert "By team" in page.inner_text("#view-body")


def test_pipelines_outside_the_key_are_refused(page: Any, site: Site) -> None:
    mine, other = site.pipelines[0], site.pipelines[1]
    sign_in(page, site, key="manager_one", query=f"?pipeline={other}")
    assert page.eval_on_selector("#pipeline", "s => [...s.options].map(o => o.value)") == [mine]
    assert f'"{other}" is not available' in page.inner_text("#app-error")
    assert page.input_value("#pipeline") == mine and f"pipeline={mine}" in page.url
    res = page.request.get(f"{site.url}/v1/pipelines/{other}/at-risk",
                           headers={"Authorization": f"Bearer {site.keys['manager_one']}"})
    assert res.status == 404


def test_model_view_shows_the_live_check_and_metrics_follow(page: Any, site: Site) -> None:
    from models.loading import save_monitor_report

    sign_in(page, site, query=f"?pipeline={site.pipelines[0]}&view=model")
    assert "Not checked yet" in page.inner_text("#monitor-state")

    # What `dealrisk monitor` (cron) keeps with the version; the page and /metrics show its state.
    reason = "cold: observed rate 0.310 vs predicted 0.240 on 412 settled scores (gap +0.070 ≥ 0.05)"
    save_monitor_report(site.model_version, {
        "state": "watch", "reasons": [reason], "model_version": site.model_version,
        "since": "2026-01-01T00:00:00+00:00", "until": "2026-02-01T00:00:00+00:00", "n_points": 412,
        "calibration": {"cold": {"state": "watch", "by_band": [
            {"band": "high", "n": 100, "predicted": 0.61, "observed": 0.72},
            {"band": "medium", "n": 150, "predicted": 0.3, "observed": 0.35},
            {"band": "low", "n": 162, "predicted": 0.08, "observed": 0.1}]}},
        "drift": [],
    }, site.tracking_uri)
    page.reload()
    wait_loaded(page)
    assert page.inner_text("#monitor-state strong") == "watch"
    assert reason in page.inner_text("#monitor-reasons")
    assert "72.0%" in page.inner_text("#view-body")  # the high band's observed rate
    check_view(page, "09-model-live-check")
    # The page's read of the report refreshed the cached state that /metrics shows.
    auth = {"Authorization": f"Bearer {site.keys['manager']}"}
    metrics = page.request.get(f"{site.url}/metrics", headers=auth).text()
    gauge = f'dealrisk_model_monitor_state{{model_version="{site.model_version}",state="watch"}} 1.0'
    assert gauge in metrics
