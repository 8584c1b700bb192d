"""The `wandb` reader for `ntn-trackers summary/compare/plot --from wandb[:DIR]`: every run under
DIR/wandb/ (default $WANDB_DIR, else the working directory), offline or online, read from the run's
transaction log `run-<id>.wandb`, the file `wandb sync` sends.

wandb 0.31 has no Python reader of that log any more (its `sdk.internal.datastore` went with the move
to the Go core), so its framing is read here: LevelDB's log format (32 KiB blocks of records, each with
a CRC-32, a length and a kind: whole, first, middle or last piece) after W&B's 7-byte header; each
record is W&B's own protobuf `wandb_internal_pb2.Record`, parsed by W&B's generated code.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ntn_tracker_wandb.tracker import EXIT_CODES, INITIAL, NTN_KEY, wandb_dir

MAGIC = b":W&B"
FILE_HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
BLOCK = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # CRC-32 of kind and data, length, kind
FULL, FIRST, LAST = 1, 2, 4
# exit code 0 is "finished", and a pruned run's tag says it was pruned
STATUS_OF_EXIT = {code: status for status, code in EXIT_CODES.items() if status != "pruned"}


def records(path: Path) -> Iterator[Any]:
    """The protobuf records of a `.wandb` log, in order; a log still being written ends at its last whole record.

    :raises ValueError: not a W&B log, or a damaged record
    """
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a W&B transaction log")
    position, pieces = FILE_HEADER, b""
    while True:
        if BLOCK - position % BLOCK < RECORD_HEADER.size:  # a block's tail too short for a header: padding
            position += BLOCK - position % BLOCK
        if position + RECORD_HEADER.size > len(data):
            return
        checksum, length, kind = RECORD_HEADER.unpack_from(data, position)
        start = position + RECORD_HEADER.size
        piece = data[start : start + length]
        if kind == 0 or len(piece) < length:  # the end of what was written so far
            return
        if zlib.crc32(piece, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(f"damaged record at byte {position}")
        position = start + length
        pieces = piece if kind in (FULL, FIRST) else pieces + piece
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pieces)
            yield record


def _apply(target: dict[str, Any], items: Any) -> None:
    """W&B's config and summary updates (a key or a nested key, a JSON value) applied to `target`."""
    for item in items:
        *outer, last = list(item.nested_key) or [item.key]
        for key in outer:
            target = target.setdefault(key, {})
        target[last] = json.loads(item.value_json)


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def to_record(path: Path) -> dict[str, Any]:
    """One W&B run's log in the shape of a run file (ntn.tracking.readers)."""
    run, config, summary, history, exit_code, started = None, {}, {}, [], None, 0.0
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            started = started or run.start_time.seconds + run.start_time.nanos / 1e9
            _apply(config, run.config.update)
        elif kind == "config":
            _apply(config, record.config.update)
        elif kind == "summary":
            _apply(summary, record.summary.update)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply(row, record.history.item)
            history.append(row)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    if run is None:
        raise ValueError("no run record")
    exact = json.loads(summary[NTN_KEY]) if isinstance(summary.get(NTN_KEY), str) else None
    initial = {k.removeprefix(INITIAL): v for k, v in summary.items() if k.startswith(INITIAL) and v is not None}
    initial = exact["initial"] if exact else initial
    log = {-1: {"step": -1, **initial}} if initial else {}
    for row in history:
        step = int(row["_step"])
        log.setdefault(step, {"step": step}).update({k: _float(v) for k, v in row.items() if not k.startswith("_")})
    tags = list(run.tags)
    ntn = config.pop(NTN_KEY, {})
    config.pop("_wandb", None)
    if exact:
        kept = exact["summary"]
    else:  # not finalized: what the summary says so far
        kept = {k: v for k, v in summary.items() if not k.startswith(("_", INITIAL))}
        if exit_code is None:
            kept |= {"status": "running", "updated": max([started, *(r.get("_timestamp", 0) for r in history)])}
        else:
            tagged = [s for s in ("interrupted", "pruned") if s in tags]
            kept["status"] = tagged[0] if tagged else STATUS_OF_EXIT.get(exit_code, "failed")
    return {
        "experiment_name": run.display_name,
        "config": ntn.get("config", {}),
        **({"provenance": ntn["provenance"]} if "provenance" in ntn else {}),
        "hparams": config,
        "metrics_log": [log[step] for step in sorted(log)],
        "summary": kept,
        **({"started": started} if started else {}),
        "wandb": {
            "run_id": run.run_id,
            "group": run.run_group,
            "tags": tags,
            "exit_code": exit_code,
            "path": str(path),
        },
    }


def read_runs(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The `wandb` reader: every run under `source`/wandb/ (default $WANDB_DIR, else the working directory);
    of the attempts at a run with a `run_id` in its config (a sweep's run trained again), the last started."""
    folder = (Path(source) if source else wandb_dir()) / "wandb"
    if not folder.is_dir():
        return [], [f"{folder}: no such directory"]
    found, problems = [], []
    for path in sorted([*folder.glob("offline-run-*/run-*.wandb"), *folder.glob("run-*/run-*.wandb")]):
        try:
            found.append(to_record(path))
        except Exception as err:  # a damaged run (OSError, ValueError, protobuf's DecodeError) must not hide the others
            problems.append(f"{path}: cannot be read ({type(err).__name__}: {err})")
    latest: dict[str, dict[str, Any]] = {}  # a run trained again with its run_id (a sweep resumed): the last attempt
    for record in sorted(found, key=lambda r: r.get("started", 0.0)):
        latest[str(record["config"].get("run_id") or record["wandb"]["path"])] = record
    return list(latest.values()), problems
