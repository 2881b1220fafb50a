"""`dealrisk at-risk`, `health` and `forecast`: the manager's views, from a folder or from the store.

Thin commands: they parse options, load the history (a folder with `--data`, else the store) and the model,
call `features.health.pipeline_health`, `models.forecast.score_open_deals` / `forecast`, and print.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.table import Table

from dealrisk.console import emit_json, fail, option_time, out_console, progress
from features.history import DealHistory, HistoryValidationError
from features.jsonable import jsonable
from models.at_risk import MAX_LIST_POSITION

DATA_HELP = "Deal-history folder (CSV or Parquet + pipelines.yaml). Without it, read the store."
MODEL_HELP = "Model to score with (default: DEALRISK_MODEL_URI or models:/deal-risk@champion)."


def _load_history(data: Path | None, pipeline: str | None) -> DealHistory:
    """The history from a folder, or from the store (only the pipeline asked for)."""
    try:
        if data is not None:
            from training.data import read_history

            if not data.exists():
                fail(f"{data}: no such folder; pass the folder written by `dealrisk simulate` or your export")
            history = read_history(data)
        else:
            from serving.settings import get_settings
            from serving.store import Store

            settings = get_settings()
            store = Store(settings.database_url)
            try:
                store.create_schema()
                history = store.load_history(pipelines=[pipeline] if pipeline else None)
            finally:
                store.close()
    except HistoryValidationError as exc:
        fail(str(exc))
    if history.n_deals() == 0:
        where = str(data) if data is not None else "the store"
        fail(f"no deals in {where}" + (f" for pipeline {pipeline!r}" if pipeline else "")
             + "; import a folder with `dealrisk import DIR` or pass --data DIR")
    return _only_pipeline(history, pipeline)


def _only_pipeline(history: DealHistory, pipeline: str | None) -> DealHistory:
    """The deals of one pipeline and their events (all of them when `pipeline` is None)."""
    if pipeline is not None:
        known = sorted(history.deals["pipeline"].astype(str).unique())
        if pipeline not in known:
            fail(f"pipeline {pipeline!r} not found; known pipelines: {', '.join(known)}")
        history = history.subset(history.deals.loc[history.deals["pipeline"] == pipeline, "deal_id"])
    return history


def _load_model(model_uri: str | None) -> tuple[Any, str]:
    from models.loading import load_bundle
    from serving.settings import get_settings

    settings = get_settings()
    uri = model_uri or settings.model_uri
    try:
        bundle, version = load_bundle(uri, settings.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one actionable message
        fail(f"could not load model {uri} from {settings.tracking_uri}: {exc}. Train one with "
             "`dealrisk train`, or pass --model-uri (models:/deal-risk/3, or a bundle folder)")
    return bundle, str(version)


def _load_for_scoring(
    data: Path | None, pipeline: str | None, as_of: str | None, model_uri: str | None, advance: Any
) -> tuple[DealHistory, Any, Any, str, pd.Timestamp]:
    """(history of the pipeline, builder fitted on everything, bundle, version, as-of time)."""
    from features.build import FeatureBuilder

    # The population statistics come from the whole store (or folder), as the service's do, so a
    # deal gets the same score from `--pipeline P` as from the API; only the scored deals are filtered.
    everything = _load_history(data, None)
    builder = FeatureBuilder().fit(everything)
    history = _only_pipeline(everything, pipeline)
    advance()
    bundle, version = _load_model(model_uri)
    advance()
    t = option_time(as_of, "--as-of") or history.end_time
    return history, builder, bundle, version, t


def _score(data: Path | None, pipeline: str | None, as_of: str | None, model_uri: str | None, quiet: bool,
           rank: str | None = None, **filters: Any) -> tuple[pd.DataFrame, pd.Timestamp, str]:
    from models.forecast import score_open_deals

    with progress("loading history and model", total=3, quiet=quiet) as advance:
        history, builder, bundle, version, t = _load_for_scoring(data, pipeline, as_of, model_uri, advance)
        scored = score_open_deals(bundle, history, t, builder, **filters)
        if rank is not None:  # the at-risk list: value at risk, stale deals flagged (models.at_risk)
            from models.at_risk import rank_at_risk

            scored = rank_at_risk(scored, history, t, rank)
        advance()
    return scored, t, version


def _fmt(value: Any, kind: str = "num") -> str:
    if jsonable(value) is None:
        return "–"
    if kind == "pct":
        return f"{100 * float(value):.0f}%"
    if kind == "money":
        return f"{float(value):,.0f}"
    if kind == "days":
        return f"{float(value):.1f}"
    if kind == "date":
        return f"{pd.Timestamp(value):%Y-%m-%d}"
    return str(value)


def _live_at_risk(pipeline: str | None, sort: str, limit: int,
                  **filters: Any) -> tuple[pd.DataFrame, int, pd.Timestamp, str] | None:
    """The store's live at-risk list as of now (what `GET /v1/pipelines/{p}/at-risk` answers without
    `as_of`): (page, total, now, model version(s)), or None while it cannot be served (an open deal without
    a live score, or stage limits never learned: no service has kept the store yet)."""
    from serving.settings import get_settings
    from serving.store import Store

    store = Store(get_settings().database_url)
    try:
        store.create_schema()
        t = pd.Timestamp.now(tz="UTC")
        live = store.at_risk_page(pipeline, t.to_pydatetime(), sort, stale=False, limit=limit, offset=0,
                                  **filters)
    finally:
        store.close()
    if live is None:
        return None
    total, page = live
    # Each live score names the version that made it; during a model swap there may be two.
    version = ", ".join(sorted({str(v) for v in page["model_version"]})) or "none"
    return page, total, t, version


def at_risk(
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    pipeline: str | None = typer.Option(None, "--pipeline", "-p", help="Only this pipeline."),
    as_of: str | None = typer.Option(None, "--as-of", help="Score as of this time (default: now on the "
                                     "store, from the live scores when the service keeps them; the end "
                                     "of the data with --data)."),
    owner: str | None = typer.Option(None, "--owner", help="Only deals of this owner (as of --as-of)."),
    team: str | None = typer.Option(None, "--team", help="Only deals of this team."),
    min_amount: float | None = typer.Option(None, "--min-amount", min=0, help="Only deals this big or more."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=MAX_LIST_POSITION,
                              help="How many deals to show."),
    model_uri: str | None = typer.Option(None, "--model-uri", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (reasons joined with ' | ')."),
    sort: str = typer.Option("value_at_risk", "--sort", help="value_at_risk, cold_risk, amount, close_date "
                             "or days_in_stage."),
) -> None:
    """Open deals going cold, ranked by value at risk (amount × close probability × cold risk), with the
    reasons. Effectively dead deals (close probability under 2%, stalled past twice their stage's limit)
    are left out."""
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    from models.at_risk import AT_RISK_SORTS

    if sort not in AT_RISK_SORTS:
        fail(f"--sort must be one of {', '.join(AT_RISK_SORTS)}, not {sort!r}")
    option_time(as_of, "--as-of")  # checked before the slow loads
    filters: dict[str, Any] = {"owner": owner, "team": team, "min_amount": min_amount}
    # On the store as of now, the list the API gives: the live scores, ranked and paged by the database.
    live = (_live_at_risk(pipeline, sort, limit, **filters)
            if data is None and as_of is None and model_uri is None else None)
    if live is not None:
        top, total, t, version = live
    else:
        when = as_of if as_of is not None or data is not None else pd.Timestamp.now(tz="UTC").isoformat()
        scored, t, version = _score(data, pipeline, when, model_uri, as_json or as_csv, rank=sort, **filters)
        scored = scored[~scored["stale"]]
        top, total = scored.head(limit), len(scored)
    columns = ["deal_id", "pipeline", "owner", "team", "stage", "amount", "expected_close_date",
               "days_in_stage", "cold_risk", "close_probability", "close_probability_90d", "slip_risk",
               "likely_close_date", "risk_band", "expected_value", "value_at_risk"]
    if as_json:
        listed = [*columns, "reasons", "counter_reasons"]
        records = top[listed].astype(object).where(top[listed].notna(), None)
        emit_json({"as_of": t, "model_version": version, "live": live is not None, "total": total,
                   "deals": records.to_dict(orient="records")})
        return
    if as_csv:  # the API's CSV of the list (models.at_risk.deal_list_csv): same columns and formats
        from models.at_risk import deal_list_csv

        rows = [{**{str(k): v for k, v in rec.items()}, "rank": i}
                for i, rec in enumerate(top.to_dict(orient="records"), start=1)]
        sys.stdout.write(deal_list_csv(rows, version))
        return
    table = Table(title=f"Deals going cold as of {t:%Y-%m-%d %H:%M} UTC · model version {version}",
                  caption=f"{total} open deal(s) match; showing {len(top)}"
                  + (" · live scores" if live is not None else ""))
    for name, justify in [("#", "right"), ("deal", "left"), ("owner", "left"), ("stage", "left"),
                          ("amount", "right"), ("value at risk", "right"), ("cold risk", "right"),
                          ("close p", "right"), ("likely close", "left"), ("why", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    band_style = {"high": "bold red", "medium": "yellow", "low": "green"}
    for i, row in enumerate(top.to_dict(orient="records"), start=1):
        reasons = "\n".join(str(r.get("text", "")) for r in (row["reasons"] or [])[:3])
        style = band_style.get(str(row["risk_band"]), "")
        risk = f"[{style}]{_fmt(row['cold_risk'], 'pct')} {row['risk_band']}[/]" if style else str(
            row["risk_band"])
        table.add_row(str(i), str(row["deal_id"]), _fmt(row["owner"]),
                      f"{_fmt(row['stage'])} ({_fmt(row['days_in_stage'], 'days')} d)",
                      _fmt(row["amount"], "money"), _fmt(row["value_at_risk"], "money"), risk,
                      _fmt(row["close_probability"], "pct"), _fmt(row.get("likely_close_date"), "date"),
                      reasons)
    out_console.print(table)


def health(
    since: str = typer.Option(..., "--since", help="Window start (ISO 8601)."),
    until: str = typer.Option(..., "--until", help="Window end (ISO 8601); open deals are counted here."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    pipeline: str | None = typer.Option(None, "--pipeline", "-p", help="Only this pipeline."),
    by: str | None = typer.Option(None, "--by", help="Also give the figures per 'team' or 'owner'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Pipeline health from --since to --until: open deals, size, win rate, cycle, velocity, funnel,
    stalls."""
    from features.health import pipeline_health

    if by not in (None, "team", "owner"):
        fail(f"--by must be 'team' or 'owner', not {by!r}")
    t0, t1 = option_time(since, "--since"), option_time(until, "--until")
    assert t0 is not None and t1 is not None
    if t0 > t1:
        fail(f"--since {t0.isoformat()} is after --until {t1.isoformat()}")
    with progress("computing pipeline health", total=2, quiet=as_json) as advance:
        history = _load_history(data, pipeline)
        advance()
        report = pipeline_health(history, t0, t1, pipeline=pipeline, by=by)  # type: ignore[arg-type]
        advance()
    if as_json:
        emit_json(report)
        return
    figures = Table(title=f"Pipeline health {t0:%Y-%m-%d} → {t1:%Y-%m-%d}")
    for name, justify in [("", "left"), ("open", "right"), ("avg size", "right"), ("won", "right"),
                          ("lost", "right"), ("win rate", "right"), ("cycle d", "right"),
                          ("velocity/d", "right"), ("stalled", "right")]:
        figures.add_column(name, justify=justify)  # type: ignore[arg-type]

    def add(label: str, b: dict[str, Any], style: str | None = None) -> None:
        figures.add_row(label, str(b["open_deals"]), _fmt(b["avg_deal_size"], "money"), str(b["won_deals"]),
                        str(b["lost_deals"]), _fmt(b["win_rate"], "pct"), _fmt(b["avg_cycle_days"], "days"),
                        _fmt(b["sales_velocity"], "money"), str(b.get("stalled_count", "–")), style=style)

    add("overall", report["overall"], "bold")
    for name, block in report["pipelines"].items():
        add(name, block)
    for name, block in report.get(f"by_{by}", {}).items():
        add(f"{by}: {name}", block, "dim")
    out_console.print(figures)
    for name, block in report["pipelines"].items():
        funnel = Table(title=f"{name}: funnel (entries in the window) and stalled deals")
        for col in ("stage", "reached", "moved on", "lost here", "stalled now"):
            funnel.add_column(col, justify="left" if col == "stage" else "right")
        stages = [s["stage"] for s in block["stalled_deals"]]
        stalled_by_stage = pd.Series(stages, dtype=object).value_counts()
        for row in block["funnel"]:
            funnel.add_row(row["stage"], str(row["reached"]), _fmt(row["moved_on_share"], "pct"),
                           _fmt(row["lost_share"], "pct"), str(int(stalled_by_stage.get(row["stage"], 0))))
        out_console.print(funnel)


def forecast_command(
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    pipeline: str | None = typer.Option(None, "--pipeline", "-p", help="Only this pipeline."),
    as_of: str | None = typer.Option(None, "--as-of", help="Forecast from this time (default: end of data)."),
    months: int = typer.Option(3, "--months", min=1, max=24, help="Calendar months ahead."),
    model_uri: str | None = typer.Option(None, "--model-uri", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Won amount per month ahead: expected value and P10/P50/P90, open deals spread over the months by
    their chance of being won in each, deals not created yet as their own line."""
    from models.forecast import forecast_pipeline

    option_time(as_of, "--as-of")  # checked before the slow loads
    with progress("loading history and model", total=3, quiet=as_json) as advance:
        history, builder, bundle, version, t = _load_for_scoring(data, pipeline, as_of, model_uri, advance)
        result = {"model_version": version, **forecast_pipeline(bundle, history, t, builder, months=months)}
        advance()
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"Forecast from {t:%Y-%m-%d} · model version {version}", caption=result["note"])
    for col in ("period", "deals", "pipeline amount", "expected won", "P10", "P50", "P90"):
        table.add_column(col, justify="left" if col == "period" else "right")
    buckets = [(p["period"], p) for p in result["periods"]] + [("unscheduled", result["unscheduled"])]
    for label, b in buckets:
        if label == "unscheduled" and not b["deals"]:
            continue
        table.add_row(label, str(b["deals"]), _fmt(b["pipeline_amount"], "money"),
                      _fmt(b["expected_won_amount"], "money"), _fmt(b["p10"], "money"),
                      _fmt(b["p50"], "money"), _fmt(b["p90"], "money"))
        for line in ("new_deals", "total"):
            if line in b:
                extra = b[line]
                table.add_row(f"  {line.replace('_', ' ')}", "", "",
                              _fmt(extra["expected_won_amount"], "money"), _fmt(extra["p10"], "money"),
                              _fmt(extra["p50"], "money"), _fmt(extra["p90"], "money"),
                              style="bold" if line == "total" else "dim")
    later = result["later"]
    table.add_row("later", str(later["deals"]), _fmt(later["pipeline_amount"], "money"),
                  _fmt(later["expected_won_amount"], "money"), "", "", "", style="dim")
    out_console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("at-risk")(at_risk)
    app.command("health")(health)
    app.command("forecast")(forecast_command)
