"""Each CRM's small hand-written export (tests/fixtures/crm/<crm>/) imports to exactly the expected history,
and a bad export fails with the file, row and column before anything is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from features.history import DealHistory, HistoryValidationError
from training.importers import CrmImport, convert_export, read_export
from training.importers.common import DEAL_COLUMNS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "crm"
AT_CREATION = [c for c in DEAL_COLUMNS if c != "team"]


def rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple[object, ...]]:
    """Rows as plain tuples (times as ISO text, missing as None) in the frame's order."""
    out = frame[columns].astype(object).where(frame[columns].notna(), None)
    for column in columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            out[column] = [None if v is None else v.isoformat() for v in out[column]]
    return [tuple(r) for r in out.itertuples(index=False)]


def notes(converted: CrmImport, kind: str) -> dict[str, int]:
    return {n.what: n.count for n in getattr(converted.report, kind)}


def copy_fixture(crm: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / crm, tmp_path / crm))


def fails(crm: str, folder: Path) -> str:
    with pytest.raises(HistoryValidationError) as info:
        convert_export(crm, folder)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# Salesforce
# --------------------------------------------------------------------------------------------------

O1, O2, O4, O5 = "0065g00000AbCdEAAV", "006000000000002AAA", "006000000000004AAA", "006000000000005AAA"
ENTERPRISE = "0125g00000RtA01AAF"
ANA, BO, CY = "0055g00000UsR01AAF", "0055g00000UsR02AAF", "005000000000003AAA"


def test_salesforce_fixture_imports_to_the_expected_history() -> None:
    converted = convert_export("salesforce", FIXTURES / "salesforce")
    h = converted.history
    # Values at creation, not today's: O1 was created at 10,000 for Ana closing in March, and is now
    # 12,000 for Bo closing in April. 15-character ids come out in their 18-character form. O2's
    # CreatedDate has a +01:00 offset. O4 had no amount. O5 was migrated: its history starts later.
    assert rows(
        h.deals, ["deal_id", "pipeline", "owner", "amount", "created_at", "expected_close_date", "account"]
    ) == [
        (
            O2,
            ENTERPRISE,
            CY,
            5000.0,
            "2024-01-05T13:30:00+00:00",
            "2024-02-28T00:00:00+00:00",
            "001000000000002AAA",
        ),
        (O4, "default", CY, 0.0, "2024-02-01T08:00:00+00:00", "2024-05-31T00:00:00+00:00", None),
        (O5, "default", CY, 3000.0, "2023-11-20T10:00:00+00:00", "2024-01-31T00:00:00+00:00", None),
        (
            O1,
            ENTERPRISE,
            ANA,
            10000.0,
            "2024-01-02T09:00:00+00:00",
            "2024-03-31T00:00:00+00:00",
            "0015g00000XyZ12AAF",
        ),
    ]
    # Snapshot rows that only change the amount or close date are not stage changes; O1 goes back to
    # Prospecting (a regression) before it is won.
    assert rows(h.stage_changes, ["deal_id", "stage", "changed_at"]) == [
        (O2, "Prospecting", "2024-01-05T13:30:00+00:00"),
        (O2, "Closed Lost", "2024-02-10T10:00:00+00:00"),
        (O4, "Prospecting", "2024-02-01T08:00:00+00:00"),
        (O4, "Qualification", "2024-02-05T09:00:00+00:00"),
        (O5, "Qualification", "2023-11-20T10:00:00+00:00"),
        (O1, "Prospecting", "2024-01-02T09:00:00+00:00"),
        (O1, "Qualification", "2024-01-10T10:00:00+00:00"),
        (O1, "Prospecting", "2024-01-20T12:00:00+00:00"),
        (O1, "Closed Won", "2024-03-01T16:00:00+00:00"),
    ]
    # The owner change comes from the id row of OpportunityFieldHistory (not the name row).
    assert rows(h.field_changes, ["deal_id", "field", "value", "changed_at"]) == [
        (O5, "amount", "3500", "2023-12-01T10:00:00+00:00"),
        (O1, "owner", BO, "2024-01-12T09:30:00+00:00"),
        (O1, "amount", "12000", "2024-01-15T11:00:00+00:00"),
        (O1, "expected_close_date", "2024-04-15T00:00:00+00:00", "2024-02-01T08:00:00+00:00"),
    ]
    # Completed tasks at their completion time, the all-day event on its date (never shifted), the
    # inbound call with its direction; the open task, the task on an account, the deleted opportunity's
    # task and the meeting planned for 2031 are left out.
    assert rows(h.activities, ["deal_id", "type", "direction", "occurred_at"]) == [
        (O2, "call", "inbound", "2024-01-08T15:00:00+00:00"),
        (O2, "meeting", None, "2024-01-09T00:00:00+00:00"),
        (O1, "email", None, "2024-01-11T10:00:00+00:00"),
        (O1, "meeting", None, "2024-01-18T14:00:00+00:00"),
        (O1, "task", None, "2024-01-19T15:00:00+00:00"),
    ]
    enterprise = h.pipelines[ENTERPRISE]
    # With several record types, a pipeline lists the stages its opportunities used (the per-process
    # picklist is not in any export), in SortOrder; won and lost come from IsClosed / IsWon.
    assert enterprise.stages == ("Prospecting", "Qualification")
    assert (enterprise.won, enterprise.lost) == (("Closed Won",), ("Closed Lost",))
    assert h.pipelines["default"].stages == ("Prospecting", "Qualification")
    assert notes(converted, "dropped") == {
        "deleted opportunities": 1,
        "tasks of deleted opportunities": 1,
        "open tasks": 1,
        "planned activities": 1,
    }
    assert notes(converted, "untracked") == {"stage, amount and close date": 1, "owner": 1}
    assert notes(converted, "unmapped") == {
        "snapshots without an amount": 1,
        "tracked field NextStep": 1,
        "tasks not on an opportunity": 1,
        "task type 'Demo'": 1,
        "opportunities without an amount": 1,
    }
    labelled = converted.labelled()
    assert sorted(labelled.pipelines) == ["Enterprise", "default"]
    assert sorted(labelled.deals["owner"]) == ["Ana Silva", "Cy Ito", "Cy Ito", "Cy Ito"]
    assert labelled.field_changes.loc[labelled.field_changes["field"] == "owner", "value"].tolist() == [
        "Bo Chen"
    ]


