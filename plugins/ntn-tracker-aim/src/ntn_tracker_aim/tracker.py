"""AimTracker: one Aim Run per tracked run, in a local repository or on a remote `aim server`.

Hooks never touch aim or the network: each appends one record to the run's journal in the spool
(`journal.py`) and returns. A separate uploader process delivers journals to the repository
(`uploader.py`, `delivery.py`); what cannot be delivered stays in the spool for `ntn-trackers sync`.

In the repository:
- the Run's experiment is the experiment's base name (config["experiment"], else the run name without
  its `_seed<N>` suffix); its name is the full run name;
- run["hparams"], run["config"], run["provenance"] (the code, command, versions, machine and data that made
  the run) and run["summary"] hold those payloads;
- every numeric metric is tracked under its own name with step = epoch; the initial evaluation
  (step -1) is tracked at step 0 in the context {"phase": "init"}, so it never mixes with epoch 0;
  non-numeric metric values are kept in run["nonnumeric_metrics"]["<step>"];
- a run with config["run_id"] has a hash derived from it: trained again (a sweep's worker died, an
  interrupted sweep was run again), it continues the same Aim run, whose records the new attempt's
  replace, instead of adding a second run of that name;
- files attached to a run (`log_artifact`) are stored where Aim 3.29 keeps artifacts, outside the
  repository: under <repository>/aim-artifacts/ for a local repository, and for a remote one only at
  $AIM_ARTIFACTS_URI (e.g. s3://bucket/prefix, which Aim uploads to from the delivering machine; an
  `aim server` does not receive files). Without it, a remote run gets no files. `git.diff` and
  `packages.txt`, alike for every run of a checkout, are stored once per content, as
  <artifacts URI>/.by-sha256/<SHA-256>, which each run's artifact of that name refers to (delivery.py);
- nothing about the machine is stored: system params, terminal logs and resource tracking are off.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from typing import Any

from ntn.tracking import run_key, study_of

from ntn_tracker_aim import journal, uploads
from ntn_tracker_aim.repo import aim_repo_argument


def base_name(experiment_name: str, config: dict[str, Any]) -> str:
    return study_of({"experiment_name": experiment_name, "config": config})


def run_hash(run_id: Any) -> str:
    """The Aim run's hash, chosen here so that replays are idempotent: derived from config["run_id"] when
    the caller gives one (a run trained again then continues its earlier attempt's Aim run and journal,
    and replaces what it recorded), else new for every run."""
    return uuid.uuid4().hex[:24] if run_id is None else run_key(run_id, 24)


class AimTracker:
    """The `aim` backend. Repository: `repo`, else $AIM_REPO, else ./.aim."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, repo: str | None = None) -> None:
        config = config or {}
        self.repo = aim_repo_argument(repo)
        key = uploads.key_of(self.repo)  # malformed auth variables: a one-line error now, before training
        uploads.UPLOADS.check(key)
        self.run_hash = run_hash(config.get("run_id"))
        header = {"repo": self.repo, "experiment": base_name(experiment_name, config), "name": experiment_name}
        self.journal = journal.JournalWriter(
            journal.spool_dir() / f"{self.run_hash}.jsonl", header | {"config": config}
        )
        uploads.UPLOADS.track(self.journal.path, key)

    @classmethod
    def check_environment(cls, run_names: Sequence[str] = ()) -> None:
        """AIM_REPO and the authentication variables, checked before any run starts.

        :raises TrackerConfigError: one line naming the variable at fault
        """
        uploads.key_of(aim_repo_argument())

    @classmethod
    def prepare(cls) -> None:
        """Before training: start the uploader now, so that its import of aim overlaps the training
        process's own start-up (the scripts call this before they import torch), and deliver each run
        as it ends."""
        repo = aim_repo_argument()
        key = uploads.key_of(repo)
        journal.spool_dir().mkdir(parents=True, exist_ok=True)
        uploads.UPLOADS.prepare(key)

    @classmethod
    def where(cls) -> str:
        """Where this backend keeps its runs, in a few words (the scripts' closing lines)."""
        return f"aim: {aim_repo_argument()}, spooled in {journal.spool_dir()}/"

    @classmethod
    def source(cls) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from."""
        return f"aim:{aim_repo_argument()}"

    @classmethod
    def wait_delivered(cls, timeout: float) -> bool:
        """Wait at most `timeout` s until every run this process ended is delivered (a sweep's worker, at its end)."""
        return uploads.UPLOADS.flush(timeout)

    @classmethod
    def cut_off(cls) -> None:
        """The process's exit budget is spent: waits for delivery end at once (what is left stays in the spool)."""
        uploads.UPLOADS.cut.set()

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        self.journal.append({"op": "provenance", "provenance": provenance})

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self.journal.append({"op": "hparams", "hparams": hparams})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.journal.append({"op": "metrics", "step": int(step), "metrics": metrics})

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.journal.append({"op": "summary", "summary": summary})

    def log_artifact(self, path: str, name: str) -> None:
        """Copy the file into the spool beside the run's journal; delivery attaches it (see delivery.py)."""
        copy = journal.artifacts_dir(self.journal.path) / name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        self.journal.append({"op": "artifact", "name": name, "path": str(copy.resolve())})

    def finalize(self, status: str = "finished") -> None:
        self.journal.close(status)
        uploads.UPLOADS.run_ended()
