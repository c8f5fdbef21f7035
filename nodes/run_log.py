"""The last run's curve per training node, for the chart to redraw after a page reload.

Kept in memory for the server's lifetime and served read-only by
``GET /lora_trainer/last_run/{node_id}``; ids are validated before lookup.
"""
from __future__ import annotations

import re
import threading
from typing import Any

NODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_POINTS = 2000  # the chart draws at most a few hundred pixels; longer runs are thinned

_lock = threading.Lock()
_runs: dict[str, dict[str, Any]] = {}


def _thin(values: list[float]) -> list[float]:
    if len(values) <= MAX_POINTS:
        return list(values)
    stride = len(values) / MAX_POINTS
    return [values[int(i * stride)] for i in range(MAX_POINTS)]


def start(node_id: str, total: int, loss: list[float] | None = None, resumed_from: int = 0, validation: list | None = None) -> None:
    with _lock:
        _runs[node_id] = {
            "node": node_id, "total": total, "step": resumed_from, "loss": list(loss or []), "status": "running",
            "resumed_from": resumed_from, "validation": [list(point) for point in validation or []],
        }


def record(node_id: str, step: int, loss: float, info: dict[str, Any]) -> None:
    with _lock:
        run = _runs.setdefault(node_id, {"node": node_id, "loss": [], "status": "running"})
        run["loss"].append(float(loss))
        run.update(info, step=step)


def record_validation(node_id: str, step: int, loss: float) -> None:
    """One point of the held-out loss curve (a repeated step replaces the old point)."""
    with _lock:
        run = _runs.setdefault(node_id, {"node": node_id, "loss": [], "status": "running"})
        points = [point for point in run.setdefault("validation", []) if point[0] != step]
        run["validation"] = sorted([*points, [int(step), float(loss)]])


def finish(node_id: str, status: str) -> None:
    with _lock:
        if node_id in _runs:
            _runs[node_id]["status"] = status


def get(node_id: str) -> dict[str, Any] | None:
    with _lock:
        run = _runs.get(node_id)
        if run is None:
            return None
        return {**run, "loss": _thin(run["loss"]), "points": len(run["loss"])}


def clear() -> None:
    with _lock:
        _runs.clear()


def handle_request(match_info: dict[str, str], query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) for the read-only route; never touches the file system."""
    del query
    node_id = match_info.get("node_id", "")
    if not NODE_ID.match(node_id):
        return 400, {"error": "invalid node id"}
    run = get(node_id)
    if run is None:
        return 404, {"error": "no run recorded for this node since the server started"}
    return 200, run
