"""Logging the bundle to MLflow and loading it back from the registry, without pickle.

`log_bundle` logs the bundle as an MLflow model from code (`models/pyfunc_model.py` plus the bundle
folder as an artifact). `load_bundle` resolves a model URI to a registered version, downloads only the
files and calls `ScoringBundle.load`, which checks every SHA-256; nothing is unpickled and no pyfunc
model is instantiated. The tracking URI is always passed explicitly, never set globally here.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from models.bundle import MANIFEST, ScoringBundle

log = logging.getLogger(__name__)

REGISTERED_MODEL = "deal-risk"
CHAMPION_ALIAS = "champion"
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"
BUNDLE_ARTIFACT = "bundle"

_PACKAGE_DIR = Path(__file__).resolve().parent
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")


class ModelNotFoundError(LookupError):
    """The model URI names no registered version, alias or run."""


def pyfunc_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame in the types of the logged model's signature (what `mlflow models serve` and
    `pyfunc.predict` take): categories and times as strings, plain integers as long, other numbers as
    double."""
    out = pd.DataFrame(index=frame.index)
    for c in frame.columns:
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s.dtype):
            out[c] = s.astype(object).where(s.notna(), None).astype(str)
        elif pd.api.types.is_datetime64_any_dtype(s.dtype):
            out[c] = s.astype("string").fillna("").astype(str)
        elif pd.api.types.is_bool_dtype(s.dtype):
            out[c] = s.astype(bool)
        elif pd.api.types.is_integer_dtype(s.dtype) and not s.isna().any():
            out[c] = s.to_numpy(dtype="int64")
        elif pd.api.types.is_numeric_dtype(s.dtype):
            out[c] = s.to_numpy(dtype="float64", na_value=float("nan"))
        else:
            out[c] = s.astype(str)
    return out


def log_bundle(
    bundle: ScoringBundle,
    name: str = "model",
    input_example_features: pd.DataFrame | None = None,
    registered_model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Log the bundle in the active MLflow run as a model from code; returns MLflow's `ModelInfo`.

    With `input_example_features` (a few rows of the feature frame) the model gets a signature inferred
    from features -> scores. With `registered_model_name` a new registry version is created too
    (`model_info.registered_model_version`).
    """
    import mlflow
    from mlflow.models import infer_signature

    signature = None
    if input_example_features is not None and len(input_example_features):
        example = input_example_features.head(5)
        scores = bundle.score(example, top_reasons=3)
        for column in ("reasons", "counter_reasons"):
            scores[column] = [str(r) for r in scores[column]]
        signature = infer_signature(pyfunc_frame(example), pyfunc_frame(scores))
    features_dir = _PACKAGE_DIR.parent / "features"
    with tempfile.TemporaryDirectory(prefix="dealrisk-bundle-") as tmp:
        bundle_dir = bundle.save(Path(tmp) / BUNDLE_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(_PACKAGE_DIR / "pyfunc_model.py"),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            # the model-from-code file imports models.bundle (and it imports features): ship both so
            # `mlflow models serve` works outside this checkout
            code_paths=[str(_PACKAGE_DIR), str(features_dir)],
            signature=signature,
            registered_model_name=registered_model_name,
            metadata=metadata,
            pip_requirements=_requirements(),
        )
    return info


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in ("mlflow", "lightgbm", "pandas", "numpy", "scikit-learn"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except Exception:  # a missing optional dist just goes unpinned
            pins.append(dist)
    return pins


def resolve_version(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(download URI, version label) for a model URI.

    `models:/deal-risk@champion` and `models:/deal-risk/3` resolve through the registry to the version
    number ("3"); `runs:/<run_id>/model` gives "run:<run_id>". Raises `ModelNotFoundError`.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = _MODELS_URI.match(model_uri)
    if m:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        name = m.group("name")
        try:
            if m.group("alias"):
                mv = client.get_model_version_by_alias(name, m.group("alias"))
            else:
                mv = client.get_model_version(name, m.group("version"))
        except MlflowException as exc:
            raise ModelNotFoundError(
                f"{model_uri}: no such registered model version or alias ({exc})"
            ) from exc
        # the version's own artifact location: downloading "models:/..." would go through the global
        # registry URI rather than the one we were given
        return client.get_model_version_download_uri(name, mv.version), str(mv.version)
    r = _RUNS_URI.match(model_uri)
    if r:
        return model_uri, f"run:{r.group('run_id')}"
    raise ModelNotFoundError(
        f"{model_uri!r} is not a model URI; use models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}, "
        f"models:/{REGISTERED_MODEL}/<version>, runs:/<run_id>/model, or a bundle folder"
    )


# The folder, beside a local SQLite tracking database, that holds its runs' artifacts (training creates
# experiments with it as their artifact location).
ARTIFACTS_DIRNAME = "mlartifacts"


def local_artifact_root(tracking_uri: str | None) -> Path | None:
    """The artifact folder of a local SQLite tracking store (`<db folder>/mlartifacts`), else None."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIRNAME
    return None


def rebase_artifact_uri(artifact_uri: str, tracking_uri: str | None) -> str:
    """An artifact URI recorded by a local store, moved to where that store's folder is now.

    MLflow records absolute `file://` artifact locations. A DEALRISK_HOME copied elsewhere (a restored
    backup, a moved volume) keeps the old locations in its database, so the copy would silently read
    the original's models while the original exists, and fail once it is gone. For a local SQLite
    store the part after `mlartifacts/` is taken relative to the database's own folder, whenever that
    copy exists; other URIs (a tracking server's, S3) are returned as they are.
    """
    root = local_artifact_root(tracking_uri)
    if root is None or not artifact_uri.startswith("file:"):
        return artifact_uri
    from urllib.parse import unquote, urlparse

    parts = Path(unquote(urlparse(artifact_uri).path)).parts
    if ARTIFACTS_DIRNAME not in parts:
        return artifact_uri
    last = len(parts) - 1 - parts[::-1].index(ARTIFACTS_DIRNAME)
    own = root.resolve().joinpath(*parts[last + 1:])
    if own.exists():
        return own.as_uri()
    # A tracking database copied without its artifacts: the recorded place is all there is.
    log.warning("artifacts of %s are not under %s; reading them where they were recorded", artifact_uri, root)
    return artifact_uri


def _find_bundle_dir(root: Path) -> Path:
    """The bundle folder inside a downloaded MLflow model (as recorded in its MLmodel file)."""
    import yaml

    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        arts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {}) or {}
        rel = (arts.get(BUNDLE_ARTIFACT) or {}).get("path")
        if rel and (root / rel / MANIFEST).is_file():
            return root / rel
    found = sorted(root.rglob(MANIFEST))
    if not found:
        raise ModelNotFoundError(
            f"{root}: the downloaded model holds no scoring bundle ({MANIFEST} not found)"
        )
    return found[0].parent


