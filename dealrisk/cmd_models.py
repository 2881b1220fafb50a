"""Model commands: `train`, `backtest`, `compare`, `promote`, `retrain`, `monitor`, `score`.

Each command parses options, calls the matching function in `training/` and prints; the work and its
tests live there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from dealrisk.console import emit_json, fail, option_time, out_console, progress

if TYPE_CHECKING:
    import pandas as pd

    from features.history import DealHistory

METRIC_HEADERS = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "n")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("train")(train_command)
    app.command("backtest")(backtest_command)
    app.command("compare")(compare_command)
    app.command("promote")(promote_command)
    app.command("retrain")(retrain_command)
    app.command("monitor")(monitor_command)
    app.command("score")(score_command)


def _tracking_uri() -> str:
    from serving.settings import get_settings

    return get_settings().tracking_uri


def _load_history(data: Path | None) -> DealHistory:
    """From a folder, or from the store when no folder is given; errors name what to fix."""
    from features.history import HistoryValidationError

    try:
        if data is not None:
            from training.data import read_history

            if not data.exists():
                fail(f"--data {data} does not exist; give the folder that holds deals.csv etc.")
            return read_history(data)
        from serving.settings import get_settings
        from serving.store import Store

        url = get_settings().database_url
        try:
            history = Store(url).load_history()
        except Exception as exc:  # noqa: BLE001 - any database error means "no usable store"
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fail(
                f"cannot read deals from the store ({url}): {first_line}. "
                "Run `dealrisk import DIR` first, or pass --data DIR."
            )
    except HistoryValidationError as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:
        fail(f"cannot read the deal history: {exc}")
    if history.n_deals() == 0:
        fail("the store holds no deals; run `dealrisk import DIR` first or pass --data DIR")
    return history


def _fmt(value: Any) -> str:
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d"))
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() or abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3f}"
    return str(value)


def _print_frame(frame: pd.DataFrame, title: str, columns: list[str] | None = None) -> None:
    import pandas as pd

    table = Table(title=title)
    cols = columns or list(frame.columns)
    for c in cols:
        numeric = pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        table.add_column(c, justify="right" if numeric else "left")
    for record in frame[cols].itertuples(index=False):
        table.add_row(*(_fmt(v) for v in record))
    out_console.print(table)


@contextmanager
def _bar(description: str, quiet: bool) -> Iterator[Callable[[str, float], None]]:
    """A 0-100 % bar; yields `report(stage, fraction_done)`, the progress callback the verbs take."""
    with progress(description, total=100, quiet=quiet) as advance:
        done = [0.0]

        def report(stage: str, fraction: float) -> None:
            target = min(100.0, fraction * 100)
            if target > done[0]:  # verbs may repeat a fraction; the bar only moves forward
                advance(target - done[0])
                done[0] = target

        yield report


def _train_config(
    horizon_days: float, cadence_days: float, seed: int, drop: list[str] | None, trees: int | None
) -> Any:
    from training.train import TrainConfig

    try:
        return TrainConfig(horizon_days=horizon_days, cadence_days=cadence_days, seed=seed,
                           drop_features=tuple(drop or ()),
                           lightgbm_params={"n_estimators": trees} if trees else {})
    except ValueError as exc:
        fail(f"--drop-feature: {exc}")


# The recipe options `train` and `retrain` share (one definition, so their meaning cannot drift apart).
HORIZON_OPTION = typer.Option(14, "--horizon-days", min=1, help="Cold-risk horizon H in days.")
CADENCE_OPTION = typer.Option(7, "--cadence-days", min=1, help="Days between training snapshots.")
SEED_OPTION = typer.Option(0, "--seed", help="Random seed for LightGBM.")
DROP_OPTION = typer.Option(
    None, "--drop-feature", help="A feature column the heads must not use (repeatable), e.g. for an ablation."
)
TREES_OPTION = typer.Option(
    None, "--trees", min=1, max=5000, help="LightGBM trees per head (default: sized to the data)."
)


def train_command(
    data: Path | None = typer.Option(
        None, "--data", "-d", help="History folder (CSV or Parquet + pipelines.yaml); default: the store."
    ),
    horizon_days: float = HORIZON_OPTION,
    cadence_days: float = CADENCE_OPTION,
    seed: int = SEED_OPTION,
    drop: list[str] | None = DROP_OPTION,
    trees: int | None = TREES_OPTION,
    no_register: bool = typer.Option(False, "--no-register", help="Log the run but register no version."),
    from_store: bool = typer.Option(
        False, "--from-store", help="Train on the store's history (DEALRISK_DATABASE_URL); not with --data."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train both heads, log an MLflow run and register a new model version.

    Cold risk and close probability are trained on point-in-time snapshots and reported against the
    stage prior and a logistic regression on the time-split test window. The run goes to experiment
    `deal-risk`; the first registered version becomes @champion, later ones wait as candidates.
    """
    from training.train import train

    if from_store and data is not None:
        fail("give either --data DIR or --from-store, not both")
    config = _train_config(horizon_days, cadence_days, seed, drop, trees)
    history = _load_history(data)
    with _bar("Training", as_json) as report:
        try:
            result = train(history, config, tracking_uri=_tracking_uri(), register=not no_register,
                           progress=report)
        except ValueError as exc:
            fail(str(exc))
    if as_json:
        emit_json(
            {
                "run_id": result.run_id,
                "model_version": result.model_version,
                "champion": result.is_champion,
                "data_note": result.data_note,
                "thin_data": result.thin_data,
                "served": result.served,
                "metrics": result.metrics,
                "n_snapshots": result.n_snapshots,
                "n_closed_deals": result.n_closed_deals,
                "split": result.split.to_dict(),
                "seconds": round(result.seconds, 2),
            }
        )
        return
    table = result.metrics_table()
    _print_frame(table, "Test-window metrics (time split)", ["head", "model", *METRIC_HEADERS])
    out_console.print(result.data_note)
    if result.model_version:
        status = "now @champion" if result.is_champion else "a candidate (see `dealrisk compare`)"
        out_console.print(
            f"Registered deal-risk version {result.model_version}: {status}. Run {result.run_id}."
        )


