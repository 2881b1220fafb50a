"""Salesforce: Data Loader / Bulk API / weekly Data Export CSVs of the opportunity objects.

Files (names and headers match case-insensitively, so the upper-case weekly export reads too):
  Opportunity.csv              Id, CreatedDate, StageName, OwnerId [Amount, CloseDate, AccountId,
                               RecordTypeId, CurrencyIsoCode, IsDeleted]
  OpportunityHistory.csv       OpportunityId, StageName, Amount, CloseDate, CreatedDate [Id, PrevAmount,
                               PrevCloseDate, IsDeleted]: one snapshot row per change of stage, amount,
                               probability or close date, written with no setup
  OpportunityStage.csv         MasterLabel, SortOrder, IsClosed, IsWon [IsActive]
  OpportunityFieldHistory.csv  optional: OpportunityId, Field, OldValue, NewValue, CreatedDate [IsDeleted]
  Task.csv, Event.csv          optional: WhatId, CreatedDate and their times, types and call direction
  RecordType.csv, User.csv     optional: Id, Name, for display labels

Keys: an opportunity's stage is its StageName picklist value (Salesforce stores the value in every record
and in the history, there is no stage id); pipelines are record types (RecordTypeId, or `default`);
owners are user ids. 15-character ids are widened to their 18-character form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.history import DealHistory
from training.importers.common import (
    CrmImport,
    ExportFolder,
    ImportReport,
    assemble,
    calendar_dates,
    check_times,
    empty_events,
    flags,
    format_amounts,
    parse_amounts,
    parse_times,
    stage_frame,
)

CRM = "salesforce"
DEFAULT_PIPELINE = "default"
# The first OpportunityHistory row is the insert snapshot when it is written with the opportunity.
INSERT_TOLERANCE = pd.Timedelta(seconds=60)
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_USER_ID = r"^(005|00G)[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$"
_SUBTYPES = {"call": "call", "email": "email", "listemail": "email", "linkedin": "other"}
_TYPES = {
    "call": "call",
    "email": "email",
    "meeting": "meeting",
    "other": "other",
    "task": "task",
    "to do": "task",
    "note": "note",
}
_DIRECTIONS = {"inbound": "inbound", "outbound": "outbound"}


def widen_id(value: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce id (18 stay as they are)."""
    if len(value) != 15:
        return value
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(value[chunk * 5 : chunk * 5 + 5]) if "A" <= ch <= "Z")
        suffix += _SUFFIX[bits]
    return value + suffix


def _ids(values: pd.Series) -> pd.Series:
    return values.map(lambda v: widen_id(str(v)) if isinstance(v, str) else v).astype("string")


def _not_deleted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~flags(frame["IsDeleted"]).to_numpy(dtype=bool)]