# --------------------------------------------------------------------------------------------------
# HubSpot
# --------------------------------------------------------------------------------------------------


def test_hubspot_fixture_imports_to_the_expected_history() -> None:
    converted = convert_export("hubspot", FIXTURES / "hubspot")
    h = converted.history
    # 103 is archived (deleted) and 104 was merged into 101: both left out. 101's close date was
    # first March 31st; its later value "2024-04-30T00:00:00+02:00" is April 30th, not April 29th in UTC.
    assert rows(h.deals, list(DEAL_COLUMNS)) == [
        (
            "101",
            "default",
            "11",
            1000.0,
            "2024-01-02T09:00:00+00:00",
            "2024-03-31T00:00:00+00:00",
            "9001",
            "501",
            "EUR",
        ),
        (
            "102",
            "7654321",
            "13",
            5000.0,
            "2024-01-05T13:30:00+00:00",
            "2024-02-28T00:00:00+00:00",
            None,
            None,
            None,
        ),
        (
            "105",
            "default",
            "13",
            0.0,
            "2024-02-01T08:00:00+00:00",
            "2024-05-31T00:00:00+00:00",
            None,
            None,
            None,
        ),
    ]
    # Versions come newest first in the file; the history is in time order. Stage ids are the keys: this
    # portal relabelled `contractsent` "Won" and `closedwon` "Lost", and the metadata decides.
    assert rows(h.stage_changes, ["deal_id", "stage", "changed_at"]) == [
        ("101", "appointmentscheduled", "2024-01-02T09:00:00+00:00"),
        ("101", "qualifiedtobuy", "2024-01-10T10:00:00+00:00"),
        ("101", "appointmentscheduled", "2024-01-20T12:00:00+00:00"),
        ("101", "contractsent", "2024-03-01T16:00:00+00:00"),
        ("102", "1001", "2024-01-05T13:30:00+00:00"),
        ("102", "1003", "2024-02-10T10:00:00+00:00"),
        ("105", "appointmentscheduled", "2024-02-01T08:00:00+00:00"),
        ("105", "qualifiedtobuy", "2024-02-05T09:00:00+00:00"),
    ]
    assert h.pipelines["default"].won == ("contractsent",)
    assert h.pipelines["default"].lost == ("closedwon",)  # the archived, unused `closedlost` is left out
    assert h.pipelines["7654321"].stages == ("1001", "1002")
    assert h.pipelines["7654321"].won == ("1004",)  # "Signed": won by its metadata, whatever its name
    assert rows(h.field_changes, ["deal_id", "field", "value", "changed_at"]) == [
        ("101", "owner", "12", "2024-01-12T09:30:00+00:00"),
        ("101", "amount", "1500", "2024-01-15T11:00:00+00:00"),
        ("101", "expected_close_date", "2024-04-30T00:00:00+00:00", "2024-02-01T08:00:00+00:00"),
    ]
    # The merged deal's email now belongs to 101; the note's time is in epoch milliseconds; the
    # completed task is dated at its completion, not its due date.
    assert rows(h.activities, ["deal_id", "type", "direction", "occurred_at"]) == [
        ("101", "email", "outbound", "2024-01-08T08:00:00+00:00"),
        ("101", "email", "inbound", "2024-01-12T08:00:00+00:00"),
        ("101", "meeting", None, "2024-01-25T15:00:00+00:00"),
        ("101", "task", None, "2024-01-29T17:00:00+00:00"),
        ("102", "call", "inbound", "2024-01-20T10:00:00+00:00"),
        ("102", "note", None, "2024-01-22T16:30:00+00:00"),
    ]
    assert notes(converted, "dropped") == {
        "archived deals": 1,
        "merged deals": 1,
        "open tasks": 1,
        "tasks of archived deals": 1,
        "planned engagements": 1,
    }
    assert notes(converted, "unmapped") == {
        "deals without an amount at creation": 1,
        "calls without a deal": 1,
    }
    labelled = converted.labelled()
    assert labelled.stage_changes["stage"].tolist()[:4] == [
        "Appointment scheduled",
        "Qualified to buy",
        "Appointment scheduled",
        "Won",
    ]
    assert sorted(labelled.pipelines) == ["Partners", "Sales Pipeline"]
    assert labelled.deals["owner"].tolist() == ["Ana Silva", "Cy Ito", "Cy Ito"]


