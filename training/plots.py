"""Diagnostic plots as PNG files for MLflow: calibration curve, ROC, feature importance.

Uses matplotlib's Agg backend explicitly (no display on servers and in tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _clean(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    keep = np.isfinite(y_arr) & np.isfinite(p_arr)
    return y_arr[keep], p_arr[keep]


def plot_calibration(y: ArrayLike, predictions: Mapping[str, ArrayLike], path: Path, title: str) -> Path:
    """Observed rate against mean prediction in 10 equal-width bins, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for name, p in predictions.items():
        y_arr, p_arr = _clean(y, p)
        if y_arr.size == 0:
            continue
        bins = np.minimum((p_arr * 10).astype(int), 9)
        count = np.bincount(bins, minlength=10)
        used = count > 0
        mean_p = np.bincount(bins, weights=p_arr, minlength=10)[used] / count[used]
        rate = np.bincount(bins, weights=y_arr, minlength=10)[used] / count[used]
        ax.plot(mean_p, rate, marker="o", label=name)
    ax.set(xlabel="predicted probability", ylabel="observed rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_roc(y: ArrayLike, predictions: Mapping[str, ArrayLike], path: Path, title: str) -> Path:
    """ROC curves, one per model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for name, p in predictions.items():
        y_arr, p_arr = _clean(y, p)
        if np.unique(y_arr).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y_arr, p_arr)
        ax.plot(fpr, tpr, label=name)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_importance(importance: Mapping[str, float], path: Path, title: str, top: int = 20) -> Path:
    """Horizontal bars of the `top` most important features (LightGBM gain)."""
    items = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.3 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="gain", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_metric_intervals(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """One point per version with its confidence interval as an error bar, one panel per head
    (`rows`: version, head, value, ci_low, ci_high)."""
    heads = list(dict.fromkeys(rows["head"]))
    fig, axes = plt.subplots(1, max(len(heads), 1), figsize=(4 * max(len(heads), 1), 3.5), squeeze=False)
    for ax, head in zip(axes[0], heads, strict=False):
        part = rows[rows["head"] == head]
        x = np.arange(len(part))
        value = part["value"].to_numpy(dtype=float)
        err = np.vstack([value - part["ci_low"].to_numpy(dtype=float),
                         part["ci_high"].to_numpy(dtype=float) - value])
        ax.errorbar(x, value, yerr=np.maximum(err, 0.0), fmt="o", capsize=4)
        ax.set_xticks(x, [f"v{v}" for v in part["version"]])
        ax.set(title=head)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
