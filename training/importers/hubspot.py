"""HubSpot: CRM API v3 responses saved as JSON files (a list of records, or the API's pages).

Files (records as the API returns them; `row N` in messages is the Nth record of the file):
  deals.json      GET /crm/v3/objects/deals?archived=...&properties=createdate,dealstage,pipeline,amount,
                  closedate,hubspot_owner_id,hubspot_team_id,deal_currency_code,hs_merged_object_ids
                  &propertiesWithHistory=dealstage,amount,closedate,hubspot_owner_id,pipeline
                  &associations=companies  ({id, properties, propertiesWithHistory, archived, associations})
  pipelines.json  GET /crm/v3/pipelines/deals  (stages with displayOrder and metadata isClosed/probability)
  calls.json, emails.json, meetings.json, notes.json, tasks.json
                  optional: GET /crm/v3/objects/<type>?properties=hs_timestamp,...&associations=deals
  owners.json     optional: GET /crm/v3/owners, for owner names

Keys: stage and pipeline internal ids (`appointmentscheduled`, `default`, or numbers), owner ids. Won and
lost come from the stage metadata (closed with probability 1.0 / 0.0), never from names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory
from training.importers.common import (
    DEAL_COLUMNS,
    CrmImport,
    ExportFolder,
    ImportReport,
    assemble,
    calendar_dates,
    dig,
    empty_events,
    format_amounts,
    parse_amounts,
    parse_time,
    stage_frame,
)

CRM = "hubspot"
# HubSpot keeps this many versions of a deal property; a deal with as many may have lost older ones.
MAX_VERSIONS = 20
HISTORY = ("dealstage", "amount", "closedate", "hubspot_owner_id", "pipeline", "hubspot_team_id")
ENGAGEMENTS = {"calls": "call", "emails": "email", "meetings": "meeting", "notes": "note", "tasks": "task"}
_EMAIL_DIRECTION = {"EMAIL": "outbound", "INCOMING_EMAIL": "inbound"}
_CALL_DIRECTION = {"INBOUND": "inbound", "OUTBOUND": "outbound"}


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


def _versions(
    folder: ExportFolder, record: Mapping[str, Any], prop: str, row: int
) -> list[tuple[pd.Timestamp, str | None]]:
    """A property's versions, oldest first (the API lists them newest first; do not rely on it)."""
    raw = dig(record, f"propertiesWithHistory.{prop}") or []
    if not isinstance(raw, list):
        raise folder.error("deals.json", row, f"propertiesWithHistory.{prop}", "expected a list of versions")
    out = []
    for version in raw:
        at = parse_time(dig(version, "timestamp"))
        if at is None:
            raise folder.error(
                "deals.json",
                row,
                f"propertiesWithHistory.{prop}",
                f"version timestamp {dig(version, 'timestamp')!r} is not a time",
            )
        out.append((at, _text(dig(version, "value"))))
    return sorted(out, key=lambda v: v[0])


