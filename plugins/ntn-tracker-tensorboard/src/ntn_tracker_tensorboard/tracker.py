"""TensorBoardTracker: one TensorBoard run per tracked run, at <TENSORBOARD_DIR>/<group>/<run name>/.

- group: the sweep's name in a sweep (config["sweep"]), else the experiment (`{experiment}_seed{seed}` are
  its runs), so that TensorBoard's run selector lists a study's runs together;
- SCALARS: the learning curves first, each metric as `curves/<name>` from epoch 0 (the initial evaluation,
  step -1, is kept in the run's record and in the TEXT tab: as a scalar it would squash every curve),
  then the summary's figures, taken at the epoch the run kept, as `kept/<split>_<name>` (`kept/val_r2`,
  `kept/test_r2`, `kept/train_loss`: `ntn.tracking.figure_name`), one point each, at that epoch's step;
- HPARAMS: one row per run, its hparams, its data settings (`dataset`, `n_samples`, `data_seed`,
  `preprocessing`) and its status against its kept figures (`kept/<name>`); the settings a sweep varies
  (config["swept"]), `seed` and `status` are marked as differing between runs, which TensorBoard lists
  first and shows by default (it shows the first five), the settings that never change after them;
  TensorBoard's status filter (SUCCESS, FAILURE) leaves failed runs out of the table and the plots;
- the run's status and end time in the hparams session (SUCCESS, FAILURE; UNKNOWN for interrupted and
  for pruned, stopped early by a search) and as
  text; attached files in the run's folder under `artifacts/` (`git.diff` and `packages.txt`, alike for
  every run of a checkout, as hard links to one copy per content in <TENSORBOARD_DIR>/.by-sha256/);
- provenance (the code, command, versions, machine and data that made the run) as the text `provenance`
  (TEXT tab) and in `ntn-run.json`;
- `ntn-run.json` in the run's folder: config, provenance, hparams, summary and status (what TensorBoard has no place
  for), rewritten whole at each hook, which `ntn-trackers --from tensorboard` reads with the event files.

A run whose config carries a `run_id` gets a folder of its own (`<run name>@<key>`): a re-run with the same
`run_id` replaces it, another launch of the same name never touches it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ntn.files import check_writable, file_stem, open_directory, store_once, write_atomic
from ntn.tracking import TrackerConfigError, figure_name, run_key, study_of
from ntn.tracking.provenance import DIFF_FILE, PACKAGES_FILE

DEFAULT_DIR = "tb_logs"
RECORD = "ntn-run.json"
STORE = ".by-sha256"  # in TENSORBOARD_DIR: the files stored once per content (no group starts with ".")
STORED_ONCE = frozenset({DIFF_FILE, PACKAGES_FILE})  # attached by every run of a process, alike
CURVES = "curves/"  # the tag prefix of the per-epoch metrics: TensorBoard shows its groups in name order
STATUS = {
    "finished": "STATUS_SUCCESS",
    "failed": "STATUS_FAILURE",
    "interrupted": "STATUS_UNKNOWN",
    "pruned": "STATUS_UNKNOWN",
}
KEPT = "kept/"  # the tag prefix of the summary's figures: at the epoch the run kept
DATA_SETTINGS = ("dataset", "n_samples", "data_seed", "preprocessing")  # config values a researcher filters on
NOT_FIGURES = ("seed", "best_epoch")  # numbers of the summary that are no figure
VARYING = ("seed", "status")  # HPARAMS columns that differ between runs besides a sweep's swept settings


def tensorboard_dir() -> Path:
    return Path(os.environ.get("TENSORBOARD_DIR") or DEFAULT_DIR)


def run_dir(root: Path, experiment_name: str, config: dict[str, Any]) -> Path:
    """Where a run's events and record go: <root>/<sweep or experiment>/<run name>[@<run_id key>]."""
    group = study_of({"experiment_name": experiment_name, "config": config})
    name = file_stem(experiment_name)
    if config.get("run_id"):
        name = f"{name}@{run_key(str(config['run_id']), 8)}"
    return root / file_stem(str(group)) / name


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hparams as TensorBoard's HPARAMS columns: `a.b` keys, values a number, a bool or a string."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, bool | str) or (_number(value) and math.isfinite(value)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


