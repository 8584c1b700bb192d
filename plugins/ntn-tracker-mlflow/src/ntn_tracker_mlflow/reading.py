"""Reading MLflow runs back for `ntn-trackers summary/compare/plot --from mlflow:TRACKING_URI`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ntn.tracking import figure_name

from ntn_tracker_mlflow.tracker import KEPT

STATUS = {
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "interrupted",
}


def _artifact(client, run_id: str, name: str, directory: str) -> dict[str, Any] | None:
    try:
        return json.loads(Path(client.download_artifacts(run_id, f"ntn/{name}.json", directory)).read_text())
    except Exception:  # an MLflow run that ntn did not write, or one still being written
        return None


def _unclamped(value: float) -> float:
    """MLflow stores ±Inf as ±the largest float; a metric of exactly that value is read back as ±Inf."""
    return value if abs(value) != sys.float_info.max else float("inf") if value > 0 else float("-inf")


def _value(text: str) -> Any:
    """A summary tag's value: JSON (a number, true/false), else the plain text it holds."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kept_figures(metrics: dict[str, float]) -> dict[str, float]:
    """The summary's figures from the metrics `kept/<name>`, named back as recorded: `kept/train_r2` is `r2`
    where `kept/val_r2` or `kept/test_r2` is there too (`ntn.tracking.figure_name`, inverted)."""
    kept = {k.removeprefix(KEPT): v for k, v in metrics.items() if k.startswith(KEPT)}
    unsplit = {k: k.removeprefix("train_") for k in kept if k.startswith("train_")}
    return {
        unsplit[k] if k in unsplit and figure_name(unsplit[k], kept) == k else k: _unclamped(v) for k, v in kept.items()
    }


def to_record(client, run, directory: str) -> dict[str, Any]:
    """An MLflow run in the shape of a run file (ntn.tracking.readers)."""
    run_id = run.info.run_id
    log: dict[int, dict[str, Any]] = {}
    for name in run.data.metrics:
        if not name.startswith((KEPT, "summary/")):  # summary/: runs recorded before the figures were kept/
            for point in client.get_metric_history(run_id, name):
                log.setdefault(point.step, {"step": point.step})[name] = _unclamped(point.value)
    initial = {k.removeprefix("initial."): float(v) for k, v in run.data.params.items() if k.startswith("initial.")}
    if initial:  # the initial evaluation, kept as params
        log[-1] = {"step": -1, **initial}
    summary = _artifact(client, run_id, "summary", directory)
    if summary is None:  # not finalized: what the metrics and tags say so far
        summary = {k.removeprefix("summary/"): v for k, v in run.data.metrics.items() if k.startswith("summary/")}
        summary |= _kept_figures(run.data.metrics)
        summary |= {k.removeprefix("summary/"): _value(v) for k, v in run.data.tags.items() if k.startswith("summary/")}
    status = run.data.tags.get("ntn.status") or STATUS.get(run.info.status, "running")  # pruned: KILLED + tag
    summary["status"] = summary.get("status", status) if status != "running" else "running"
    if status == "running":
        summary["updated"] = (run.info.start_time or 0) / 1000
    provenance = _artifact(client, run_id, "provenance", directory)
    return {
        "experiment_name": run.info.run_name,
        "config": _artifact(client, run_id, "config", directory) or {},
        **({"provenance": provenance} if provenance is not None else {}),
        "hparams": _artifact(client, run_id, "hparams", directory)
        or {k: v for k, v in run.data.params.items() if not k.startswith("initial.")},
        "metrics_log": [log[step] for step in sorted(log)],
        "summary": summary,
        **({"started": run.info.start_time / 1000} if run.info.start_time else {}),
        "mlflow": {"run_id": run_id, "experiment_id": run.info.experiment_id},
    }


def read_runs(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The `mlflow` reader: every active run of every experiment at the tracking URI `source`."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file
    from ntn_tracker_mlflow.tracker import uri_from_env

    client = MlflowClient(tracking_uri=source or uri_from_env())  # "": as the tracker, MLFLOW_TRACKING_URI
    try:
        experiments = client.search_experiments()
    except Exception as err:
        return [], [f"{source}: cannot list MLflow experiments ({type(err).__name__}: {str(err).splitlines()[0]})"]
    records, problems = [], []
    with tempfile.TemporaryDirectory() as directory:
        runs, token = [], None
        while True:
            page = client.search_runs([e.experiment_id for e in experiments], max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        for run in runs:
            try:
                records.append(to_record(client, run, directory))
            except Exception as err:  # a damaged run must not hide the others
                problems.append(f"{source} run {run.info.run_id}: {type(err).__name__}: {err}")
    return records, problems
