"""AimTracker: one Aim Run per tracked run, in a local repository or on a remote `aim server`.

- The Run's experiment is the experiment's base name (config["experiment"], else the run name without
  its `_seed<N>` suffix); its name is the full run name.
- run["hparams"], run["config"] and run["summary"] hold those payloads.
- Every numeric metric is tracked under its own name with step = epoch. The initial evaluation
  (step -1) is tracked at step 0 in the context {"phase": "init"}, so it never mixes with epoch 0.
  Non-numeric metric values are kept in run["nonnumeric_metrics"]["<step>"].
- Nothing about the machine is stored: system params, terminal logs and resource tracking are off.
"""

from __future__ import annotations

import re
from typing import Any

from ntn.tracking.payload import to_builtin
from ntn.tracking.redact import Redactor

from ntn_tracker_aim import auth
from ntn_tracker_aim.repo import REMOTE_PREFIX, aim_repo_argument, probe_server

INIT_CONTEXT = {"phase": "init"}
_SEED_SUFFIX = re.compile(r"_seed\d+$")


def base_name(experiment_name: str, config: dict[str, Any]) -> str:
    return str(config.get("experiment") or _SEED_SUFFIX.sub("", experiment_name) or experiment_name)


class AimTracker:
    """The `aim` backend. Repository: `repo`, else $AIM_REPO, else ./.aim."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, repo: str | None = None) -> None:
        from aim import Run

        self.redact = Redactor()  # also here, for callers that use this class without the core
        config = self.redact(to_builtin(config or {}))
        self.repo = aim_repo_argument(repo)
        if self.repo.startswith(REMOTE_PREFIX):
            headers = auth.headers_from_env()
            auth.install(headers)
            probe_server(self.repo, headers)
        self.run = Run(
            repo=self.repo,
            experiment=base_name(experiment_name, config),
            log_system_params=False,
            capture_terminal_logs=False,
            system_tracking_interval=None,
        )
        self.run.name = experiment_name
        self.run["config"] = config
        self.summary: dict[str, Any] = {}
        self.nonnumeric: dict[str, dict[str, Any]] = {}

    @property
    def run_hash(self) -> str:
        return self.run.hash

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self.run["hparams"] = self.redact(to_builtin(hparams))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        step, context = (0, INIT_CONTEXT) if step < 0 else (int(step), {})
        others = {}
        for name, value in self.redact(to_builtin(metrics)).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.run.track(float(value), name=name, step=step, context=context)
            else:
                others[name] = value
        if others:
            self.nonnumeric[f"{'init' if context else step}"] = others
            self.run["nonnumeric_metrics"] = self.nonnumeric

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.summary.update(self.redact(to_builtin(summary)))
        self.run["summary"] = self.summary

    def finalize(self) -> None:
        self.run.close()
