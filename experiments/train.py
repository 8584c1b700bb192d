"""Multi-seed training of MPO2, LMPO2 or MMPO2, each seed a tracked run: `python -m experiments.train mpo2`.

The shell scripts run_mpo2.sh, run_lmpo2.sh and run_mmpo2.sh call this; `--help` lists every setting.
An experiment is a study of one configuration (`_Seeds`) on the one runner (`experiments.runner`): its first
seed trains in this process, the others after it or side by side in forked workers, and this process
records every run. Also here: `prepare_reproduction` (a recorded run trained again: the runs' provenance
names this module). One seed's training and record is `experiments.seed_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ntn  # its models and trainer import torch on first use, after the cheap checks
from ntn.errors import NtnError
from ntn.threads import training_threads
from ntn.tracking import (
    CannotReproduce,
    TrackerConfigError,
    closing_line,
    hold,
    new_id,
    prepare,
    run_id,
    start_run,
    stop_on_signals,
    validate,
)
from ntn.tracking.provenance import Provenance

from experiments import names
from experiments.dataset_loader import DatasetError, load_dataset
from experiments.failures import reasons
from experiments.outputs import check_output, held, read_json, redact, stats, write_json
from experiments.runner import EXIT_CODES, Progress, Runner, Task
from experiments.seed_run import command_of_this_process, provenance_of, run_config, run_seed, trained_but_incomplete
from experiments.settings import (
    MODELS,
    NOT_TRAINING,
    SETTINGS,
    SettingError,
    Settings,
    resolve,
    run_name,
    settings_of,
)
from experiments.sweepfile import Configuration
from experiments.workers import InlinePool, LocalPool, dataset, worker_count


def _fail(model: str, message: str) -> int:
    print(f"run_{model}.sh: error: {redact(message)}", file=sys.stderr)
    return 2


def prepare_reproduction(record: dict[str, Any], device: str | None = None) -> tuple[dict[str, Any], Any]:
    """For `ntn-trackers reproduce`: the provenance a re-run of `record` has here (this code, these
    packages, the data as it is now, `device`: default the recorded one when this machine has it, else the
    CPU), and a function that re-trains it with its recorded settings and seed, tracked nowhere, and
    returns its summary. Settings the record lacks (added since) take their default.

    :raises CannotReproduce: an unknown model, a setting this code no longer has, data that cannot be loaded
    """
    config = record.get("config") or {}
    source = Path(str(((record.get("provenance") or {}).get("data") or {}).get("source")))
    if not os.environ.get("NTN_DATA_DIR") and source.is_file():  # the data's directory, as recorded
        os.environ["NTN_DATA_DIR"] = str(source.parent)
    model = str(config.get("model", "")).lower()
    if model not in MODELS:
        raise CannotReproduce(f"unknown model {config.get('model')!r} (known: {', '.join(MODELS)})")
    seed = (record.get("hparams") or {}).get("seed", (record.get("summary") or {}).get("seed"))
    if not isinstance(seed, int):
        raise CannotReproduce("the record holds no seed (hparams.seed)")
    known = {x.dest for x in SETTINGS}
    raws = {k: (k.upper(), _as_text(v)) for k, v in config.items() if k in known}
    raws["seeds"] = ("SEEDS", str(seed))
    try:
        s = settings_of(model, raws)
        s = dataclasses.replace(s, device=str(ntn.resolve_device(device or _available(s.device))))
        data = load_dataset(s.dataset, s.n_samples, s.data_seed, s.preprocessing)
    except (SettingError, DatasetError, ValueError) as err:
        raise CannotReproduce(str(err)) from None
    missing = sorted(k for k in known - set(config) if k not in NOT_TRAINING and k != "output_file")
    provenance = provenance_of(s, data, {}).record | {
        "settings_not_recorded": {k.upper(): getattr(s, k) for k in missing}
    }

    def train() -> dict[str, Any]:
        with start_run(record["experiment_name"], {}, backend=[], provenance=Provenance({})) as run:
            return run_seed(model, s, data, seed, run)

    return provenance, train


def _as_text(value: Any) -> str:
    """A recorded setting's value as its variable would give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def _available(device: str) -> str:
    """`device` when this machine has it, else the CPU."""
    try:
        return str(ntn.resolve_device(device))
    except ValueError:
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    """Train every seed; a signal (Ctrl-C, SIGTERM, SIGHUP) ends it with one line and 128 + its number."""
    previous = stop_on_signals()
    state: dict[str, Any] = {}
    try:
        return _main(argv, state)
    except KeyboardInterrupt as err:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C (during an exit wait) leaves at once
        name = getattr(err, "signal_name", "SIGINT")
        said = _interrupted(state.get("study"), state.get("runner"), state.get("where", ""))
        print(redact(f"interrupted by {name}{said}"), file=sys.stderr)
        return EXIT_CODES[name]
    finally:
        for signum, handler in previous.items():
            if signum != signal.SIGINT:
                signal.signal(signum, handler)


