"""Test helpers: write a `DealHistory` as each CRM's export, in the documented formats the importers read.

Each writer keeps only what the CRM can hold; `expected_after_round_trip` applies the same losses to the
original history, so a round trip can be compared exactly. What each CRM cannot hold is the importer
documentation's "limits" section (docs/importers.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from features.history import DealHistory
from training.importers.common import DEAL_COLUMNS, SYNTHETIC_LOST, SYNTHETIC_WON


def _iso(t: pd.Timestamp) -> str:
    return t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _date(t: Any) -> str:
    return "" if pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d")


def _amount(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _timeline(history: DealHistory, deal_id: str) -> list[tuple[pd.Timestamp, str, str]]:
    """(time, kind, value) of a deal's stage and field changes, in time order (stages first on ties)."""
    sc = history.stage_changes[history.stage_changes["deal_id"] == deal_id]
    fc = history.field_changes[history.field_changes["deal_id"] == deal_id]
    rows = [(t, 0, "stage", s) for t, s in zip(sc["changed_at"], sc["stage"], strict=True)]
    rows += [(t, 1, f, v) for t, f, v in zip(fc["changed_at"], fc["field"], fc["value"], strict=True)]
    return [(t, k, v) for t, _, k, v in sorted(rows, key=lambda r: (r[0], r[1]))]


def _state(deal: pd.Series) -> dict[str, Any]:
    return {
        "amount": _amount(deal["amount"]),
        "expected_close_date": _date(deal["expected_close_date"]),
        "owner": deal["owner"],
    }


def _value(kind: str, value: str) -> str:
    return _date(value) if kind == "expected_close_date" else value


def _current(history: DealHistory, deal: pd.Series) -> dict[str, Any]:
    state = _state(deal)
    stage = None
    for _, kind, value in _timeline(history, deal["deal_id"]):
        if kind == "stage":
            stage = value
        else:
            state[kind] = _value(kind, value)
    state["stage"] = stage
    return state


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"results": records}, indent=1), encoding="utf-8")


def _owner_ids(history: DealHistory, prefix: str, width: int = 0) -> dict[str, str]:
    names = sorted(
        set(history.deals["owner"])
        | set(history.field_changes.loc[history.field_changes["field"] == "owner", "value"])
    )
    return {name: (prefix + str(i + 1).zfill(width)) for i, name in enumerate(names)}


# --------------------------------------------------------------------------------------------------
# Salesforce
# --------------------------------------------------------------------------------------------------


def salesforce_deal_id(deal_id: str) -> str:
    return "006" + deal_id.rjust(12, "0")


