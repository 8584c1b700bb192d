"""WandbTracker: one Weights & Biases run per tracked run (one per seed), through W&B's own client.

- Mode: $WANDB_MODE when set (read at each run: W&B reads it once a process), else online when
  $WANDB_API_KEY is set, else offline:
  the run is written under $WANDB_DIR/wandb/offline-run-*/ (default ./wandb/), to send later with
  `wandb sync`. The API key never reaches a payload (`secret_values`).
- Project $WANDB_PROJECT (default `ntn`); the run is named after the tracked run, `{experiment}_seed{seed}`,
  in the group of its sweep (config["sweep"]), else of its experiment, as W&B's `group`.
- config: the hparams at its top level (W&B's columns); the run's own config and provenance under the
  hidden key `_ntn` (config keys starting with `_` stay out of W&B's tables).
- history: every number of every epoch at its step, from epoch 0 (W&B's steps start at 0 and must
  increase); the initial evaluation (step -1) as summary `initial/<name>` instead.
- summary: the run's summary at the top level; once more under `_ntn`, with the status and the initial
  evaluation, as JSON text (W&B's summary keeps NaN and ±Inf as null; its history keeps them).
- status: the run's exit code (finished 0, failed 1, interrupted 130) and a tag of the same name; a run a
  search pruned (stopped early) exits 0 (any other code W&B shows as failed, and it did not fail), and its
  tag `pruned` tells it apart.
- files attached to the run (`log_artifact`) are W&B run files, under `artifacts/<safe name>` in the run's
  folder: kept next to the run offline and sent by `wandb sync` with it, where an Artifact would be
  staged in W&B's cache outside the run and versioned as a collection of its own.
- W&B's console capture and banners are off (console="off", quiet, silent), and so are its own git and
  metadata capture (disable_git, x_disable_meta): they record a remote URL and the command line as they are,
  credentials included; the run's provenance, redacted by the core, names the commit, command and machine.

Each run is its own W&B run object (`reinit="create_new"`), so side-by-side seeds recorded in one
process with their hooks interleaved never share W&B's process-global run. Every call runs on a thread
of its own (`ntn.tracking.Background`); at a run's end, `finalize` waits at most $NTN_WANDB_EXIT_TIMEOUT
seconds (default 30) for W&B to take the calls still queued and finish the run, and W&B waits as long at
most for a server to start a run (its `init_timeout`, 90 s by default, held the process's exit as long).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ntn.files import check_writable, file_stem
from ntn.tracking import Background, TrackerConfigError, seconds, study_of

EXIT_TIMEOUT_ENV = "NTN_WANDB_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT_S = 30.0
DEFAULT_PROJECT = "ntn"
NTN_KEY = "_ntn"  # the config and summary key holding what W&B has no place for
INITIAL = "initial/"  # the summary prefix of the initial evaluation
MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.Settings accepts
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130, "pruned": 0}
SECRET_VARIABLES = ("WANDB_API_KEY",)


def secret_values(environ: Mapping[str, str]) -> Iterable[str]:
    """The `ntn.secrets` declaration: the W&B API key, whatever the core's name rule says."""
    return [environ[name] for name in SECRET_VARIABLES if environ.get(name)]


def wandb_dir() -> Path:
    """The folder W&B writes its `wandb/` folder in: $WANDB_DIR, else the working directory."""
    return Path(os.environ.get("WANDB_DIR") or ".")


def mode() -> str:
    """$WANDB_MODE, else online with $WANDB_API_KEY, else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def exit_timeout() -> float:
    """Seconds a run's end waits for W&B: $NTN_WANDB_EXIT_TIMEOUT, default 30."""
    return seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class WandbRun:
    """The W&B run of one tracked run; its methods run on the Background thread."""

    def __init__(self, run_name: str, config: dict[str, Any], timeout: float) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")  # read once, at W&B's first run: its login line, too
        import wandb

        self.config = config
        self.summary: dict[str, Any] = {}
        self.initial: dict[str, float] = {}
        # the mode always given: W&B reads WANDB_MODE once per process, at its first run
        settings = wandb.Settings(
            mode=mode(),
            console="off",
            quiet=True,
            silent=True,
            disable_git=True,
            x_disable_meta=True,
            init_timeout=timeout,  # a server that does not answer holds neither the run nor the exit longer
        )
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            group=study_of({"experiment_name": run_name, "config": config}),
            name=run_name,
            config={NTN_KEY: {"config": config}},
            reinit="create_new",  # a run object of its own: never W&B's process-global run
            dir=wandb_dir().resolve(),  # now: W&B's own default is the working directory of its first run
            settings=settings,
        )

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        self.run.config.update({NTN_KEY: {"config": self.config, "provenance": provenance}}, allow_val_change=True)

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self.run.config.update(hparams, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        numbers = {name: float(value) for name, value in metrics.items() if _number(value)}
        if step < 0:  # the untrained model's figures: off the charts, whose steps start at 0
            self.initial = numbers
            self.run.summary.update({INITIAL + name: value for name, value in numbers.items()})
        elif numbers:
            self.run.log(numbers, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.summary.update(summary)
        self.run.summary.update(summary)

    def log_artifact(self, path: str, name: str) -> None:
        kept = Path(self.run.dir) / "artifacts" / file_stem(name)
        kept.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, kept)
        self.run.save(str(kept), base_path=self.run.dir, policy="now", glob=False)

    def finalize(self, status: str, end_time: float | None) -> None:
        # as JSON text: W&B's summary turns NaN and ±Inf into null
        exact = {"summary": self.summary | {"status": status}, "initial": self.initial}
        self.run.summary[NTN_KEY] = json.dumps(exact, allow_nan=True, ensure_ascii=False)
        self.run.tags = (*self.run.tags, status)
        self.run.finish(exit_code=EXIT_CODES.get(status, 1))


class WandbTracker(Background):
    """The `wandb` backend (see the module)."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        timeout = exit_timeout()
        super().__init__(lambda: WandbRun(experiment_name, config, timeout), timeout=timeout, name="wandb")

    @classmethod
    def where(cls) -> str:
        """Where this backend keeps its runs, in a few words (the scripts' closing lines)."""
        runs = wandb_dir() / "wandb"
        send = f" (to send: wandb sync {runs}/offline-run-*)" if mode() == "offline" else ""
        return f"wandb: {mode()} runs in {runs}{send}"

    @classmethod
    def source(cls) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from."""
        return f"wandb:{wandb_dir()}" if os.environ.get("WANDB_DIR") else "wandb"

    @classmethod
    def check_environment(cls, run_names: Sequence[str] = ()) -> None:
        """Before any run: WANDB_MODE must be one W&B knows, WANDB_DIR a directory this process can write in.

        :raises TrackerConfigError: one line naming the variable and why
        """
        exit_timeout()
        if mode() not in MODES:
            raise TrackerConfigError(f"WANDB_MODE={mode()!r} is not one of {', '.join(MODES)}")
        root = wandb_dir()
        existing = next((p for p in [root, *root.parents] if p.exists()), Path("."))
        try:
            if not existing.is_dir():
                raise OSError(f"{str(existing)!r} is not a directory")
            check_writable(existing)
        except OSError as err:
            raise TrackerConfigError(f"WANDB_DIR={str(root)!r}: cannot write there ({err})") from None
