"""Pipedrive: API v1 (or v2) responses saved as JSON files (a list of records, or the API's pages).

Files (`row N` in messages is the Nth record of the file):
  deals.json       GET /v1/deals?status=all_not_deleted plus status=deleted (or v2 /deals): id, add_time,
                   stage_id, pipeline_id, value, currency, user_id / owner_id, org_id,
                   expected_close_date, status, won_time, lost_time
  stages.json      GET /v1/stages: id, name, pipeline_id, order_nr
  flow.json        GET /v1/deals/{id}/flow for every deal, the pages' items together: dealChange items
                   ({object, timestamp, data: {item_id, field_key, old_value, new_value, log_time}}) and
                   mailMessage items
  activities.json  optional: GET /v1/activities (type, deal_id, done, marked_as_done_time, due_date, due_time)
  notes.json       optional: GET /v1/notes (deal_id, add_time)
  pipelines.json, users.json  optional: id and name, for display labels

Keys: stage, pipeline and user ids. Pipedrive has no won or lost stage (a deal's `status` is won or lost
while its stage stays on the last open one), so every pipeline gets two closing stages, `won` and `lost`,
entered when the status changes; a reopened deal goes back to its open stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from features.history import DealHistory
from training.importers.common import (
    DEAL_COLUMNS,
    SYNTHETIC_LOST,
    SYNTHETIC_WON,
    CrmImport,
    ExportFolder,
    ImportReport,
    assemble,
    calendar_dates,
    empty_events,
    format_amounts,
    id_text,
    parse_amounts,
)

PIPEDRIVE_TIMES = "Pipedrive times are UTC, 'YYYY-MM-DD HH:MM:SS' (v1) or RFC 3339 (v2)"
CRM = "pipedrive"
FIELDS = {
    "value": "amount",
    "expected_close_date": "expected_close_date",
    "user_id": "owner",
    "owner_id": "owner",
}
_ACTIVITY_TYPES = {
    "call": "call",
    "email": "email",
    "meeting": "meeting",
    "lunch": "meeting",
    "task": "task",
    "deadline": "task",
}


def _one_id(value: Any) -> str | None:
    text = id_text(pd.Series([value], dtype=object)).iloc[0]
    return None if pd.isna(text) else str(text)


def _time(folder: ExportFolder, file: str, row: int, column: str, value: Any) -> pd.Timestamp:
    return folder.time(file, row, column, value, PIPEDRIVE_TIMES)


def import_pipedrive(path: str | Path) -> CrmImport:
    """Convert a Pipedrive export folder; see the module docstring for the files read."""
    folder = ExportFolder(path, "Pipedrive")
    report = ImportReport(crm=CRM, source=str(folder.path))
    hint = "save the API responses listed in docs/importers.md"
    records = folder.read_json("deals.json", hint=hint) or []
    stage_records = folder.read_json("stages.json", hint=hint) or []
    flow = folder.read_json("flow.json", hint=hint) or []

    # --- stage metadata: the open stages, plus a won and a lost stage shared by every pipeline ---
    meta_rows = []
    for i, stage in enumerate(stage_records, start=1):
        stage_id = _one_id(stage.get("id"))
        if stage_id is None:
            raise folder.error("stages.json", i, "id", "missing stage id")
        deleted = stage.get("active_flag") is False or bool(stage.get("is_deleted"))
        meta_rows.append(
            {
                "stage": stage_id,
                "pipeline": _one_id(stage.get("pipeline_id")),
                "order": float(stage.get("order_nr") or 0),
                "outcome": "open",
                "active": not deleted,
            }
        )
        report.stage_labels[stage_id] = str(stage.get("name") or stage_id)
    meta_rows += [
        {"stage": SYNTHETIC_WON, "pipeline": None, "order": 1e9, "outcome": "won", "active": True},
        {"stage": SYNTHETIC_LOST, "pipeline": None, "order": 1e9 + 1, "outcome": "lost", "active": True},
    ]
    report.stage_labels.update({SYNTHETIC_WON: SYNTHETIC_WON, SYNTHETIC_LOST: SYNTHETIC_LOST})
    meta = pd.DataFrame(meta_rows)
    meta["pipeline"] = meta["pipeline"].astype("string")

    # --- deals ---
    deals: dict[str, dict[str, Any]] = {}
    deleted: set[str] = set()
    for i, record in enumerate(records, start=1):
        deal_id = _one_id(record.get("id"))
        if deal_id is None:
            raise folder.error("deals.json", i, "id", "missing deal id")
        if (
            record.get("status") == "deleted"
            or bool(record.get("is_deleted"))
            or record.get("deleted") is True
        ):
            deleted.add(deal_id)
            continue
        owner = _one_id(record.get("owner_id", record.get("user_id")))
        if owner is None:
            raise folder.error("deals.json", i, "user_id", "missing deal owner")
        if isinstance(record.get("user_id"), Mapping) and record["user_id"].get("name"):
            report.owner_labels[owner] = str(record["user_id"]["name"])
        stage = _one_id(record.get("stage_id"))
        if stage is None:
            raise folder.error("deals.json", i, "stage_id", "missing stage id")
        deals[deal_id] = {
            "row": i,
            "created_at": _time(folder, "deals.json", i, "add_time", record.get("add_time")),
            "pipeline": _one_id(record.get("pipeline_id")),
            "owner": owner,
            "amount": record.get("value"),
            "expected_close_date": record.get("expected_close_date"),
            "stage": stage,
            "account": _one_id(record.get("org_id")),
            "currency": record.get("currency"),
            "status": record.get("status") or "open",
            "closed_at": record.get("won_time") if record.get("status") == "won" else record.get("lost_time"),
        }
    report.drop(
        "deleted deals", len(deleted), "deleted in Pipedrive; they would bias win rates", "deals.json"
    )

    # --- flow: changes of the fields we follow, stage and status ---
    changes: list[dict[str, Any]] = []
    mails: list[tuple[str, str | None, pd.Timestamp, int]] = []
    other_fields: dict[str, int] = {}
    for i, item in enumerate(flow, start=1):
        kind = item.get("object")
        data = item.get("data") or {}
        if kind == "mailMessage":
            deal_id = _one_id(data.get("deal_id"))
            if deal_id is None or deal_id in deleted:
                continue
            at = _time(
                folder, "flow.json", i, "data.message_time", data.get("message_time") or item.get("timestamp")
            )
            sent = data.get("sent_flag")
            direction = (
                None if sent is None else ("outbound" if str(sent) in ("1", "True", "true") else "inbound")
            )
            mails.append((deal_id, direction, at, i))
            continue
        if kind != "dealChange":
            continue
        deal_id = _one_id(data.get("item_id"))
        if deal_id in deleted:
            continue
        if deal_id not in deals:
            raise folder.error(
                "flow.json",
                i,
                "data.item_id",
                f"change of deal {deal_id!r}, which is not in deals.json",
                "export the flow of the deals in deals.json, deleted deals included",
            )
        key = str(data.get("field_key"))
        at = _time(folder, "flow.json", i, "data.log_time", data.get("log_time") or item.get("timestamp"))
        if key in FIELDS or key in ("stage_id", "status", "pipeline_id"):
            changes.append(
                {
                    "deal_id": deal_id,
                    "key": key,
                    "old": data.get("old_value"),
                    "new": data.get("new_value"),
                    "at": at,
                    "row": i,
                }
            )
        elif key != "add_time":
            other_fields[key] = other_fields.get(key, 0) + 1
    for key, count in sorted(other_fields.items()):
        report.unmap(
            f"changes of {key}",
            count,
            "dealrisk follows value, expected close date, owner, stage and status only",
            "flow.json",
        )
    change_frame = pd.DataFrame(changes, columns=["deal_id", "key", "old", "new", "at", "row"])
    change_frame = change_frame.sort_values(["deal_id", "at", "row"], kind="stable")

    # --- values at creation: the old value of the earliest change, else today's ---
    earliest = change_frame.groupby(["deal_id", "key"], sort=False).first()

    def initial(deal_id: str, *keys: str) -> Any:
        for key in keys:
            if (deal_id, key) in earliest.index:
                return earliest.loc[(deal_id, key), "old"]
        return None

    deal_rows, stage_rows, field_rows = [], [], []
    no_status = 0
    by_deal = {str(k): g for k, g in change_frame.groupby("deal_id", sort=False)}
    for deal_id, deal in deals.items():
        pipeline = _one_id(initial(deal_id, "pipeline_id")) or deal["pipeline"]
        owner = _one_id(initial(deal_id, "user_id", "owner_id")) or deal["owner"]
        amount = initial(deal_id, "value") if (deal_id, "value") in earliest.index else deal["amount"]
        close = (
            initial(deal_id, "expected_close_date")
            if (deal_id, "expected_close_date") in earliest.index
            else deal["expected_close_date"]
        )
        stage = _one_id(initial(deal_id, "stage_id")) or deal["stage"]
        deal_rows.append(
            {
                "deal_id": deal_id,
                "pipeline": pipeline,
                "owner": owner,
                "amount": amount,
                "created_at": deal["created_at"],
                "expected_close_date": close,
                "account": deal["account"],
                "team": None,
                "currency": deal["currency"],
            }
        )
        stage_rows.append((deal_id, stage, deal["created_at"], -1, "deals.json", deal["row"], "stage_id"))
        open_stage, status = stage, "open"
        for row in by_deal.get(deal_id, change_frame.iloc[:0]).itertuples(index=False):
            if row.key == "stage_id":
                open_stage = _one_id(row.new) or open_stage
                if status == "open":
                    stage_rows.append(
                        (deal_id, open_stage, row.at, row.row, "flow.json", row.row, "data.new_value")
                    )
            elif row.key == "status":
                status = str(row.new)
                target = {"won": SYNTHETIC_WON, "lost": SYNTHETIC_LOST}.get(status, open_stage)
                stage_rows.append((deal_id, target, row.at, row.row, "flow.json", row.row, "data.new_value"))
            elif row.key in FIELDS:
                field_rows.append(
                    {
                        "deal_id": deal_id,
                        "field": FIELDS[row.key],
                        "value": _one_id(row.new) if FIELDS[row.key] == "owner" else row.new,
                        "changed_at": row.at,
                        "seq": row.row,
                    }
                )
        if deal["status"] in ("won", "lost") and status != deal["status"]:
            # Closed without a status change in the flow: close it at won_time / lost_time.
            no_status += 1
            at = _time(folder, "deals.json", deal["row"], f"{deal['status']}_time", deal["closed_at"])
            target = SYNTHETIC_WON if deal["status"] == "won" else SYNTHETIC_LOST
            stage_rows.append((deal_id, target, at, 10**9, "deals.json", deal["row"], "status"))
    report.untrack(
        "status",
        no_status,
        "won or lost with no status change in the flow: closed at its won_time / lost_time",
        "flow.json",
    )

    deal_frame = pd.DataFrame(deal_rows)
    if deal_frame.empty:
        deal_frame = pd.DataFrame(columns=list(DEAL_COLUMNS))
    amount = parse_amounts(deal_frame["amount"].astype("string"))
    report.unmap(
        "deals without a value at creation", int(amount.isna().sum()), "imported with amount 0", "deals.json"
    )
    deal_frame["amount"] = amount.fillna(0.0)
    deal_frame["expected_close_date"] = calendar_dates(deal_frame["expected_close_date"].astype("string"))
    stages = pd.DataFrame(
        stage_rows, columns=["deal_id", "stage", "changed_at", "seq", "_file", "_row", "_column"]
    )
    fields = pd.DataFrame(field_rows, columns=["deal_id", "field", "value", "changed_at", "seq"])
    fields["value"] = fields["value"].astype("string")
    cleared = fields["value"].isna()
    report.unmap(
        "cleared values", int(cleared.sum()), "a field set to empty has no value to carry", "flow.json"
    )
    fields = fields[~cleared]
    is_amount = fields["field"] == "amount"
    fields.loc[is_amount, "value"] = format_amounts(parse_amounts(fields.loc[is_amount, "value"]))
    is_close = fields["field"] == "expected_close_date"
    fields.loc[is_close, "value"] = calendar_dates(fields.loc[is_close, "value"])

    activities = [empty_events("activities"), _activities(folder, report, deleted)]
    activities.append(
        pd.DataFrame(
            [
                (d, "email", direction, at, "flow.json", row, "data.deal_id")
                for d, direction, at, row in mails
            ],
            columns=["deal_id", "type", "direction", "occurred_at", "_file", "_row", "_column"],
        )
    )
    for name, file in (("pipelines", "pipelines.json"), ("users", "users.json")):
        for record in folder.read_json(file, must_exist=False) or []:
            labels = report.pipeline_labels if name == "pipelines" else report.owner_labels
            labels[str(_one_id(record.get("id")))] = str(record.get("name"))
    frame = pd.concat([a for a in activities if len(a)] or activities[:1], ignore_index=True)
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    return assemble(folder, report, deal_frame, stages, frame, fields, meta)


def _activities(folder: ExportFolder, report: ImportReport, deleted: set[str]) -> pd.DataFrame:
    out = []
    rows = folder.read_json("activities.json", must_exist=False)
    if rows is None:
        report.unmap(
            "activities", 1, "no activities.json in the export: calls, meetings and tasks are missing"
        )
    not_done = no_deal = 0
    odd: dict[str, int] = {}
    for i, record in enumerate(rows or [], start=1):
        if record.get("active_flag") is False or bool(record.get("is_deleted")):
            continue
        deal_id = _one_id(record.get("deal_id"))
        if deal_id is None:
            no_deal += 1
            continue
        if deal_id in deleted:
            continue
        if not record.get("done"):
            not_done += 1
            continue
        when = record.get("marked_as_done_time")
        if not when and record.get("due_date"):
            when = f"{record['due_date']} {record.get('due_time') or '00:00'}"
        at = _time(folder, "activities.json", i, "marked_as_done_time", when)
        key = str(record.get("type") or "")
        kind = _ACTIVITY_TYPES.get(key)
        if kind is None:
            odd[key] = odd.get(key, 0) + 1
            kind = "other"
        out.append((deal_id, kind, None, at, "activities.json", i, "deal_id"))
    report.drop("activities not done", not_done, "planned, not done yet", "activities.json")
    report.unmap(
        "activities without a deal", no_deal, "on a person, organisation or lead only", "activities.json"
    )
    for key, count in sorted(odd.items()):
        report.unmap(f"activity type {key!r}", count, "a custom type: imported as other", "activities.json")
    notes = folder.read_json("notes.json", must_exist=False)
    for i, record in enumerate(notes or [], start=1):
        deal_id = _one_id(record.get("deal_id"))
        if deal_id is None or deal_id in deleted or record.get("active_flag") is False:
            continue
        out.append(
            (
                deal_id,
                "note",
                None,
                _time(folder, "notes.json", i, "add_time", record.get("add_time")),
                "notes.json",
                i,
                "deal_id",
            )
        )
    return pd.DataFrame(
        out, columns=["deal_id", "type", "direction", "occurred_at", "_file", "_row", "_column"]
    )


def read_pipedrive(path: str | Path) -> DealHistory:
    """The deal history of a Pipedrive export folder (keys: stage, pipeline and user ids)."""
    return import_pipedrive(path).history