# --------------------------------------------------------------------------------------------------
# Bad exports: file, row and column named
# --------------------------------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_salesforce_bad_exports_name_file_row_and_column(tmp_path: Path) -> None:
    folder = copy_fixture("salesforce", tmp_path / "missing_file")
    (folder / "OpportunityStage.csv").unlink()
    assert "OpportunityStage.csv: missing file OpportunityStage.csv" in fails("salesforce", folder)

    folder = copy_fixture("salesforce", tmp_path / "missing_column")
    _edit(folder / "OpportunityHistory.csv", "STAGENAME,", "STAGE,")
    assert "OpportunityHistory.csv column 'StageName': missing column 'StageName'" in fails(
        "salesforce", folder
    )

    folder = copy_fixture("salesforce", tmp_path / "unknown_stage")
    _edit(
        folder / "OpportunityHistory.csv",
        "2024-01-20T12:00:00.000Z,Prospecting",
        "2024-01-20T12:00:00.000Z,Demo",
    )
    message = fails("salesforce", folder)
    assert "OpportunityHistory.csv row 4 column 'StageName': unknown stage id 'Demo'" in message

    folder = copy_fixture("salesforce", tmp_path / "orphan_activity")
    _edit(
        folder / "task.csv", "00T000000000003AAA,006000000000002AAA", "00T000000000003AAA,006000000000009AAA"
    )
    message = fails("salesforce", folder)
    assert (
        "Task.csv row 3 column 'WhatId': activity for deal '006000000000009AAA', which is not in the export"
        in (message)
    )

    folder = copy_fixture("salesforce", tmp_path / "bad_time")
    _edit(folder / "Opportunity.csv", "2024-02-01T08:00:00.000Z,false", "first of feb,false")
    assert "Opportunity.csv row 4 column 'CreatedDate': 'first of feb' is not a time" in fails(
        "salesforce", folder
    )


