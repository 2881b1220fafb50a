"""Compare registered versions out of sample, and move `@champion` (promote, rollback, guarded retrain)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from features.history import DealHistory
from models.comparison import BETTER, WORSE
from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
from training.compare import Comparison, Progress, compare_configs, log_comparison
from training.train import TRAIN_CONFIG_TAG, RunResult, TrainConfig, train

logger = logging.getLogger(__name__)


class PromotionRefused(Exception):
    """The candidate is worse than the champion on the same evaluation; the message has the numbers."""


class RegistryError(LookupError):
    """A version or alias that does not exist."""


@dataclass
class PromoteResult:
    version: str
    previous: str | None
    comparison: Comparison | None
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


def version_config(version: str, tracking_uri: str) -> TrainConfig:
    """The TrainConfig a registered version was trained with, read back from its MLflow run: the
    `train_config` tag (the full configuration as JSON), else the run's flat parameters (older runs)."""
    client = _client(tracking_uri)
    run = client.get_run(client.get_model_version(REGISTERED_MODEL, version).run_id)
    tagged = run.data.tags.get(TRAIN_CONFIG_TAG)
    if tagged:
        return TrainConfig.from_json(tagged)
    return _config_from_params(run.data.params)


def _config_from_params(params: dict[str, str]) -> TrainConfig:
    defaults = TrainConfig()
    names = {f.name for f in fields(TrainConfig)} - {"lightgbm_params", "timing_params"}
    values: dict[str, Any] = {}
    lightgbm: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    for key, text in params.items():
        if key.startswith("lightgbm."):
            lightgbm[key.removeprefix("lightgbm.")] = _parse_scalar(text)
        elif key.startswith("timing."):
            timing[key.removeprefix("timing.")] = _parse_scalar(text)
        elif key == "drop_features":
            values[key] = tuple(t for t in text.split(",") if t)
        elif key in names:
            default = getattr(defaults, key)
            if isinstance(default, bool):
                values[key] = text.lower() == "true"
            elif isinstance(default, int | float):
                values[key] = type(default)(float(text))
    return TrainConfig(**values, lightgbm_params=lightgbm, timing_params=timing)


def _parse_scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def compare(
    history: DealHistory,
    versions: list[str] | None,
    tracking_uri: str,
    n_folds: int = 3,
    fold_days: float | None = None,
    n_boot: int = 200,
    progress: Progress | None = None,
    log: bool = True,
    forecast_months: int = 0,
) -> Comparison:
    """The champion and the given versions (default: every candidate newer than it) compared out of
    sample: each version's training configuration is retrained on the same rolling-origin folds of
    `history` (see `training.compare`). Logged to MLflow as a comparison run unless `log` is False."""
    champion = champion_version(tracking_uri)
    if not versions:
        newer = [r["version"] for r in list_versions(tracking_uri)]
        versions = sorted((v for v in newer if champion is None or int(v) > int(champion)), key=int)
    wanted = ([champion] if champion else []) + [str(v) for v in versions if str(v) != champion]
    if not wanted:
        raise RegistryError(
            f"no registered versions of {REGISTERED_MODEL!r} to compare; run `dealrisk train` first"
        )
    for version in wanted:
        _check_exists(version, tracking_uri)
    configs = {version: version_config(version, tracking_uri) for version in wanted}
    comparison = compare_configs(
        history, configs, champion, n_folds=n_folds, fold_days=fold_days, n_boot=n_boot, progress=progress,
        forecast_months=forecast_months,
    )
    if log:
        log_comparison(comparison, tracking_uri)
    return comparison


def promote(
    version: str,
    tracking_uri: str,
    history: DealHistory | None = None,
    force: bool = False,
    n_folds: int = 3,
    fold_days: float | None = None,
    n_boot: int = 200,
    progress: Progress | None = None,
) -> PromoteResult:
    """Point `@champion` at `version`.

    With `history` (and without `force`), the version's configuration and the champion's are first
    compared out of sample (`compare`); a version that is worse on that evidence is refused
    (`PromotionRefused` with the differences and their intervals). Rollback is promoting the older
    version.
    """
    version = str(version)
    _check_exists(version, tracking_uri)
    previous = champion_version(tracking_uri)
    comparison: Comparison | None = None
    if previous is not None and previous != version and history is not None and not force:
        comparison = compare(history, [version], tracking_uri, n_folds=n_folds, fold_days=fold_days,
                             n_boot=n_boot, progress=progress)
        if comparison.verdicts.get(version) == WORSE:
            raise PromotionRefused(
                f"version {version} is worse than the champion (v{previous}) out of sample: "
                + "; ".join(comparison.reasons[version])
                + ". Use --force to promote anyway."
            )
    client = _client(tracking_uri)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "status", "champion")
    if previous is not None and previous != version:
        client.set_model_version_tag(REGISTERED_MODEL, previous, "status", "retired")
    logger.info("champion: v%s (was v%s)", version, previous)
    return PromoteResult(version, previous, comparison, forced=force)


@dataclass
class RetrainResult:
    """What a guarded retrain did: the new version, the evidence, and the decision in words."""

    run: RunResult
    version: str
    previous: str | None
    verdict: str  # better / worse / no detectable difference, or "no champion"
    promoted: bool
    decision: str
    comparison: Comparison | None


def retrain(
    history: DealHistory,
    config: TrainConfig,
    tracking_uri: str,
    n_folds: int = 3,
    fold_days: float | None = None,
    n_boot: int = 200,
    progress: Progress | None = None,
) -> RetrainResult:
    """Train and register a new version, compare it out of sample with the champion, and promote it
    only when it is better (or there is no champion). The decision is tagged on the version
    (`retrain_decision`, `retrain_verdict`) and on the comparison run."""
    report = progress or (lambda stage, fraction: None)
    previous = champion_version(tracking_uri)
    run = train(history, config, tracking_uri=tracking_uri, register=True,
                progress=lambda stage, f: report(f"training: {stage}", 0.3 * f))
    assert run.model_version is not None
    version = run.model_version
    comparison: Comparison | None = None
    if previous is None:
        verdict, promoted = "no champion", True
        decision = f"promoted version {version}: there was no champion"
    else:
        comparison = compare(history, [version], tracking_uri, n_folds=n_folds, fold_days=fold_days,
                             n_boot=n_boot, progress=lambda stage, f: report(stage, 0.3 + 0.7 * f))
        verdict = comparison.verdicts[version]
        promoted = verdict == BETTER
        evidence = "; ".join(comparison.reasons[version])
        if promoted:
            promote(version, tracking_uri)
            decision = f"promoted version {version} over v{previous}: better out of sample ({evidence})"
        else:
            decision = f"kept v{previous} as champion; version {version} is {verdict} ({evidence})"
    client = _client(tracking_uri)
    client.set_model_version_tag(REGISTERED_MODEL, version, "retrain_verdict", verdict)
    client.set_model_version_tag(REGISTERED_MODEL, version, "retrain_decision", decision[:5000])
    if comparison is not None and comparison.run_id:
        client.set_tag(comparison.run_id, "retrain_decision", decision[:5000])
    logger.info(decision)
    report("done", 1.0)
    return RetrainResult(run, version, previous, verdict, promoted, decision, comparison)
