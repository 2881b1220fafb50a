"""The project's own documentation stays complete and self-contained.

A person who clones the repository reads README.md and docs/: every link there must lead somewhere, the
pages must not point outside the repository, and the API and CLI references must name every route and
command the code actually has (so a new route or command without documentation fails here).
"""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a page's headings (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in PAGES:
        for link in LINK.findall(page.read_text(encoding="utf-8")):
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and anchor not in _anchors(target):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert broken == []


def test_pages_do_not_point_outside_the_repository() -> None:
    offenders = [
        page.name
        for page in PAGES
        if "../shared" in page.read_text(encoding="utf-8") or "SPEC.md" in page.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_api_reference_names_every_route() -> None:
    from serving.app import create_app

    api_doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    paths = create_app().openapi()["paths"]
    assert "/v1/score" in paths  # the service's routes were found at all
    missing = [
        f"{method.upper()} {path}"
        for path, operations in paths.items()
        for method in operations
        if f"`{method.upper()} {path}`" not in api_doc
    ]
    assert missing == []


def test_cli_reference_has_a_section_per_command() -> None:
    from dealrisk.cli import app

    cli_doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"train", "serve", "keys"} <= set(commands)
    missing = [name for name in commands if f"\n## {name}\n" not in cli_doc]
    keys_doc = cli_doc.split("\n## keys\n", 1)[-1]
    missing += [f"keys {sub}" for sub in commands["keys"].commands if f"keys {sub}" not in keys_doc]
    assert missing == []