def import_salesforce(path: str | Path) -> CrmImport:
    """Convert a Salesforce export folder; see the module docstring for the files read."""
    folder = ExportFolder(path, "Salesforce")
    report = ImportReport(crm=CRM, source=str(folder.path))
    hint = "export it with Data Loader (Export All) or take it from the weekly Data Export"

    opp = folder.read_csv(
        "Opportunity.csv",
        ["Id", "CreatedDate", "StageName", "OwnerId"],
        ["Amount", "CloseDate", "AccountId", "RecordTypeId", "CurrencyIsoCode", "IsDeleted"],
        hint=hint,
    )
    history_rows = folder.read_csv(
        "OpportunityHistory.csv",
        ["OpportunityId", "StageName", "Amount", "CloseDate", "CreatedDate"],
        ["Id", "PrevAmount", "PrevCloseDate", "IsDeleted"],
        hint=hint,
    )
    stage_rows = folder.read_csv(
        "OpportunityStage.csv",
        ["MasterLabel", "SortOrder", "IsClosed", "IsWon"],
        ["IsActive", "ApiName"],
        hint=hint,
    )
    ofh = folder.read_csv(
        "OpportunityFieldHistory.csv",
        ["OpportunityId", "Field", "OldValue", "NewValue", "CreatedDate"],
        ["Id", "DataType", "IsDeleted"],
        must_exist=False,
    )
    tasks = folder.read_csv(
        "Task.csv",
        ["WhatId", "CreatedDate"],
        [
            "Id",
            "CompletedDateTime",
            "ActivityDate",
            "Type",
            "TaskSubtype",
            "CallType",
            "Status",
            "IsClosed",
            "IsDeleted",
        ],
        must_exist=False,
    )
    events = folder.read_csv(
        "Event.csv",
        ["WhatId", "StartDateTime"],
        ["Id", "CreatedDate", "ActivityDate", "IsAllDayEvent", "IsDeleted"],
        must_exist=False,
    )
    assert opp is not None and history_rows is not None and stage_rows is not None

    # --- opportunities ---
    folder.need(opp, "Opportunity.csv", "Id", "opportunity id")
    opp["Id"] = _ids(opp["Id"])
    dup = opp["Id"].duplicated()
    if dup.any():
        row = opp[dup].iloc[0]
        raise folder.error(
            "Opportunity.csv", int(row["_row"]), "Id", f"opportunity {row['Id']} appears twice"
        )
    deleted_ids = set(opp.loc[flags(opp["IsDeleted"]).to_numpy(dtype=bool), "Id"])
    report.drop(
        "deleted opportunities",
        len(deleted_ids),
        "in the recycle bin (IsDeleted); they would bias win rates",
        "Opportunity.csv",
    )
    opp = opp[~opp["Id"].isin(deleted_ids)].reset_index(drop=True)
    opp["created_at"] = check_times(folder, opp, "Opportunity.csv", "CreatedDate")
    folder.need(opp, "Opportunity.csv", "OwnerId", "owner")
    opp["OwnerId"] = _ids(opp["OwnerId"])
    created = opp.set_index("Id")["created_at"]
    known = set(opp["Id"])

    # --- stage metadata ---
    folder.need(stage_rows, "OpportunityStage.csv", "MasterLabel", "stage value")
    order = pd.to_numeric(stage_rows["SortOrder"], errors="coerce")
    if order.isna().any():
        row = stage_rows[order.isna()].iloc[0]
        raise folder.error("OpportunityStage.csv", int(row["_row"]), "SortOrder", "SortOrder is not a number")
    closed, won = flags(stage_rows["IsClosed"]), flags(stage_rows["IsWon"])
    active = flags(stage_rows["IsActive"]) | stage_rows["IsActive"].isna()
    meta = pd.DataFrame(
        {
            "stage": stage_rows["MasterLabel"].astype("string"),
            "pipeline": pd.Series(pd.NA, index=stage_rows.index, dtype="string"),
            "order": order,
            "outcome": np.where(closed & won, "won", np.where(closed, "lost", "open")),
            "active": active.to_numpy(dtype=bool),
        }
    )
    report.stage_labels = dict(zip(meta["stage"], meta["stage"], strict=True))

    # --- OpportunityHistory: stage, amount and close-date snapshots ---
    oh = _not_deleted(history_rows).copy()
    oh["OpportunityId"] = _ids(oh["OpportunityId"])
    oh = _only_known(folder, report, oh, "OpportunityHistory.csv", "OpportunityId", known, deleted_ids)
    oh["at"] = check_times(folder, oh, "OpportunityHistory.csv", "CreatedDate")
    folder.need(oh, "OpportunityHistory.csv", "StageName", "stage")
    oh["seq"] = oh["_row"]
    oh = oh.sort_values(["OpportunityId", "at", "seq"], kind="stable")
    first = oh.groupby("OpportunityId", sort=False).head(1).set_index("OpportunityId")
    gap = (first["at"] - created.reindex(first.index)).abs()
    snapshot = (gap <= INSERT_TOLERANCE).reindex(opp["Id"]).fillna(False).to_numpy(dtype=bool)
    has_rows = opp["Id"].isin(first.index).to_numpy()
    report.untrack(
        "stage, amount and close date",
        int((~snapshot).sum()),
        "OpportunityHistory does not start when the opportunity was created (migrated or back-dated "
        "records); the earliest snapshot (or the current value) is taken as the value at creation",
        "OpportunityHistory.csv",
    )

    def at_creation(column: str, prev: str | None) -> pd.Series:
        """Insert snapshot, else the earliest row's value before its change (Prev*, Winter '21 on), else
        the earliest row's value, else (no history at all) the opportunity's current value."""
        earliest = first[column].reindex(opp["Id"])
        before = first[prev].reindex(opp["Id"]).fillna(earliest) if prev else earliest
        current = opp[column].to_numpy(dtype=object)
        values = np.where(
            snapshot,
            earliest.to_numpy(dtype=object),
            np.where(has_rows, before.to_numpy(dtype=object), current),
        )
        return pd.Series(values, index=opp.index, dtype="string")

    amount0 = parse_amounts(at_creation("Amount", "PrevAmount"))
    close0 = calendar_dates(at_creation("CloseDate", "PrevCloseDate"))
    stage0 = at_creation("StageName", None)

    later = oh
    # The insert snapshot itself is the creation state: its stage is dated at the creation time.
    first_idx = oh.groupby("OpportunityId", sort=False).head(1).index
    snap_ids = set(opp.loc[snapshot, "Id"])
    insert_idx = [i for i in first_idx if oh.at[i, "OpportunityId"] in snap_ids]
    is_insert = later.index.isin(insert_idx)
    stages = pd.concat(
        [
            stage_frame(
                opp["Id"], stage0, opp["created_at"], -1, "Opportunity.csv", opp["_row"], "StageName"
            ),
            stage_frame(
                later.loc[~is_insert, "OpportunityId"],
                later.loc[~is_insert, "StageName"],
                later.loc[~is_insert, "at"],
                later.loc[~is_insert, "seq"],
                "OpportunityHistory.csv",
                later.loc[~is_insert, "_row"],
                "StageName",
            ),
        ],
        ignore_index=True,
    )
    changes = later[~is_insert]
    no_amount = int(changes["Amount"].isna().sum())
    report.unmap(
        "snapshots without an amount",
        no_amount,
        "a cleared amount has no value to carry",
        "OpportunityHistory.csv",
    )
    amounts = changes[changes["Amount"].notna()]
    field_changes = [
        pd.DataFrame(
            {
                "deal_id": amounts["OpportunityId"],
                "field": "amount",
                "value": format_amounts(parse_amounts(amounts["Amount"])),
                "changed_at": amounts["at"],
                "seq": amounts["seq"],
            }
        ),
        pd.DataFrame(
            {
                "deal_id": changes["OpportunityId"],
                "field": "expected_close_date",
                "value": calendar_dates(changes["CloseDate"]),
                "changed_at": changes["at"],
                "seq": changes["seq"],
            }
        ).dropna(subset=["value"]),
    ]

    # --- OpportunityFieldHistory: owner (and any other tracked field, reported) ---
    owner0 = opp["OwnerId"].copy()
    if ofh is None:
        report.untrack(
            "owner",
            len(opp),
            "no OpportunityFieldHistory.csv: the current owner is taken as the "
            "owner at creation and owner changes are unknown",
        )
    else:
        ofh = _not_deleted(ofh).copy()
        ofh["OpportunityId"] = _ids(ofh["OpportunityId"])
        ofh = _only_known(
            folder, report, ofh, "OpportunityFieldHistory.csv", "OpportunityId", known, deleted_ids
        )
        ofh["at"] = check_times(folder, ofh, "OpportunityFieldHistory.csv", "CreatedDate")
        ofh["seq"] = ofh["_row"]
        name = ofh["Field"].astype("string").str.lower()
        is_owner = name.isin(["owner", "ownerid"]).to_numpy(dtype=bool)
        # Lookup changes come twice, once with user ids and once with names: keep the id rows.
        id_rows = ofh["NewValue"].astype("string").str.match(_USER_ID).fillna(False) & (
            ofh["OldValue"].isna() | ofh["OldValue"].astype("string").str.match(_USER_ID).fillna(False)
        )
        owners = ofh[is_owner & id_rows.to_numpy(dtype=bool)].sort_values(["OpportunityId", "at", "seq"])
        earliest_old = owners.groupby("OpportunityId", sort=False)["OldValue"].first()
        owner0 = _ids(earliest_old.reindex(opp["Id"]).reset_index(drop=True)).fillna(owner0)
        field_changes.append(
            pd.DataFrame(
                {
                    "deal_id": owners["OpportunityId"],
                    "field": "owner",
                    "value": _ids(owners["NewValue"]),
                    "changed_at": owners["at"],
                    "seq": owners["seq"],
                }
            )
        )
        markers = name.isin(["created", "opportunitycreatedfromlead"]).to_numpy(dtype=bool)
        covered = name.isin(["amount", "closedate", "stagename"]).to_numpy(dtype=bool)
        for field_name, count in ofh[~(is_owner | markers | covered)]["Field"].value_counts().items():
            report.unmap(
                f"tracked field {field_name}",
                int(count),
                "dealrisk follows amount, close date and owner only",
                "OpportunityFieldHistory.csv",
            )
        starts = ofh[is_owner | markers]["at"]
        start = starts.min() if len(starts) else None
        with_marker = set(ofh.loc[markers, "OpportunityId"])
        if start is None:
            affected = len(opp)
        else:
            affected = int(((opp["created_at"] < start) & ~opp["Id"].isin(with_marker)).sum())
        report.untrack(
            "owner",
            affected,
            "owner history starts later than these opportunities (field history is kept from "
            "the day it was switched on); their owner at creation may be a later owner",
            "OpportunityFieldHistory.csv",
        )

    # --- activities ---
    acts = [empty_events("activities")]
    export_time = max(t.max() for t in [opp["created_at"], oh["at"]] if len(t))
    if tasks is not None:
        acts.append(_tasks(folder, report, tasks, known, deleted_ids))
    else:
        report.unmap("tasks", 1, "no Task.csv in the export: calls, emails and to-dos are missing")
    if events is not None:
        acts.append(_events(folder, report, events, known, deleted_ids))
    else:
        report.unmap("events", 1, "no Event.csv in the export: meetings are missing")
    activities = pd.concat(acts, ignore_index=True)
    for frame in acts[1:]:
        if "logged_at" in frame and len(frame):
            export_time = max(export_time, frame["logged_at"].max())
    planned = activities["occurred_at"] > export_time
    report.drop(
        "planned activities",
        int(planned.sum()),
        "dated after the export was taken: they had not happened yet",
    )
    activities = activities[~planned.to_numpy(dtype=bool)]

    # --- labels and deals ---
    pipeline = _ids(opp["RecordTypeId"]).fillna(DEFAULT_PIPELINE)
    record_types = folder.read_csv("RecordType.csv", ["Id", "Name"], ["DeveloperName"], must_exist=False)
    if record_types is not None:
        report.pipeline_labels = dict(zip(_ids(record_types["Id"]), record_types["Name"], strict=True))
    users = folder.read_csv("User.csv", ["Id", "Name"], must_exist=False)
    if users is not None:
        report.owner_labels = dict(zip(_ids(users["Id"]), users["Name"], strict=True))
    missing_amount = amount0.isna()
    report.unmap(
        "opportunities without an amount",
        int(missing_amount.sum()),
        "imported with amount 0",
        "Opportunity.csv",
    )
    deals = pd.DataFrame(
        {
            "deal_id": opp["Id"],
            "pipeline": pipeline,
            "owner": owner0,
            "amount": amount0.fillna(0.0).to_numpy(),
            "created_at": opp["created_at"],
            "expected_close_date": close0.to_numpy(),
            "account": _ids(opp["AccountId"]),
            "team": pd.Series(pd.NA, index=opp.index, dtype="string"),
            "currency": opp["CurrencyIsoCode"],
        }
    )
    fc = pd.concat(field_changes, ignore_index=True)
    # One global stage list: with several record types, a pipeline lists the stages its deals used.
    shared = "used" if pipeline.nunique() > 1 else "all"
    return assemble(folder, report, deals, stages, activities, fc, meta, shared_stages=shared)