def import_hubspot(path: str | Path) -> CrmImport:
    """Convert a HubSpot export folder; see the module docstring for the files read."""
    folder = ExportFolder(path, "HubSpot")
    report = ImportReport(crm=CRM, source=str(folder.path))
    hint = "save the API responses listed in docs/importers.md"
    records = folder.read_json("deals.json", hint=hint) or []
    pipelines = folder.read_json("pipelines.json", hint=hint) or []

    # --- stage metadata ---
    meta_rows = []
    for i, pipe in enumerate(pipelines, start=1):
        pipe_id = _text(pipe.get("id"))
        if pipe_id is None:
            raise folder.error("pipelines.json", i, "id", "missing pipeline id")
        report.pipeline_labels[pipe_id] = str(pipe.get("label") or pipe_id)
        for stage in pipe.get("stages") or []:
            stage_id = _text(stage.get("id"))
            if stage_id is None:
                raise folder.error("pipelines.json", i, "stages.id", "missing stage id")
            closed = str(dig(stage, "metadata.isClosed")).lower() == "true"
            probability = pd.to_numeric(
                pd.Series([dig(stage, "metadata.probability")]), errors="coerce"
            ).iloc[0]
            outcome = "open"
            if closed:
                outcome = "won" if probability == 1.0 else "lost"
                if probability not in (0.0, 1.0):
                    report.unmap(
                        f"closed stage {stage_id!r} with probability {probability}",
                        1,
                        "closed stages are won at probability 1.0 and lost at 0.0; taken as lost",
                        "pipelines.json",
                    )
            meta_rows.append(
                {
                    "stage": stage_id,
                    "pipeline": pipe_id,
                    "order": float(stage.get("displayOrder") or 0),
                    "outcome": outcome,
                    "active": not bool(stage.get("archived")),
                    "label": str(stage.get("label") or stage_id),
                }
            )
    meta = pd.DataFrame(meta_rows, columns=["stage", "pipeline", "order", "outcome", "active", "label"])
    meta["pipeline"] = meta["pipeline"].astype("string")
    report.stage_labels = dict(zip(meta["stage"], meta["label"], strict=True))

    # --- deals: drop archived (deleted) and merged records ---
    merged_into: dict[str, str] = {}
    for record in records:
        for old in str(dig(record, "properties.hs_merged_object_ids") or "").split(";"):
            if old.strip():
                merged_into[old.strip()] = str(record.get("id"))
    archived: set[str] = set()
    deals, stages, fields = [], [], []
    many_versions = late_stage = 0
    empty_amounts = 0
    for i, record in enumerate(records, start=1):
        deal_id = _text(record.get("id")) or _text(dig(record, "properties.hs_object_id"))
        if deal_id is None:
            raise folder.error("deals.json", i, "id", "missing deal id")
        if bool(record.get("archived")):
            archived.add(deal_id)
            continue
        if deal_id in merged_into:
            continue
        props = record.get("properties") or {}
        created = parse_time(props.get("createdate") or record.get("createdAt"))
        if created is None:
            raise folder.error(
                "deals.json", i, "properties.createdate", "missing or unreadable creation time"
            )
        history = {p: _versions(folder, record, p, i) for p in HISTORY}
        if any(len(v) >= MAX_VERSIONS for v in history.values()):
            many_versions += 1

        def initial(
            prop: str,
            history: dict[str, list[tuple[pd.Timestamp, str | None]]] = history,
            props: Mapping[str, Any] = props,
        ) -> str | None:
            versions = history[prop]
            return versions[0][1] if versions else _text(props.get(prop))

        stage0 = initial("dealstage")
        if stage0 is None:
            raise folder.error("deals.json", i, "properties.dealstage", "missing deal stage")
        owner0 = initial("hubspot_owner_id")
        if owner0 is None:
            raise folder.error("deals.json", i, "properties.hubspot_owner_id", "missing deal owner")
        if not history["dealstage"] or history["dealstage"][0][0] - created > pd.Timedelta(seconds=60):
            late_stage += 1
        account = dig(record, "associations.companies.results")
        deals.append(
            {
                "deal_id": deal_id,
                "pipeline": initial("pipeline") or "default",
                "owner": owner0,
                "amount": initial("amount"),
                "created_at": created,
                "expected_close_date": initial("closedate"),
                "account": _text((account or [{}])[0].get("id", (account or [{}])[0].get("toObjectId")))
                if account
                else None,
                "team": initial("hubspot_team_id"),
                "currency": _text(props.get("deal_currency_code")),
                "_row": i,
            }
        )
        stage_versions = history["dealstage"] or [(created, stage0)]
        for n, (at, value) in enumerate(stage_versions):
            stages.append((deal_id, value, created if n == 0 else at, n, i))
        for prop, field in (
            ("amount", "amount"),
            ("closedate", "expected_close_date"),
            ("hubspot_owner_id", "owner"),
        ):
            for n, (at, value) in enumerate(history[prop][1:], start=1):
                if value is None:
                    empty_amounts += 1
                    continue
                fields.append((deal_id, field, value, at, n))
    report.drop(
        "archived deals",
        len(archived),
        "deleted in HubSpot (archived); they would bias win rates",
        "deals.json",
    )
    report.drop(
        "merged deals",
        len(merged_into),
        "merged into another deal (hs_merged_object_ids); the surviving deal keeps their activities",
        "deals.json",
    )
    report.untrack(
        "deal property history",
        many_versions,
        f"a property has {MAX_VERSIONS} versions, the most HubSpot keeps: older changes (and the "
        "value at creation) may be lost",
        "deals.json",
    )
    report.untrack(
        "deal stage",
        late_stage,
        "no stage version at creation: the earliest known stage is dated at creation",
        "deals.json",
    )
    report.unmap(
        "cleared values", empty_amounts, "a property set to empty has no value to carry", "deals.json"
    )

    deal_frame = pd.DataFrame(
        deals,
        columns=[*DEAL_COLUMNS, "_row"],
    )
    amount = parse_amounts(deal_frame["amount"])
    report.unmap(
        "deals without an amount at creation",
        int(amount.isna().sum()),
        "imported with amount 0",
        "deals.json",
    )
    deal_frame["amount"] = amount.fillna(0.0)
    deal_frame["expected_close_date"] = calendar_dates(deal_frame["expected_close_date"])
    deal_frame["created_at"] = pd.to_datetime(deal_frame["created_at"], utc=True)
    stage_rows = pd.DataFrame(stages, columns=["deal_id", "stage", "changed_at", "seq", "_row"])
    stage_changes = stage_frame(
        stage_rows["deal_id"],
        stage_rows["stage"],
        stage_rows["changed_at"],
        stage_rows["seq"],
        "deals.json",
        stage_rows["_row"],
        "propertiesWithHistory.dealstage",
    )
    field_changes = pd.DataFrame(fields, columns=["deal_id", "field", "value", "changed_at", "seq"])
    is_amount = field_changes["field"] == "amount"
    field_changes.loc[is_amount, "value"] = format_amounts(
        parse_amounts(field_changes.loc[is_amount, "value"])
    )
    is_close = field_changes["field"] == "expected_close_date"
    field_changes.loc[is_close, "value"] = calendar_dates(field_changes.loc[is_close, "value"])

    # --- engagements ---
    known = set(deal_frame["deal_id"])
    activities = [empty_events("activities")]
    for name, kind in ENGAGEMENTS.items():
        rows = folder.read_json(f"{name}.json", must_exist=False)
        if rows is None:
            report.unmap(f"{name}", 1, f"no {name}.json in the export: no {name} imported")
            continue
        activities.append(
            _engagements(folder, report, rows, f"{name}.json", kind, known, archived, merged_into)
        )
    owners = folder.read_json("owners.json", must_exist=False) or []
    for owner in owners:
        name = " ".join(str(owner.get(k) or "") for k in ("firstName", "lastName")).strip()
        report.owner_labels[str(owner.get("id"))] = name or str(owner.get("email") or owner.get("id"))
    # Meetings are booked ahead: an engagement dated after the export was taken has not happened yet.
    acts = pd.concat(activities, ignore_index=True)
    logged = [deal_frame["created_at"], stage_changes["changed_at"], field_changes["changed_at"]]
    logged.append(acts["logged_at"] if "logged_at" in acts else pd.Series([], dtype="datetime64[ns, UTC]"))
    export_time = max((t.max() for t in logged if t.notna().any()), default=None)
    planned = (acts["occurred_at"] > export_time) if export_time is not None else acts["occurred_at"].isna()
    report.drop(
        "planned engagements", int(planned.sum()), "dated after the export was taken: not happened yet"
    )
    return assemble(
        folder, report, deal_frame, stage_changes, acts[~planned.to_numpy(dtype=bool)], field_changes, meta
    )


