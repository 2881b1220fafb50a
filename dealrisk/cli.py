"""`dealrisk`: one Typer app; each group of verbs registers its commands from its own module."""

from __future__ import annotations

import logging
import os

import typer

from dealrisk import cmd_analytics, cmd_data, cmd_demo, cmd_keys, cmd_models, cmd_service
from dealrisk.console import fail

app = typer.Typer(
    name="dealrisk",
    help="Which deals are going cold and how likely each is to close: simulate, import, train, "
    "backtest, compare, promote, retrain, monitor, score, at-risk, health, forecast, serve, keys, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (cmd_data, cmd_models, cmd_analytics, cmd_keys, cmd_service, cmd_demo):
    module.register(app)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else os.environ.get("DEALRISK_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A bad value in the environment is reported once, naming the variable, before any command runs.
    from serving.settings import SettingsError, read_settings

    try:
        read_settings()
    except SettingsError as exc:
        fail(str(exc), code=2)