def test_hubspot_bad_exports_name_file_row_and_column(tmp_path: Path) -> None:
    folder = copy_fixture("hubspot", tmp_path / "missing_file")
    (folder / "pipelines.json").unlink()
    assert "pipelines.json: missing file pipelines.json" in fails("hubspot", folder)

    folder = copy_fixture("hubspot", tmp_path / "unknown_stage")
    _edit(folder / "deals.json", '"value": "1003"', '"value": "1009"')
    message = fails("hubspot", folder)
    assert "deals.json row 2 column 'propertiesWithHistory.dealstage': unknown stage id '1009'" in message

    folder = copy_fixture("hubspot", tmp_path / "orphan_activity")
    _edit(folder / "meetings.json", '"id": "101"', '"id": "999"')
    message = fails("hubspot", folder)
    assert "meetings.json row 1 column 'associations.deals': activity for deal '999'" in message

    folder = copy_fixture("hubspot", tmp_path / "missing_owner")
    _edit(folder / "deals.json", '"hubspot_owner_id": "13"}', '"hubspot_team_id": "1"}')
    _edit(
        folder / "deals.json",
        '"hubspot_owner_id": [{"value": "13", "timestamp": "2024-01-05T13:30:00.000Z"}]',
        '"hubspot_owner_id": []',
    )
    assert "deals.json row 2 column 'properties.hubspot_owner_id': missing deal owner" in fails(
        "hubspot", folder
    )


def test_read_export_returns_the_history_and_rejects_an_unknown_crm() -> None:
    history = read_export("hubspot", FIXTURES / "hubspot")
    assert isinstance(history, DealHistory) and history.n_deals() == 3
    with pytest.raises(ValueError, match="unknown CRM 'zoho'"):
        read_export("zoho", FIXTURES / "hubspot")


# --------------------------------------------------------------------------------------------------
# Pipedrive
# --------------------------------------------------------------------------------------------------


