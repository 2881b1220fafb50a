"""Running the real Typer app in-process against a module's own data folder and stores.

The autouse fixture in tests/conftest.py points the environment at a fresh, empty folder per test, so
module-scoped CLI fixtures pass their own DEALRISK_HOME / MLflow / store locations to each invocation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from dealrisk.cli import app


def isolated_env(root: Path) -> dict[str, str]:
    """Environment for CLI runs that keeps every store under `root`."""
    return {
        "DEALRISK_HOME": str(root / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DEALRISK_DATABASE_URL": f"sqlite:///{root / 'store.db'}",
    }


def run(env: dict[str, str], *args: str) -> Result:
    """Invoke the CLI in-process with the given environment."""
    from serving import settings

    settings.get_settings.cache_clear()  # settings are read from the env given to this invocation
    try:
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    finally:
        settings.get_settings.cache_clear()


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
