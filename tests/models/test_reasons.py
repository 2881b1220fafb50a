import json
import re

import numpy as np
import pandas as pd

from models.reasons import NOT_REASONS, ReasonWriter, build_reference, stage_prior_reasons, template_for

FEATURES = ["stage_cat", "days_since_last_activity", "stage_age_days", "owner_win_rate"]
LEVELS = {"stage_cat": ["Demo", "Lead In"]}


def _training_frame() -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "pipeline": ["Mid"] * 8 + ["Ent"] * 6,
            "stage": ["Demo"] * 6 + ["Lead In"] * 2 + ["Demo"] * 6,
            "stage_cat": pd.Categorical(
                ["Demo"] * 6 + ["Lead In"] * 2 + ["Demo"] * 6, categories=LEVELS["stage_cat"]
            ),
            "days_since_last_activity": [2, 4, 6, 8, 100, 200, 1, 1, 10, 10, 10, 10, 10, 10],
            "stage_age_days": [5.0] * 14,
            "owner_win_rate": [0.4] * 14,
        }
    )
    won = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    return frame, won


def test_reference_uses_won_rows_and_falls_back_from_stage_to_pipeline_to_global() -> None:
    frame, won = _training_frame()
    reference = json.loads(json.dumps(build_reference(frame, won, FEATURES, min_rows=3)))
    assert reference["features"] == FEATURES[1:]  # the categorical has no median
    # Mid/Demo: median over the four won rows (2, 4, 6, 8), the silent lost ones ignored
    assert reference["by_stage"]["Mid\x1fDemo"][0] == 5.0
    assert "Mid\x1fLead In" not in reference["by_stage"]  # 2 won rows < min_rows
    writer = ReasonWriter(FEATURES, reference, LEVELS)
    typical = writer.typical_values(
        pd.Series(["Mid", "Mid", "Nowhere"], dtype="string"),
        pd.Series(["Demo", "Lead In", "Demo"], dtype="string"),
    )
    assert typical[0, 1] == 5.0  # stage level
    assert typical[1, 1] == 3.0  # no Mid/Lead In reference: Mid's won rows (2, 4, 6, 8, 1, 1)
    assert typical[2, 1] == 9.0  # unknown pipeline: every won row


def test_only_what_raises_the_risk_is_a_reason_and_what_lowers_it_is_listed_apart() -> None:
    frame, won = _training_frame()
    writer = ReasonWriter(FEATURES, build_reference(frame, won, FEATURES, min_rows=3), LEVELS)
    # columns: stage_cat, days_since_last_activity, stage_age_days, owner_win_rate, bias
    contrib = np.array([[0.1, 1.5, -2.0, 0.05, -1.0], [0.9, -0.2, -0.4, 0.01, -1.0]])
    x = np.array([[1.0, 23.0, 40.0, 0.2], [0.0, 3.0, 2.0, 0.5]])
    keys = pd.Series(["Mid", "Mid"], dtype="string"), pd.Series(["Demo", "Demo"], dtype="string")
    raises, lowers = writer.explain(contrib, x, *keys, top_k=2)
    # the strongest effect (-2.0, stage age) lowers the risk: it is not offered as a reason for it
    assert [r["feature"] for r in raises[0]] == ["days_since_last_activity", "owner_win_rate"]
    assert [r["effect"] for r in raises[0]] == [1.5, 0.05]
    assert [(r["feature"], r["effect"]) for r in lowers[0]] == [("stage_age_days", -2.0)]
    # the stage itself (+0.9) is where the deal is, not a reason; only the owner's +0.01 is left
    assert [r["feature"] for r in raises[1]] == ["owner_win_rate"]
    assert [r["feature"] for r in lowers[1]] == ["stage_age_days", "days_since_last_activity"]
    assert all("At stage" not in r["text"] for row in raises + lowers for r in row)


def test_counts_read_as_correct_english() -> None:
    assert template_for("n_activity_30d")("n_activity_30d", 1.0, None) == "1 activity in the last 30 days"
    assert template_for("n_activity_30d")("n_activity_30d", 4.0, None) == "4 activities in the last 30 days"
    assert template_for("n_call_7d")("n_call_7d", 1.0, None) == "1 call in the last 7 days"
    assert template_for("n_call_7d")("n_call_7d", 0.0, None) == "0 calls in the last 7 days"
    assert template_for("owner_open_deals")("owner_open_deals", 1.0, None) == "The owner has 1 open deal"
    assert template_for("owner_closed_deals")("owner_closed_deals", 1.0, None) == (
        "The owner has closed 1 deal"
    )
    assert template_for("n_stage_changes")("n_stage_changes", 1.0, None) == "1 stage change so far"
    # "The amount was changed never; won deals at this stage: typically 0" was shown to managers
    amount_changes = template_for("n_amount_changes")
    assert amount_changes("n_amount_changes", 0.0, 0.0) == (
        "The amount has never been changed; won deals at this stage typically had 0 amount changes"
    )
    assert amount_changes("n_amount_changes", 1.0, 2.0) == (
        "The amount was changed once; won deals at this stage typically had 2 amount changes"
    )
    assert amount_changes("n_amount_changes", 3.0, 1.0) == (
        "The amount was changed 3 times; won deals at this stage typically had 1 amount change"
    )
    assert template_for("n_close_slips")("n_close_slips", 2.0, 1.0) == (
        "The expected close date slipped 2 times; won deals at this stage typically slipped once"
    )