def test_pipedrive_fixture_imports_to_the_expected_history() -> None:
    converted = convert_export("pipedrive", FIXTURES / "pipedrive")
    h = converted.history
    # Deal 9 is deleted. Deal 7's owner, value and close date at creation are the old values of its
    # earliest changes in the flow; deal 10 had no value.
    assert rows(h.deals, AT_CREATION) == [
        ("10", "1", "13", 0.0, "2024-02-01T08:00:00+00:00", "2024-05-31T00:00:00+00:00", None, "EUR"),
        ("7", "1", "11", 1000.0, "2024-01-02T09:00:00+00:00", "2024-03-31T00:00:00+00:00", "901", "EUR"),
        ("8", "2", "13", 5000.0, "2024-01-05T13:30:00+00:00", "2024-02-28T00:00:00+00:00", None, "EUR"),
    ]
    # Status changes enter the closing stages `won` / `lost`; deal 10 is won and reopened (back to its
    # open stage 2); deal 8 has no status change in the flow and is closed at its lost_time.
    assert rows(h.stage_changes, ["deal_id", "stage", "changed_at"]) == [
        ("10", "2", "2024-02-01T08:00:00+00:00"),
        ("10", "won", "2024-02-20T10:00:00+00:00"),
        ("10", "2", "2024-02-25T10:00:00+00:00"),
        ("7", "1", "2024-01-02T09:00:00+00:00"),
        ("7", "2", "2024-01-10T10:00:00+00:00"),
        ("7", "1", "2024-01-20T12:00:00+00:00"),
        ("7", "3", "2024-02-15T09:00:00+00:00"),
        ("7", "won", "2024-03-01T16:00:00+00:00"),
        ("8", "5", "2024-01-05T13:30:00+00:00"),
        ("8", "lost", "2024-02-10T10:00:00+00:00"),
    ]
    assert h.pipelines["1"].stages == ("1", "2", "3")  # the inactive stage 4 no deal used is left out
    assert (h.pipelines["2"].won, h.pipelines["2"].lost) == (("won",), ("lost",))
    assert rows(h.field_changes, ["deal_id", "field", "value", "changed_at"]) == [
        ("7", "owner", "12", "2024-01-12T09:30:00+00:00"),
        ("7", "amount", "1500", "2024-01-15T11:00:00+00:00"),
        ("7", "expected_close_date", "2024-04-30T00:00:00+00:00", "2024-02-01T08:00:00+00:00"),
    ]
    # Mails carry their direction (sent flag); the lunch without a done time is at its due date and time
    # (UTC); the custom type is `other`.
    assert rows(h.activities, ["deal_id", "type", "direction", "occurred_at"]) == [
        ("7", "call", None, "2024-01-08T15:00:00+00:00"),
        ("7", "email", "inbound", "2024-01-12T08:00:00+00:00"),
        ("7", "email", "outbound", "2024-01-13T09:00:00+00:00"),
        ("7", "other", None, "2024-01-19T15:00:00+00:00"),
        ("8", "meeting", None, "2024-01-09T12:30:00+00:00"),
        ("8", "note", None, "2024-01-22T16:30:00+00:00"),
    ]
    assert notes(converted, "dropped") == {"deleted deals": 1, "activities not done": 1}
    assert notes(converted, "untracked") == {"status": 1}
    assert notes(converted, "unmapped") == {
        "changes of title": 1,
        "deals without a value at creation": 1,
        "activities without a deal": 1,
        "activity type 'demo_visit'": 1,
    }
    labelled = converted.labelled()
    assert sorted(labelled.pipelines) == ["Partners", "Sales"]
    assert labelled.pipelines["Sales"].stages == ("Lead in", "Contact made", "Proposal")


def test_pipedrive_bad_exports_name_file_row_and_column(tmp_path: Path) -> None:
    folder = copy_fixture("pipedrive", tmp_path / "missing_file")
    (folder / "flow.json").unlink()
    assert "flow.json: missing file flow.json" in fails("pipedrive", folder)

    folder = copy_fixture("pipedrive", tmp_path / "unknown_stage")
    _edit(folder / "flow.json", '"old_value": "1", "new_value": "3"', '"old_value": "1", "new_value": "33"')
    assert "flow.json row 8 column 'data.new_value': unknown stage id '33'" in fails("pipedrive", folder)

    folder = copy_fixture("pipedrive", tmp_path / "orphan_activity")
    _edit(folder / "notes.json", '"deal_id": 8', '"deal_id": 88')
    assert "notes.json row 1 column 'deal_id': activity for deal '88'" in fails("pipedrive", folder)

    folder = copy_fixture("pipedrive", tmp_path / "orphan_change")
    _edit(folder / "flow.json", '"item_id": 8,', '"item_id": 80,')
    assert "flow.json row 10 column 'data.item_id': change of deal '80'" in fails("pipedrive", folder)


# --------------------------------------------------------------------------------------------------
# Odoo
# --------------------------------------------------------------------------------------------------


