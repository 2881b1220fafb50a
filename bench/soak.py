"""Soak: 32 concurrent clients for 60 s of scoring, event writes and at-risk lists against a real uvicorn
process, with a promotion and reload in the middle. Writes bench/results/soak.json.

Passes (exit 0) only with zero failed requests and every scored response naming exactly one of the two
versions, and none naming the old version once the reload was acknowledged.

    python bench/soak.py [--clients 32] [--seconds 60] [--deals 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, start_server, write_result  # noqa: E402


def prepare(home: Path, n_deals: int) -> dict[str, Any]:
    """A home with a store, two registered versions (1 champion) and keys."""
    from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
    from serving.store import Store
    from training.simulate import simulate_history
    from training.train import TrainConfig, train

    history = simulate_history(n_deals=n_deals, seed=5)
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    store = Store(f"sqlite:///{home / 'dealrisk.db'}")
    store.create_schema()
    store.import_history(history)
    first = train(history, TrainConfig(seed=0, lightgbm_params={"n_estimators": 25}), tracking)
    second = train(history, TrainConfig(seed=1, lightgbm_params={"n_estimators": 40}), tracking)
    admin, _ = store.create_api_key("admin", ["*"], name="soak-admin")
    store.close()
    from models.scoring import open_deal_points

    open_ids = list(open_deal_points(history, history.end_time)["deal_id"].astype(str))
    return {
        "history": history,
        "tracking": tracking,
        "versions": [first.model_version, second.model_version],
        "admin": admin,
        "open_ids": open_ids,
        "registered": REGISTERED_MODEL,
        "alias": CHAMPION_ALIAS,
    }


def inline_deal(history: Any, deal_id: str) -> dict[str, Any]:
    import pandas as pd

    sub = history.subset([deal_id])
    d = sub.deals.iloc[0]

    def iso(v: Any) -> str | None:
        return None if pd.isna(v) else pd.Timestamp(v).isoformat()

    return {
        "deal_id": deal_id,
        "pipeline": str(d["pipeline"]),
        "owner": str(d["owner"]),
        "amount": float(d["amount"]),
        "created_at": iso(d["created_at"]),
        "stage_changes": [
            {"stage": str(r.stage), "changed_at": iso(r.changed_at)} for r in sub.stage_changes.itertuples()
        ],
        "activities": [
            {"type": str(r.type), "occurred_at": iso(r.occurred_at)} for r in sub.activities.itertuples()
        ],
    }


async def client_loop(
    n: int, http: httpx.AsyncClient, ctx: dict[str, Any], deadline: float, log: list[dict[str, Any]]
) -> None:
    rng = random.Random(n)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        kind = rng.choice(["score", "score", "events", "at_risk"])
        started = time.monotonic()
        version: str | None = None
        try:
            if kind == "score":
                body = {"as_of": ctx["as_of"], "deals": [ctx["inline"][rng.randrange(len(ctx["inline"]))]]}
                r = await http.post("/v1/score", json=body)
            elif kind == "events":
                event = {
                    "deal_id": rng.choice(ctx["open_ids"]),
                    "type": "email",
                    "direction": "inbound",
                    "occurred_at": ctx["as_of"],
                    "event_id": f"soak-{n}-{i}",
                }
                r = await http.post("/v1/events", json={"activities": [event]})
            else:
                r = await http.get(
                    f"/v1/pipelines/{rng.choice(ctx['pipelines'])}/at-risk", params={"limit": 20}
                )
            ok = r.status_code == 200
            if ok and kind != "events":
                version = r.json()["model_version"]
            status = r.status_code
        except httpx.HTTPError as exc:
            ok, status = False, type(exc).__name__
        log.append(
            {
                "kind": kind,
                "ok": ok,
                "status": status,
                "version": version,
                "started": started,
                "seconds": time.monotonic() - started,
            }
        )


async def run_load(url: str, ctx: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {ctx['admin']}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        deadline = time.monotonic() + seconds
        loops = [asyncio.create_task(client_loop(n, http, ctx, deadline, log)) for n in range(clients)]
        await asyncio.sleep(seconds / 2)
        from mlflow import MlflowClient

        # The promotion: move the alias, then tell the service (what `dealrisk promote` + reload do).
        await asyncio.to_thread(
            MlflowClient(tracking_uri=ctx["tracking"]).set_registered_model_alias,
            ctx["registered"],
            ctx["alias"],
            ctx["versions"][1],
        )
        reload_started = time.monotonic()
        reload = await http.post("/v1/model/reload")
        reload_done = time.monotonic()
        await asyncio.gather(*loops)
    return {
        "log": log,
        "reload_status": reload.status_code,
        "reload_version": reload.json().get("model_version"),
        "reload_started": reload_started,
        "reload_done": reload_done,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--deals", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dealrisk-soak-") as tmp:
        home = Path(tmp)
        os.chdir(home)  # MLflow's run files stay in the temporary home
        ctx = prepare(home, args.deals)
        history = ctx["history"]
        ctx["as_of"] = history.end_time.isoformat()
        ctx["inline"] = [inline_deal(history, d) for d in ctx["open_ids"][:50]]
        ctx["pipelines"] = sorted(history.pipelines)
        port = free_port()
        env = {
            "DEALRISK_HOME": str(home),
            "MLFLOW_TRACKING_URI": ctx["tracking"],
            "DEALRISK_RELOAD_INTERVAL_S": "0",
        }
        server = start_server(env, home, port, ready_path="/readyz")
        try:
            url = f"http://127.0.0.1:{port}"
            outcome = asyncio.run(run_load(url, ctx, args.clients, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    log = outcome["log"]
    failures = [e for e in log if not e["ok"]]
    v_old, v_new = ctx["versions"]
    stale_after_reload = [e for e in log if e["version"] == v_old and e["started"] > outcome["reload_done"]]
    unknown = [e for e in log if e["version"] not in (None, v_old, v_new)]
    per_kind: dict[str, Any] = {}
    for kind in ("score", "events", "at_risk"):
        seconds = np.array([e["seconds"] for e in log if e["kind"] == kind])
        per_kind[kind] = {
            "requests": int(seconds.size),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 1) if seconds.size else None,
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 1) if seconds.size else None,
        }
    all_seconds = np.array([e["seconds"] for e in log])
    result = {
        "command": f"python bench/soak.py --clients {args.clients} --seconds {args.seconds} "
        f"--deals {args.deals}",
        "clients": args.clients,
        "seconds": args.seconds,
        "requests": len(log),
        "failed": len(failures),
        "failure_examples": [{k: e[k] for k in ("kind", "status")} for e in failures[:10]],
        "p50_ms": round(float(np.percentile(all_seconds, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(all_seconds, 99)) * 1000, 1),
        "by_kind": per_kind,
        "versions": {
            "before": v_old,
            "after": v_new,
            "reload_status": outcome["reload_status"],
            "reload_answered": outcome["reload_version"],
            "responses_per_version": {v: sum(e["version"] == v for e in log) for v in (v_old, v_new)},
            "old_version_after_reload": len(stale_after_reload),
            "unknown_version": len(unknown),
        },
    }
    write_result("soak", result)
    passed = not failures and not stale_after_reload and not unknown and outcome["reload_status"] == 200
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