def _only_known(
    folder: ExportFolder,
    report: ImportReport,
    frame: pd.DataFrame,
    file: str,
    column: str,
    known: set[str],
    deleted: set[str],
) -> pd.DataFrame:
    """Rows of opportunities in the export; rows of deleted ones are dropped, any other id is an error."""
    folder.need(frame, file, column, "opportunity id")
    of_deleted = frame[column].isin(deleted).to_numpy(dtype=bool)
    stray = ~of_deleted & ~frame[column].isin(known).to_numpy(dtype=bool)
    if stray.any():
        row = frame[stray].iloc[0]
        raise folder.error(
            file,
            int(row["_row"]),
            column,
            f"opportunity {row[column]} is not in Opportunity.csv",
            "export every file at the same time, with deleted records included",
        )
    return frame[~of_deleted]


def _on_opportunities(
    folder: ExportFolder, report: ImportReport, frame: pd.DataFrame, file: str, deleted: set[str], what: str
) -> pd.DataFrame:
    frame = frame.copy()
    frame["WhatId"] = _ids(frame["WhatId"])
    rows = _not_deleted(frame)
    on_opp = rows["WhatId"].astype("string").str.startswith("006").fillna(False).to_numpy(dtype=bool)
    report.unmap(
        f"{what} not on an opportunity",
        int((~on_opp).sum()),
        "related to another record (WhatId is not an opportunity id)",
        file,
    )
    rows = rows[on_opp]
    of_deleted = rows["WhatId"].isin(deleted).to_numpy(dtype=bool)
    report.drop(
        f"{what} of deleted opportunities", int(of_deleted.sum()), "their opportunity was deleted", file
    )
    return rows[~of_deleted]