def write_salesforce_export(history: DealHistory, folder: Path) -> dict[str, str]:
    """Data Loader CSVs of the history; returns the original deal id of each 15-character opportunity id."""
    from training.importers.salesforce import widen_id

    folder.mkdir(parents=True, exist_ok=True)
    owners = {name: widen_id("005" + i.rjust(12, "0")) for name, i in _owner_ids(history, "").items()}
    record_types = {
        name: widen_id("012" + str(i + 1).rjust(12, "0")) for i, name in enumerate(sorted(history.pipelines))
    }
    opps, snapshots, ofh, tasks, events = [], [], [], [], []
    for _, deal in history.deals.iterrows():
        opp_id = salesforce_deal_id(deal["deal_id"])
        state = _state(deal)
        current = _current(history, deal)
        opps.append(
            {
                "Id": opp_id,
                "Name": deal["deal_id"],
                "AccountId": deal["account"],
                "OwnerId": owners[current["owner"]],
                "Amount": current["amount"],
                "CloseDate": current["expected_close_date"],
                "StageName": current["stage"],
                "RecordTypeId": record_types[deal["pipeline"]],
                "CreatedDate": _iso(deal["created_at"]),
                "IsDeleted": "false",
                "CurrencyIsoCode": deal["currency"],
            }
        )
        ofh.append(
            {
                "OpportunityId": opp_id,
                "CreatedDate": _iso(deal["created_at"]),
                "Field": "created",
                "OldValue": "",
                "NewValue": "",
                "DataType": "Text",
            }
        )
        stage = None
        pending: dict[str, Any] = {}
        last_t: pd.Timestamp | None = None

        def flush(at: pd.Timestamp, opp_id: str, stage: str | None, state: dict[str, Any]) -> None:
            snapshots.append(
                {
                    "OpportunityId": opp_id,
                    "CreatedDate": _iso(at),
                    "StageName": stage,
                    "Amount": state["amount"],
                    "CloseDate": state["expected_close_date"],
                    "IsDeleted": "false",
                }
            )

        for t, kind, value in _timeline(history, deal["deal_id"]):
            if last_t is not None and t != last_t and pending:
                flush(last_t, opp_id, stage, state)
                pending = {}
            if kind == "owner":
                for old, new, data_type in (
                    (owners[state["owner"]], owners[value], "EntityId"),
                    (state["owner"], value, "Text"),
                ):
                    ofh.append(
                        {
                            "OpportunityId": opp_id,
                            "CreatedDate": _iso(t),
                            "Field": "Owner",
                            "OldValue": old,
                            "NewValue": new,
                            "DataType": data_type,
                        }
                    )
                state["owner"] = value
                continue
            if kind == "stage":
                stage = value
            else:
                state[kind] = _value(kind, value)
            pending[kind] = value
            last_t = t
        if pending and last_t is not None:
            flush(last_t, opp_id, stage, state)
        for _, act in history.activities[history.activities["deal_id"] == deal["deal_id"]].iterrows():
            at = _iso(act["occurred_at"])
            if act["type"] == "meeting":
                events.append(
                    {"WhatId": opp_id, "StartDateTime": at, "CreatedDate": at, "IsAllDayEvent": "false"}
                )
                continue
            subtype = {"call": "Call", "email": "Email"}.get(act["type"], "Task")
            kind_name = {"call": "Call", "email": "Email", "note": "Note", "task": "To Do", "other": "Other"}[
                act["type"]
            ]
            call_type = (
                {"inbound": "Inbound", "outbound": "Outbound"}.get(act["direction"], "")
                if act["type"] == "call"
                else ""
            )
            tasks.append(
                {
                    "WhatId": opp_id,
                    "Type": kind_name,
                    "TaskSubtype": subtype,
                    "CallType": call_type,
                    "Status": "Completed",
                    "IsClosed": "true",
                    "CompletedDateTime": at,
                    "CreatedDate": at,
                }
            )
    stage_rows = []
    order = 0
    seen: set[str] = set()
    for name in sorted(history.pipelines):
        spec = history.pipelines[name]
        for stage_name in spec.stages + spec.won + spec.lost:
            if stage_name in seen:
                continue
            seen.add(stage_name)
            order += 1
            closed = stage_name in spec.won or stage_name in spec.lost
            stage_rows.append(
                {
                    "MasterLabel": stage_name,
                    "SortOrder": order,
                    "IsActive": "true",
                    "IsClosed": str(closed).lower(),
                    "IsWon": str(stage_name in spec.won).lower(),
                }
            )
    # Open stages must come before closing ones in every pipeline's order: sort closing stages last.
    stage_rows.sort(key=lambda r: (r["IsClosed"] == "true", r["SortOrder"]))
    for i, row in enumerate(stage_rows, start=1):
        row["SortOrder"] = i
    _write_csv(folder / "Opportunity.csv", opps, list(opps[0]))
    _write_csv(
        folder / "OpportunityHistory.csv",
        snapshots,
        ["OpportunityId", "CreatedDate", "StageName", "Amount", "CloseDate", "IsDeleted"],
    )
    _write_csv(
        folder / "OpportunityFieldHistory.csv",
        ofh,
        ["OpportunityId", "CreatedDate", "Field", "OldValue", "NewValue", "DataType"],
    )
    _write_csv(
        folder / "OpportunityStage.csv",
        stage_rows,
        ["MasterLabel", "SortOrder", "IsActive", "IsClosed", "IsWon"],
    )
    _write_csv(
        folder / "Task.csv",
        tasks,
        [
            "WhatId",
            "Type",
            "TaskSubtype",
            "CallType",
            "Status",
            "IsClosed",
            "CompletedDateTime",
            "CreatedDate",
        ],
    )
    _write_csv(folder / "Event.csv", events, ["WhatId", "StartDateTime", "CreatedDate", "IsAllDayEvent"])
    _write_csv(
        folder / "RecordType.csv", [{"Id": i, "Name": n} for n, i in record_types.items()], ["Id", "Name"]
    )
    _write_csv(folder / "User.csv", [{"Id": i, "Name": n} for n, i in owners.items()], ["Id", "Name"])
    return {widen_id(salesforce_deal_id(d)): d for d in history.deals["deal_id"]}


