"""Shadow challengers: a registered version an admin names is loaded beside the champion, scores every
live update too (`serving.live_scores`), and its stored scores are set against the champion's on the
outcomes known since (`challenger_report`). Its scores never reach a manager: they live in their own
table and only `GET /v1/model/challenger` (admin) reads them.

The name is kept in the store (`service_settings`), so a restart loads the same challenger again.

The report is kept (`Challenger.report`) and computed again only when what it rests on may have moved:
the two models' stored pairs of scores, a paired deal's stored state (`ScoreArchive.paired_stamp`, one
cheap query per read), or the clock passing the next time one of its labels could settle (a pair's cold
window ending, an event dated after the report's `as_of` becoming past). A kept report is equal to the
one `challenger_report` computes as of its `as_of`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory, to_utc_timestamp
from features.jsonable import json_ready
from features.labels import DEFAULT_HORIZON_DAYS, cold_label, won_label
from models.comparison import REPORTED_METRICS, SAME, bootstrap_comparison, overall_verdict
from models.loading import REGISTERED_MODEL
from serving.errors import InvalidInputError, NotFoundError
from serving.model_holder import LoadedModel, ModelHolder, resolve_registry_version
from serving.score_archive import CHALLENGER_SETTING, ScoreArchive
from serving.store import Store

logger = logging.getLogger(__name__)

HEADS = {"cold": "cold_risk", "close": "close_probability"}
N_BOOT = 200
METHOD = (
    "the champion's and the challenger's stored live scores of the same deals as of the same times "
    "(score history: a deal's last score of each day), set against the outcomes known now: close = won "
    "or lost since (deals still open are left out), cold = went cold within the horizon (windows not "
    "over yet are left out unless a close decided them); intervals from {n_boot} bootstrap resamples of "
    "deals; the verdict rests on ROC AUC and Brier, as `dealrisk compare`'s does"
)


def version_uri(version: str) -> str:
    return f"models:/{REGISTERED_MODEL}/{version}"


@dataclass(frozen=True)
class ChallengerSetting:
    """Who named which version as the challenger, and when."""

    model_version: str
    set_at: str
    set_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "set_at": self.set_at, "set_by": self.set_by}


class Challenger:
    """The shadow challenger of one service: its setting (persisted) and its loaded model."""

    def __init__(self, archive: ScoreArchive, tracking_uri: str, loader: Any = None) -> None:
        self.archive = archive
        self.tracking_uri = tracking_uri
        self._loader = loader  # ModelHolder's default when None
        self._lock = threading.Lock()
        self._setting: ChallengerSetting | None = None
        self._holder: ModelHolder | None = None
        self._report_lock = threading.Lock()  # one computation at a time; the others wait and reuse it
        self._report: _KeptReport | None = None

    def _holder_for(self, version: str) -> ModelHolder:
        holder = ModelHolder(version_uri(version), self.tracking_uri)
        if self._loader is not None:
            holder.loader = self._loader
        return holder

    def restore(self) -> None:
        """Load the challenger named in the store (at start, and in the scorer process each time the
        service names or clears one: no setting clears it here too; the same version keeps its loaded
        model). A load failure is kept as its error, and an unreadable setting is logged: neither may
        stop the service from starting."""
        try:
            value = self.archive.get_setting(CHALLENGER_SETTING)
        except Exception:  # noqa: BLE001 - serving the champion matters more than shadow scoring
            logger.warning("could not read the challenger setting; shadow scoring is off", exc_info=True)
            return
        if not value or not value.get("model_version"):
            with self._lock:
                self._setting, self._holder = None, None
            return
        setting = ChallengerSetting(
            str(value["model_version"]), str(value.get("set_at")), value.get("set_by")
        )
        loaded = self.current()
        if loaded is not None and loaded.version == setting.model_version:
            with self._lock:
                self._setting = setting
            return
        holder = self._holder_for(setting.model_version)
        holder.reload()
        with self._lock:
            self._setting, self._holder = setting, holder

    def current(self) -> LoadedModel | None:
        """The loaded challenger, or None (none named, or it failed to load)."""
        with self._lock:
            holder = self._holder
        return holder.current() if holder is not None else None

    def setting(self) -> ChallengerSetting | None:
        with self._lock:
            return self._setting

    def status(self) -> dict[str, Any] | None:
        """The setting with whether the model is loaded (and why not)."""
        with self._lock:
            setting, holder = self._setting, self._holder
        if setting is None:
            return None
        loaded = holder.current() if holder is not None else None
        return setting.to_dict() | {
            "loaded": loaded is not None,
            "load_error": holder.last_error if holder is not None and loaded is None else None,
        }

    def set(self, version: str, champion: str | None, set_by: str | None) -> ChallengerSetting:
        """Name `version` as the challenger: NotFoundError when no such registered version,
        InvalidInputError when it is the champion or cannot be loaded. Replaces any challenger."""
        if champion is not None and version == champion:
            raise InvalidInputError(
                f"model version {version} is the champion; a challenger must be another registered version",
                loc="body.model_version",
            )
        try:
            found = resolve_registry_version(version_uri(version), self.tracking_uri)
        except LookupError:
            found = None
        if found is None:
            raise NotFoundError(f"model {REGISTERED_MODEL} has no registered version {version!r}")
        holder = self._holder_for(version)
        outcome = holder.reload()
        if outcome.error is not None:
            raise InvalidInputError(
                f"model version {version} could not be loaded: {outcome.error}", loc="body.model_version"
            )
        setting = ChallengerSetting(version, datetime.now(UTC).isoformat(), set_by)
        self.archive.set_setting(CHALLENGER_SETTING, setting.to_dict())
        with self._lock:
            self._setting, self._holder = setting, holder
        logger.info("shadow challenger set to model version %s", version)
        return setting

    def report(
        self, store: Store, champion: LoadedModel, challenger_version: str, now: datetime | None = None
    ) -> dict[str, Any]:
        """`challenger_report` of these two versions, the kept one while nothing it rests on moved (see
        the module docstring): its `as_of` is then the time it was computed."""
        t = to_utc_timestamp(now if now is not None else datetime.now(UTC))
        # read before computing: a pair or write landing meanwhile leaves the kept report due
        key = (champion.version, challenger_version, self.archive.paired_stamp(champion.version,
                                                                               challenger_version))
        with self._report_lock:
            kept = self._report
            if (kept is not None and kept.key == key and kept.as_of <= t
                    and (kept.valid_until is None or t < kept.valid_until)):
                return kept.body
            body, valid_until = _report(store, self.archive, champion, challenger_version, t, N_BOOT)
            self._report = _KeptReport(key, t, valid_until, body)
            return body

    def clear(self) -> ChallengerSetting | None:
        """Stop shadow scoring; the setting that was cleared (None when there was none)."""
        with self._lock:
            setting = self._setting
            self._setting, self._holder = None, None
        self.archive.delete_setting(CHALLENGER_SETTING)
        if setting is not None:
            logger.info("shadow challenger %s cleared", setting.model_version)
        return setting


@dataclass(frozen=True)
class _KeptReport:
    key: tuple[Any, ...]  # the versions and `ScoreArchive.paired_stamp` read before computing it
    as_of: pd.Timestamp  # the time it is as of (it stands for later times only)
    valid_until: pd.Timestamp | None  # the next time a label could settle with nothing stored; None: never
    body: dict[str, Any]


def challenger_report(
    store: Store,
    archive: ScoreArchive,
    champion: LoadedModel,
    challenger_version: str,
    now: datetime | None = None,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Both models on the outcomes known now, on the same deals: per head ROC AUC, Brier, log loss and
    ECE with bootstrap intervals, the paired differences (challenger − champion), counts, a verdict."""
    t_now = to_utc_timestamp(now if now is not None else datetime.now(UTC))
    return _report(store, archive, champion, challenger_version, t_now, n_boot)[0]


