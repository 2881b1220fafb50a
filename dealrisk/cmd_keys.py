"""`dealrisk keys create | list | revoke`: API keys for the service, scoped by role and pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from dealrisk.console import emit_json, fail, out_console

if TYPE_CHECKING:
    from serving.store import Store

# serving.store.ROLES, spelled out so `dealrisk --help` does not load pandas and SQLAlchemy (a test checks)
ROLES = ("admin", "manager", "integration")
ALL_PIPELINES = "*"

keys_app = typer.Typer(
    name="keys",
    help="API keys: create (shown once), list (never shows secrets), revoke. Roles: admin (everything), "
    "manager (reads), integration (writes history and scores); each key sees only its pipelines.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.add_typer(keys_app, name="keys")


def _open_store() -> Store:
    from serving.settings import get_settings
    from serving.store import Store

    store = Store(get_settings().database_url)
    store.create_schema()
    return store


@keys_app.command("create")
def create(
    role: str = typer.Option(..., "--role", "-r", help=f"One of: {', '.join(ROLES)}."),
    pipelines: str = typer.Option(
        ..., "--pipelines", "-p", help="Comma-separated pipeline names the key may see, or '*' for all."
    ),
    name: str | None = typer.Option(None, "--name", "-n", help="A label to recognise the key by."),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"key", "key_id", "role", "pipelines"} as JSON.'
    ),
) -> None:
    """Create an API key and print it once: only its hash is stored, so copy it now."""
    if role not in ROLES:
        fail(f"--role {role!r} is not a role; use one of {', '.join(ROLES)}")
    wanted = [p.strip() for p in pipelines.split(",") if p.strip()]
    if not wanted:
        fail("--pipelines is empty; give pipeline names separated by commas, or '*' for all")
    store = _open_store()
    try:
        known = set(store.list_pipelines())
        plaintext, key = store.create_api_key(role, wanted, name=name)
    except ValueError as exc:  # the store's rules of a key (e.g. '*' listed with names)
        fail(f"--pipelines: {exc}")
    finally:
        store.close()
    if as_json:
        emit_json(
            {"key": plaintext, "key_id": key.key_id, "role": key.role, "pipelines": list(key.pipelines)}
        )
        return
    unknown = [p for p in key.pipelines if p != ALL_PIPELINES and p not in known]
    out_console.print(f"[bold]{plaintext}[/]", highlight=False, soft_wrap=True)
    out_console.print(
        f"key id {key.key_id}, role {key.role}, pipelines {', '.join(key.pipelines)}. "
        "Copy the key now: it cannot be shown again.",
        highlight=False,
    )
    if unknown:
        out_console.print(
            f"[yellow]note:[/] no deals in pipeline(s) {', '.join(unknown)} yet; the key will see them once "
            "they are imported.",
            highlight=False,
        )


@keys_app.command("list")
def list_keys(as_json: bool = typer.Option(False, "--json", help="Print the keys as JSON.")) -> None:
    """List API keys (ids, roles, pipelines, dates; never the secrets)."""
    store = _open_store()
    try:
        keys = store.list_api_keys()
    finally:
        store.close()
    if as_json:
        emit_json([k.to_dict() for k in keys])
        return
    if not keys:
        out_console.print(
            "No API keys yet: create one with `dealrisk keys create --role admin --pipelines '*'`."
        )
        return
    table = Table(title="API keys")
    for column in ("key id", "name", "role", "pipelines", "created", "status"):
        table.add_column(column)
    for k in keys:
        status = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        created = f"{k.created_at:%Y-%m-%d %H:%M}"
        table.add_row(k.key_id, k.name or "", k.role, ", ".join(k.pipelines), created, status)
    out_console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(
        ..., help="The key id (the 8 hex characters after 'drk_', or from `keys list`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the revoked key's record as JSON."),
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    store = _open_store()
    try:
        before = next((k for k in store.list_api_keys() if k.key_id == key_id.strip()), None)
        key = store.revoke_api_key(key_id.strip())
    finally:
        store.close()
    if key is None:
        fail(f"no API key with id {key_id!r}; `dealrisk keys list` shows the ids")
    if as_json:
        emit_json(key.to_dict())
        return
    if before is not None and before.revoked_at is not None:
        out_console.print(f"Key {key.key_id} ({key.role}) was already revoked on "
                          f"{key.revoked_at:%Y-%m-%d %H:%M} UTC; nothing changed.", highlight=False,
                          soft_wrap=True)
        return
    out_console.print(f"Revoked key {key.key_id} ({key.role}).", highlight=False)