def _engagements(
    folder: ExportFolder,
    report: ImportReport,
    rows: list[dict[str, Any]],
    file: str,
    kind: str,
    known: set[str],
    archived: set[str],
    merged_into: Mapping[str, str],
) -> pd.DataFrame:
    out = []
    unlinked = open_tasks = of_archived = 0
    for i, record in enumerate(rows, start=1):
        if bool(record.get("archived")):
            continue
        props = record.get("properties") or {}
        links = dig(record, "associations.deals.results") or []
        deal_ids = [
            _text(link.get("id", link.get("toObjectId"))) for link in links if isinstance(link, Mapping)
        ]
        deal_ids = [merged_into.get(d, d) for d in deal_ids if d is not None]
        if not deal_ids:
            unlinked += 1
            continue
        if kind == "task" and str(props.get("hs_task_status") or "").upper() != "COMPLETED":
            open_tasks += 1
            continue
        when = props.get("hs_task_completion_date") if kind == "task" else None
        when = when or props.get("hs_timestamp") or props.get("hs_createdate") or record.get("createdAt")
        at = parse_time(when)
        logged = parse_time(record.get("createdAt") or props.get("hs_createdate"))
        if at is None:
            raise folder.error(file, i, "properties.hs_timestamp", f"missing or unreadable time {when!r}")
        direction = None
        if kind == "call":
            direction = _CALL_DIRECTION.get(str(props.get("hs_call_direction") or "").upper())
        elif kind == "email":
            direction = _EMAIL_DIRECTION.get(str(props.get("hs_email_direction") or "").upper())
        for deal_id in dict.fromkeys(deal_ids):
            if deal_id in archived:
                of_archived += 1
                continue
            out.append((deal_id, kind, direction, at, logged, file, i, "associations.deals"))
    report.unmap(
        f"{file.removesuffix('.json')} without a deal", unlinked, "not associated with any deal", file
    )
    report.drop("open tasks", open_tasks, "not completed: a due date is a plan, not an activity", file)
    report.drop(
        f"{file.removesuffix('.json')} of archived deals", of_archived, "their deal was deleted", file
    )
    frame = pd.DataFrame(
        out, columns=["deal_id", "type", "direction", "occurred_at", "logged_at", "_file", "_row", "_column"]
    )
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    return frame.astype({"_row": np.int64})


def read_hubspot(path: str | Path) -> DealHistory:
    """The deal history of a HubSpot export folder (keys: stage, pipeline and owner ids)."""
    return import_hubspot(path).history
