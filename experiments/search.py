"""A sweep's `[search]` (`sweepfile.Search`): trials that Optuna decides as earlier ones report, each an
experiment `{name}_trial{number}` trained for every seed of the sweep file.

The study lives in Optuna's own storage beside the results file, a journal file
(`results_sweep_{name}.optuna.log`: `optuna-dashboard results_sweep_{name}.optuna.log` opens it), asked and
told by the driver only, as a `Study` of the runner: `next_tasks` asks Optuna for a trial and hands out its
seeds' runs, `on_epoch` reports each epoch's objective (the mean over the trial's seeds, once every seed has
that epoch) and returns the trial's runs to stop when the pruner says so, `on_end` records each run in the
results file (`sweep_results.Record`) and tells Optuna the trial's end once all its runs have ended: its
objective (the mean over its seeds of their results entries' figure), pruned, or failed (a seed has no
figure: its training raised, or its worker ended).

Exactly once: a trial is named by its first number (user attribute `trial`); a trial the storage holds as
failed, or still running (the sweep was killed, or stopped by a signal, mid-trial), is asked again with the
same values and name when the sweep runs again, and trains only the seeds its results file does not hold as
successful (their epochs' objectives, kept as the trial's user attributes `curve_seed{seed}`, are reported
again, so pruning sees the whole trial). `trials` counts the named trials: raising it asks only for more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ntn.tracking import uninterrupted
from ntn.tracking.tables import Column, fit, width, wrapped
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from experiments.runner import Task
from experiments.settings import SettingError
from experiments.sweep_results import Record, status_of
from experiments.sweepfile import Configuration, Range, Search, Sweep

STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def storage_path(output: Path) -> Path:
    """The study's Optuna journal beside the results file `output`."""
    return output.with_name(f"{output.stem}.optuna.log")


def open_storage(path: Path) -> JournalStorage:
    """The study's Optuna journal, every line of it checked first: Optuna appends to a journal whose last line
    is cut short (a write interrupted), which makes it unreadable for good, and skips a bad last line.

    :raises SettingError: naming the file and its first bad line; nothing is written
    """
    try:
        lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
        if lines[-1]:
            raise ValueError(f"its line {len(lines)} is cut short (a write interrupted)")
        for number, line in enumerate(lines[:-1], start=1):
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                raise ValueError(f"its line {number}: {err}") from None
        return JournalStorage(JournalFileBackend(str(path)))
    except (OSError, ValueError) as err:
        raise SettingError(f"{path}: cannot open the Optuna study ({err}); move it away") from None


def _latest(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    """The last attempt of each named trial (a trial asked again keeps its first number as its name)."""
    return {t.user_attrs["trial"]: t for t in trials if "trial" in t.user_attrs}


def runs_left(sweep: Sweep, output: Path, retry_failed: bool = True) -> int:
    """At most how many runs a launch of the search trains: the seeds of each trial not ended (complete or
    pruned, or failed unless `retry_failed`) yet; the storage is only read.

    :raises SettingError: the storage cannot be read
    """
    assert sweep.search is not None
    latest: dict[int, FrozenTrial] = {}
    if storage_path(output).exists():
        storage = open_storage(storage_path(output))
        with contextlib.suppress(KeyError):  # no study of this name yet
            latest = _latest(optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False))
    ended = sum(t.state in _ended(retry_failed) for t in latest.values())
    return (max(sweep.search.trials, len(latest)) - ended) * len(sweep.seeds)


def _ended(retry_failed: bool) -> tuple[TrialState, ...]:
    """The states of the trials a launch does not ask again."""
    return (TrialState.COMPLETE, TrialState.PRUNED) + (() if retry_failed else (TrialState.FAIL,))


def distributions(search: Search) -> dict[str, BaseDistribution]:
    """The space as Optuna's distributions."""

    def of(space: Range | list[Any]) -> BaseDistribution:
        if isinstance(space, list):
            return CategoricalDistribution(space)
        kind = IntDistribution if space.integer else FloatDistribution
        return kind(space.low, space.high, log=space.log)

    return {name: of(space) for name, space in search.space.items()}