def _tasks(
    folder: ExportFolder, report: ImportReport, tasks: pd.DataFrame, known: set[str], deleted: set[str]
) -> pd.DataFrame:
    file = "Task.csv"
    rows = _on_opportunities(folder, report, tasks, file, deleted, "tasks")
    done = flags(rows["IsClosed"]).to_numpy(dtype=bool)
    status = rows["Status"].astype("string").str.lower()
    done = np.where(rows["IsClosed"].isna().to_numpy(), (status == "completed").fillna(True).to_numpy(), done)
    report.drop("open tasks", int((~done).sum()), "not done yet: a due date is a plan, not an activity", file)
    rows = rows[done]
    logged = check_times(folder, rows, file, "CreatedDate")
    completed = parse_times(rows["CompletedDateTime"])
    # TaskSubtype is set by Salesforce for logged calls and emails; Type is the org's own picklist.
    subtype = rows["TaskSubtype"].astype("string").str.lower().map(_SUBTYPES)
    typed = rows["Type"].astype("string").str.lower().str.strip().map(_TYPES)
    kind = subtype.fillna(typed).fillna("task")
    odd = subtype.isna() & typed.isna() & rows["Type"].notna()
    for value, count in rows.loc[odd.to_numpy(dtype=bool), "Type"].value_counts().items():
        report.unmap(
            f"task type {value!r}", int(count), "not call, email or meeting: imported as a task", file
        )
    direction = rows["CallType"].astype("string").str.lower().map(_DIRECTIONS)
    return pd.DataFrame(
        {
            "deal_id": rows["WhatId"],
            "type": kind.to_numpy(),
            "direction": direction.where(kind.isin(["call", "email", "meeting"])).to_numpy(),
            "occurred_at": completed.fillna(logged),
            "logged_at": logged,
            "_file": file,
            "_row": rows["_row"],
            "_column": "WhatId",
        }
    )


def _events(
    folder: ExportFolder, report: ImportReport, events: pd.DataFrame, known: set[str], deleted: set[str]
) -> pd.DataFrame:
    file = "Event.csv"
    rows = _on_opportunities(folder, report, events, file, deleted, "events")
    all_day = flags(rows["IsAllDayEvent"]).to_numpy(dtype=bool)
    # All-day events carry a date only: midnight UTC of that date, never shifted.
    start = rows["StartDateTime"].where(
        ~all_day, calendar_dates(rows["ActivityDate"]).fillna(rows["StartDateTime"])
    )
    occurred = check_times(folder, rows.assign(StartDateTime=start), file, "StartDateTime")
    logged = parse_times(rows["CreatedDate"])
    return pd.DataFrame(
        {
            "deal_id": rows["WhatId"],
            "type": "meeting",
            "direction": pd.NA,
            "occurred_at": occurred,
            "logged_at": logged,
            "_file": file,
            "_row": rows["_row"],
            "_column": "WhatId",
        }
    )


def read_salesforce(path: str | Path) -> DealHistory:
    """The deal history of a Salesforce export folder (keys: stage values, record type and user ids)."""
    return import_salesforce(path).history
