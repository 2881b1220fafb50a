"""Per-deal reasons: LightGBM's own per-feature contributions turned into plain-words sentences.

`booster.predict(X, pred_contrib=True)` gives, per row, one raw-score (log-odds) contribution per feature
plus the bias in the last column; they sum to the raw score. A deal's reasons for a risk are the top-k
features whose contribution *raises* it (largest first); the features that lower it are a separate list
(`direction="lowers"`), so a sentence is never offered as a reason for the risk it argues against.

The stage and pipeline themselves (`stage_cat`, `pipeline_cat`, `stage_position`,
`stage_position_frac`) are never reasons: "At stage Demo" only restates where the deal is, which the
manager already sees; what the stage implies shows up through the features measured against it (time in
stage, activity, typical values for that stage).

Each sentence compares the deal's value with a typical value from a reference table built at training
time: the median of that feature among won deals in the same pipeline and stage, falling back to the
pipeline, then to all won deals. The table is JSON and travels in the bundle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from features.timeindex import KeyCodes, text_or_blank
from models.baselines import context_keys

_KEY_SEP = "\x1f"  # pipeline/stage separator in reference keys; never appears in CRM names

Template = Callable[[str, float, float | None], str]


def _descriptions() -> dict[str, str]:
    try:
        from features.build import FEATURE_DESCRIPTIONS
    except ImportError:  # features.build is optional for this module; fall back to names
        return {}
    return dict(FEATURE_DESCRIPTIONS)


def build_reference(
    features: pd.DataFrame,
    won: ArrayLike,
    feature_columns: Sequence[str],
    min_rows: int = 5,
) -> dict[str, Any]:
    """Typical values for the reasons' comparisons, as JSON.

    Medians of every numeric feature among the rows flagged `won` (training snapshots of deals that were
    eventually won), per (pipeline, stage) and per pipeline when a group has at least `min_rows` rows,
    and over all won rows (all rows if none is won).
    """
    numeric = [c for c in feature_columns if pd.api.types.is_numeric_dtype(features[c])]
    won_mask = np.asarray(won, dtype=bool).ravel()
    pipeline, stage = context_keys(features)
    values = features[numeric].astype("float64")
    base = values[won_mask] if won_mask.any() else values

    def medians(keys: pd.Series) -> dict[str, list[float | None]]:
        frame = base.assign(_key=keys[won_mask].to_numpy() if won_mask.any() else keys.to_numpy())
        grouped = frame.groupby("_key", sort=True)
        counts = grouped.size()
        med = grouped.median()
        med = med[counts.reindex(med.index) >= min_rows]
        return {str(k): _json_floats(row) for k, row in zip(med.index, med.to_numpy(), strict=True)}

    global_med = base.median().to_numpy(dtype=np.float64) if len(base) else np.full(len(numeric), np.nan)
    return {
        "basis": "median among training snapshots of won deals",
        "features": numeric,
        "by_stage": medians(pipeline + _KEY_SEP + stage),
        "by_pipeline": medians(pipeline),
        "global": _json_floats(global_med),
    }


def _json_floats(row: NDArray[Any]) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(row, dtype=np.float64)]


# ---- sentence templates -------------------------------------------------------------------------------


# Features that describe where the deal is rather than why it is at risk (see the module docstring).
MIN_EFFECT = 1e-4
NOT_REASONS = frozenset({"stage_cat", "pipeline_cat", "stage_position", "stage_position_frac"})


def _count(v: float | None, singular: str, plural: str | None = None) -> str:
    """'1 call', '3 calls', '0 calls' (a count with its noun in the right number)."""
    if v is None or not np.isfinite(v):
        return "unknown"
    n = round(v)
    return f"{n:,} {singular if n == 1 else (plural or singular + 's')}"


def _times(n: int) -> str:
    """'once', '2 times', '0 times' (how often something happened)."""
    return "once" if n == 1 else f"{n:,} times"


def _num(v: float | None, digits: int = 0) -> str:
    if v is None or not np.isfinite(v):
        return "unknown"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _days(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "unknown"
    n = round(v)
    return "1 day" if n == 1 else f"{n:,} days"


def _pct(v: float | None) -> str:
    return "unknown" if v is None or not np.isfinite(v) else f"{v:.0%}"


def _cmp(typical: float | None, fmt: Callable[[float | None], str], what: str) -> str:
    if typical is None or not np.isfinite(typical):
        return ""
    return f"; {what} {fmt(typical)}"


def _t_last_activity(name: str, v: float, t: float | None) -> str:
    if not np.isfinite(v):
        return "No activity recorded on this deal yet" + _cmp(
            t, _days, "won deals at this stage usually had one within"
        )
    return f"No activity for {_days(v)}" + _cmp(t, _days, "won deals at this stage usually had one within")


def _t_last_inbound(name: str, v: float, t: float | None) -> str:
    if not np.isfinite(v):
        return "The buyer has never reached out" + _cmp(
            t, _days, "won deals at this stage usually heard from the buyer within"
        )
    return f"Last heard from the buyer {_days(v)} ago" + _cmp(
        t, _days, "won deals at this stage usually heard from them within"
    )


def _t_stage_age(name: str, v: float, t: float | None) -> str:
    return f"In this stage for {_days(v)}" + _cmp(t, _days, "won deals usually spent")


def _t_stage_age_ratio(name: str, v: float, t: float | None) -> str:
    return f"Time in this stage is {_num(v, 1)}× the usual for this pipeline" + _cmp(
        t, lambda x: _num(x, 1) + "×", "won deals were at"
    )


def _t_deal_age(name: str, v: float, t: float | None) -> str:
    return f"The deal is {_days(v)} old" + _cmp(t, _days, "won deals at this stage were typically")


def _t_days_to_close(name: str, v: float, t: float | None) -> str:
    if not np.isfinite(v):
        return "No expected close date is set"
    if v < 0:
        return f"The expected close date passed {_days(-v)} ago"
    return f"Expected to close in {_days(v)}" + _cmp(t, _days, "won deals at this stage were typically")


def _t_slips(name: str, v: float, t: float | None) -> str:
    n = int(round(v)) if np.isfinite(v) else 0
    if n == 0:
        return "The expected close date has never slipped"
    return f"The expected close date slipped {_times(n)}" + _cmp(
        t, lambda k: _times(round(k or 0)), "won deals at this stage typically slipped"
    )


def _t_moves_back(name: str, v: float, t: float | None) -> str:
    n = int(round(v)) if np.isfinite(v) else 0
    return f"Moved back to an earlier stage {n} time{'s' if n != 1 else ''}" + _cmp(
        t, _num, "won deals typically"
    )


def _t_stage_changes(name: str, v: float, t: float | None) -> str:
    return f"{_count(v, 'stage change')} so far" + _cmp(t, _num, "won deals at this stage typically had")


def _t_owner_win_rate(name: str, v: float, t: float | None) -> str:
    return f"The owner wins {_pct(v)} of their closed deals" + _cmp(t, _pct, "owners of won deals here win")


def _t_owner_load(name: str, v: float, t: float | None) -> str:
    return f"The owner has {_count(v, 'open deal')}" + _cmp(t, _num, "owners of won deals here had")


def _t_amount(name: str, v: float, t: float | None) -> str:
    is_log = "log" in name
    show = (lambda x: _num(None if x is None else float(np.expm1(x)))) if is_log else _num
    return f"Amount of {show(v)}" + _cmp(t, show, "won deals at this stage were typically")


def _t_amount_rel(name: str, v: float, t: float | None) -> str:
    return f"Amount is {_num(v, 1)}× the pipeline's median" + _cmp(
        t, lambda x: _num(x, 1) + "×", "won deals at this stage were"
    )


def _t_activity_count(name: str, v: float, t: float | None) -> str:
    window = re.search(r"(\d+)\s*d", name)
    span = f" in the last {window.group(1)} days" if window else ""
    kinds = ("call", "email", "meeting", "note", "task", "inbound", "outbound", "other")
    kind = next((k for k in kinds if k in name), "")
    if kind in ("inbound", "outbound", "other"):
        counted = _count(v, f"{kind} activity", f"{kind} activities")
    else:
        counted = _count(v, kind) if kind else _count(v, "activity", "activities")
    return f"{counted}{span}" + _cmp(t, _num, "won deals at this stage had")


def _t_gap(name: str, v: float, t: float | None) -> str:
    return f"Longest silence between activities: {_days(v)}" + _cmp(t, _days, "won deals at this stage:")


def _t_trend(name: str, v: float, t: float | None) -> str:
    if not np.isfinite(v):
        return "No activity trend yet"
    n = int(round(v))
    change = f"{abs(n)} {'more' if n >= 0 else 'fewer'} activit{'y' if abs(n) == 1 else 'ies'}"
    return f"{change} in the last 14 days than in the 14 before" + _cmp(
        t, lambda x: _num(x, 1), "won deals at this stage: a change of"
    )


def _t_trend_ratio(name: str, v: float, t: float | None) -> str:
    return f"Activity in the last 14 days is {_num(v, 1)}× the 14 days before" + _cmp(
        t, lambda x: _num(x, 1) + "×", "won deals at this stage:"
    )


def _t_position(name: str, v: float, t: float | None) -> str:
    return f"At stage {_num(None if not np.isfinite(v) else v + 1)} of the pipeline" + _cmp(
        t, lambda x: _num(None if x is None else x + 1), "typical for won deals:"
    )


def _t_progress(name: str, v: float, t: float | None) -> str:
    return f"{_pct(v)} of the way through the pipeline" + _cmp(t, _pct, "won deals at this point were at")


def _t_amount_changes(name: str, v: float, t: float | None) -> str:
    n = int(round(v)) if np.isfinite(v) else 0
    done = "The amount has never been changed" if n == 0 else f"The amount was changed {_times(n)}"
    return done + _cmp(t, lambda k: _count(k, "amount change"), "won deals at this stage typically had")


def _t_amount_change_ratio(name: str, v: float, t: float | None) -> str:
    return f"The amount is {_num(v, 2)}× what it was at creation" + _cmp(
        t, lambda x: _num(x, 2) + "×", "won deals at this stage:"
    )


def _t_owner_closed(name: str, v: float, t: float | None) -> str:
    return f"The owner has closed {_count(v, 'deal')}" + _cmp(t, _num, "owners of won deals here had closed")


# Ordered: the first pattern that matches a feature name picks its template.
_TEMPLATES: list[tuple[str, Template]] = [
    (r"inbound.*(since|recency|days_since|last)|(since|last).*inbound", _t_last_inbound),
    (r"since_last_activity|days_since_activity|activity_recency|days_since_last", _t_last_activity),
    (r"stage.*(ratio|rel)|(ratio|rel).*stage", _t_stage_age_ratio),
    (r"(stage_age|time_in_stage|days_in_stage)", _t_stage_age),
    (r"deal_age|age_days", _t_deal_age),
    (r"slip", _t_slips),
    (r"(days_to_close|days_until_close|until_expected|to_expected_close|close_in_days)", _t_days_to_close),
    (r"(back|regress)", _t_moves_back),
    (r"(n_stage_changes|stage_changes)", _t_stage_changes),
    (r"owner.*win", _t_owner_win_rate),
    (r"owner.*(open|load)", _t_owner_load),
    (r"amount_change_ratio", _t_amount_change_ratio),
    (r"n_amount_changes|amount_changes", _t_amount_changes),
    (r"owner.*closed", _t_owner_closed),
    (r"amount.*(rel|ratio|median)", _t_amount_rel),
    (r"^(log_)?amount(_log)?$", _t_amount),
    (r"(gap|silence)", _t_gap),
    (r"trend.*ratio", _t_trend_ratio),
    (r"trend", _t_trend),
    (r"position_frac|progress", _t_progress),
    (r"(stage_pos|position)", _t_position),
    (r"(n_|count|activities|calls|emails|meetings|notes|tasks).*\d+d|\d+d", _t_activity_count),
]


# Templates that word a missing (NaN) or infinite deal value themselves, e.g. "No activity recorded yet".
_HANDLES_MISSING: frozenset[Template] = frozenset(
    {
        _t_last_activity,
        _t_last_inbound,
        _t_days_to_close,
        _t_slips,
        _t_moves_back,
        _t_trend,
        _t_amount_changes,
    }
)

# What the others say when the deal's value is missing or not finite (a ratio over a zero or missing base):
# a sentence of its own, never "unknown×" or "nan days" spliced into the usual one.
_MISSING_TEXT: dict[Template, str] = {
    _t_stage_age: "Time in this stage is not recorded yet",
    _t_stage_age_ratio: "Time in this stage cannot be compared yet: no typical time in it is known for "
    "this pipeline",
    _t_deal_age: "The deal's creation date is not recorded, so its age is not known",
    _t_stage_changes: "No stage changes are recorded for this deal",
    _t_owner_win_rate: "The owner has no closed deals yet, so there is no win rate to go by",
    _t_owner_load: "The owner's number of open deals is not recorded",
    _t_owner_closed: "The owner has no closed deals on record",
    _t_amount: "No amount is set on this deal",
    _t_amount_rel: "The amount cannot be compared yet: no typical amount is known for this pipeline",
    _t_amount_change_ratio: "The amount cannot be compared with the one at creation (it started at zero "
    "or blank)",
    _t_activity_count: "No activity counts are recorded for this deal",
    _t_gap: "Too few activities so far to measure silences between them",
    _t_trend_ratio: "No activity in the 14 days before the last 14, so there is no trend ratio yet",
    _t_position: "The stage's place in the pipeline is not known",
    _t_progress: "Progress through the pipeline is not known for this stage",
}

# Words that mean a number failed to format; a reason must never show them.
_UNREADABLE = re.compile(r"\b(unknown|nan|none|inf|infinity|null)\b", re.IGNORECASE)


def _readable(template: Template, missing: str) -> Template:
    """Wrap a template so missing or infinite values give a plain sentence (`missing`) instead."""

    def safe(name: str, v: float, t: float | None) -> str:
        typical = t if t is not None and np.isfinite(t) else None
        if not np.isfinite(v) and template not in _HANDLES_MISSING:
            return missing
        text = template(name, v, typical)
        if _UNREADABLE.search(text) and typical is not None:
            text = template(name, v, None)  # e.g. a typical value that overflowed when shown
        return missing if _UNREADABLE.search(text) else text

    return safe


def template_for(name: str, description: str | None = None) -> Template:
    """The sentence template for a feature; a generic one built on its description otherwise.

    Every template reads naturally when the deal's value or the typical one is missing (NaN), infinite
    or None: it never prints "unknown", "nan", "None" or "inf".
    """
    label = description or name.replace("_", " ")
    label = f"{label[:1].upper()}{label[1:]}"
    for pattern, template in _TEMPLATES:
        if re.search(pattern, name):
            missing = _MISSING_TEXT.get(template, f"{label}: not recorded for this deal yet")
            return _readable(template, missing)

    def generic(_: str, v: float, t: float | None) -> str:
        text = f"{label}: {_num(v, 2 if abs(v) < 10 else 0)}"
        return text + _cmp(t, lambda x: _num(x, 2 if x is not None and abs(x) < 10 else 0), "won deals here:")

    return _readable(generic, f"{label}: not recorded for this deal yet")


class ReasonWriter:
    """Turns contribution matrices into reason dicts; everything per feature is precomputed once."""

    def __init__(
        self,
        feature_columns: Sequence[str],
        reference: Mapping[str, Any],
        categorical_levels: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.feature_columns = list(feature_columns)
        self.categorical_levels = {k: list(v) for k, v in (categorical_levels or {}).items()}
        descriptions = _descriptions()
        self._templates = [template_for(c, descriptions.get(c)) for c in self.feature_columns]
        self._context_idx = [i for i, c in enumerate(self.feature_columns) if c in NOT_REASONS]
        # reference matrices aligned to feature_columns (NaN where no reference / categorical)
        ref_features = list(reference.get("features", []))
        n_feat = len(self.feature_columns)
        col_of = {name: i for i, name in enumerate(self.feature_columns)}
        target = np.array([col_of.get(f, -1) for f in ref_features], dtype=int)

        def matrix(rows: Mapping[str, Sequence[float | None]]) -> tuple[pd.Index, NDArray[np.float64]]:
            keys = pd.Index([str(k) for k in rows.keys()], dtype=object)
            out = np.full((len(keys) + 1, n_feat), np.nan)  # last row: "not found"
            for i, vals in enumerate(rows.values()):
                arr = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
                out[i, target[target >= 0]] = arr[target >= 0]
            return keys, out

        stage_keys, self._stage_ref = matrix(reference.get("by_stage", {}))
        pipe_keys, self._pipe_ref = matrix(reference.get("by_pipeline", {}))
        self._stage_keys, self._pipe_keys = KeyCodes(stage_keys), KeyCodes(pipe_keys)
        _, glob = matrix({"": reference.get("global", [None] * len(ref_features))})
        self._global_ref = glob[0]

    def typical_values(self, pipeline: ArrayLike, stage: ArrayLike) -> NDArray[np.float64]:
        """(n_rows, n_features) typical values: stage-level, else pipeline-level, else global."""
        # missing names (None, NaN, pd.NA) match no key and fall through to the wider reference
        pipe = text_or_blank(pipeline)
        stg = text_or_blank(stage)
        keys = pipe + _KEY_SEP + stg
        g_stage = self._stage_keys.codes(keys)
        g_pipe = self._pipe_keys.codes(pipe)
        ref = self._stage_ref[g_stage]  # -1 indexes the all-NaN last row
        ref = np.where(np.isnan(ref), self._pipe_ref[g_pipe], ref)
        return np.where(np.isnan(ref), self._global_ref[None, :], ref)

    def explain(
        self, contrib: NDArray[np.float64], x: NDArray[np.float64], pipeline: ArrayLike, stage: ArrayLike,
        top_k: int = 3,
    ) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
        """(reasons, lowering): up to `top_k` reasons per row from `pred_contrib` output (n, n_features + 1)
        and the encoded features. Reasons are the features whose contribution raises the head's
        probability, largest first; `lowering` those that lower it, most negative first. A row may have
        fewer. The typical values are read once for both.

        `pipeline` and `stage` are each row's context (strings). Categorical features are shown by level
        name; numeric ones with the deal's value and a typical value for comparison.
        """
        k = self._top_k(contrib, top_k)
        if k == 0 or len(contrib) == 0:
            return [[] for _ in range(len(contrib))], [[] for _ in range(len(contrib))]
        typical = self.typical_values(pipeline, stage)
        return (self._top(contrib, x, typical, stage, k, "raises"),
                self._top(contrib, x, typical, stage, k, "lowers"))

    def _top_k(self, contrib: NDArray[np.float64], top_k: int) -> int:
        n_feat = len(self.feature_columns)
        if contrib.shape[1] != n_feat + 1:
            raise ValueError(f"contributions have {contrib.shape[1]} columns, expected {n_feat + 1}")
        return max(0, min(top_k, n_feat))

    def _top(
        self, contrib: NDArray[np.float64], x: NDArray[np.float64], typical: NDArray[np.float64],
        stage: ArrayLike, k: int, direction: Literal["raises", "lowers"],
    ) -> list[list[dict[str, Any]]]:
        """One direction of `explain`, given the typical values and a `k` of at least 1."""
        n_feat = len(self.feature_columns)
        sign = 1.0 if direction == "raises" else -1.0
        signed = contrib[:, :n_feat] * sign
        signed[:, self._context_idx] = 0.0
        order = np.argsort(-signed, axis=1, kind="stable")[:, :k]
        rows = np.arange(len(order))[:, None]  # each row's own top features (take_along_axis, cheaper)
        # a contribution too small to show at the 4 decimals of `effect` is no reason either way
        keep = signed[rows, order] >= MIN_EFFECT
        top_effect = contrib[rows, order]
        top_value = x[rows, order]
        top_typical = typical[rows, order]
        stage_arr = np.asarray(stage, dtype=object)
        names = self.feature_columns
        out: list[list[dict[str, Any]]] = []
        # string formatting is inherently per reason; everything numeric above is vectorised
        for i in range(len(order)):
            row: list[dict[str, Any]] = []
            for j in range(k):
                if not keep[i, j]:
                    break
                f = int(order[i, j])
                row.append(
                    self._reason(
                        names[f], f, top_value[i, j], top_effect[i, j], top_typical[i, j], stage_arr[i]
                    )
                )
            out.append(row)
        return out

    def _reason(
        self, name: str, f: int, value: float, effect: float, typical: float, stage: str
    ) -> dict[str, Any]:
        levels = self.categorical_levels.get(name)
        if levels is not None:
            code = int(value) if np.isfinite(value) else -1
            level = levels[code] if 0 <= code < len(levels) else None
            shown = level or _label(stage)
            if name.startswith("stage"):
                text = f"At stage {shown}" if shown else "The deal's stage is not recorded"
            else:
                what = name.removesuffix("_cat").replace("_", " ").capitalize()
                text = f"{what}: {level}" if level else f"{what}: not recorded for this deal"
            return {"feature": name, "value": level, "effect": round(float(effect), 4), "text": text}
        typ = float(typical) if np.isfinite(typical) else None
        v = float(value)
        return {
            "feature": name,
            "value": v if np.isfinite(v) else None,
            "effect": round(float(effect), 4),
            "text": self._templates[f](name, v, typ),
        }


def stage_prior_reasons(
    rates: NDArray[np.float64], global_rate: float, pipeline: ArrayLike, stage: ArrayLike, label: str
) -> list[list[dict[str, Any]]]:
    """Reasons for a head that is a stage prior: the stage is the only reason there is."""
    eps = 1e-6
    r = np.clip(rates, eps, 1 - eps)
    g = float(np.clip(global_rate, eps, 1 - eps))
    effect = np.log(r / (1 - r)) - np.log(g / (1 - g))
    return [
        [
            {
                "feature": "stage",
                "value": _label(s) or None,
                "effect": round(float(e), 4) if np.isfinite(e) else 0.0,
                "text": _stage_prior_text(_label(p), _label(s), label, float(rate), g),
            }
        ]
        for p, s, e, rate in zip(
            np.asarray(pipeline, dtype=object), np.asarray(stage, dtype=object), effect, r, strict=True
        )
    ]


def _stage_prior_text(pipeline: str, stage: str, label: str, rate: float, overall: float) -> str:
    where = f"at stage {stage}" if stage else "at this stage"
    where += f" in {pipeline}" if pipeline else ""
    if not np.isfinite(rate):
        return f"No history yet for deals {where}; all deals {label} {overall:.0%} of the time"
    return f"Deals {where} {label} {rate:.0%} of the time (all deals: {overall:.0%})"


def _label(value: object) -> str:
    """A CRM name for a sentence; "" for missing ones (None, NaN, pd.NA), never "nan" or "None"."""
    if value is None or value is pd.NA or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none", "<na>", "nat") else text
