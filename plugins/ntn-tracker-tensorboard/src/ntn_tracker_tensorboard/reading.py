"""The `tensorboard` reader for `ntn-trackers summary/compare/plot --from tensorboard[:DIR]`: every run
folder under DIR (default $TENSORBOARD_DIR, else ./tb_logs), its curves read from the event files with
TensorBoard's own EventAccumulator, the rest from the run's `ntn-run.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ntn_tracker_tensorboard.tracker import CURVES, RECORD, tensorboard_dir


def _first_event_time(events) -> float | None:
    """When the run's event file began (the run's start), None for one without events."""
    try:
        return events.FirstEventTimestamp()
    except ValueError:
        return None


def read_runs(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    root = Path(source) if source else tensorboard_dir()
    if not root.is_dir():
        return [], [f"{root}: no such directory"]
    records, problems = [], []
    for path in sorted(root.rglob(RECORD)):
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
            events = EventAccumulator(str(path.parent), size_guidance={SCALARS: 0})  # 0: every point
            events.Reload()
        except (OSError, ValueError) as err:
            problems.append(f"{path}: cannot be read ({type(err).__name__}: {err})")
            continue
        by_step: dict[int, dict[str, float]] = {}
        for tag in events.Tags()[SCALARS]:
            if tag.startswith(CURVES):
                for event in events.Scalars(tag):
                    by_step.setdefault(event.step, {})[tag.removeprefix(CURVES)] = event.value
        initial = [{"step": -1, **kept["initial"]}] if kept.get("initial") else []
        records.append(
            {
                "experiment_name": kept["experiment_name"],
                "config": kept["config"],
                **({"provenance": kept["provenance"]} if "provenance" in kept else {}),
                "hparams": kept["hparams"],
                "metrics_log": initial + [{"step": step, **by_step[step]} for step in sorted(by_step)],
                "summary": kept["summary"],
                **({"started": started} if (started := _first_event_time(events)) is not None else {}),
            }
        )
    return records, problems