def load_bundle(model_uri: str = CHAMPION_URI, tracking_uri: str | None = None) -> tuple[ScoringBundle, str]:
    """Download a logged bundle and load it (hash-checked, no pickle); returns (bundle, version label).

    `model_uri` may also be a local bundle folder (label "local:<path>") or a downloaded MLflow model
    folder.
    """
    local = Path(model_uri)
    if "://" not in model_uri and ":/" not in model_uri and local.is_dir():
        target = local if (local / MANIFEST).is_file() else _find_bundle_dir(local)
        return ScoringBundle.load(target), f"local:{local}"
    import mlflow.artifacts

    download_uri, version = resolve_version(model_uri, tracking_uri)
    download_uri = rebase_artifact_uri(download_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="dealrisk-model-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=download_uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        # everything is read into memory by load, so the temp folder can go afterwards
        bundle = ScoringBundle.load(_find_bundle_dir(Path(path)))
    log.info("loaded scoring bundle %s (version %s)", model_uri, version)
    return bundle, version


# Where `dealrisk monitor` keeps its latest report, inside the MLflow run of the version it checked.
MONITOR_ARTIFACT = "monitor/latest.json"


def _run_id_of(version: str, tracking_uri: str | None) -> str:
    from mlflow import MlflowClient

    if version.startswith("run:"):
        return version.removeprefix("run:")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version(REGISTERED_MODEL, version).run_id)


def save_monitor_report(version: str, report: dict[str, Any], tracking_uri: str | None) -> None:
    """Keep `report` (JSON-ready) as the latest monitor report of `version`; its state also goes on the
    version as the tag `monitor_state`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.log_dict(_run_id_of(version, tracking_uri), report, MONITOR_ARTIFACT)
    if not version.startswith("run:"):
        client.set_model_version_tag(REGISTERED_MODEL, version, "monitor_state", str(report.get("state")))


def load_monitor_report(version: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """The latest monitor report saved for `version`, or None when it was never monitored."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run_id = _run_id_of(version, tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, MONITOR_ARTIFACT, tmp)
            loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (MlflowException, OSError):
        return None
    return loaded