def test_odoo_fixture_imports_to_the_expected_history() -> None:
    converted = convert_export("odoo", FIXTURES / "odoo")
    h = converted.history
    # 23 is a lead (not an opportunity) and 24 is archived without being lost: both left out. 21's
    # salesperson and revenue at creation are the old values of its earliest tracking rows. Nobody
    # tracks date_deadline, so no close date is imported rather than today's.
    assert rows(h.deals, AT_CREATION) == [
        ("21", "1", "11", 1000.0, "2024-01-02T09:00:00+00:00", None, "701", "EUR"),
        ("22", "2", "13", 5000.0, "2024-01-05T13:30:00+00:00", None, None, None),
        ("25", "1", "13", 0.0, "2023-11-20T10:00:00+00:00", None, None, None),
    ]
    # The initial stage is the first tracking row's old value; archiving a lead with probability 0
    # enters `lost`; 25 is lost with no tracked archiving, so it is lost at its date_closed.
    assert rows(h.stage_changes, ["deal_id", "stage", "changed_at"]) == [
        ("21", "1", "2024-01-02T09:00:00+00:00"),
        ("21", "2", "2024-01-10T10:00:00+00:00"),
        ("21", "1", "2024-01-20T12:00:00+00:00"),
        ("21", "4", "2024-03-01T16:00:00+00:00"),
        ("22", "1", "2024-01-05T13:30:00+00:00"),
        ("22", "5", "2024-01-20T09:00:00+00:00"),
        ("22", "lost", "2024-02-10T10:00:00+00:00"),
        ("25", "3", "2023-11-20T10:00:00+00:00"),
        ("25", "lost", "2024-02-01T12:00:00+00:00"),
    ]
    # A team's pipeline: shared stages and its own, by (sequence, name, id); won from is_won.
    assert h.pipelines["2"].stages == ("1", "5", "2", "3")
    assert (h.pipelines["1"].stages, h.pipelines["1"].won, h.pipelines["1"].lost) == (
        ("1", "2", "3"),
        ("4",),
        ("lost",),
    )
    assert rows(h.field_changes, ["deal_id", "field", "value", "changed_at"]) == [
        ("21", "owner", "12", "2024-01-12T09:30:00+00:00"),
        ("21", "amount", "1500", "2024-01-15T11:00:00+00:00"),
    ]
    # Done activities are messages with an activity type; incoming mail is inbound, outgoing mail and
    # messages sent to followers are outbound; log notes are notes.
    assert rows(h.activities, ["deal_id", "type", "direction", "occurred_at"]) == [
        ("21", "call", None, "2024-01-08T15:00:00+00:00"),
        ("21", "email", "inbound", "2024-01-12T08:00:00+00:00"),
        ("21", "email", "outbound", "2024-01-13T09:00:00+00:00"),
        ("21", "email", "outbound", "2024-01-14T10:00:00+00:00"),
        ("21", "task", None, "2024-01-19T15:00:00+00:00"),
        ("22", "meeting", None, "2024-01-09T12:30:00+00:00"),
        ("22", "note", None, "2024-01-22T16:30:00+00:00"),
    ]
    assert notes(converted, "dropped") == {"leads": 1, "archived opportunities": 1, "planned activities": 1}
    assert notes(converted, "untracked") == {"expected close date": 3, "lost": 1}
    assert notes(converted, "unmapped") == {"tracked field partner_id": 1}
    labelled = converted.labelled()
    assert labelled.deals["owner"].tolist() == ["Ana Silva", "Cy Ito", "Cy Ito"]
    assert labelled.pipelines["Partners"].stages == ("New", "Pilot", "Qualified", "Proposition")


def test_odoo_bad_exports_name_file_row_and_column(tmp_path: Path) -> None:
    folder = copy_fixture("odoo", tmp_path / "missing_file")
    (folder / "mail.tracking.value.json").unlink()
    assert "mail.tracking.value.json: missing file mail.tracking.value.json" in fails("odoo", folder)

    folder = copy_fixture("odoo", tmp_path / "unknown_stage")
    _edit(
        folder / "mail.tracking.value.json",
        '"old_value_integer": 1, "new_value_integer": 5',
        '"old_value_integer": 1, "new_value_integer": 55',
    )
    message = fails("odoo", folder)
    assert "mail.tracking.value.json row 7 column 'new_value_integer': unknown stage id '55'" in message

    folder = copy_fixture("odoo", tmp_path / "orphan_activity")
    _edit(
        folder / "mail.message.json",
        '"res_id": 22, "date": "2024-01-22 16:30:00"',
        '"res_id": 29, "date": "2024-01-22 16:30:00"',
    )
    assert "mail.message.json row 11 column 'res_id': activity for deal '29'" in fails("odoo", folder)

    folder = copy_fixture("odoo", tmp_path / "unknown_field")
    _edit(folder / "mail.tracking.value.json", '"field_id": [906,', '"field_id": [999,')
    assert "mail.tracking.value.json row 4 column 'field_id': field id 999" in fails("odoo", folder)
