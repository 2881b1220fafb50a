"""`dealrisk demo`: the whole product on embedded defaults, from nothing to a running service."""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

import typer

from dealrisk.console import err_console, fail, out_console, progress

if TYPE_CHECKING:
    from pathlib import Path

    from features.history import DealHistory

# Two years of history: enough closed deals per pipeline for training, calibration and a test window.
DEMO_HISTORY_DAYS = 730


def register(app: typer.Typer) -> None:
    """Add the `demo` command."""

    @app.command("demo")
    def demo(
        deals: int = typer.Option(4000, min=50, help="How many deals to simulate (first run only)."),
        seed: int = typer.Option(7, help="Simulator seed (same seed, same history)."),
        host: str = typer.Option("127.0.0.1", help="Address to serve on."),
        port: int = typer.Option(8000, min=1, max=65535, help="Port to serve on."),
        fresh: bool = typer.Option(
            False, help="Train a new model even when a champion is already registered."
        ),
        no_serve: bool = typer.Option(False, "--no-serve", help="Stop after printing the key."),
    ) -> None:
        """Simulate a history, import it, train and register a model, create an admin key, and serve.

        State goes under DEALRISK_HOME (default ./.dealrisk). The simulated history ends today, so the
        deals open "now" are live ones; it is written once to DEALRISK_HOME/demo-data and reused by later
        runs, as are the store (imports are idempotent) and the registered champion (unless --fresh).
        Delete DEALRISK_HOME to start over.
        """
        if not no_serve:
            # Fail before minutes of setup, not after: the port must be free to serve the demo.
            _check_port_free(host, port)

        from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
        from serving.settings import get_settings
        from serving.store import Store
        from training.train import TrainConfig, train

        settings = get_settings()
        data_dir = settings.home / "demo-data"
        history = _demo_history(data_dir, deals, seed)

        err_console.print(f"[2/5] importing into {settings.database_url}", highlight=False)
        store = Store(settings.database_url)
        try:
            store.create_schema()
            total = sum(len(getattr(history, t)) for t in ("deals", "stage_changes", "activities",
                                                            "field_changes"))
            with progress(f"Importing {history.n_deals():,} deals", total=total) as advance:
                store.import_history(history, progress=advance)

            version = _champion_version(settings.tracking_uri, REGISTERED_MODEL, CHAMPION_ALIAS)
            if version is None or fresh:
                err_console.print("[3/5] training both heads and registering the model (a minute or so)")
                result = train(history, TrainConfig(), tracking_uri=settings.tracking_uri)
                if fresh and version is not None:
                    from training.registry import promote

                    promote(str(result.model_version), tracking_uri=settings.tracking_uri, force=True)
                version = str(result.model_version)
            else:
                err_console.print(
                    f"[3/5] reusing the registered champion, version {version} (--fresh retrains)"
                )

            err_console.print("[4/5] creating an admin API key")
            key, _ = store.create_api_key("admin", ["*"], name="demo")
        finally:
            store.close()

        url = f"http://{host}:{port}"
        names = sorted(history.pipelines)
        pipeline = "SMB" if "SMB" in names or not names else names[0]
        verb = "ready to serve" if no_serve else "serving"
        out_console.print(
            f"\n[bold]dealrisk is {verb} model deal-risk v{version} at {url}[/]", highlight=False
        )
        out_console.print(f"  manager page:  {url}/   (paste the key when asked)", highlight=False)
        out_console.print(f"  API docs:      {url}/docs", highlight=False)
        out_console.print(f"  admin key:     {key}", highlight=False, soft_wrap=True)
        out_console.print(
            f"  try:           curl -H 'Authorization: Bearer {key}' {url}/v1/pipelines",
            highlight=False, soft_wrap=True,
        )
        out_console.print(
            f"                 curl -H 'Authorization: Bearer {key}' "
            f"'{url}/v1/pipelines/{pipeline}/at-risk?limit=5'",
            highlight=False, soft_wrap=True,
        )
        if no_serve:
            out_console.print("  serve it with: dealrisk serve" + ("" if port == 8000 else f" --port {port}"),
                              highlight=False)
            return
        import uvicorn

        from serving.app import create_app

        err_console.print("[5/5] serving (Ctrl-C stops)")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


def _demo_history(data_dir: Path, deals: int, seed: int) -> DealHistory:
    """The demo's history: read back from `data_dir` when an earlier run wrote it, else simulated.

    Simulated once, ending today (midnight UTC): re-simulating on a later day would shift every time
    and import a second, overlapping copy of each deal's events into the same store.
    """
    from training.data import read_history, write_history

    if (data_dir / "deals.csv").exists():
        err_console.print(f"[1/5] reusing the simulated history in {data_dir}", highlight=False)
        return read_history(data_dir)

    import pandas as pd

    from training.simulate import simulate_history

    end = pd.Timestamp.now(tz="UTC").normalize()
    start = end - pd.Timedelta(days=DEMO_HISTORY_DAYS)
    err_console.print(
        f"[1/5] simulating {deals:,} deals (seed {seed}, {start:%Y-%m-%d} to {end:%Y-%m-%d}) into {data_dir}",
        highlight=False,
    )
    with progress(f"Simulating {deals:,} deals", total=2) as advance:
        history = simulate_history(n_deals=deals, seed=seed, start=start.isoformat(), end=end.isoformat())
        advance()
        write_history(history, data_dir)
        advance()
    return history


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # uvicorn binds with SO_REUSEADDR; so does this probe, or a closed connection in TIME_WAIT
        # would look like a busy port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(f"port {port} on {host} is already in use: stop what runs there, or pass --port 8001")
            fail(f"cannot serve on {host}:{port}: {exc} (pass another --host or --port)")


def _champion_version(tracking_uri: str, name: str, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