class TensorBoardTracker:
    """The `tensorboard` backend (see the module)."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the training process has torch imported already

        config = dict(config or {})
        self.root = tensorboard_dir()
        self.path = run_dir(self.root, experiment_name, config)
        try:
            if self.path.exists():  # an earlier attempt at this run (same run_id): replaced
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        except OSError as err:
            raise TrackerConfigError(f"TENSORBOARD_DIR: cannot make {str(self.path)!r} ({err.strerror})") from None
        self.record: dict[str, Any] = {
            "experiment_name": experiment_name,
            "config": config,
            "hparams": {},
            "initial": {},
            "summary": {"status": "running"},
        }
        self._save()
        self.writer = SummaryWriter(log_dir=str(self.path))

    def _save(self) -> None:
        write_atomic(self.path / RECORD, json.dumps(self.record, allow_nan=True, ensure_ascii=False))

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        self.record["provenance"] = provenance
        self._save()
        lines = [
            f"| {section}.{key} | `{value if isinstance(value, str) else json.dumps(value)}` |"
            for section, values in provenance.items()
            for key, value in values.items()
        ]
        self.writer.add_text("provenance", "\n".join(["| what | value |", "|---|---|", *lines]), 0)

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self.record["hparams"] = hparams
        self._save()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step < 0:  # the initial evaluation: in the record and the TEXT tab, not on the curves
            self.record["initial"] = metrics
            self._save()
            self.writer.add_text("initial evaluation", json.dumps(metrics, allow_nan=True), 0)
        else:
            for name, value in metrics.items():
                if _number(value):
                    self.writer.add_scalar(CURVES + name, value, step)
        self.writer.flush()  # a killed process keeps every epoch whose hook returned

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.record["summary"] = self.record["summary"] | summary
        self._save()

    def log_artifact(self, path: str, name: str) -> None:
        """Copy the file to the run's artifacts/; a provenance file as a hard link to its one stored copy."""
        with open(path, "rb") as source:
            content = source.read()
        with open_directory(self.path, "artifacts", create=True) as run_fd:
            if name not in STORED_ONCE:
                write_atomic(file_stem(name), content, run_fd)
                return
            with open_directory(self.root, STORE, create=True) as store_fd:
                store_once(content, store_fd, name, run_fd)

    def finalize(self, status: str = "finished", end_time: float | None = None) -> None:
        """The kept epoch's figures as `kept/<name>` scalars and the HPARAMS row with the status and end time."""
        summary = self.record["summary"] = self.record["summary"] | {"status": status}
        self._save()
        kept = {KEPT + figure_name(k, summary): v for k, v in summary.items() if _number(v) and k not in NOT_FIGURES}
        epoch = summary.get("best_epoch")
        for tag, value in kept.items():
            self.writer.add_scalar(tag, value, epoch if isinstance(epoch, int) and epoch >= 0 else 0)
        config = self.record["config"]
        data = {k: config[k] for k in DATA_SETTINGS if k in config}
        hparams = self.record["hparams"] | data | {"status": status}
        varying = [*(config.get("swept") or {}), *VARYING]
        for summary_proto in _hparams_session(hparams, kept, status, end_time, varying):
            self.writer.file_writer.add_summary(summary_proto)
        self.writer.add_text("status", status + (f": {summary['error']}" if summary.get("error") else ""), 0)
        self.writer.close()

    @classmethod
    def check_environment(cls, run_names: list[str]) -> None:
        """TENSORBOARD_DIR must be a directory this process can write in (or can be made).

        :raises TrackerConfigError: naming TENSORBOARD_DIR and why
        """
        root = tensorboard_dir()
        existing = next((p for p in [root, *root.parents] if p.exists()), Path("."))
        if not existing.is_dir():
            raise TrackerConfigError(f"TENSORBOARD_DIR={str(root)!r}: {str(existing)!r} is not a directory")
        try:
            check_writable(existing)
        except OSError as err:
            raise TrackerConfigError(
                f"TENSORBOARD_DIR={str(root)!r}: cannot write in {str(existing)!r} ({err})"
            ) from None

    @classmethod
    def where(cls) -> str:
        return f"tensorboard: {tensorboard_dir()} (tensorboard --logdir {tensorboard_dir()})"

    @classmethod
    def source(cls) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from."""
        return f"tensorboard:{tensorboard_dir()}"


def _hparams_session(
    hparams: dict[str, Any], metrics: dict[str, float], status: str, end_time: float | None, varying: list[str]
):
    """The hparams plugin's three summaries for one run: the experiment (its columns, those in `varying`
    marked as differing between runs), the session's start (hparams) and its end (status, end time)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    experiment, start, _ = hparams_summaries(_flat(hparams), metrics)
    columns = HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    for info in columns.experiment.hparam_infos:
        info.differs = info.name in varying  # TensorBoard shows first those that differ (else: by name)
    experiment.value[0].metadata.plugin_data.content = columns.SerializeToString()
    info = SessionEndInfo(status=Status.Value(STATUS.get(status, "STATUS_UNKNOWN")), end_time_secs=end_time or 0.0)
    content = HParamsPluginData(session_end_info=info, version=0).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
    end = Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
    return experiment, start, end