def backtest_command(
    data: Path | None = typer.Option(None, "--data", "-d", help="History folder; default: the store."),
    folds: int = typer.Option(3, "--folds", min=1, max=12, help="Number of rolling test windows."),
    fold_days: float | None = typer.Option(None, "--fold-days", min=1, help="Days per test window."),
    horizon_days: float = typer.Option(14, "--horizon-days", min=1, help="Cold-risk horizon H in days."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Rolling time-split backtest: metrics per fold, and the forecast made at each fold's start against
    what was won in each following month (P10-P90 coverage, weighted absolute percentage error).

    Each fold trains on everything before its window and tests on it. The run is logged to MLflow
    (experiment deal-risk, tag kind=backtest).
    """
    from training.backtest import backtest, log_backtest
    from training.train import TrainConfig

    history = _load_history(data)
    config = TrainConfig(horizon_days=horizon_days)
    with _bar("Backtesting", as_json) as report:
        try:
            result = backtest(history, config, folds, fold_days, report)
        except ValueError as exc:
            fail(str(exc))
        run_id = log_backtest(result, config, _tracking_uri())
    if as_json:
        emit_json(result.to_dict() | {"run_id": run_id})
        return
    _print_frame(result.metrics, "Metrics per fold", ["fold", "head", "model", *METRIC_HEADERS])
    _print_frame(result.forecast, "Forecast per pipeline and month (total: open and new deals)")
    figures = result.forecast_figures()
    out_console.print(", ".join(f"{k}: {v:.3f}" for k, v in figures.items()) + f" · MLflow run {run_id}")


def compare_command(
    versions: list[str] | None = typer.Argument(
        None, help="Versions to compare with the champion; default: every newer candidate."
    ),
    data: Path | None = typer.Option(None, "--data", "-d", help="History folder; default: the store."),
    folds: int = typer.Option(3, "--folds", min=1, max=12, help="Number of rolling-origin folds."),
    fold_days: float | None = typer.Option(None, "--fold-days", min=1, help="Days per test window."),
    boot: int = typer.Option(200, "--boot", min=20, max=5000, help="Bootstrap resamples of deals."),
    forecast_months: int = typer.Option(
        0, "--forecast-months", min=0, max=12,
        help="Also forecast this many months from each fold's start and report P10-P90 coverage and WAPE.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare the champion and candidate versions out of sample.

    Each version's training configuration is retrained on the same rolling-origin folds (fit on what
    was known before each fold, score the snapshots inside it). Per head and version: ROC AUC, Brier,
    log loss and ECE with bootstrap confidence intervals over deals, the paired difference with the
    champion, and a verdict (better, worse, no detectable difference). Logged to MLflow as a
    comparison run with plots.
    """
    from training.registry import RegistryError, compare

    history = _load_history(data)
    with _bar("Comparing out of sample", as_json) as report:
        try:
            comparison = compare(history, versions, _tracking_uri(), n_folds=folds, fold_days=fold_days,
                                 n_boot=boot, progress=report, forecast_months=forecast_months)
        except (RegistryError, ValueError) as exc:
            fail(str(exc))
    if as_json:
        emit_json(comparison.to_dict())
        return
    _print_comparison(comparison)


def _print_comparison(comparison: Any) -> None:
    table = comparison.table()
    level = f"{comparison.confidence:.0%}"

    def interval(lo: float, hi: float, signed: bool = False) -> str:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return "–"
        return f"{lo:+.3f} to {hi:+.3f}" if signed else f"{lo:.3f} to {hi:.3f}"

    rich_table = Table(title=f"deal-risk versions out of sample ({len(comparison.folds)} folds, {level} "
                             f"intervals from {comparison.n_boot} resamples of deals)")
    columns = ("version", "head", "metric", "value", f"{level} CI", "vs champion", f"{level} CI ", "verdict")
    for column in columns:
        rich_table.add_column(column, justify="left" if column in ("version", "head", "metric", "verdict")
                              else "right")
    for r in table.itertuples(index=False):
        name = f"{r.version} (champion)" if r.champion else str(r.version)
        has_diff = isinstance(r.verdict, str)
        rich_table.add_row(
            name, r.head, r.metric, _fmt(float(r.value)), interval(r.ci_low, r.ci_high),
            f"{r.difference:+.3f}" if has_diff else "", interval(r.diff_ci_low, r.diff_ci_high, True)
            if has_diff else "", r.verdict if has_diff else "",
        )
    out_console.print(rich_table)
    for version, verdict in comparison.verdicts.items():
        out_console.print(f"version {version} against champion v{comparison.champion}: [bold]{verdict}[/]")
        for reason in comparison.reasons[version]:
            out_console.print(f"  {reason}")
    for version, summary in comparison.forecast.items():
        coverage = summary.get("forecast_coverage_p10_p90", float("nan"))
        wape = summary.get("forecast_wape_month_1", float("nan"))
        out_console.print(
            f"version {version} forecast: P10-P90 held the actual amount in {coverage:.0%} of "
            f"{summary.get('forecast_months', 0):.0f} pipeline-months; WAPE one month ahead {wape:.1%}"
        )
    for note in comparison.notes:
        out_console.print(f"note: {note}")
    if comparison.run_id:
        out_console.print(f"Logged as MLflow run {comparison.run_id}.")


def promote_command(
    version: str = typer.Argument(..., help="The registered version to make @champion."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="History to evaluate on; default: the store."
    ),
    folds: int = typer.Option(3, "--folds", min=1, max=12, help="Rolling-origin folds of the comparison."),
    force: bool = typer.Option(False, "--force", help="Promote even if it is worse than the champion."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make VERSION the @champion (rollback: promote the older version).

    Without --force the version is first compared out of sample with the champion (as `compare` does)
    and refused when it is worse on that evidence.
    """
    from training.registry import PromotionRefused, RegistryError, promote

    history = None if force else _load_history(data)
    with _bar(f"Promoting version {version}", as_json) as report:
        try:
            result = promote(version, _tracking_uri(), history=history, force=force, n_folds=folds,
                             progress=report)
        except (PromotionRefused, RegistryError, ValueError) as exc:
            fail(str(exc))
        report("done", 1.0)
    verdict = result.comparison.verdicts.get(version) if result.comparison is not None else None
    if as_json:
        emit_json({"champion": result.version, "previous": result.previous, "forced": result.forced,
                   "verdict": verdict})
        return
    evidence = f" Out of sample it is {verdict}." if verdict else ""
    was = result.previous or "none"
    out_console.print(f"@champion is now version {result.version} (was {was}).{evidence}")


def retrain_command(
    data: Path | None = typer.Option(
        None, "--data", "-d", help="History folder; default: the store's history (DEALRISK_DATABASE_URL)."
    ),
    horizon_days: float = HORIZON_OPTION,
    cadence_days: float = CADENCE_OPTION,
    seed: int = SEED_OPTION,
    drop: list[str] | None = DROP_OPTION,
    trees: int | None = TREES_OPTION,
    folds: int = typer.Option(3, "--folds", min=1, max=12, help="Rolling-origin folds of the comparison."),
    boot: int = typer.Option(200, "--boot", min=20, max=5000, help="Bootstrap resamples of deals."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Train a new version, compare it out of sample with the champion, promote it only if better.

    For a scheduler: the new version is registered either way; it becomes @champion only when the
    comparison says "better" (or there is no champion yet). The decision is printed, tagged on the
    version (retrain_decision) and on the MLflow comparison run. Exit code 0 either way.
    """
    from training.registry import RegistryError, retrain

    config = _train_config(horizon_days, cadence_days, seed, drop, trees)
    history = _load_history(data)
    with _bar("Retraining", as_json) as report:
        try:
            result = retrain(history, config, _tracking_uri(), n_folds=folds, n_boot=boot, progress=report)
        except (RegistryError, ValueError) as exc:
            fail(str(exc))
    if as_json:
        emit_json(
            {
                "version": result.version,
                "previous_champion": result.previous,
                "verdict": result.verdict,
                "promoted": result.promoted,
                "champion": result.version if result.promoted else result.previous,
                "decision": result.decision,
                "comparison": result.comparison.to_dict() if result.comparison is not None else None,
            }
        )
        return
    if result.comparison is not None:
        _print_comparison(result.comparison)
    out_console.print(result.decision)


def monitor_command(
    data: Path | None = typer.Option(None, "--data", "-d", help="History folder; default: the store."),
    model_uri: str | None = typer.Option(
        None, "--model-uri", help="Model to check; default models:/deal-risk@champion."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Check scores after this time (ISO 8601); default: end of its training data."
    ),
    no_record: bool = typer.Option(
        False, "--no-record", help="Do not keep the report in MLflow for GET /v1/model/monitor."
    ),
    recompute: bool = typer.Option(
        False, "--recompute", help="Recompute scores at weekly snapshots even when the store holds the "
        "model's live scores."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the served model: calibration on outcomes known since, and feature drift (for a cron job).

    On the store, the live scores the service stored for the model (its score history) are judged as
    they were given; otherwise (a --data folder, a model never served, or --recompute) scores as of
    weekly past snapshots after the model's training data (point-in-time, recomputed with the model).
    Either way they are set against the outcomes known now: observed rate against predicted probability per
    risk band and per week. Live features are set against the training snapshots (population stability
    index per feature). The state is ok, watch or retrain, with the reason. The report is kept with
    the model version in MLflow, where GET /v1/model/monitor reads it.
    """
    from features.history import to_utc_timestamp
    from features.jsonable import json_ready
    from models.loading import CHAMPION_URI, load_bundle, save_monitor_report
    from training.monitor import monitor

    t = option_time(since, "--since")
    history = _load_history(data)
    with _bar("Monitoring", as_json) as report:
        try:
            bundle, version = load_bundle(model_uri or CHAMPION_URI, _tracking_uri())
        except Exception as exc:  # noqa: BLE001 - any registry/IO failure ends up as one message
            fail(f"cannot load model {model_uri or CHAMPION_URI}: {exc} (train one with `dealrisk train`)")
        report("model loaded", 0.2)
        stored, end = None, None
        if data is None and not recompute:
            stored, end = _stored_scores(version), to_utc_timestamp("now")
        result = monitor(history, bundle, model_version=version, since=t, stored_scores=stored, end=end)
        body = json_ready(result.to_dict())
        if not no_record:
            save_monitor_report(version, body, _tracking_uri())
        report("done", 1.0)
    if as_json:
        emit_json(body)
        return
    out_console.print(
        f"Model version {version}: [bold]{result.state}[/] ({result.n_points:,} scores as of "
        f"{result.since:%Y-%m-%d} to {result.until:%Y-%m-%d})"
    )
    for reason in result.reasons:
        out_console.print(f"  {reason}")
    for head, part in result.calibration.items():
        _print_frame(part["by_band"], f"{head}: observed rate vs predicted, per risk band ({part['state']})")
        _print_frame(part["by_week"], f"{head}: observed rate vs predicted, per week")
    if not result.drift.empty:
        _print_frame(result.drift.head(10), "Feature drift against the training snapshots (PSI)")


def _stored_scores(version: str) -> pd.DataFrame | None:
    """The live scores the service stored for `version` as champion (None when it never served it)."""
    import logging

    from serving.score_archive import ScoreArchive
    from serving.settings import get_settings
    from serving.store import Store

    store = Store(get_settings().database_url)
    try:
        if store.schema_revision() is None:
            return None
        return ScoreArchive(store).history(version, "champion")
    except Exception as exc:  # noqa: BLE001 - a store without the table (older schema) has no history
        logging.getLogger(__name__).warning("no stored scores read: %s", exc)
        return None
    finally:
        store.close()


def score_command(
    data: Path = typer.Option(..., "--data", "-d", help="History folder (CSV or Parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .csv or .parquet."),
    as_of: str | None = typer.Option(None, "--as-of", help="Score every deal open at this time (ISO 8601)."),
    at: Path | None = typer.Option(None, "--at", help="CSV/Parquet of deal_id,as_of points to score."),
    model_uri: str | None = typer.Option(
        None, "--model-uri", help="Model to use; default models:/deal-risk@champion."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON."),
) -> None:
    """Batch-score deals as of a time (--as-of) or at given points (--at) into a CSV/Parquet file.

    Columns: deal_id, as_of, cold_risk, close_probability, close_probability_90d, slip_risk,
    likely_close_date, risk_band, expected_value, model_version, reason_1..reason_3 and the deal's
    context as of each point.
    """
    from models.loading import CHAMPION_URI, load_bundle
    from training.score import read_points, score_batch, write_scores

    if (as_of is None) == (at is None):
        fail("give exactly one of --as-of T or --at POINTS.csv")
    if out.suffix not in (".csv", ".parquet"):
        fail(f"--out {out}: use a .csv or .parquet file name")
    if not out.parent.is_dir():
        fail(f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere")
    # checked before the slow history and model loads, with the option named in the message
    t = option_time(as_of, "--as-of")
    try:
        points = read_points(str(at)) if at is not None else None
    except (ValueError, OSError) as exc:
        fail(f"--at: {exc}")
    history = _load_history(data)
    with _bar("Scoring", as_json) as report:
        try:
            bundle, version = load_bundle(model_uri or CHAMPION_URI, _tracking_uri())
        except Exception as exc:  # noqa: BLE001 - any registry/IO failure ends up as one message
            fail(f"cannot load model {model_uri or CHAMPION_URI}: {exc} (train one with `dealrisk train`)")
        report("model loaded", 0.3)
        try:
            scores = score_batch(history, bundle, as_of=t, points=points, model_version=version)
        except (ValueError, OSError) as exc:
            fail(str(exc))
        report("scored", 0.9)
        try:
            write_scores(scores, str(out))
        except OSError as exc:
            fail(f"--out {out}: cannot write it: {exc}")
        report("written", 1.0)
    summary = {"out": str(out), "rows": len(scores), "model_version": version,
               "data_note": bundle.metadata.get("data_note"),
               "bands": scores["risk_band"].value_counts().to_dict()}
    if as_json:
        emit_json(summary)
        return
    out_console.print(f"Wrote {len(scores):,} scores to {out} (model version {version}).")
    if summary["data_note"]:
        out_console.print(str(summary["data_note"]))