def sampler_of(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler the search names, seeded (`seed`: the trials already in the study, so that a resumed
    study draws on, and does not repeat its first draws)."""
    if search.sampler == "grid":
        grid = {
            k: v if isinstance(v, list) else list(range(int(v.low), int(v.high) + 1)) for k, v in search.space.items()
        }
        return optuna.samplers.GridSampler(grid, seed=seed)
    if search.sampler == "cmaes":  # a choice is sampled independently (CMA-ES has no categorical): no warning each time
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_of(search: Search) -> optuna.pruners.BasePruner:
    """Optuna's pruner the search names, at Optuna's defaults (the median of the earlier trials at the same
    epoch, after 5 trials; Hyperband's brackets up to the last epoch)."""
    if search.prune == "median":
        return optuna.pruners.MedianPruner()
    if search.prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


@dataclass
class Trial:
    """A trial in progress: the runs it has not handed out, those training, and what they reported."""

    trial: optuna.Trial
    configuration: Configuration
    pending: list[Task]
    training: list[Task] = field(default_factory=list)
    ended: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> its results entry
    curves: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> epoch -> objective
    reported: int = -1  # the last epoch reported to Optuna
    pruned: bool = False


class SearchStudy:
    """A `[search]` driven by the runner: Optuna asked for trials, told each epoch and each trial's end."""

    def __init__(self, sweep: Sweep, output: Path, retry_failed: bool = True) -> None:
        """Open (or create) the study beside `output` and the results file; a trial left running by an earlier
        call, or failed (unless not `retry_failed`), is asked again first.

        :raises SettingError: the storage or the results file holds another study, or another objective, space
            or seeds
        """
        assert sweep.search is not None
        self.sweep, self.search, self.storage = sweep, sweep.search, storage_path(output)
        self.active: dict[int, Trial] = {}  # trial name -> the trial in progress
        self.distributions = distributions(self.search)
        self.importance: dict[str, float] | None = None  # once `finish` has computed it
        self.importance_error = ""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's table says what each trial did
        if not self.storage.exists():  # nothing written when the results file holds an earlier study's runs
            self._open_record(output, [], None)
        storage = open_storage(self.storage)
        try:
            try:  # loaded, not created again: create_study(load_if_exists=True) writes to the journal
                self.study = optuna.load_study(study_name=sweep.name, storage=storage, pruner=pruner_of(self.search))
            except KeyError:
                with uninterrupted():  # a signal waits: the journal's first lines whole
                    self.study = optuna.create_study(
                        storage=storage,
                        study_name=sweep.name,
                        direction="maximize" if self.search.maximise else "minimize",
                        pruner=pruner_of(self.search),
                    )
        except (OSError, ValueError) as err:
            raise SettingError(f"{self.storage}: cannot open the Optuna study ({err}); move it away") from None
        objective = self.study.user_attrs.get("objective", self.search.objective)
        if objective != self.search.objective:
            raise SettingError(
                f"{self.storage} holds a study of objective {objective!r}, not {self.search.objective!r}; name the "
                "sweep otherwise, or move it and the results file away to start afresh"
            )
        trials = self.study.get_trials(deepcopy=False)
        self._refuse_another_space(trials, output)
        self.params: dict[int, dict[str, Any]] = {}  # a named trial's values
        self.curves: dict[int, dict[int, dict[int, float]]] = {}  # a named trial's recorded seeds' curves
        latest = _latest(trials)  # a trial asked, then the sweep died before it was named: it trained nothing
        for trial in trials:
            number = trial.user_attrs.get("trial")
            if number is None:
                continue
            if trial.params:
                self.params.setdefault(number, trial.params)
            for key, curve in trial.user_attrs.items():
                if key.startswith("curve_seed"):
                    self.curves.setdefault(number, {})[int(key.removeprefix("curve_seed"))] = {
                        epoch: value for epoch, value in enumerate(curve) if value is not None
                    }
        named = [sweep.trial(number, self.params[number]) for number in sorted(self.params)]
        self._open_record(output, named, self.study.user_attrs.get("sweep_id"))
        ended = [t for t in latest.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if ended and not self.record.n_recorded:  # every ended trial's runs are recorded before it is told
            raise SettingError(
                f"{self.storage} holds trials whose results file {output} is gone; move {self.storage} away to "
                "start afresh"
            )
        # the storage changes only now, every check passed, each write whole (a signal waits: `uninterrupted`)
        self.study.sampler = sampler_of(self.search, len(trials))
        attributes = {"sweep_id": self.record.sweep_id, "objective": self.search.objective, "seeds": self.sweep.seeds}
        self.retries = 0  # trials waiting in the storage to be asked again
        with uninterrupted():
            for key, value in attributes.items():
                if key not in self.study.user_attrs:
                    self.study.set_user_attr(key, value)
            for trial in trials:
                if trial.state == TrialState.RUNNING:  # nothing trains it: this process locks the results file
                    self.study.tell(trial.number, state=TrialState.FAIL)
            for number, trial in latest.items():
                if trial.state not in _ended(retry_failed) and trial.state != TrialState.WAITING:
                    self.study.enqueue_trial(self.params[number], user_attrs={"trial": number})
                self.retries += trial.state not in _ended(retry_failed)
        self.named = set(latest)

    def _refuse_another_space(self, trials: list[FrozenTrial], output: Path) -> None:
        """Refuse a study whose trials were asked over another space, or trained other seeds: its trials and
        those asked now would be ranked, and would teach the sampler, together.

        :raises SettingError: naming the first setting that differs, as the study has it and as the file does
        """
        seeds = self.study.user_attrs.get("seeds", self.sweep.seeds)
        asked = next((t.distributions for t in reversed(trials) if t.distributions), self.distributions)
        changed = next(
            (k for k in sorted(asked.keys() | self.distributions.keys()) if asked.get(k) != self.distributions.get(k)),
            None,
        )
        if changed is None and seeds == self.sweep.seeds:
            return
        if changed is None:
            what = f"seeds = {seeds}, not {self.sweep.seeds}"
        else:
            what = (
                f"search.space.{changed} = {_shown(asked.get(changed))}, not {_shown(self.distributions.get(changed))}"
            )
        raise SettingError(
            f"{self.storage} holds a study with {what}: its trials and new ones would be mixed; put it back, name "
            f"the sweep otherwise, or move {self.storage} and {output} away to start afresh"
        )

    def _open_record(self, output: Path, named: list[Configuration], study_id: str | None) -> None:
        """The results file, with the runs of the trials the study has named; refused when the two do not
        hold the same study.

        :raises SettingError: naming both files
        """
        self.record = SearchRecord(self, dataclasses.replace(self.sweep, configurations=named), output, study_id)
        if study_id is None and (self.record.n_recorded or self.record.removed):
            raise SettingError(
                f"{output} holds trials of a study whose Optuna storage {self.storage} is gone; move {output} away "
                "to start afresh"
            )
        if study_id is not None and study_id != self.record.sweep_id:
            raise SettingError(
                f"{output} and {self.storage} hold different studies; move both away to start afresh, or name "
                "another --output"
            )

    # ---- the runner's Study protocol ------------------------------------------------------------------

    def next_tasks(self, free: int) -> list[Task]:
        """Up to `free` runs to start: the seeds of the trials in progress not handed out yet, then those of
        a trial asked now; [] when every trial is asked (those in progress go on)."""
        tasks: list[Task] = []
        while len(tasks) < free:
            trial = next((t for t in self.active.values() if t.pending), None) or self._ask()
            if trial is None:
                break
            taken, trial.pending = trial.pending[: free - len(tasks)], trial.pending[free - len(tasks) :]
            trial.training += taken
            tasks += taken
        return tasks

    def on_epoch(self, task: Task, epoch: int, scores: dict[str, float]) -> list[Task]:
        """Report the trial's objective at each epoch every seed has reached; its runs in training, when
        Optuna's pruner stops it (never at the last epoch: the trial is complete then)."""
        trial = self.active.get(self._number(task))
        value = scores.get(self.search.objective)
        if trial is None or trial.pruned or not isinstance(value, int | float) or not math.isfinite(value):
            return []
        trial.curves.setdefault(task.seed, {})[epoch] = float(value)
        last = task.configuration.settings.n_epochs - 1
        while all(trial.reported + 1 in trial.curves.get(seed, {}) for seed in self.sweep.seeds):
            trial.reported += 1
            step = trial.reported
            trial.trial.report(statistics.fmean(trial.curves[seed][step] for seed in self.sweep.seeds), step)
            if step < last and trial.trial.should_prune():
                trial.pruned = True
                return list(trial.training)
        return []

    def on_entry(self, task: Task, entry: dict[str, Any]) -> None:
        """Nothing to attach to a run: its entry is recorded once the run has ended (`on_end`)."""

    def on_end(self, task: Task, entry: dict[str, Any]) -> None:
        """Record the run in the results file; once the trial's runs have all ended, tell Optuna how it ended.
        (A run that did not end, interrupted by a signal, comes to no `on_end`: its trial is asked again when
        the sweep runs again.)"""
        trial = self.active[self._number(task)]
        trial.training.remove(task)
        self.record.add(task.configuration, entry)
        trial.ended[task.seed] = entry
        curve = trial.curves.get(task.seed, {})
        if curve:
            values = [curve.get(epoch) for epoch in range(max(curve) + 1)]
            trial.trial.set_user_attr(f"curve_seed{task.seed}", values)
        if not trial.pending and not trial.training:
            self._tell(trial)

    # ---- the trials ---------------------------------------------------------------------------------------

    @staticmethod
    def _number(task: Task) -> int:
        assert task.configuration.trial is not None
        return task.configuration.trial

    def _ask(self) -> Trial | None:
        """The next trial: one to ask again first, else a new one while `trials` allows; None when none is
        left. A trial whose seeds are all recorded already is told at once."""
        while self.retries or len(self.named) < self.search.trials:
            asked = self.study.ask(self.distributions)
            number = asked.user_attrs.get("trial")
            if number is None:
                number = asked.number
                asked.set_user_attr("trial", number)
            else:
                self.retries -= 1
            self.named.add(number)
            self.params.setdefault(number, asked.params)
            configuration = self.sweep.trial(number, asked.params)
            self.record.add_configuration(configuration)
            trial = Trial(asked, configuration, [])
            recorded = self.record.runs[configuration.settings.experiment_name]
            for seed in self.sweep.seeds:
                entry = recorded.get(seed)
                if entry is not None and status_of(entry) in ("finished", "pruned"):
                    trial.ended[seed] = entry
                    trial.curves[seed] = dict(self.curves.get(number, {}).get(seed, {}))
                    trial.pruned |= status_of(entry) == "pruned"
                else:
                    trial.pending.append(Task(configuration, seed, self.record.run_id(configuration, seed)))
            if trial.pending and not trial.pruned:
                self.active[number] = trial
                return trial
            self._tell(trial)
        return None

    def _tell(self, trial: Trial) -> None:
        """Tell Optuna how the trial ended: pruned (a run stopped early), its objective (every seed trained
        to the end and has it: a run failed on its held-out figure still teaches the sampler, and the test
        split never decides a trial), or failed (a seed raised, or its objective is not a finite number)."""
        self.active.pop(trial.configuration.trial, None)  # type: ignore[arg-type]
        entries = [trial.ended.get(seed) for seed in self.sweep.seeds]
        values = [None if e is None else e.get(self.search.objective) for e in entries]
        if any(e is not None and status_of(e) == "pruned" for e in entries):  # a stop may come after the last epoch
            self.study.tell(trial.trial, state=TrialState.PRUNED)
        elif all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            self.study.tell(trial.trial, statistics.fmean(values))  # type: ignore[arg-type]
        else:
            self.study.tell(trial.trial, state=TrialState.FAIL)

    # ---- what a researcher reads at the end -----------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Each parameter's importance (Optuna's fANOVA over the complete trials), then the results file
        written whole; its document."""
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            self.importance = optuna.importance.get_param_importances(self.study, evaluator=evaluator)
            self.importance_error = ""
        except (ValueError, RuntimeError) as err:  # fewer than 2 complete trials, or a space of one point
            self.importance, self.importance_error = None, str(err)
        return self.record.write()

    def trials_log(self) -> list[dict[str, Any]]:
        """Every Optuna trial, in order: its name, state, values, objective, last epoch reported."""
        return [
            {
                "number": t.number,
                "trial": t.user_attrs.get("trial"),
                "state": STATES.get(t.state, t.state.name.lower()),
                "values": t.params,
                "objective": t.value,
                "last_epoch": t.last_step,
            }
            for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get("trial") is not None
        ]


class SearchRecord(Record):
    """A search's results file: a sweep's record of every run, per trial, with the study beside it."""

    def __init__(self, study: SearchStudy, sweep: Sweep, path: Path, sweep_id: str | None) -> None:
        """:param sweep: the search's sweep with the trials the study has named as its configurations"""
        self.study = study
        super().__init__(sweep, path, sweep_id)

    def document(self) -> dict[str, Any]:
        """The sweep's document, ranked by the objective: `best` is Optuna's best trial (never a pruned one),
        `search` what the study holds."""
        document = super().document()
        search, log = self.study.search, self.study.trials_log()
        by_name = {c["experiment"]: c for c in document["configurations"]}
        best = None
        complete = [t for t in log if t["state"] == "complete"]
        if complete:
            pick = max if search.maximise else min
            top = pick(complete, key=lambda t: t["objective"])
            summary = by_name.get(f"{self.sweep.name}_trial{top['trial']}")
            if summary is not None:
                best = {k: v for k, v in summary.items() if k not in ("settings", "runs")}
                best |= {"trial": top["trial"], "objective": top["objective"]}
        named: dict[int, dict[str, Any]] = {}
        for t in log:  # a trial asked again stands for its name
            named[t["trial"]] = t
        counts = {state: sum(t["state"] == state for t in named.values()) for state in STATES.values()}
        document["best"] = best
        document["search"] = {
            "sampler": search.sampler,
            "trials": search.trials,
            "objective": search.objective,
            "direction": "maximize" if search.maximise else "minimize",
            "prune": search.prune,
            "space": {k: v if isinstance(v, list) else vars(v) for k, v in search.space.items()},
            "storage": self.study.storage.name,
            "n_trials": len(named),
            **{f"n_{state}": n for state, n in counts.items()},
            "importance": self.study.importance,
            **({"importance_error": self.study.importance_error} if self.study.importance_error else {}),
            "log": log,
        }
        return document


def _shown(distribution: BaseDistribution | None) -> str:
    """A distribution as the sweep file writes it."""
    if distribution is None:
        return "nothing"
    if isinstance(distribution, CategoricalDistribution):
        return json.dumps(list(distribution.choices))
    log = ", log = true" if distribution.log else ""  # type: ignore[attr-defined]
    return f"{{low = {distribution.low}, high = {distribution.high}{log}}}"  # type: ignore[attr-defined]


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(document: dict[str, Any]) -> str:
    """The trials in order (state, values, objective, the validation figure unless it is the objective, the test
    figure), the counts, the best trial with its test figures, and each parameter's importance."""
    search = document["search"]
    names = list(search["space"])
    by_name = {c["experiment"]: c for c in document["configurations"]}
    named = {t["trial"]: t for t in search["log"]}
    quality = next((c["metric"] for c in document["configurations"]), "r2")
    splits = [s for s in ("val", "test") if f"{s}_{quality}" != search["objective"]]  # the objective: a column already
    rows = []
    for number in sorted(named):
        t = named[number]
        c = by_name.get(f"{document['sweep']}_trial{number}", {})
        q = c.get("metric", "r2")
        figures = [
            "n/a" if c.get(f"{s}_{q}_mean") is None else f"{c[f'{s}_{q}_mean']:.4f} ± {c[f'{s}_{q}_std']:.4f}"
            for s in splits
        ]
        objective = "n/a" if t["objective"] is None else f"{t['objective']:.4f}"
        ok = f"{c.get('n_success', 0)}/{len(document['seeds'])}"
        rows.append([number, t["state"], *(_cell(t["values"].get(n)) for n in names), objective, *figures, ok])
    arrow = "↑" if search["direction"] == "maximize" else "↓"
    headers = ["trial", "state", *names, f"{search['objective']} {arrow}", *(f"{s} {quality}" for s in splits)]
    # dropped last: the trial, its state, its objective
    priorities = [0, 1, *(3 for _ in names), 2, *({"val": 6, "test": 4}[s] for s in splits), 5]
    cells = list(zip(*rows)) if rows else [() for _ in priorities]
    columns = [Column(h, list(c), p) for h, c, p in zip([*headers, "seeds ok"], cells, priorities, strict=True)]
    lines = wrapped(
        [
            f"search {document['sweep']}: {search['n_trials']} of {search['trials']} trials ({search['sampler']}, "
            f"pruning: {search['prune']}): {search['n_complete']} complete, {search['n_pruned']} pruned, "
            f"{search['n_failed']} failed" + (f", {search['n_running']} running" if search["n_running"] else "")
        ]
    )
    lines.append(fit(columns, width(), "a wider terminal or the results file"))
    best = document["best"]
    if best is not None:
        q = best["metric"]
        values = ", ".join(f"{k}={_cell(v)}" for k, v in best["values"].items())
        validation = f"; validation {q} {best[f'val_{q}_mean']:.4f} ± {best[f'val_{q}_std']:.4f}"
        said = (
            f"best: trial {best['trial']} ({values}): {search['objective']} {best['objective']:.4f}"
            f"{validation if search['objective'] != f'val_{q}' else ''}; held-out test {q} "
            f"{best[f'test_{q}_mean']:.4f} ± {best[f'test_{q}_std']:.4f}"
        )
        lines += wrapped([said])
    if search["importance"]:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in search["importance"].items())
        lines += wrapped([f"importance (Optuna's fANOVA over the complete trials): {shown}"])
    elif search.get("importance_error"):
        lines += wrapped([f"importance: none ({search['importance_error']})"])
    return "\n".join(lines)


def plot(document: dict[str, Any], path: Path) -> None:
    """The objective of each trial in order (complete ones, pruned ones at their last reported epoch's
    objective, the best so far as a line) and each parameter's importance, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    search = document["search"]
    figure, (trials_axis, importance_axis) = plt.subplots(1, 2, figsize=(11, 4))
    log = [t for t in search["log"] if t["objective"] is not None]
    for state, marker in (("complete", "o"), ("pruned", "x")):
        shown = [t for t in log if t["state"] == state]
        trials_axis.plot(
            [t["number"] for t in shown], [t["objective"] for t in shown], marker, linestyle="", label=state
        )
    complete = [t for t in log if t["state"] == "complete"]
    if complete:
        pick = max if search["direction"] == "maximize" else min
        best = [pick(t["objective"] for t in complete if t["number"] <= c["number"]) for c in complete]
        last = max(t["number"] for t in log)  # the line runs on to the last trial, whatever its state
        numbers = [t["number"] for t in complete] + [last]
        trials_axis.step(numbers, best + best[-1:], where="post", label="best so far")
    trials_axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    trials_axis.set_xlabel("trial")
    trials_axis.set_ylabel(search["objective"])
    trials_axis.legend(fontsize="small")
    importance = search["importance"] or {}
    importance_axis.barh(list(importance)[::-1], list(importance.values())[::-1])
    importance_axis.set_xlabel("importance (fANOVA)" if importance else "importance: too few complete trials")
    figure.suptitle(f"search {document['sweep']}: {search['objective']} of each trial")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
