"""`dealrisk demo`: the whole product on embedded defaults, from nothing to a running service."""

from __future__ import annotations

import typer

from dealrisk.console import err_console, out_console


def register(app: typer.Typer) -> None:
    """Add the `demo` command."""

    @app.command("demo")
    def demo(
        deals: int = typer.Option(4000, help="How many deals to simulate."),
        seed: int = typer.Option(7, help="Simulator seed (same seed, same history)."),
        host: str = typer.Option("127.0.0.1", help="Address to serve on."),
        port: int = typer.Option(8000, help="Port to serve on."),
        fresh: bool = typer.Option(
            False, help="Train a new model even when a champion is already registered."
        ),
        no_serve: bool = typer.Option(False, "--no-serve", help="Stop after printing the key."),
    ) -> None:
        """Simulate a history, import it, train and register a model, create an admin key, and serve.

        State goes under DEALRISK_HOME (default ./.dealrisk). Running it again reuses the store
        (imports are idempotent) and the registered champion unless --fresh.
        """
        import uvicorn

        from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
        from serving.app import create_app
        from serving.settings import get_settings
        from serving.store import Store
        from training.data import write_history
        from training.simulate import simulate_history
        from training.train import TrainConfig, train

        settings = get_settings()
        data_dir = settings.home / "demo-data"
        err_console.print(f"[1/5] simulating {deals} deals (seed {seed}) into {data_dir}")
        history = simulate_history(n_deals=deals, seed=seed)
        write_history(history, data_dir)

        err_console.print(f"[2/5] importing into {settings.database_url}")
        store = Store(settings.database_url)
        store.create_schema()
        store.import_history(history)

        version = _champion_version(settings.tracking_uri, REGISTERED_MODEL, CHAMPION_ALIAS)
        if version is None or fresh:
            err_console.print("[3/5] training both heads and registering the model (a minute or two)")
            result = train(history, TrainConfig(), tracking_uri=settings.tracking_uri)
            if fresh and version is not None:
                from training.registry import promote

                promote(str(result.model_version), tracking_uri=settings.tracking_uri, force=True)
            version = str(result.model_version)
        else:
            err_console.print(f"[3/5] reusing the registered champion, version {version} (--fresh retrains)")

        err_console.print("[4/5] creating an admin API key")
        key, _ = store.create_api_key("admin", ["*"], name="demo")

        url = f"http://{host}:{port}"
        out_console.print(f"\n[bold]dealrisk is serving model deal-risk v{version} at {url}[/]")
        out_console.print(f"  manager page:  {url}/   (paste the key when asked)")
        out_console.print(f"  API docs:      {url}/docs")
        out_console.print(f"  admin key:     {key}")
        out_console.print(
            f"  try:           curl -H 'Authorization: Bearer {key}' {url}/v1/pipelines\n", soft_wrap=True
        )
        if no_serve:
            return
        err_console.print("[5/5] serving (Ctrl-C stops)")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


def _champion_version(tracking_uri: str, name: str, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
