"""`dealrisk health`, `forecast` and `at-risk` through the real Typer app (CliRunner).

A small simulated history is written to a folder and trained on once per module (`dealrisk train`); the
commands then read that folder and the module's MLflow store, passed as env to every invocation because
the autouse fixture points the environment at a fresh, empty folder per test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_helpers import isolated_env, ok_json, run
from typer.testing import CliRunner

from dealrisk.cli import app
from features.health import pipeline_health
from training.data import read_history, write_history
from training.simulate import simulate_history

HEALTH_KEYS = (
    "open_deals",
    "avg_deal_size",
    "win_rate",
    "avg_cycle_days",
    "sales_velocity",
    "funnel",
    "stalled_deals",
)
UNREADABLE = re.compile(r"\b(unknown|nan|none|inf)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Trained:
    data: Path
    env: dict[str, str]
    pipelines: tuple[str, ...]
    end: pd.Timestamp


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("analytics-cli")
    env = isolated_env(root)
    history = simulate_history(400, seed=11)
    data = write_history(history, root / "data")
    ok_json(run(env, "train", "--data", str(data), "--json"))
    yield Trained(Path(data), env, tuple(sorted(history.pipelines)), history.end_time)


def test_health_json_has_the_spec_figures_per_pipeline(trained: Trained) -> None:
    out = ok_json(
        run(
            trained.env,
            "health",
            "--data",
            str(trained.data),
            "--since",
            "2025-07-01",
            "--until",
            "2025-12-01",
            "--json",
        )
    )
    assert set(out["pipelines"]) == set(trained.pipelines)
    expected = pipeline_health(read_history(trained.data), "2025-07-01", "2025-12-01")
    assert any(b["sales_velocity"] for b in out["pipelines"].values())
    for name, block in out["pipelines"].items():
        for key in HEALTH_KEYS:
            assert key in block, (name, key)
        assert block["open_deals"] >= 0
        assert block["win_rate"] is None or 0.0 <= block["win_rate"] <= 1.0
        # The figures are features.health's (whose formulas tests/features/test_health.py checks by
        # hand), for the same window on the same history: the CLI neither recomputes nor rounds them.
        same = expected["pipelines"][name]
        for key in ("open_deals", "won_deals", "lost_deals", "avg_deal_size", "win_rate", "avg_cycle_days",
                    "sales_velocity", "stalled_count"):
            assert block[key] == pytest.approx(same[key], rel=1e-9), (name, key)
        assert isinstance(block["funnel"], list) and block["funnel"]
        assert all(s["pipeline"] == name for s in block["stalled_deals"])
    overall = out["overall"]
    assert overall["open_deals"] == sum(b["open_deals"] for b in out["pipelines"].values())


def test_health_bad_window_fails_with_a_clear_message(trained: Trained) -> None:
    bad = run(
        trained.env,
        "health",
        "--data",
        str(trained.data),
        "--since",
        "last spring",
        "--until",
        "2025-12-01",
        "--json",
    )
    assert bad.exit_code != 0 and "--since" in bad.output and "ISO 8601" in bad.output
    reversed_window = run(
        trained.env, "health", "--data", str(trained.data), "--since", "2025-12-01", "--until", "2025-01-01"
    )
    assert reversed_window.exit_code != 0 and "after --until" in reversed_window.output
    unknown = run(
        trained.env,
        "health",
        "--data",
        str(trained.data),
        "--since",
        "2025-01-01",
        "--until",
        "2025-12-01",
        "--pipeline",
        "Nope",
    )
    assert unknown.exit_code != 0 and "Nope" in unknown.output and trained.pipelines[0] in unknown.output


def test_forecast_json_has_ordered_quantiles_per_period(trained: Trained) -> None:
    out = ok_json(run(trained.env, "forecast", "--data", str(trained.data), "--months", "3", "--json"))
    assert out["model_version"] == "1"
    periods = out["periods"]
    assert len(periods) >= 3
    for p in periods:
        assert p["expected_won_amount"] >= 0
        assert 0 <= p["p10"] <= p["p50"] <= p["p90"] <= p["pipeline_amount"] + 1e-6, p
    labels = [p["period"] for p in periods]
    assert labels == sorted(labels)


def test_at_risk_json_is_ranked_by_value_at_risk_with_readable_reasons(trained: Trained) -> None:
    out = ok_json(run(trained.env, "at-risk", "--data", str(trained.data), "--limit", "10", "--json"))
    assert out["model_version"] == "1"
    deals = out["deals"]
    assert 0 < len(deals) <= 10 and out["total"] >= len(deals)
    at_risk = [d["value_at_risk"] for d in deals]
    assert at_risk == sorted(at_risk, reverse=True)
    for d in deals:  # value at risk = amount × close probability × cold risk
        assert d["value_at_risk"] == pytest.approx(d["amount"] * d["close_probability"] * d["cold_risk"])
    by_cold = ok_json(run(trained.env, "at-risk", "--data", str(trained.data), "--limit", "10", "--json",
                          "--sort", "cold_risk"))["deals"]
    risks = [d["cold_risk"] for d in by_cold]
    assert risks == sorted(risks, reverse=True)
    risks = [d["cold_risk"] for d in deals]
    assert all(0.0 <= r <= 1.0 for r in risks)
    assert all(0.0 <= d["close_probability"] <= 1.0 for d in deals)
    texts = [r["text"] for d in deals for r in d["reasons"]]
    assert texts and not [t for t in texts if UNREADABLE.search(t)]


def test_at_risk_filters_by_pipeline_and_as_of(trained: Trained) -> None:
    pipeline = trained.pipelines[0]
    out = ok_json(
        run(
            trained.env,
            "at-risk",
            "--data",
            str(trained.data),
            "--pipeline",
            pipeline,
            "--as-of",
            "2025-06-01",
            "--json",
        )
    )
    assert pd.Timestamp(out["as_of"]) == pd.Timestamp("2025-06-01", tz="UTC")
    assert out["deals"] and all(d["pipeline"] == pipeline for d in out["deals"])
    bad = run(trained.env, "at-risk", "--data", str(trained.data), "--as-of", "soon", "--json")
    assert bad.exit_code != 0 and "--as-of" in bad.output


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        ("at-risk", "going cold, ranked by value at risk"),
        ("health", "pipeline health"),
        ("forecast", "P10/P50/P90"),
    ],
)
def test_help_of_every_analytics_command_says_what_it_does(command: str, purpose: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert purpose.lower() in " ".join(result.output.split()).lower()


def test_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "backtest", "compare", "promote", "score", "at-risk", "health", "forecast"):
        assert command in result.output


def _service_settings_and_key(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The service's settings on the module's stores (the environment set as the CLI runs see it) and a
    manager key for it."""
    from serving.settings import get_settings
    from serving.store import Store

    for name, value in trained.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    store = Store(settings.database_url)
    key, _ = store.create_api_key("manager", ["*"])
    store.close()
    return settings, key


