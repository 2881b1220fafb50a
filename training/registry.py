"""Compare registered versions on the same backtest windows, and move `@champion` (promote/rollback)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.history import DealHistory
from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
from training.backtest import evaluate_bundle, make_folds

logger = logging.getLogger(__name__)

# The figures promotion looks at: ranking quality of both heads, pooled over the backtest folds.
PROMOTION_METRIC = "roc_auc"
# A candidate may be this much worse (noise on a finite test window) and still count as "not worse".
PROMOTION_TOLERANCE = 0.005


class PromotionRefused(Exception):
    """The candidate is worse than the champion on the same evaluation; the message has the numbers."""


class RegistryError(LookupError):
    """A version or alias that does not exist."""


@dataclass
class PromoteResult:
    version: str
    previous: str | None
    comparison: pd.DataFrame | None
    forced: bool


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(tracking_uri: str) -> str | None:
    """The version `@champion` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def list_versions(tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered version of `deal-risk`, newest first, with its tags and aliases."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client(tracking_uri).search_model_versions(f"name='{REGISTERED_MODEL}'")
    except MlflowException:
        return []
    rows = [
        {"version": str(v.version), "aliases": list(v.aliases or []), "tags": dict(v.tags or {}),
         "run_id": v.run_id}
        for v in found
    ]
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def _check_exists(version: str, tracking_uri: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client(tracking_uri).get_model_version(REGISTERED_MODEL, version)
    except MlflowException as exc:
        known = ", ".join(r["version"] for r in list_versions(tracking_uri)) or "none"
        raise RegistryError(
            f"model {REGISTERED_MODEL!r} has no version {version!r} (registered versions: {known})"
        ) from exc


def compare(
    history: DealHistory,
    versions: list[str] | None,
    tracking_uri: str,
    n_folds: int = 3,
    fold_days: float | None = None,
) -> pd.DataFrame:
    """The champion and the given versions (default: every candidate newer than it) on the same backtest
    windows, side by side: one row per (version, head) with metrics pooled over the folds."""
    from models.loading import load_bundle

    champion = champion_version(tracking_uri)
    if not versions:
        newer = [r["version"] for r in list_versions(tracking_uri)]
        versions = [v for v in newer if champion is None or int(v) > int(champion)]
    wanted = ([champion] if champion else []) + [v for v in versions if v != champion]
    if not wanted:
        raise RegistryError(
            f"no registered versions of {REGISTERED_MODEL!r} to compare; run `dealrisk train` first"
        )
    folds = make_folds(history, n_folds, fold_days)
    rows = []
    for version in wanted:
        _check_exists(version, tracking_uri)
        bundle, _ = load_bundle(f"models:/{REGISTERED_MODEL}/{version}", tracking_uri)
        table = evaluate_bundle(bundle, history, folds)
        pooled = table[table["fold"] == "all"].drop(columns=["fold"])
        for record in pooled.to_dict(orient="records"):
            rows.append({"version": version, "champion": version == champion, **record})
    return pd.DataFrame(rows)


def _verdict(table: pd.DataFrame, candidate: str, champion: str) -> list[str]:
    """Reasons the candidate is worse than the champion (empty when it is not)."""
    problems = []
    for head in ("cold", "close"):
        cand = table[(table["version"] == candidate) & (table["head"] == head)]
        champ = table[(table["version"] == champion) & (table["head"] == head)]
        if cand.empty or champ.empty:
            continue
        a = float(cand[PROMOTION_METRIC].iloc[0])
        b = float(champ[PROMOTION_METRIC].iloc[0])
        if a < b - PROMOTION_TOLERANCE:
            problems.append(
                f"{head} head {PROMOTION_METRIC} {a:.3f} vs champion v{champion} {b:.3f}"
            )
    return problems


def promote(
    version: str,
    tracking_uri: str,
    history: DealHistory | None = None,
    force: bool = False,
    n_folds: int = 3,
) -> PromoteResult:
    """Point `@champion` at `version`.

    With `history`, the candidate and the champion are first evaluated on the same backtest windows and
    a worse candidate is refused (`PromotionRefused` with the numbers) unless `force`. Rollback is
    promoting the older version.
    """
    version = str(version)
    _check_exists(version, tracking_uri)
    previous = champion_version(tracking_uri)
    table: pd.DataFrame | None = None
    if previous is not None and previous != version and history is not None:
        table = compare(history, [version], tracking_uri, n_folds=n_folds)
        problems = _verdict(table, version, previous)
        if problems and not force:
            raise PromotionRefused(
                f"version {version} is worse than the champion (v{previous}) on the same backtest: "
                + "; ".join(problems)
                + ". Use --force to promote anyway."
            )
    client = _client(tracking_uri)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "status", "champion")
    if previous is not None and previous != version:
        client.set_model_version_tag(REGISTERED_MODEL, previous, "status", "retired")
    logger.info("champion: v%s (was v%s)", version, previous)
    return PromoteResult(version, previous, table, forced=force)
