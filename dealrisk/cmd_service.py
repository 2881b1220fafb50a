"""`dealrisk serve`: run the scoring service with uvicorn."""

from __future__ import annotations

import logging

import typer

from dealrisk.console import err_console, fail


def register(app: typer.Typer) -> None:
    """Add the `serve` command."""

    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 to expose it)."),
        port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
        workers: int = typer.Option(
            1, min=1, help="Worker processes; each loads its own copy of the model and its own metrics."
        ),
        log_level: str = typer.Option("info", help="uvicorn log level (critical … debug)."),
    ) -> None:
        """Serve the HTTP API (OpenAPI at /docs) with the champion model, or DEALRISK_MODEL_URI.

        Reads DEALRISK_HOME, DEALRISK_DATABASE_URL and MLFLOW_TRACKING_URI like every command. The
        service starts even without a loadable model: /readyz then says why, and POST
        /v1/model/reload (or the periodic alias check) brings it up once a champion is registered.
        """
        import uvicorn

        from serving.settings import get_settings

        try:
            settings = get_settings()
        except (OSError, ValueError) as exc:
            fail(f"cannot read the settings: {exc} (check DEALRISK_HOME and the DEALRISK_* variables)")
        # The access log is one JSON line per request on the `serving.access` logger.
        logging.getLogger("serving.access").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
        err_console.print(
            f"serving on http://{host}:{port} (docs at /docs); store {settings.database_url}, "
            f"model {settings.model_uri} from {settings.tracking_uri}",
            highlight=False,
        )
        uvicorn.run(
            "serving.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level.lower(),
            # uvicorn's own access log writes the full URL, query string included; the service's JSON
            # access log (serving.access) records the path only.
            access_log=False,
        )
