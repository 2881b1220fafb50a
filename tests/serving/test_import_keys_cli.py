"""`dealrisk import` and `dealrisk keys` through the real CLI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dealrisk.cli import app
from dealrisk.cmd_keys import ROLES as CLI_ROLES
from serving.settings import get_settings
from serving.store import ROLES, Store

runner = CliRunner()

DEALS = """deal_id,pipeline,owner,amount,created_at,region
D1,SMB,ana,1000,2024-01-01,north
D2,SMB,bo,2500,2024-01-03T09:30:00Z,south
D3,Enterprise,cy,90000,2024-01-05,
"""
STAGES = """deal_id,stage,changed_at,event_id
D1,Lead,2024-01-01,s1
D1,Demo,2024-01-10,
D2,Lead,2024-01-03T09:30:00Z,
D3,Discovery,2024-01-06,
"""
ACTIVITIES = """deal_id,type,direction,occurred_at
D1,call,outbound,2024-01-02
D2,email,inbound,2024-01-04
D3,meeting,,2024-01-07
"""


def write_folder(path: Path, activities: str = ACTIVITIES) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "deals.csv").write_text(DEALS)
    (path / "stage_changes.csv").write_text(STAGES)
    (path / "activities.csv").write_text(activities)
    return path


@pytest.fixture
def cli_store(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The CLI's store is the test database (DEALRISK_DATABASE_URL), created empty."""
    monkeypatch.setenv("DEALRISK_DATABASE_URL", database_url)
    get_settings.cache_clear()
    store = Store(database_url)
    store.create_schema()
    return store


def test_import_then_reimport_is_idempotent(tmp_path: Path, cli_store: Store) -> None:
    folder = write_folder(tmp_path / "history")
    first = runner.invoke(app, ["import", str(folder), "--json"])
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert counts["tables"]["deals"]["inserted"] == 3
    assert counts["tables"]["activities"]["inserted"] == 3
    before = cli_store.count_rows()
    second = runner.invoke(app, ["import", str(folder), "--json"])
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["inserted"] == 0 and again["updated"] == 0
    assert cli_store.count_rows() == before
    plain = runner.invoke(app, ["import", str(folder)])
    assert plain.exit_code == 0 and "already" in plain.stdout
    loaded = cli_store.load_history()
    assert loaded.attribute_columns == ("region",)
    assert sorted(loaded.deals["deal_id"]) == ["D1", "D2", "D3"]


def test_bad_row_late_in_a_file_names_it_and_leaves_the_store_unchanged(
    tmp_path: Path, cli_store: Store
) -> None:
    runner.invoke(app, ["import", str(write_folder(tmp_path / "good"))])
    before = cli_store.count_rows()
    bad_activities = ACTIVITIES + "D3,call,,2024-01-08\nD3,carrier pigeon,,2024-01-09\n"
    bad = write_folder(tmp_path / "bad", activities=bad_activities)
    result = runner.invoke(app, ["import", str(bad)])
    assert result.exit_code == 1
    message = result.stderr
    assert "activities" in message and "row 5" in message and "'type'" in message
    assert "Nothing was imported" in message
    assert cli_store.count_rows() == before


def test_keys_create_list_revoke(cli_store: Store) -> None:
    created = runner.invoke(
        app, ["keys", "create", "--role", "manager", "--pipelines", "SMB,Enterprise", "--json"]
    )
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["role"] == "manager" and body["pipelines"] == ["SMB", "Enterprise"]
    key = cli_store.verify_api_key(body["key"])
    assert key is not None and key.key_id == body["key_id"]

    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0
    assert body["key"] not in listed.stdout
    assert [k["key_id"] for k in json.loads(listed.stdout)] == [body["key_id"]]

    revoked = runner.invoke(app, ["keys", "revoke", body["key_id"]])
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked key {body['key_id']}" in revoked.stdout
    assert cli_store.verify_api_key(body["key"]) is None
    again = runner.invoke(app, ["keys", "revoke", body["key_id"]])
    assert again.exit_code == 0, again.output
    assert f"Key {body['key_id']} (manager) was already revoked on " in again.stdout
    assert "nothing changed" in again.stdout
    missing = runner.invoke(app, ["keys", "revoke", "00000000"])
    assert missing.exit_code == 1 and "keys list" in missing.stderr