def test_reason_text_names_the_deal_value_and_the_typical_one() -> None:
    frame, won = _training_frame()
    writer = ReasonWriter(FEATURES, build_reference(frame, won, FEATURES, min_rows=3), LEVELS)
    contrib = np.array([[0.0, 2.0, 0.1, 0.0, -1.0]])
    x = np.array([[0.0, 23.0, 5.0, 0.4]])
    (reason,) = writer.explain(
        contrib, x, pd.Series(["Mid"], dtype="string"), pd.Series(["Demo"], dtype="string"), top_k=1
    )[0][0]
    assert reason["value"] == 23.0
    assert "23 days" in reason["text"]
    assert "5 days" in reason["text"]  # typical for won deals at Mid/Demo
    json.dumps(reason)  # reasons travel as JSON


def test_missing_values_and_unknown_features_still_read_well() -> None:
    assert template_for("days_since_last_activity")("days_since_last_activity", np.nan, 6.0).startswith(
        "No activity recorded"
    )
    generic = template_for("weird_custom_score", "custom score from the CRM")
    assert generic("weird_custom_score", 3.5, 1.0) == "Custom score from the CRM: 3.50; won deals here: 1.00"


_UNREADABLE = re.compile(r"\b(unknown|nan|none|inf|infinity|null|<na>)\b", re.IGNORECASE)


def test_missing_or_infinite_values_never_print_unknown_nan_none_or_inf() -> None:
    # regression: `dealrisk score --at` showed "Time in this stage is unknown× the usual" when the deal's
    # ratio (or the typical value) was missing
    from features.build import FEATURE_COLUMNS

    levels = {"stage_cat": ["Demo"], "pipeline_cat": ["Mid"]}
    numeric = [c for c in FEATURE_COLUMNS if c not in levels] + ["weird_custom_score"]
    columns = [*numeric, *levels]
    n = len(columns)
    # the reference is all None (nothing known) except a few overflowing/odd typical values
    reference = {
        "features": numeric,
        "by_stage": {},
        "by_pipeline": {},
        "global": [1e308 if c == "log_amount" else None for c in numeric],
    }
    writer = ReasonWriter(columns, reference, levels)
    rows = []
    for value in (np.nan, np.inf, -np.inf):
        x = np.full((1, n), value)
        rows.append(x)
    x = np.vstack(rows)
    contrib = np.tile(np.append(np.linspace(1.0, 0.1, n), -1.0), (len(x), 1))
    pipeline = pd.Series(["Mid", None, np.nan], dtype=object)
    stage = pd.Series([None, np.nan, pd.NA], dtype=object)
    reasons, _ = writer.explain(contrib, x, pipeline, stage, top_k=n)
    texts = [r["text"] for row in reasons for r in row]
    assert len(texts) == 3 * (n - len(NOT_REASONS & set(columns)))  # where the deal is: never a reason
    bad = [t for t in texts if _UNREADABLE.search(t) or "×" in t]
    assert bad == []
    by_feature = {r["feature"]: r["text"] for r in reasons[0]}
    assert "typical time" in by_feature["stage_age_rel"]  # says why there is no comparison
    assert by_feature["days_since_activity"].startswith("No activity recorded")
    json.dumps(reasons)


def test_every_template_reads_well_with_a_missing_typical_value_or_deal_value() -> None:
    from features.build import FEATURE_COLUMNS, FEATURE_DESCRIPTIONS

    for name in [*FEATURE_COLUMNS, "weird_custom_score"]:
        template = template_for(name, FEATURE_DESCRIPTIONS.get(name))
        for v, t in [
            (12.0, None),
            (12.0, np.nan),
            (12.0, np.inf),
            (np.nan, 3.0),
            (np.inf, None),
            (0.0, np.nan),
        ]:
            text = template(name, v, t)
            assert text and not _UNREADABLE.search(text), (name, v, t, text)
    # the deal's own value still shows when only the typical one is missing
    assert template_for("stage_age_days")("stage_age_days", 12.0, np.nan) == "In this stage for 12 days"


def test_stage_prior_reasons_with_missing_names_or_rates_read_well() -> None:
    reasons = stage_prior_reasons(
        np.array([0.3, np.nan]),
        0.25,
        np.array(["Mid", None], dtype=object),
        np.array([np.nan, "Demo"], dtype=object),
        "close",
    )
    texts = [r["text"] for row in reasons for r in row]
    assert not [t for t in texts if _UNREADABLE.search(t)]
    assert texts[0] == "Deals at this stage in Mid close 30% of the time (all deals: 25%)"