def _report(
    store: Store,
    archive: ScoreArchive,
    champion: LoadedModel,
    challenger_version: str,
    t_now: pd.Timestamp,
    n_boot: int,
) -> tuple[dict[str, Any], pd.Timestamp | None]:
    """`challenger_report` as of `t_now`, and the first time after it at which that report could change
    with nothing more stored (`_next_settling`)."""
    paired = archive.paired_history(champion.version, challenger_version)
    horizon = float(champion.metadata.get("horizon_days", DEFAULT_HORIZON_DAYS))
    body: dict[str, Any] = {
        "champion_version": champion.version,
        "challenger_version": challenger_version,
        "method": METHOD.format(n_boot=n_boot),
        "horizon_days": horizon,
        "as_of": t_now,
        "n_paired_scores": int(len(paired)),
        "n_deals": int(paired["deal_id"].nunique()),
        "first_score_at": paired["as_of"].min() if len(paired) else None,
        "last_score_at": paired["as_of"].max() if len(paired) else None,
        "heads": {},
    }
    if challenger_version == champion.version:  # promoted since it was named: nothing to set it against
        return dict(json_ready(body | {
            "n_paired_scores": 0, "n_deals": 0, "first_score_at": None, "last_score_at": None,
            "verdict": None, "metrics": list(REPORTED_METRICS),
            "reasons": [f"model version {challenger_version} is the champion now; name another challenger "
                        "or clear this one"],
        })), None
    history = store.load_history(deal_ids=paired["deal_id"].unique().tolist()) if len(paired) else None
    predictions = _settled_predictions(history, paired, champion.version, challenger_version, horizon, t_now)
    metrics, differences = (
        bootstrap_comparison(predictions, [champion.version, challenger_version], champion.version,
                             n_boot=n_boot)
        if len(predictions) else (pd.DataFrame(), pd.DataFrame())
    )
    for head in HEADS:
        rows = predictions[predictions["head"] == head] if len(predictions) else predictions
        part: dict[str, Any] = {
            "n_settled": int(len(rows)),
            "n_deals": int(rows["deal_id"].nunique()) if len(rows) else 0,
            "positive_rate": float(rows["y"].mean()) if len(rows) else None,
            "champion": {}, "challenger": {}, "difference": {},
        }
        for role, version in (("champion", champion.version), ("challenger", challenger_version)):
            if metrics.empty:
                continue
            mine = metrics[(metrics["head"] == head) & (metrics["version"] == version)]
            part[role] = {r.metric: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
                          for r in mine.itertuples(index=False)}
        if not differences.empty:
            mine = differences[differences["head"] == head]
            part["difference"] = {
                r.metric: {"value": r.difference, "ci_low": r.ci_low, "ci_high": r.ci_high,
                           "verdict": r.verdict}
                for r in mine.itertuples(index=False)
            }
        body["heads"][head] = part
    if differences.empty:
        body["verdict"] = SAME
        body["reasons"] = ["no stored score of both models has a known outcome yet"]
    else:
        body["verdict"], body["reasons"] = overall_verdict(differences, challenger_version)
    body["metrics"] = list(REPORTED_METRICS)
    return dict(json_ready(body)), _next_settling(history, paired, horizon, t_now)