def _main(argv: list[str] | None, state: dict[str, Any]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MODELS:
        usage = f"usage: python -m experiments.train {{{','.join(MODELS)}}} [--help] [flags]"
        if argv and argv[0] in ("-h", "--help"):
            print(f"{usage} (each model's: python -m experiments.train mpo2 --help)")
            return 0
        said = f": no model {argv[0]!r}" if argv else ""
        print(redact(f"{usage}{said}"), file=sys.stderr)
        return 2
    model, argv = argv[0], argv[1:]

    try:
        s = resolve(model, argv)
    except SettingError as err:
        return _fail(model, str(err))

    output = Path(s.output_file)
    holding = contextlib.ExitStack()
    try:
        run_names = [run_name(s, seed) for seed in s.seeds]
        backends = validate(s.tracker_backend, run_names)
        owns = lambda document: _results_of(document, s.experiment_name)  # noqa: E731
        check_output(output, "OUTPUT_FILE", owns, "this experiment's results", s.tracker_dir)
        helpers = prepare(backends)  # e.g. aim's uploader starts, and imports aim while this process imports torch
        s = dataclasses.replace(s, device=str(ntn.resolve_device(s.device)))  # the first check that imports torch
        data = dataset(s.dataset, s.n_samples, s.data_seed, s.preprocessing)
        holding.enter_context(hold(backends, run_names))
        holding.enter_context(held(output, "OUTPUT_FILE"))
        mixed = _mixed_with(read_json(output), model, s, backends)
    except (NtnError, OSError) as err:
        holding.close()
        return _fail(model, str(err))
    except ValueError as err:  # the device (check_output has read the results file: it is JSON)
        holding.close()
        return _fail(model, f"DEVICE={s.device!r}: {err}")
    if mixed:
        holding.close()
        return _fail(
            model,
            f"EXPERIMENT_NAME={s.experiment_name!r} already holds runs trained with other settings: {mixed}; give "
            f"this run its own EXPERIMENT_NAME, or remove {output} and its runs ({s.experiment_name}_seed*.json in "
            f"TRACKER_DIR {s.tracker_dir!r}) to start the experiment afresh",
        )
    with holding:
        return _train(model, s, data, backends, output, state, helpers)


def _mixed_with(document: Any, model: str, s: Settings, backends: list) -> str:
    """The training settings in which the runs recorded under this experiment's name (in TRACKER_DIR, by a
    script or a sweep: `experiments.names`) or its results file (`document`) differ from this launch, as
    `N_EPOCHS=10 (this run: 1)`; "" when none does."""
    runs = names.recorded(backends, s.tracker_dir, [s.experiment_name]).get(s.experiment_name, [])
    if isinstance(document, dict) and isinstance(document.get("config"), dict):
        runs.append(names.identity(str(document["config"].get("model", "")), document["config"]))
    return names.other_settings(runs, names.identity(model, dataclasses.asdict(s)))


def _results_of(document: Any, experiment: str) -> bool:
    """Whether `document` is the results file of `experiment` (which a new launch replaces)."""
    if not isinstance(document, dict) or "results" not in document:
        return False
    return (document.get("config") or {}).get("experiment") == experiment


class _Seeds:
    """run_*.sh's study: one configuration, its seeds in SEEDS order, the results file rewritten (and
    attached to the seed's run) at each seed's end; one line per epoch with VERBOSE."""

    def __init__(self, model: str, s: Settings, data, output: Path, config: dict[str, Any]) -> None:
        self.s, self.data, self.output, self.config = s, data, output, config
        launch = new_id()  # this launch's runs replace no other launch's in a shared tracker
        configuration = Configuration(model, {}, s)
        self.tasks = [Task(configuration, seed, run_id(run_name(s, seed), launch)) for seed in s.seeds]
        self.started = 0
        self.results: list[dict[str, Any]] = []  # the entries written, in SEEDS order
        self.last: Task | None = None  # the run whose entry was written last

    def next_tasks(self, free: int) -> list[Task]:
        tasks = self.tasks[self.started : self.started + free]
        self.started += len(tasks)
        return tasks

    def on_epoch(self, task: Task, epoch: int, scores: dict[str, float]) -> list[Task]:
        if self.s.verbose:
            shown = " ".join(f"{k}={v:.4g}" for k, v in scores.items() if k not in ("reg_loss", "jitter"))
            extra = f"reg_loss={scores['reg_loss']:.4g} jitter={scores['jitter']:.3g}"
            print(f"seed {task.seed} epoch {epoch}: {shown} {extra}")
        return []

    def on_entry(self, task: Task, entry: dict[str, Any]) -> Path:
        """The results file with this seed's entry (replacing an earlier one of it: the entry again, failed
        because its run could not be ended), attached to the seed's run."""
        quality, seeds = self.data.quality, self.s.seeds
        others = [r for r in self.results if r["seed"] != entry["seed"]]
        done = sorted([*others, entry], key=lambda r: seeds.index(r["seed"]))  # side by side, seeds end in any order
        ok = [r for r in done if r["success"]]
        loss_mean, loss_std = stats([r["test_loss"] for r in ok])
        q_mean, q_std = stats([r[f"test_{quality}"] for r in ok])
        write_json(
            self.output,
            {
                "model": self.config["model"],
                "n_total": len(done),
                "n_success": len(ok),
                "test_loss_mean": loss_mean,
                "test_loss_std": loss_std,
                f"test_{quality}_mean": q_mean,
                f"test_{quality}_std": q_std,
                "results": done,
                "config": self.config,
                "dataset_info": self.data.info,
            },
        )
        self.results[:] = done
        self.last = task
        return self.output

    def on_end(self, task: Task, entry: dict[str, Any]) -> None:
        if self.s.verbose:
            print(f"seed {task.seed}: {'ok' if entry['success'] else 'FAILED'} {entry}")


def _interrupted(study: _Seeds | None, runner: Runner | None, where: str) -> str:
    """What a signal leaves, for its one line: the run whose entry was written last (when none was open
    after it, or the signal came as it ended), and the runs recorded as interrupted."""
    if study is None or runner is None:
        return " before any run started; nothing was recorded"
    output, said = study.output, []
    if study.last is not None and (runner.ending is study.last or not runner.abandoned):
        said.append(f"run {study.last.name} finished and recorded ({where}), with its entry in {output}")
    if runner.abandoned:
        them = "it" if len(runner.abandoned) == 1 else "them"
        names = ", ".join(t.name for t in sorted(runner.abandoned, key=lambda t: study.s.seeds.index(t.seed)))
        before = f"the {len(study.results)} seeds before {them} in {output}"
        before = before if study.results else f"no seed finished before {them}"
        runs = "runs" if len(runner.abandoned) > 1 else "run"
        said.append(f"{runs} {names} recorded as interrupted ({where}); {before}")
    return f": {'; '.join(said)}" if said else " before any run started; nothing was recorded"


def _train(model: str, s: Settings, data, backends: list, output: Path, state: dict[str, Any], helpers: int = 0) -> int:
    """Every seed, one tracked run each, and the results file after each; the exit code. The first seed
    trains in this process, timed: whether the others train side by side in forked workers (`worker_count`).
    `helpers`: backends' processes that deliver beside training (`prepare`), each keeping a core from them."""
    quality = data.quality
    study = _Seeds(model, s, data, output, run_config(model, s, data, backends))
    progress = Progress(len(s.seeds) * s.n_epochs, shown=not s.verbose)
    runner = Runner(study, backends, command_of_this_process(), progress)
    state |= {"study": study, "runner": runner, "where": ", ".join(_where(b) for b in backends) or "no tracker"}
    try:
        started = time.perf_counter()
        runner.run(InlinePool(), limit=1)  # here, and timed: whether the others train side by side
        left, seconds = len(s.seeds) - 1, time.perf_counter() - started
        one_thread = s.device == "cpu" and training_threads() == 1  # a forked worker trains at one thread, on the CPU
        workers = worker_count(s.workers, left, seconds, helpers) if one_thread and left else 1
        pool = LocalPool(workers) if workers > 1 else InlinePool()
        try:
            runner.run(pool)
        finally:
            pool.close()
    except (TrackerConfigError, OSError) as err:  # a tracker refused the run; the results file cannot be written
        progress.close()
        recorded = f"the {len(study.results)} seeds before seed {runner.at.seed} are recorded in {output}"
        return _fail(model, f"{err}; {recorded}")
    finally:
        progress.close()
    results = study.results
    ok = [r for r in results if r["success"]]
    q_mean, q_std = stats([r[f"test_{quality}"] for r in ok])
    spread = f"± {q_std:.4f}" if len(ok) > 1 else "(one seed: no spread)"
    held_out = "n/a" if q_mean is None else f"{q_mean:.4f} {spread}"
    print(
        redact(
            f"{model.upper()} on {data.info['name']}: {_outcome(results)}; held-out test {quality} {held_out} -> "
            f"{output}"
        )
    )
    print(redact(closing_line(backends)))
    return 0 if len(ok) == len(results) else 1


def _outcome(results: list[dict[str, Any]]) -> str:
    """How many seeds succeeded; of the others, those that trained but whose record a tracker could not
    complete, told apart from those whose training failed, each with its reason."""
    incomplete = [r for r in results if trained_but_incomplete(r)]
    failed = [r for r in results if not r["success"] and r not in incomplete]
    said = [f"{len(results) - len(incomplete) - len(failed)}/{len(results)} seeds succeeded"]
    if incomplete:
        trackers = sorted({t for r in incomplete for t in r["records_incomplete_in"]})
        one = len(trackers) == 1
        said.append(
            f"{len(incomplete)} trained, but tracker{'' if one else 's'} {', '.join(map(repr, trackers))} could not "
            f"complete {'its record' if one else 'their records'} ({reasons([('', r) for r in incomplete])})"
        )
    if failed:
        said.append(f"{len(failed)} failed in training ({reasons([('', r) for r in failed])})")
    return "; ".join(said)


def _where(backend) -> str:
    """Where a backend keeps its runs, in its own words (a factory's `where()`), else its name."""
    where = getattr(backend.factory, "where", None)
    return where() if callable(where) else backend.name


if __name__ == "__main__":
    code = main()
    gc.freeze()  # what is left is not collected as the interpreter ends: 0.15 s less with torch loaded
    sys.exit(code)