# --------------------------------------------------------------------------------------------------
# HubSpot
# --------------------------------------------------------------------------------------------------


def write_hubspot_export(history: DealHistory, folder: Path) -> dict[str, str]:
    """API-response JSON files of the history; returns {} (deal ids are kept as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    owners = _owner_ids(history, "", 0)
    pipelines, stage_ids = [], {}
    for p, name in enumerate(sorted(history.pipelines), start=1):
        spec = history.pipelines[name]
        stages = []
        for s, stage_name in enumerate(spec.stages + spec.won + spec.lost):
            stage_id = str(1000 * p + s)
            stage_ids[(name, stage_name)] = stage_id
            closed = stage_name in spec.won or stage_name in spec.lost
            probability = "1.0" if stage_name in spec.won else "0.0" if closed else "0.5"
            stages.append(
                {
                    "id": stage_id,
                    "label": stage_name,
                    "displayOrder": s,
                    "archived": False,
                    "metadata": {"isClosed": str(closed).lower(), "probability": probability},
                }
            )
        pipelines.append(
            {"id": f"p{p}", "label": name, "displayOrder": p, "archived": False, "stages": stages}
        )
    pipeline_ids = {p["label"]: p["id"] for p in pipelines}
    deals, engagements = [], {k: [] for k in ("calls", "emails", "meetings", "notes", "tasks")}
    for _, deal in history.deals.iterrows():
        created = _iso(deal["created_at"])
        versions: dict[str, list[dict[str, Any]]] = {
            "amount": [{"value": _amount(deal["amount"]), "timestamp": created}],
            "closedate": [
                {"value": _date(deal["expected_close_date"]) + "T00:00:00.000Z", "timestamp": created}
            ],
            "hubspot_owner_id": [{"value": owners[deal["owner"]], "timestamp": created}],
            "pipeline": [{"value": pipeline_ids[deal["pipeline"]], "timestamp": created}],
            "hubspot_team_id": [{"value": deal["team"], "timestamp": created}],
            "dealstage": [],
        }
        current = _current(history, deal)
        for t, kind, value in _timeline(history, deal["deal_id"]):
            if kind == "stage":
                versions["dealstage"].append(
                    {"value": stage_ids[(deal["pipeline"], value)], "timestamp": _iso(t)}
                )
            elif kind == "amount":
                versions["amount"].append({"value": value, "timestamp": _iso(t)})
            elif kind == "expected_close_date":
                versions["closedate"].append({"value": _date(value) + "T00:00:00.000Z", "timestamp": _iso(t)})
            else:
                versions["hubspot_owner_id"].append({"value": owners[value], "timestamp": _iso(t)})
        deals.append(
            {
                "id": deal["deal_id"],
                "archived": False,
                "properties": {
                    "createdate": created,
                    "dealstage": stage_ids[(deal["pipeline"], current["stage"])],
                    "pipeline": pipeline_ids[deal["pipeline"]],
                    "amount": current["amount"],
                    "closedate": current["expected_close_date"] + "T00:00:00.000Z",
                    "hubspot_owner_id": owners[current["owner"]],
                    "hubspot_team_id": deal["team"],
                    "deal_currency_code": deal["currency"],
                },
                # The API lists versions newest first.
                "propertiesWithHistory": {k: v[::-1] for k, v in versions.items()},
                "associations": {
                    "companies": {"results": [{"id": deal["account"], "type": "deal_to_company"}]}
                },
            }
        )
    for i, act in enumerate(history.activities.itertuples(index=False), start=1):
        link = {"deals": {"results": [{"id": act.deal_id, "type": "engagement_to_deal"}]}}
        props: dict[str, Any] = {"hs_timestamp": _iso(act.occurred_at)}
        kind = str(act.type)
        if kind == "call":
            props["hs_call_direction"] = {"inbound": "INBOUND", "outbound": "OUTBOUND"}.get(act.direction, "")
        if kind == "email":
            props["hs_email_direction"] = {"inbound": "INCOMING_EMAIL", "outbound": "EMAIL"}.get(
                act.direction, ""
            )
        if kind in ("task", "other"):
            kind = "task"
            props["hs_task_status"] = "COMPLETED"
        name = {"call": "calls", "email": "emails", "meeting": "meetings", "note": "notes", "task": "tasks"}[
            kind
        ]
        engagements[name].append(
            {"id": str(i), "createdAt": _iso(act.occurred_at), "properties": props, "associations": link}
        )
    _write_json(folder / "deals.json", deals)
    _write_json(folder / "pipelines.json", pipelines)
    for name, records in engagements.items():
        _write_json(folder / f"{name}.json", records)
    _write_json(
        folder / "owners.json", [{"id": i, "firstName": n, "lastName": ""} for n, i in owners.items()]
    )
    return {}


# --------------------------------------------------------------------------------------------------
# Pipedrive
# --------------------------------------------------------------------------------------------------


def _v1_time(t: pd.Timestamp) -> str:
    return t.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")


def write_pipedrive_export(history: DealHistory, folder: Path) -> dict[str, str]:
    """API v1 JSON files of the history; returns the original deal id of each Pipedrive deal id."""
    folder.mkdir(parents=True, exist_ok=True)
    owners = {name: int(i) for name, i in _owner_ids(history, "").items()}
    stages, pipelines, stage_ids = [], [], {}
    for p, name in enumerate(sorted(history.pipelines), start=1):
        pipelines.append({"id": p, "name": name, "order_nr": p})
        for s, stage_name in enumerate(history.pipelines[name].stages, start=1):
            stage_ids[(name, stage_name)] = 100 * p + s
            stages.append(
                {"id": 100 * p + s, "name": stage_name, "pipeline_id": p, "order_nr": s, "active_flag": True}
            )
    pipeline_ids = {p["name"]: p["id"] for p in pipelines}
    deals, flow, activities, notes = [], [], [], []
    ids: dict[str, str] = {}
    for n, (_, deal) in enumerate(history.deals.iterrows(), start=1):
        ids[str(n)] = deal["deal_id"]
        spec = history.pipelines[deal["pipeline"]]
        state = _state(deal)
        open_stage, status, closed_at = None, "open", None

        def change(key: str, old: Any, new: Any, t: pd.Timestamp, n: int = n) -> None:
            flow.append(
                {
                    "object": "dealChange",
                    "timestamp": _v1_time(t),
                    "data": {
                        "item_id": n,
                        "field_key": key,
                        "old_value": old,
                        "new_value": new,
                        "log_time": _v1_time(t),
                    },
                }
            )

        for t, kind, value in _timeline(history, deal["deal_id"]):
            if kind == "stage":
                closing = "won" if value in spec.won else "lost" if value in spec.lost else None
                if closing:
                    change("status", status, closing, t)
                    status, closed_at = closing, t
                    continue
                if status != "open":
                    change("status", status, "open", t)
                    status = "open"
                if open_stage is not None and value != open_stage:
                    change(
                        "stage_id",
                        str(stage_ids[(deal["pipeline"], open_stage)]),
                        str(stage_ids[(deal["pipeline"], value)]),
                        t,
                    )
                open_stage = value if open_stage is None or value != open_stage else open_stage
            elif kind == "owner":
                change("user_id", str(owners[state["owner"]]), str(owners[value]), t)
                state["owner"] = value
            else:
                key = "value" if kind == "amount" else "expected_close_date"
                new = _value(kind, value)
                change(key, state[kind], new, t)
                state[kind] = new
        first_stage = history.stage_changes.loc[
            history.stage_changes["deal_id"] == deal["deal_id"], "stage"
        ].iloc[0]
        if open_stage is None:
            open_stage = first_stage
        deals.append(
            {
                "id": n,
                "title": deal["deal_id"],
                "value": float(state["amount"]),
                "currency": deal["currency"],
                "add_time": _v1_time(deal["created_at"]),
                "user_id": {"id": owners[state["owner"]], "name": state["owner"]},
                "org_id": {"value": deal["account"], "name": deal["account"]},
                "pipeline_id": pipeline_ids[deal["pipeline"]],
                "stage_id": stage_ids[(deal["pipeline"], open_stage)],
                "status": status,
                "won_time": _v1_time(closed_at) if status == "won" and closed_at is not None else None,
                "lost_time": _v1_time(closed_at) if status == "lost" and closed_at is not None else None,
                "expected_close_date": state["expected_close_date"] or None,
                "deleted": False,
            }
        )
        for act in history.activities[history.activities["deal_id"] == deal["deal_id"]].itertuples(
            index=False
        ):
            at = _v1_time(act.occurred_at)
            if act.type == "email":
                sent = {"outbound": 1, "inbound": 0}.get(act.direction)
                flow.append(
                    {
                        "object": "mailMessage",
                        "timestamp": at,
                        "data": {"deal_id": n, "sent_flag": sent, "message_time": at},
                    }
                )
            elif act.type == "note":
                notes.append({"deal_id": n, "add_time": at, "active_flag": True})
            else:
                activities.append(
                    {
                        "type": str(act.type),
                        "deal_id": n,
                        "done": True,
                        "marked_as_done_time": at,
                        "active_flag": True,
                    }
                )
    for name, records in (
        ("deals", deals),
        ("stages", stages),
        ("pipelines", pipelines),
        ("flow", flow),
        ("activities", activities),
        ("notes", notes),
        ("users", [{"id": i, "name": name} for name, i in owners.items()]),
    ):
        (folder / f"{name}.json").write_text(
            json.dumps({"success": True, "data": records}, indent=1), encoding="utf-8"
        )
    return ids


# --------------------------------------------------------------------------------------------------
# Odoo
# --------------------------------------------------------------------------------------------------

_ODOO_FIELDS = {"stage_id": 901, "user_id": 902, "expected_revenue": 903, "active": 904}


def _odoo_time(t: pd.Timestamp) -> str:
    return t.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")


def write_odoo_export(history: DealHistory, folder: Path) -> dict[str, str]:
    """search_read JSON files of the history; returns the original deal id of each crm.lead id."""
    folder.mkdir(parents=True, exist_ok=True)
    owners = {name: int(i) for name, i in _owner_ids(history, "").items()}
    teams, stages, stage_ids = [], [], {}
    for p, name in enumerate(sorted(history.pipelines), start=1):
        teams.append({"id": p, "name": name})
        spec = history.pipelines[name]
        for s, stage_name in enumerate(spec.stages + spec.won, start=1):
            stage_ids[(name, stage_name)] = 100 * p + s
            stages.append(
                {
                    "id": 100 * p + s,
                    "name": stage_name,
                    "sequence": s,
                    "is_won": stage_name in spec.won,
                    "team_id": [p, name],
                }
            )
    team_ids = {t["name"]: t["id"] for t in teams}
    leads, messages, values = [], [], []
    ids: dict[str, str] = {}

    def message(lead: int, t: pd.Timestamp, **extra: Any) -> int:
        messages.append(
            {
                "id": len(messages) + 1,
                "model": "crm.lead",
                "res_id": lead,
                "date": _odoo_time(t),
                "message_type": "notification",
                "subtype_id": False,
                "mail_activity_type_id": False,
                **extra,
            }
        )
        return len(messages)

    def track(message_id: int, field: str, **extra: Any) -> None:
        values.append(
            {
                "id": len(values) + 1,
                "field_id": [_ODOO_FIELDS[field], field],
                "mail_message_id": [message_id, ""],
                **extra,
            }
        )

    for n, (_, deal) in enumerate(history.deals.iterrows(), start=1):
        ids[str(n)] = deal["deal_id"]
        spec = history.pipelines[deal["pipeline"]]
        state = _state(deal)
        stage, active, closed_at = None, True, None
        for t, kind, value in _timeline(history, deal["deal_id"]):
            if kind == "stage":
                if value in spec.lost:
                    track(message(n, t), "active", old_value_integer=1, new_value_integer=0)
                    active, closed_at = False, t
                    continue
                if not active:
                    track(message(n, t), "active", old_value_integer=0, new_value_integer=1)
                    active = True
                if stage is not None and value != stage:
                    track(
                        message(n, t),
                        "stage_id",
                        old_value_integer=stage_ids[(deal["pipeline"], stage)],
                        new_value_integer=stage_ids[(deal["pipeline"], value)],
                        old_value_char=stage,
                        new_value_char=value,
                    )
                if value in spec.won:
                    closed_at = t
                stage = value
            elif kind == "owner":
                track(
                    message(n, t),
                    "user_id",
                    old_value_integer=owners[state["owner"]],
                    new_value_integer=owners[value],
                    old_value_char=state["owner"],
                    new_value_char=value,
                )
                state["owner"] = value
            elif kind == "amount":
                track(
                    message(n, t),
                    "expected_revenue",
                    old_value_float=float(state["amount"]),
                    new_value_float=float(value),
                )
                state["amount"] = value
        won = stage in spec.won
        leads.append(
            {
                "id": n,
                "name": deal["deal_id"],
                "type": "opportunity",
                "create_date": _odoo_time(deal["created_at"]),
                "team_id": [team_ids[deal["pipeline"]], deal["pipeline"]],
                "user_id": [owners[state["owner"]], state["owner"]],
                "stage_id": [stage_ids[(deal["pipeline"], stage)], stage],
                # Test shortcut: the account text stands in for a partner id.
                "partner_id": [deal["account"], deal["account"]],
                "expected_revenue": float(state["amount"]),
                "company_currency": [1, deal["currency"]],
                "date_deadline": False,
                "active": active,
                "probability": 100.0 if won else 0.0 if not active else 50.0,
                "date_closed": _odoo_time(closed_at) if closed_at is not None else False,
            }
        )
        for act in history.activities[history.activities["deal_id"] == deal["deal_id"]].itertuples(
            index=False
        ):
            if act.type == "email":
                kind = "email" if act.direction == "inbound" else "email_outgoing"
                message(n, act.occurred_at, message_type=kind, subtype_id=[1, "Discussions"])
            elif act.type == "note":
                message(n, act.occurred_at, message_type="comment", subtype_id=[2, "Note"])
            else:
                name = {"call": "Call", "meeting": "Meeting", "task": "To-Do", "other": "Upload Document"}[
                    act.type
                ]
                message(n, act.occurred_at, mail_activity_type_id=[1, name])
    files = {
        "crm.lead": leads,
        "crm.stage": stages,
        "crm.team": teams,
        "mail.message": messages,
        "mail.tracking.value": values,
        "ir.model.fields": [{"id": i, "name": f, "model": "crm.lead"} for f, i in _ODOO_FIELDS.items()],
    }
    for name, records in files.items():
        (folder / f"{name}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return ids


EXPORTERS = {
    "salesforce": write_salesforce_export,
    "hubspot": write_hubspot_export,
    "pipedrive": write_pipedrive_export,
    "odoo": write_odoo_export,
}


# --------------------------------------------------------------------------------------------------
# What a round trip should give back
# --------------------------------------------------------------------------------------------------


def _drop_noop_changes(history: DealHistory) -> pd.DataFrame:
    """Field changes that change something (a CRM records no change to the value a field already has)."""
    fc = history.field_changes.sort_values(["deal_id", "field", "changed_at"], kind="stable")
    deals = history.deals.set_index("deal_id")
    initial = {
        "amount": deals["amount"].map(_amount),
        "expected_close_date": deals["expected_close_date"].map(
            lambda t: None if pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        ),
        "owner": deals["owner"],
    }
    keep = []
    prev: dict[tuple[str, str], Any] = {}
    for row in fc.itertuples():
        key = (row.deal_id, row.field)
        before = prev.get(key, initial[row.field].get(row.deal_id))
        value = _amount(float(row.value)) if row.field == "amount" else row.value
        keep.append(value != before)
        prev[key] = value
    return fc[keep]


def expected_after_round_trip(history: DealHistory, crm: str) -> DealHistory:
    """The history as it comes back from `crm`: what the CRM's export cannot hold removed the same way."""
    deals = history.deals[list(DEAL_COLUMNS)].copy()  # custom attributes are not exported
    activities = history.activities.drop(columns=["event_id"]).copy()
    stages = history.stage_changes.drop(columns=["event_id"]).copy()
    fields = _drop_noop_changes(history).drop(columns=["event_id"])
    # No CRM export carries dealrisk's stale_after_days: thresholds are learned after an import.
    specs: dict[str, Any] = {n: {**s.to_dict(), "stale_after_days": {}} for n, s in history.pipelines.items()}
    if crm == "salesforce":
        deals["team"] = pd.NA  # no team on an opportunity
        activities.loc[activities["type"] != "call", "direction"] = pd.NA  # CallType only
        # One global stage list: a record type's stages are those its opportunities used.
        used = (
            stages.merge(deals[["deal_id", "pipeline"]], on="deal_id").groupby("pipeline")["stage"].agg(set)
        )
        for name, spec in specs.items():
            for key in ("stages", "won", "lost"):
                spec[key] = [s for s in spec[key] if s in used.get(name, set())]
    if crm == "hubspot":
        activities.loc[activities["type"] == "other", "type"] = "task"
        activities.loc[activities["type"] == "meeting", "direction"] = pd.NA
    if crm in ("pipedrive", "odoo"):  # only mails carry a direction (sent flag / message type)
        activities.loc[activities["type"] != "email", "direction"] = pd.NA
    if crm == "odoo":
        activities.loc[activities["type"] == "other", "type"] = (
            "task"  # activity types other than call/meeting
        )
        deals["expected_close_date"] = pd.NaT  # date_deadline is not tracked
        fields = fields[fields["field"] != "expected_close_date"]
    if crm in ("pipedrive", "odoo"):
        deals["team"] = pd.NA
        won = {(n, s) for n, spec in history.pipelines.items() for s in spec.won}
        lost = {(n, s) for n, spec in history.pipelines.items() for s in spec.lost}
        pipeline_of = deals.set_index("deal_id")["pipeline"]
        keys = list(zip(stages["deal_id"].map(pipeline_of), stages["stage"], strict=True))
        if crm == "pipedrive":
            stages["stage"] = [
                SYNTHETIC_WON if k in won else SYNTHETIC_LOST if k in lost else k[1] for k in keys
            ]
            for spec in specs.values():
                spec["won"], spec["lost"] = [SYNTHETIC_WON], [SYNTHETIC_LOST]
        else:
            stages["stage"] = [SYNTHETIC_LOST if k in lost else k[1] for k in keys]
            for spec in specs.values():
                spec["lost"] = [SYNTHETIC_LOST]
        stages = stages[stages["stage"] != stages.groupby("deal_id")["stage"].shift(1)]
    return DealHistory.from_frames(
        deals, stages, activities, fields, pipelines=specs, source=f"expected {crm}"
    )