def test_at_risk_of_one_pipeline_scores_like_the_api_on_the_same_store(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dealrisk at-risk --pipeline P` and GET /v1/pipelines/P/at-risk read one store and one model: the
    same deals, in the same order, with the same scores (population statistics from the whole store)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import get_settings

    assert run(trained.env, "import", str(trained.data)).exit_code == 0
    pipeline = trained.pipelines[0]
    as_of = (trained.end - pd.Timedelta(days=20)).isoformat()
    cli = ok_json(run(trained.env, "at-risk", "--pipeline", pipeline, "--as-of", as_of, "--limit", "1000",
                      "--json"))

    settings, key = _service_settings_and_key(trained, monkeypatch)
    with TestClient(create_app(settings)) as client:
        response = client.get(f"/v1/pipelines/{pipeline}/at-risk", params={"as_of": as_of, "limit": 1000},
                              headers={"Authorization": f"Bearer {key}"})
    get_settings.cache_clear()
    assert response.status_code == 200, response.text
    api = response.json()

    assert cli["total"] == api["total"] > 10
    assert [d["deal_id"] for d in cli["deals"]] == [d["deal_id"] for d in api["deals"]]
    for column in ("cold_risk", "close_probability", "expected_value"):
        from_api = [d[column] for d in api["deals"]]
        assert [d[column] for d in cli["deals"]] == pytest.approx(from_api, abs=1e-12), column


def test_at_risk_csv_is_the_apis_csv(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dealrisk at-risk --csv` writes the API's CSV of the same list (Accept: text/csv): the same
    columns in the same order (rank first), dates as dates, the same rows. It had no rank and wrote the
    likely close date as a full timestamp."""
    import csv
    import io

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import get_settings

    assert run(trained.env, "import", str(trained.data)).exit_code == 0
    pipeline = trained.pipelines[0]
    as_of = (trained.end - pd.Timedelta(days=20)).isoformat()
    printed = run(trained.env, "at-risk", "--pipeline", pipeline, "--as-of", as_of, "--limit", "15", "--csv")
    assert printed.exit_code == 0, printed.output
    settings, key = _service_settings_and_key(trained, monkeypatch)
    with TestClient(create_app(settings)) as client:
        response = client.get(f"/v1/pipelines/{pipeline}/at-risk", params={"as_of": as_of, "limit": 15},
                              headers={"Authorization": f"Bearer {key}", "Accept": "text/csv"})
    get_settings.cache_clear()
    assert response.status_code == 200, response.text
    cli, api = (list(csv.DictReader(io.StringIO(text))) for text in (printed.stdout, response.text))
    assert printed.stdout.splitlines()[0] == response.text.splitlines()[0]
    assert printed.stdout.startswith("rank,deal_id,pipeline,")
    assert len(cli) == len(api) == 15
    assert [r["rank"] for r in cli] == [str(i) for i in range(1, 16)]
    numbers = ("cold_risk", "close_probability", "close_probability_90d", "slip_risk", "expected_value",
               "value_at_risk")
    for mine, theirs in zip(cli, api, strict=True):
        assert {k: v for k, v in mine.items() if k not in numbers} == {
            k: v for k, v in theirs.items() if k not in numbers}
        for column in numbers:
            assert (mine[column] == theirs[column] == "") or float(mine[column]) == pytest.approx(
                float(theirs[column]), abs=1e-12), column
    dated = [r["likely_close_date"] for r in cli if r["likely_close_date"]]
    assert dated and all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dated)


def test_at_risk_as_of_now_is_the_apis_live_list(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a store the service keeps live scores for, `dealrisk at-risk --pipeline P` (no --as-of) and
    GET /v1/pipelines/P/at-risk (no as_of) give the same list: same deals, order, scores and versions."""
    import time

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import get_settings

    assert run(trained.env, "import", str(trained.data)).exit_code == 0
    pipeline = trained.pipelines[0]
    settings, key = _service_settings_and_key(trained, monkeypatch)

    def api_list() -> dict[str, Any]:
        response = client.get(f"/v1/pipelines/{pipeline}/at-risk", params={"limit": 1000},
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120  # a bounded wait for the background scorer, not a timing test
        api = api_list()
        while not all(d["scored_at"] != api["as_of"] for d in api["deals"]) and time.monotonic() < deadline:
            time.sleep(0.2)
            api = api_list()
        assert api["deals"] and all(d["scored_at"] != api["as_of"] for d in api["deals"]), "never live"
        cli = ok_json(run(trained.env, "at-risk", "--pipeline", pipeline, "--limit", "1000", "--json"))
        again = api_list()
    get_settings.cache_clear()
    assert cli["live"] is True
    # nothing was re-scored in between (else the comparison below would not be of one store state)
    assert [(d["deal_id"], d["scored_at"]) for d in again["deals"]] == [
        (d["deal_id"], d["scored_at"]) for d in api["deals"]]
    assert cli["total"] == api["total"] == len(cli["deals"]) >= 5
    assert [d["deal_id"] for d in cli["deals"]] == [d["deal_id"] for d in api["deals"]]
    for column in ("cold_risk", "close_probability", "expected_value", "value_at_risk", "amount"):
        assert [d[column] for d in cli["deals"]] == [d[column] for d in api["deals"]], column
    assert cli["model_version"] == api["model_version"]


def test_an_at_risk_limit_past_any_store_is_a_usage_error(tmp_path: Path) -> None:
    # 10**20 does not fit a database integer: on the store's live scores it was an OverflowError traceback
    result = run(isolated_env(tmp_path), "at-risk", "--limit", str(10**20))
    assert result.exit_code == 2, result.output
    assert "--limit" in result.output and "1000000000" in result.output