def _next_settling(
    history: DealHistory | None, paired: pd.DataFrame, horizon: float, now: pd.Timestamp
) -> pd.Timestamp | None:
    """The first time after `now` at which a label of the pairs could change with nothing more stored
    (`features.labels` reads events up to `end` and settles a cold window at its end): a pair's cold
    window ending, or an event of a paired deal dated after `now`; None when there is none."""
    if history is None:
        return None
    ends = paired["as_of"] + pd.Timedelta(days=horizon)
    later = [ends[ends > now]]
    for frame, column in ((history.stage_changes, "changed_at"), (history.activities, "occurred_at"),
                          (history.field_changes, "changed_at")):
        later.append(frame[column][frame[column] > now])
    times = pd.concat([pd.to_datetime(t, utc=True) for t in later], ignore_index=True)
    return pd.Timestamp(times.min()) if len(times) else None


def _settled_predictions(
    history: DealHistory | None, paired: pd.DataFrame, champion: str, challenger: str, horizon: float,
    now: pd.Timestamp,
) -> pd.DataFrame:
    """One row per paired score and head whose outcome is known by `now` (`history`: the paired deals'):
    head, deal_id, y and one probability column per version (the frame `bootstrap_comparison` takes)."""
    columns = ["head", "deal_id", "y", champion, challenger]
    if history is None or paired.empty:
        return pd.DataFrame(columns=columns)
    points = paired[["deal_id", "as_of"]]
    outcomes = {
        "cold": cold_label(history, points, horizon, end=now),
        "close": won_label(history, points, end=now),
    }
    parts = []
    for head, column in HEADS.items():
        y = outcomes[head].to_numpy(dtype=float)
        settled = np.isfinite(y)
        parts.append(pd.DataFrame({
            "head": head,
            "deal_id": paired["deal_id"].to_numpy()[settled],
            "y": y[settled],
            champion: paired[f"champion_{column}"].to_numpy()[settled],
            challenger: paired[f"challenger_{column}"].to_numpy()[settled],
        }))
    return pd.concat(parts, ignore_index=True)