def test_keys_create_rejects_a_bad_role_and_prints_plain_key(cli_store: Store) -> None:
    bad = runner.invoke(app, ["keys", "create", "--role", "root", "--pipelines", "*"])
    assert bad.exit_code == 1 and "admin" in bad.stderr
    plain = runner.invoke(app, ["keys", "create", "--role", "admin", "--pipelines", "*", "--name", "ops"])
    assert plain.exit_code == 0
    key_text = plain.stdout.split()[0]
    key = cli_store.verify_api_key(key_text)
    assert key is not None and key.all_pipelines and key.name == "ops"


def test_keys_create_refuses_all_pipelines_listed_with_names(cli_store: Store) -> None:
    # 'SMB, *' silently made a key for every pipeline
    mixed = runner.invoke(app, ["keys", "create", "--role", "manager", "--pipelines", "SMB, *"])
    assert mixed.exit_code == 1
    assert "--pipelines: '*' means every pipeline and cannot be listed with names (SMB)" in mixed.stderr
    assert cli_store.list_api_keys() == []


def test_cli_roles_match_the_store() -> None:
    assert CLI_ROLES == ROLES



def write_long_folder(path: Path, deal_row: dict[int, str], stage_row: dict[int, str]) -> Path:
    """700 SMB deals won in three stage changes (2,100 rows: past the row count where the stages are
    checked against pipelines.yaml in one vectorised pass), with the given data rows replaced."""
    path.mkdir()
    deals = ["deal_id,pipeline,owner,amount,created_at"]
    stages = ["deal_id,stage,changed_at"]
    for i in range(700):
        deals.append(f"D{i},SMB,ana,100,2024-01-01")
        stages += [f"D{i},Lead,2024-01-01", f"D{i},Demo,2024-01-02", f"D{i},Won,2024-01-03"]
    for rows, edits in ((deals, deal_row), (stages, stage_row)):
        for row, line in edits.items():
            rows[row] = line
    (path / "deals.csv").write_text("\n".join(deals) + "\n")
    (path / "stage_changes.csv").write_text("\n".join(stages) + "\n")
    (path / "activities.csv").write_text("deal_id,type,occurred_at\n")
    (path / "pipelines.yaml").write_text("SMB:\n  stages: [Lead, Demo]\n  won: [Won]\n  lost: [Lost]\n")
    return path


def test_a_blank_stage_in_a_long_file_with_a_spec_is_named_not_a_crash(
    tmp_path: Path, cli_store: Store
) -> None:
    # a blank stage there was a TypeError traceback ("boolean value of NA is ambiguous")
    folder = write_long_folder(tmp_path / "long", {}, {1000: "D333,,2024-01-02"})
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1, result.output
    assert "stage_changes.csv row 1000 column 'stage': missing stage" in result.stderr
    assert "1 problem(s)" in result.stderr and "Nothing was imported" in result.stderr
    assert cli_store.count_rows()["deals"] == 0


def test_a_blank_pipeline_in_a_long_file_with_a_spec_is_named_not_a_crash(
    tmp_path: Path, cli_store: Store
) -> None:
    # the stage changes of a deal without a pipeline were compared with each pipeline's name as pd.NA: a
    # TypeError traceback ("boolean value of NA is ambiguous")
    folder = write_long_folder(tmp_path / "long", {42: "D41,,ana,100,2024-01-01"}, {})
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1, result.output
    assert "deals.csv row 42 column 'pipeline': missing pipeline" in result.stderr
    assert "1 problem(s)" in result.stderr and "Nothing was imported" in result.stderr
    assert cli_store.count_rows()["deals"] == 0


def test_a_time_out_of_range_in_a_file_says_the_range(tmp_path: Path, cli_store: Store) -> None:
    # '0001-01-01' is ISO 8601: "not a time (use ISO 8601)" alone sent a person looking for a typo
    folder = write_folder(tmp_path / "old", activities=ACTIVITIES + "D1,call,,0001-01-01\n")
    (folder / "field_changes.csv").write_text(
        "deal_id,field,value,changed_at\nD1,expected_close_date,9999-12-31,2024-01-02\n"
    )
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) == 2, result.stderr
    assert "activities.csv row 4 column 'occurred_at'" in lines[0] and "'0001-01-01'" in lines[0]
    assert "field_changes.csv row 1 column 'value'" in lines[1] and "'9999-12-31'" in lines[1]
    assert all("from 1900-01-01 to 2200-01-01" in line for line in lines)
    assert cli_store.count_rows()["deals"] == 0
