"""`dealrisk import --from <crm>` through the real CLI: conversion report, store contents, and bad exports
that leave the store as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import isolated_env, ok_json, run

from serving.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crm"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path)


def _store(env: dict[str, str]) -> Store:
    store = Store(env["DEALRISK_DATABASE_URL"])
    store.create_schema()
    return store


def test_import_from_salesforce_reports_the_conversion_and_fills_the_store(env: dict[str, str]) -> None:
    body = ok_json(run(env, "import", "--from", "salesforce", str(FIXTURES / "salesforce"), "--json"))
    conversion = body["conversion"]
    assert conversion["deals"] == 4
    assert conversion["events"] == {"stage_changes": 9, "activities": 5, "field_changes": 4}
    assert (conversion["start"], conversion["end"]) == (
        "2023-11-20T10:00:00+00:00",
        "2024-03-01T16:00:00+00:00",
    )
    assert {n["what"]: n["count"] for n in conversion["dropped"]}["deleted opportunities"] == 1
    assert {n["what"]: n["count"] for n in conversion["untracked"]}["owner"] == 1
    assert conversion["pipelines"]["0125g00000RtA01AAF"]["label"] == "Enterprise"
    assert body["tables"]["deals"]["inserted"] == 4 and body["tables"]["stage_changes"]["inserted"] == 9

    store = _store(env)
    stored = store.load_history()
    assert sorted(stored.deals["deal_id"]) == sorted(
        ["0065g00000AbCdEAAV", "006000000000002AAA", "006000000000004AAA", "006000000000005AAA"]
    )
    won = stored.stage_changes[stored.stage_changes["stage"] == "Closed Won"]
    assert won["deal_id"].tolist() == ["0065g00000AbCdEAAV"]
    store.close()

    again = ok_json(run(env, "import", "--from", "salesforce", str(FIXTURES / "salesforce"), "--json"))
    assert again["inserted"] == 0 and again["updated"] == 0

    text = run(env, "import", "--from", "salesforce", str(FIXTURES / "salesforce"))
    assert text.exit_code == 0, text.output
    for words in (
        "4 deals",
        "Dropped",
        "deleted opportunities",
        "Not mapped",
        "tracked field NextStep",
        "History not tracked from creation",
    ):
        # rich wraps lines at the terminal width, which moves with the length of the fixture's path
        assert words in " ".join(text.stdout.split())


def test_import_from_hubspot_with_labels_keys_on_the_labels(env: dict[str, str]) -> None:
    ok_json(run(env, "import", "--from", "hubspot", str(FIXTURES / "hubspot"), "--labels", "--json"))
    store = _store(env)
    stored = store.load_history()
    assert sorted(stored.deals["pipeline"]) == ["Partners", "Sales Pipeline", "Sales Pipeline"]
    assert "Won" in stored.pipelines["Sales Pipeline"].won
    store.close()


@pytest.mark.parametrize(
    ("crm", "file", "old", "new", "where"),
    [
        (
            "salesforce",
            "OpportunityHistory.csv",
            "2024-02-10T10:00:00.000Z,Closed Lost",
            "2024-02-10T10:00:00.000Z,Closed Gone",
            "OpportunityHistory.csv row 8 column 'StageName'",
        ),
        (
            "salesforce",
            "task.csv",
            "00T000000000001AAA,0065g00000AbCdE,",
            "00T000000000001AAA,0065g00000ZZZZZ,",
            "Task.csv row 1 column 'WhatId'",
        ),
        (
            "hubspot",
            "calls.json",
            '"id": "102"',
            '"id": "777"',
            "calls.json row 1 column 'associations.deals'",
        ),
        (
            "pipedrive",
            "flow.json",
            '"item_id": 8,',
            '"item_id": 80,',
            "flow.json row 10 column 'data.item_id'",
        ),
        (
            "odoo",
            "crm.stage.json",
            '{"id": 5, "name": "Pilot"',
            '{"id": 6, "name": "Pilot"',
            "mail.tracking.value.json row 7 column 'new_value_integer'",
        ),
    ],
)
def test_a_bad_export_names_the_cell_and_leaves_the_store_unchanged(
    env: dict[str, str], tmp_path: Path, crm: str, file: str, old: str, new: str, where: str
) -> None:
    ok_json(run(env, "import", "--from", "hubspot", str(FIXTURES / "hubspot"), "--json"))
    store = _store(env)
    before = store.count_rows()
    bad = Path(shutil.copytree(FIXTURES / crm, tmp_path / "bad"))
    text = (bad / file).read_text(encoding="utf-8")
    assert old in text
    (bad / file).write_text(text.replace(old, new, 1), encoding="utf-8")

    result = run(env, "import", "--from", crm, str(bad))
    assert result.exit_code == 1
    assert where in result.stderr and "Nothing was imported" in result.stderr
    assert store.count_rows() == before
    store.close()


def test_import_from_a_missing_file_or_an_unknown_crm_fails_plainly(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = Path(shutil.copytree(FIXTURES / "salesforce", tmp_path / "bad"))
    (bad / "Opportunity.csv").unlink()
    result = run(env, "import", "--from", "salesforce", str(bad))
    assert result.exit_code == 1 and "missing file Opportunity.csv" in result.stderr
    unknown = run(env, "import", "--from", "zoho", str(bad))
    assert unknown.exit_code == 1 and "salesforce, hubspot, pipedrive, odoo" in unknown.stderr
    assert _store(env).count_rows() == {k: 0 for k in _store(env).count_rows()}
