"""Odoo CRM: `search_read` results (XML-RPC / JSON-RPC) saved as JSON files, one per model.

Files (a list of records as `search_read` returns them: many2one fields as `[id, "name"]` or false;
`row N` in messages is the Nth record of the file):
  crm.lead.json            id, type, create_date, stage_id, team_id, user_id, partner_id,
                           expected_revenue (planned_revenue before 14.0), company_currency, active,
                           probability, date_closed
                           (with `active_test: False` in the context, so archived and lost leads come too)
  crm.stage.json           id, name, sequence, is_won, team_id (team_ids from 19.0)
  mail.tracking.value.json id, field_id (field before 17.0), old/new_value_integer, old/new_value_float,
                           mail_message_id, create_date
  mail.message.json        id, model, res_id, date, message_type, subtype_id, mail_activity_type_id
                           (the messages of model crm.lead)
  ir.model.fields.json     id, name: the tracked fields' names (tracking rows refer to fields by id)
  crm.team.json, mail.activity.json   optional: team names; planned activities (counted, not imported)

Keys: stage, team and user ids. A lead's pipeline is its sales team at creation. Odoo has no lost stage
(a lost lead is archived with probability 0), so every pipeline gets a closing stage `lost`, entered when
the lead is archived as lost; restoring it goes back to its stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from features.history import DealHistory
from training.importers.common import (
    DEAL_COLUMNS,
    SYNTHETIC_LOST,
    CrmImport,
    ExportFolder,
    ImportReport,
    assemble,
    empty_events,
    format_amounts,
    id_text,
)

ODOO_TIMES = "Odoo stores UTC times as 'YYYY-MM-DD HH:MM:SS'"
CRM = "odoo"
NO_TEAM = "none"
MODEL = "crm.lead"
TRACKED = {"stage_id", "user_id", "expected_revenue", "planned_revenue", "team_id", "active"}


def _id(value: Any) -> str | None:
    text = id_text(pd.Series([value], dtype=object)).iloc[0]
    return None if pd.isna(text) else str(text)


def _name(value: Any) -> str | None:
    return str(value[1]) if isinstance(value, list | tuple) and len(value) > 1 else None


def _time(folder: ExportFolder, file: str, row: int, column: str, value: Any) -> pd.Timestamp:
    return folder.time(file, row, column, value, ODOO_TIMES)


def _activity_kind(name: str) -> str:
    lower = name.lower()
    for word, kind in (("call", "call"), ("meeting", "meeting"), ("mail", "email")):
        if word in lower:
            return kind
    return "task"


def import_odoo(path: str | Path) -> CrmImport:
    """Convert an Odoo export folder; see the module docstring for the files read."""
    folder = ExportFolder(path, "Odoo")
    report = ImportReport(crm=CRM, source=str(folder.path))
    hint = "save the search_read results listed in docs/importers.md"
    leads = folder.read_json("crm.lead.json", hint=hint) or []
    stage_records = folder.read_json("crm.stage.json", hint=hint) or []
    tracking = folder.read_json("mail.tracking.value.json", hint=hint) or []
    messages = folder.read_json("mail.message.json", hint=hint) or []
    fields = folder.read_json("ir.model.fields.json", must_exist=False) or []

    # --- stages, ordered as Odoo orders them: (sequence, name, id) ---
    meta_rows = []
    for i, stage in enumerate(stage_records, start=1):
        stage_id = _id(stage.get("id"))
        if stage_id is None:
            raise folder.error("crm.stage.json", i, "id", "missing stage id")
        teams = stage.get("team_ids") if "team_ids" in stage else [stage.get("team_id")]
        team_ids = [t for t in (_id(t) for t in (teams or [])) if t is not None] or [None]
        for team in team_ids:
            meta_rows.append(
                {
                    "stage": stage_id,
                    "pipeline": team,
                    "outcome": "won" if stage.get("is_won") else "open",
                    "active": True,
                    "key": (
                        float(stage.get("sequence") or 0),
                        str(stage.get("name")),
                        int(stage_id) if stage_id.isdigit() else 0,
                    ),
                }
            )
        report.stage_labels[stage_id] = str(stage.get("name") or stage_id)
    meta_rows.sort(key=lambda r: r["key"])
    for n, row in enumerate(meta_rows):
        row["order"] = float(n)
        del row["key"]
    meta_rows.append(
        {"stage": SYNTHETIC_LOST, "pipeline": None, "outcome": "lost", "active": True, "order": 1e9}
    )
    report.stage_labels[SYNTHETIC_LOST] = SYNTHETIC_LOST
    meta = pd.DataFrame(meta_rows)
    meta["pipeline"] = meta["pipeline"].astype("string")

    # --- leads: opportunities only; archived (not lost) ones dropped ---
    opportunities: dict[str, dict[str, Any]] = {}
    dropped_leads: set[str] = set()
    n_leads = n_archived = 0
    for i, lead in enumerate(leads, start=1):
        lead_id = _id(lead.get("id"))
        if lead_id is None:
            raise folder.error("crm.lead.json", i, "id", "missing id")
        if lead.get("type", "opportunity") != "opportunity":
            n_leads += 1
            dropped_leads.add(lead_id)
            continue
        lost_now = lead.get("active") is False and float(lead.get("probability") or 0) == 0.0
        if lead.get("active") is False and not lost_now:
            n_archived += 1
            dropped_leads.add(lead_id)
            continue
        owner = _id(lead.get("user_id"))
        if owner is None:
            raise folder.error("crm.lead.json", i, "user_id", "missing salesperson")
        stage = _id(lead.get("stage_id"))
        if stage is None:
            raise folder.error("crm.lead.json", i, "stage_id", "missing stage")
        for column, labels in (("user_id", report.owner_labels), ("team_id", report.pipeline_labels)):
            if _name(lead.get(column)):
                labels[str(_id(lead.get(column)))] = str(_name(lead.get(column)))
        revenue = lead.get("expected_revenue", lead.get("planned_revenue"))
        opportunities[lead_id] = {
            "row": i,
            "created_at": _time(folder, "crm.lead.json", i, "create_date", lead.get("create_date")),
            "team": _id(lead.get("team_id")) or NO_TEAM,
            "owner": owner,
            "stage": stage,
            "amount": float(revenue or 0.0),
            "account": _id(lead.get("partner_id")),
            "lost_now": lost_now,
            "closed_at": lead.get("date_closed"),
            "deadline": bool(lead.get("date_deadline")),
            # expected_revenue is in the company's currency (a many2one: [id, "EUR"]).
            "currency": _name(lead.get("company_currency")),
        }
    report.drop(
        "leads",
        n_leads,
        "not opportunities (type 'lead'); converted leads come as opportunities",
        "crm.lead.json",
    )
    report.drop(
        "archived opportunities",
        n_archived,
        "archived without being lost (probability above 0)",
        "crm.lead.json",
    )
    report.untrack(
        "expected close date",
        len(opportunities),
        "Odoo does not track date_deadline: its value at creation is unknown, so it is left empty "
        "rather than taking today's value (often the real close date)",
        "crm.lead.json",
    )

    # --- messages: which lead, when ---
    message_at: dict[str, tuple[str, pd.Timestamp, int]] = {}
    activity_rows = []
    skipped_types: dict[str, int] = {}
    for i, message in enumerate(messages, start=1):
        if message.get("model") != MODEL:
            continue
        lead_id = _id(message.get("res_id"))
        message_id = _id(message.get("id"))
        at = _time(folder, "mail.message.json", i, "date", message.get("date"))
        if message_id is not None and lead_id is not None:
            message_at[message_id] = (lead_id, at, i)
        if lead_id in dropped_leads:
            continue
        activity_type = _name(message.get("mail_activity_type_id"))
        message_type = str(message.get("message_type") or "")
        subtype = (_name(message.get("subtype_id")) or "").lower()
        kind, direction = None, None
        if activity_type:
            kind = _activity_kind(activity_type)
        elif message_type == "email":
            kind, direction = "email", "inbound"
        elif message_type == "email_outgoing" or (message_type == "comment" and subtype == "discussions"):
            kind, direction = "email", "outbound"
        elif message_type == "comment" and subtype == "note":
            kind = "note"
        if kind is None:
            if message_type not in ("notification", "auto_comment", "user_notification"):
                skipped_types[message_type or "(none)"] = skipped_types.get(message_type or "(none)", 0) + 1
            continue
        activity_rows.append((lead_id, kind, direction, at, "mail.message.json", i, "res_id"))
    for message_type, count in sorted(skipped_types.items()):
        report.unmap(
            f"messages of type {message_type!r}", count, "not an activity, email or note", "mail.message.json"
        )

    # --- tracking values ---
    field_names = {str(_id(f.get("id"))): str(f.get("name")) for f in fields}
    changes = []
    untracked_fields: dict[str, int] = {}
    for i, value in enumerate(tracking, start=1):
        raw_field = value.get("field_id", value.get("field"))
        if isinstance(raw_field, str):
            name = raw_field
        else:
            field_id = _id(raw_field)
            if field_id not in field_names:
                raise folder.error(
                    "mail.tracking.value.json",
                    i,
                    "field_id",
                    f"field id {field_id} is not in ir.model.fields.json",
                    "export ir.model.fields (id, name) for model crm.lead",
                )
            name = field_names[field_id]
        message_id = _id(value.get("mail_message_id"))
        if message_id not in message_at:
            raise folder.error(
                "mail.tracking.value.json",
                i,
                "mail_message_id",
                f"message {message_id} is not in mail.message.json",
            )
        lead_id, at, _ = message_at[message_id]
        if lead_id in dropped_leads:
            continue
        if name not in TRACKED:
            untracked_fields[name] = untracked_fields.get(name, 0) + 1
            continue
        if lead_id not in opportunities:
            raise folder.error(
                "mail.tracking.value.json",
                i,
                "mail_message_id",
                f"tracks lead {lead_id!r}, which is not in crm.lead.json",
                "export crm.lead with active_test False so archived and lost leads come too",
            )
        if name in ("expected_revenue", "planned_revenue"):
            old, new = value.get("old_value_float"), value.get("new_value_float")
        else:
            old, new = _id(value.get("old_value_integer")), _id(value.get("new_value_integer"))
            if name in ("stage_id", "user_id", "team_id"):
                labels = {
                    "stage_id": report.stage_labels,
                    "user_id": report.owner_labels,
                    "team_id": report.pipeline_labels,
                }[name]
                # The char values hold the display names at the time of the change.
                for key, char in ((old, value.get("old_value_char")), (new, value.get("new_value_char"))):
                    if key is not None and char:
                        labels.setdefault(str(key), str(char))
        changes.append({"lead": lead_id, "field": name, "old": old, "new": new, "at": at, "id": i})
    for name, count in sorted(untracked_fields.items()):
        report.unmap(
            f"tracked field {name}",
            count,
            "dealrisk follows stage, salesperson, expected revenue, sales team and archiving only",
            "mail.tracking.value.json",
        )
    change_frame = pd.DataFrame(changes, columns=["lead", "field", "old", "new", "at", "id"])
    change_frame = change_frame.sort_values(["lead", "at", "id"], kind="stable")
    earliest = change_frame.groupby(["lead", "field"], sort=False).first()

    deal_rows, stage_rows, field_rows = [], [], []
    synthetic_lost = 0
    by_lead = {str(k): g for k, g in change_frame.groupby("lead", sort=False)}
    for lead_id, lead in opportunities.items():

        def initial(field: str, default: Any, lead_id: str = lead_id) -> Any:
            return earliest.loc[(lead_id, field), "old"] if (lead_id, field) in earliest.index else default

        revenue_field = (
            "expected_revenue" if (lead_id, "expected_revenue") in earliest.index else "planned_revenue"
        )
        deal_rows.append(
            {
                "deal_id": lead_id,
                "pipeline": initial("team_id", lead["team"]) or NO_TEAM,
                "owner": initial("user_id", lead["owner"]),
                "amount": initial(revenue_field, lead["amount"]),
                "created_at": lead["created_at"],
                "expected_close_date": None,
                "account": lead["account"],
                "team": None,
                "currency": lead["currency"],
            }
        )
        stage = initial("stage_id", lead["stage"])
        stage_rows.append((lead_id, stage, lead["created_at"], -1, "crm.lead.json", lead["row"], "stage_id"))
        active, lost_seen = True, False
        for row in by_lead.get(lead_id, change_frame.iloc[:0]).itertuples(index=False):
            if row.field == "stage_id":
                stage = row.new
                if active:
                    stage_rows.append(
                        (
                            lead_id,
                            stage,
                            row.at,
                            row.id,
                            "mail.tracking.value.json",
                            row.id,
                            "new_value_integer",
                        )
                    )
            elif row.field == "active":
                active = row.new not in ("0", None)
                target = stage if active else SYNTHETIC_LOST
                lost_seen |= not active
                stage_rows.append(
                    (lead_id, target, row.at, row.id, "mail.tracking.value.json", row.id, "new_value_integer")
                )
            elif row.field == "user_id":
                field_rows.append(
                    {
                        "deal_id": lead_id,
                        "field": "owner",
                        "value": row.new,
                        "changed_at": row.at,
                        "seq": row.id,
                    }
                )
            elif row.field in ("expected_revenue", "planned_revenue"):
                field_rows.append(
                    {
                        "deal_id": lead_id,
                        "field": "amount",
                        "value": row.new,
                        "changed_at": row.at,
                        "seq": row.id,
                    }
                )
        if lead["lost_now"] and active:
            synthetic_lost += 1
            at = _time(folder, "crm.lead.json", lead["row"], "date_closed", lead["closed_at"])
            stage_rows.append((lead_id, SYNTHETIC_LOST, at, 10**9, "crm.lead.json", lead["row"], "active"))
    report.untrack(
        "lost",
        synthetic_lost,
        "lost with no tracked archiving: lost at its date_closed",
        "mail.tracking.value.json",
    )
    if not fields and any(not isinstance(v.get("field_id", v.get("field")), str) for v in tracking):
        raise folder.error("ir.model.fields.json", None, None, "missing file ir.model.fields.json", hint)
    teams = folder.read_json("crm.team.json", must_exist=False) or []
    report.pipeline_labels.update({str(_id(t.get("id"))): str(t.get("name")) for t in teams})
    report.pipeline_labels.setdefault(NO_TEAM, "(no sales team)")
    planned = folder.read_json("mail.activity.json", must_exist=False) or []
    report.drop(
        "planned activities", len(planned), "not done yet (done ones are messages)", "mail.activity.json"
    )

    deals = pd.DataFrame(
        deal_rows,
        columns=list(DEAL_COLUMNS),
    )
    deals["amount"] = pd.to_numeric(deals["amount"]).fillna(0.0)
    deals["pipeline"] = deals["pipeline"].astype("string")
    stages = pd.DataFrame(
        stage_rows, columns=["deal_id", "stage", "changed_at", "seq", "_file", "_row", "_column"]
    )
    fc = pd.DataFrame(field_rows, columns=["deal_id", "field", "value", "changed_at", "seq"])
    is_amount = fc["field"] == "amount"
    fc["value"] = fc["value"].astype(object)
    fc.loc[is_amount, "value"] = format_amounts(pd.to_numeric(fc.loc[is_amount, "value"])).astype(object)
    fc = fc.dropna(subset=["value"])
    activities = pd.DataFrame(
        activity_rows, columns=["deal_id", "type", "direction", "occurred_at", "_file", "_row", "_column"]
    )
    activities = (
        pd.concat([empty_events("activities"), activities], ignore_index=True)
        if activities.empty
        else activities
    )
    activities["occurred_at"] = pd.to_datetime(activities["occurred_at"], utc=True)
    return assemble(folder, report, deals, stages, activities, fc, meta)


def read_odoo(path: str | Path) -> DealHistory:
    """The deal history of an Odoo export folder (keys: stage, team and user ids)."""
    return import_odoo(path).history
