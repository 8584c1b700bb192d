"""A sweep's [search]: the file's section parsed and refused as run_sweep.sh refuses, and the Optuna study
driven as the runner drives it (real Optuna, real storage; the runs' training stood in for by figures
computed from the trial's values, so that every objective, report and prune can be checked by hand)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request

import optuna
import pytest
from ntn.tracking import run_id
from optuna.trial import TrialState

from experiments import search as search_module
from experiments.search import SearchStudy, runs_left, storage_path
from experiments.settings import SettingError
from experiments.sweepfile import Range, SweepError, load

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = [0, 1]
N_EPOCHS = 6

GOOD = f"""
name = "find"
model = "mpo2"
seeds = {SEEDS}
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = {N_EPOCHS}
[search]
sampler = "tpe"
trials = 12
objective = "val_r2"
prune = "median"
[search.space]
bond_dim = {{low = 2, high = 8}}
jitter_start = {{low = 0.001, high = 1.0, log = true}}
l = [3, 4]
"""


def sweep_file(tmp_path, text=GOOD):
    path = tmp_path / "find.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---- the file -------------------------------------------------------------------------------------------


def test_a_search_section_is_read_with_its_space(tmp_path):
    sweep = load(sweep_file(tmp_path))
    search = sweep.search
    assert (search.sampler, search.trials, search.objective, search.prune) == ("tpe", 12, "val_r2", "median")
    assert search.maximise
    assert search.space == {
        "bond_dim": Range(2, 8, False, True),
        "jitter_start": Range(0.001, 1.0, True, False),
        "l": [3, 4],
    }
    assert sweep.configurations == [] and sweep.grid == {}
    trial = sweep.trial(7, {"bond_dim": 5, "jitter_start": 0.01, "l": 4})
    assert trial.settings.experiment_name == "find_trial7"
    assert (trial.settings.bond_dim, trial.settings.jitter_start, trial.settings.l) == (5, 0.01, 4)
    assert trial.settings.n_epochs == N_EPOCHS and trial.settings.seeds == SEEDS
    assert trial.tracked == {"sweep": "find", "swept": {"bond_dim": 5, "jitter_start": 0.01, "l": 4}, "trial": 7}


def test_the_shipped_search_file_reads_as_the_docs_say():
    sweep = load(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sweeps" / "bond_search.toml")
    assert (sweep.search.sampler, sweep.search.trials, sweep.search.prune) == ("tpe", 20, "median")
    assert sweep.search.space["l"] == [3, 4] and sweep.seeds == [0, 1]
    assert sweep.trial(0, {"bond_dim": 6, "jitter_start": 0.01, "l": 3}).settings.dataset == "california_housing"


def test_a_loss_objective_is_minimised(tmp_path):
    sweep = load(sweep_file(tmp_path, GOOD.replace('objective = "val_r2"', 'objective = "val_loss"')))
    assert sweep.search.objective == "val_loss" and not sweep.search.maximise


BAD = [
    ('sampler = "tpe"', 'sampler = "bayes"', "search.sampler='bayes' must be one of: tpe, random, cmaes, grid"),
    ('prune = "median"', 'prune = "asha"', "search.prune='asha' must be one of: median, hyperband, none"),
    ('objective = "val_r2"', 'objective = "test_r2"', "search.objective='test_r2' must be one of: val_r2, val_loss"),
    ("trials = 12", "trials = 0", "search.trials=0 must be an integer >= 1"),
    ("trials = 12", "trials = 12\nseed = 3", "search.seed is not a search setting; allowed:"),
    ("l = [3, 4]", "l = [3, 4]\nbond_dimm = [2]", "search.space.bond_dimm is not a setting; allowed: model,"),
    ("high = 8}", "high = 2}", "search.space.bond_dim: low=2 must be below high=2"),
    ("low = 2, high = 8}", "low = 2.5, high = 8}", "search.space.bond_dim.low=2.5 must be an integer"),
    ("low = 2, high = 8}", "low = 0, high = 8}", "search.space.bond_dim='0' must be an integer >= 1"),
    ("low = 0.001, high = 1.0", "low = 0.0, high = 1.0", "search.space.jitter_start: low=0.0 must be > 0 on a log"),
    ("log = true}", "log = true, step = 2}", "search.space.jitter_start.step is not part of a range; a range has:"),
    ("l = [3, 4]", "l = [3, 4]\nselect = {low = 1, high = 2}", "search.space.select is not a number setting"),
    ("l = [3, 4]", "l = [3, 3]", "search.space.l=[3, 3] repeats a value"),
    ("l = [3, 4]", "l = []", "search.space.l must be a non-empty list of values"),
    ("l = [3, 4]", "l = [3, [4]]", "search.space.l=[3, [4]]: each value must be a number, a string or a boolean"),
    ("n_epochs = 6", "n_epochs = 6\nbond_dim = 4", "bond_dim is both in [settings] and in [search.space]"),
    ("n_epochs = 6", "n_epochs = 6\noutput_site = 3", "OUTPUT_SITE=3 must be in [0, L) = [0, 3)"),
    ("[search]", "[grid]\nl = [3]\n[search]", "a sweep file has a [grid] or a [search], not both"),
    ('sampler = "tpe"', 'sampler = "grid"', "search.space.jitter_start is a range of reals (or on a log scale): the"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_a_bad_search_is_refused_in_one_line(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(SweepError) as caught:
        load(sweep_file(tmp_path, GOOD.replace(old, new, 1)))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_space_that_mixes_regression_and_classification_is_refused(tmp_path):
    text = GOOD.replace('dataset = "synthetic"\n', "").replace(
        "l = [3, 4]", 'l = [3, 4]\ndataset = ["synthetic", "iris"]'
    )
    with pytest.raises(SweepError, match="the search's space mixes regression and classification data sets"):
        load(sweep_file(tmp_path, text))


def test_the_grid_sampler_takes_no_more_trials_than_its_points(tmp_path):
    text = (
        GOOD.replace('sampler = "tpe"', 'sampler = "grid"')
        .replace(", log = true", "")
        .replace("jitter_start = {low = 0.001, high = 1.0}", "jitter_start = [0.01, 0.1]")
    )
    assert load(sweep_file(tmp_path, text)).search.sampler == "grid"  # 7 × 2 × 2 = 28 points >= 12 trials
    with pytest.raises(SweepError, match=r"search.trials=30 is more than the 28 points of the grid sampler's space"):
        load(sweep_file(tmp_path, text.replace("trials = 12", "trials = 30")))


def test_run_sweep_refuses_a_bad_search_with_rc_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from experiments import sweep as sweep_module

    path = sweep_file(tmp_path, GOOD.replace('sampler = "tpe"', 'sampler = "bayes"'))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert sweep_module.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "search.sampler='bayes'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_search_without_optuna_installed_is_refused_in_one_line_naming_the_extra(tmp_path):
    """Failed before: a traceback (ModuleNotFoundError) from a sweep process without the search extra."""
    path = sweep_file(tmp_path)
    code = "import sys; sys.modules['optuna'] = None; from experiments.sweep import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "a [search] needs Optuna, and optuna is not installed: pip install" in done.stderr
    assert "'./core[search]'" in done.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["find.toml"]


# ---- the study, driven as the runner drives it ----------------------------------------------------------


def final_r2(values: dict, seed: int) -> float:
    """The figure a trial's seed reaches: best at bond_dim 6, l 4, jitter_start 0.01 (a smooth bowl)."""
    return (
        0.8
        - 0.01 * (values["bond_dim"] - 6) ** 2
        - 0.02 * math.log10(values["jitter_start"] / 0.01) ** 2
        - 0.05 * (values["l"] != 4)
        + 0.002 * seed
    )


def curve(values: dict, seed: int, epoch: int) -> float:
    """Its epoch's val_r2: rising towards the final figure."""
    return final_r2(values, seed) - 0.3 / (epoch + 1)


def entry_of(task, status="finished", last=N_EPOCHS - 1, held_out=True):
    """A run's results entry: a failed one raised in training (no figures), or failed on its held-out figure
    alone (`held_out=False`: trained to the end, its test R² no better than the mean's)."""
    if status == "failed" and held_out:
        return {"seed": task.seed, "test_loss": None, "test_r2": None, "success": False, "status": status} | {
            "error": "boom"
        }
    r2 = curve(task.configuration.values, task.seed, last)
    return {
        "seed": task.seed,
        "test_loss": 1 - r2,
        "test_r2": r2 - 0.01 if held_out else -0.01,
        "success": status == "finished",
        "status": status,
        "val_r2": r2,
        "val_loss": 1 - r2,
        "train_r2": r2 + 0.05,
    } | ({} if held_out else {"error": "no better than the trivial predictor on the held-out test split"})


class Driver:
    """The runner's side of the protocol, in this process: `workers` runs at a time, an epoch each in turn;
    a run told to stop ends pruned at its next epoch; `fail(task)` says which runs fail at their end;
    `crash_after` ends the drive (as a SIGKILL would) after that many runs have ended; with `late_stop`, a
    stop comes too late for every run (its worker trained its last epochs before the stop reached it)."""

    def __init__(self, study, workers=2, fail=lambda task: False, crash_after=None, late_stop=False, held_out=True):
        self.study, self.workers, self.fail, self.crash_after = study, workers, fail, crash_after
        self.held_out = held_out  # False: a run that fails, fails on its held-out figure alone
        self.late_stop = late_stop  # a stop reaches no run before its last epoch: every run finishes
        self.trained, self.stopped, self.ended = [], [], 0

    def drive(self):
        running = {}  # run id -> [its task, its next epoch] (a Task holds dicts: no key)
        while True:
            for task in self.study.next_tasks(self.workers - len(running)):
                running[task.run_id] = [task, 0]
                self.trained.append(task)
            if not running:
                return self
            for key, (task, epoch) in list(running.items()):
                if task in self.stopped and not self.late_stop:  # stopped at its next epoch boundary
                    del running[key]
                    self.study.on_end(task, entry_of(task, "pruned", last=epoch - 1))
                    continue
                values = task.configuration.values
                scores = {"val_r2": curve(values, task.seed, epoch), "val_loss": 1 - curve(values, task.seed, epoch)}
                self.stopped += self.study.on_epoch(task, epoch, scores)
                running[key][1] += 1
                if epoch + 1 == N_EPOCHS:
                    del running[key]
                    status = "failed" if self.fail(task) else "finished"
                    self.study.on_end(task, entry_of(task, status, held_out=self.held_out))
                    self.ended += 1
                    if self.crash_after is not None and self.ended >= self.crash_after:
                        return self


def stored_at(output):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage_path(output))))
    return optuna.load_study(study_name="find", storage=storage)


def stored(tmp_path):
    return stored_at(tmp_path / "results.json")


def written_id(tmp_path):
    return json.loads((tmp_path / "results.json").read_text())["sweep_id"]


def named(study):
    """The latest Optuna trial of each trial name."""
    latest = {}
    for t in study.get_trials():
        latest[t.user_attrs["trial"]] = t
    return latest


def test_a_search_asks_trains_each_seed_reports_prunes_and_tells(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # the table's width: its lines unwrapped
    sweep = load(sweep_file(tmp_path))
    study = SearchStudy(sweep, tmp_path / "results.json")
    driver = Driver(study).drive()
    document = study.finish()

    optuna_study = stored(tmp_path)
    trials = optuna_study.get_trials()
    assert len(trials) == 12 and {t.user_attrs["trial"] for t in trials} == set(range(12))
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states and TrialState.FAIL not in states
    for t in trials:
        values = t.params
        # each reported epoch: the mean over the seeds of that epoch's objective
        for epoch, reported in t.intermediate_values.items():
            assert reported == pytest.approx(statistics.fmean(curve(values, s, epoch) for s in SEEDS), rel=1e-12)
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(statistics.fmean(curve(values, s, N_EPOCHS - 1) for s in SEEDS))
            assert sorted(t.intermediate_values) == list(range(N_EPOCHS))
        else:  # pruned before its last epoch; both its runs were stopped
            assert max(t.intermediate_values) < N_EPOCHS - 1
            runs = [task for task in driver.trained if task.configuration.trial == t.number]
            assert sorted(r.seed for r in runs) == SEEDS and all(r in driver.stopped for r in runs)
    # every run trained once, each a tracked run named and identified as a grid's
    assert len(driver.trained) == len({(t.configuration.settings.experiment_name, t.seed) for t in driver.trained})
    first = driver.trained[0]
    assert first.run_id == run_id("find_trial0_seed0", written_id(tmp_path))

    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(document))
    by_name = {c["experiment"]: c for c in written["configurations"]}
    for t in trials:
        runs = by_name[f"find_trial{t.number}"]["runs"]
        expected = "pruned" if t.state == TrialState.PRUNED else "finished"
        assert [r["status"] for r in runs] == [expected] * len(SEEDS)
    assert written["n_pruned"] == len(SEEDS) * states.count(TrialState.PRUNED) and written["n_failed"] == 0
    search = written["search"]
    assert (search["n_trials"], search["n_complete"], search["n_pruned"]) == (
        12,
        states.count(TrialState.COMPLETE),
        states.count(TrialState.PRUNED),
    )
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert written["best"]["trial"] == best.number and written["best"]["objective"] == pytest.approx(best.value)
    test_mean = statistics.fmean(curve(best.params, s, N_EPOCHS - 1) - 0.01 for s in SEEDS)
    assert written["best"]["test_r2_mean"] == pytest.approx(test_mean)
    importance = search["importance"]
    assert set(importance) == {"bond_dim", "jitter_start", "l"}
    assert sum(importance.values()) == pytest.approx(1.0)

    text = search_module.table(written)
    counts = f"{search['n_complete']} complete, {search['n_pruned']} pruned, 0 failed"
    assert f"12 of 12 trials (tpe, pruning: median): {counts}" in text
    assert f"best: trial {best.number} (" in text and "held-out test r2" in text and "importance" in text
    search_module.plot(written, tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trial_whose_runs_all_finished_before_the_stop_reached_them_is_complete_not_pruned(tmp_path):
    """Failed before: such a trial was told pruned at the epoch of the pruner's decision, its runs all finished
    (results file, trackers) with their figures, left out of the best trial and of the sampler's model."""
    study = SearchStudy(load(sweep_file(tmp_path)), tmp_path / "results.json")
    driver = Driver(study, late_stop=True).drive()
    written = study.finish()
    assert driver.stopped  # the pruner said so, for some trials
    trials = stored(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    for t in trials:
        assert t.value == pytest.approx(statistics.fmean(curve(t.params, s, N_EPOCHS - 1) for s in SEEDS))
    assert written["n_pruned"] == 0 and written["search"]["n_pruned"] == 0 and written["search"]["n_complete"] == 12
    best = max(trials, key=lambda t: t.value)
    assert written["best"]["trial"] == best.number


def test_optuna_dashboard_opens_the_study(tmp_path):
    """`optuna-dashboard results_sweep_{name}.optuna.log`, as the docs say, serves the study's trials."""
    study = SearchStudy(load(sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3"))), tmp_path / "r.json")
    Driver(study).drive()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = str(pathlib.Path(sys.executable).parent / "optuna-dashboard")
    storage = str(storage_path(tmp_path / "r.json"))
    server = subprocess.Popen(
        [dashboard, storage, "--port", str(port), "--quiet"], cwd=tmp_path, stderr=subprocess.PIPE
    )
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.1)
        (found,) = studies
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{found['study_id']}", timeout=5) as answer:
            trials = json.loads(answer.read())["trials"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert found["study_name"] == "find" and [t["state"] for t in trials] == ["Complete"] * 3


def test_a_rerun_trains_nothing_and_more_trials_train_only_the_new_ones(tmp_path):
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 4"))
    output = tmp_path / "results.json"
    assert runs_left(load(path), output) == 4 * len(SEEDS) and not storage_path(output).exists()
    first = Driver(SearchStudy(load(path), output)).drive()
    assert len(first.trained) == 4 * len(SEEDS)
    assert runs_left(load(path), output) == 0
    again = SearchStudy(load(path), output)
    assert again.next_tasks(8) == []
    again.finish()
    assert len(stored(tmp_path).get_trials()) == 4

    path.write_text(path.read_text().replace("trials = 4", "trials = 7"))
    assert runs_left(load(path), output) == 3 * len(SEEDS)
    more = Driver(SearchStudy(load(path), output)).drive()
    assert {t.configuration.trial for t in more.trained} == {4, 5, 6}
    assert len(more.trained) == 3 * len(SEEDS)
    assert len(stored(tmp_path).get_trials()) == 7


def test_a_killed_search_resumes_its_trial_and_trains_only_the_runs_not_recorded(tmp_path):
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3").replace('"median"', '"none"'))
    output = tmp_path / "results.json"
    killed = Driver(SearchStudy(load(path), output), workers=1, crash_after=3).drive()  # trial 1's seed 0 ended
    assert [(t.configuration.trial, t.seed) for t in killed.trained] == [(0, 0), (0, 1), (1, 0)]
    before = named(stored(tmp_path))
    assert before[1].state == TrialState.RUNNING and before[1].user_attrs["curve_seed0"] == pytest.approx(
        [curve(before[1].params, 0, e) for e in range(N_EPOCHS)]
    )

    resumed = Driver(SearchStudy(load(path), output), workers=1).drive()
    assert [(t.configuration.trial, t.seed) for t in resumed.trained] == [
        (1, 1),
        (3, 0),
        (3, 1),
    ]  # trial 1 asked again as number 2
    study = stored(tmp_path)
    after = named(study)
    assert sorted(after) == [0, 1, 3] and all(t.state == TrialState.COMPLETE for t in after.values())
    assert after[1].params == before[1].params and after[1].number != before[1].number
    assert study.trials[before[1].number].state == TrialState.FAIL  # the killed attempt
    # seed 0's epochs (recorded before the kill) and seed 1's make every epoch's report of the resumed trial
    assert after[1].intermediate_values == pytest.approx(
        {e: statistics.fmean(curve(after[1].params, s, e) for s in SEEDS) for e in range(N_EPOCHS)}
    )
    written = resumed.study.finish()
    assert written["sweep_id"] == study.user_attrs["sweep_id"]  # the killed call wrote only the journal
    runs = {c["experiment"]: c["runs"] for c in json.loads(output.read_text())["configurations"]}
    assert [r["seed"] for r in runs["find_trial1"]] == SEEDS


def test_a_failed_trial_is_trained_again_on_rerun_only_for_its_failed_seed(tmp_path):
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3"))
    output = tmp_path / "results.json"
    failing = Driver(SearchStudy(load(path), output), fail=lambda t: (t.configuration.trial, t.seed) == (1, 1))
    failing.drive().study.finish()
    written = json.loads(output.read_text())
    assert written["n_failed"] == 1 and written["search"]["n_failed"] == 1
    assert named(stored(tmp_path))[1].state == TrialState.FAIL

    again = Driver(SearchStudy(load(path), output)).drive()
    assert [(t.configuration.trial, t.seed) for t in again.trained] == [(1, 1)]
    after = named(stored(tmp_path))
    assert after[1].state == TrialState.COMPLETE
    assert after[1].value == pytest.approx(statistics.fmean(curve(after[1].params, s, N_EPOCHS - 1) for s in SEEDS))
    again.study.finish()
    assert json.loads(output.read_text())["n_failed"] == 0


def test_a_trial_whose_seed_failed_on_its_held_out_figure_alone_is_told_its_validation_mean(tmp_path):
    """Failed before: such a trial was failed, so the test split decided which trial was best, the sampler
    never learnt the region, and a rerun asked it again to fail the same way."""
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3"))
    output = tmp_path / "results.json"
    failing = lambda t: (t.configuration.trial, t.seed) == (1, 1)  # noqa: E731
    Driver(SearchStudy(load(path), output), fail=failing, held_out=False).drive().study.finish()
    trial = named(stored(tmp_path))[1]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(statistics.fmean(curve(trial.params, s, N_EPOCHS - 1) for s in SEEDS))
    written = json.loads(output.read_text())
    assert written["n_failed"] == 1 and written["search"]["n_failed"] == 0  # the run failed, its trial did not
    assert runs_left(load(path), output) == 0


def test_a_results_file_and_a_storage_of_other_studies_are_refused(tmp_path):
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 2"))
    output = tmp_path / "results.json"
    Driver(SearchStudy(load(path), output)).drive().study.finish()

    storage = storage_path(output)
    kept = storage.read_bytes()
    storage.unlink()
    with pytest.raises(SettingError, match=r"holds trials of a study whose Optuna storage .* is gone"):
        SearchStudy(load(path), output)
    assert not storage.exists()  # nothing written

    storage.write_bytes(kept)
    output.rename(tmp_path / "elsewhere.json")
    with pytest.raises(SettingError, match=r"holds trials whose results file .* is gone"):
        SearchStudy(load(path), output)

    (tmp_path / "elsewhere.json").rename(output)
    loss = load(sweep_file(tmp_path, path.read_text().replace('"val_r2"', '"val_loss"')))
    with pytest.raises(SettingError, match="holds a study of objective 'val_r2', not 'val_loss'"):
        SearchStudy(loss, output)
    assert storage.read_bytes() == kept


def test_a_failed_trial_is_left_failed_with_keep_failed(tmp_path):
    """Failed before: run_sweep.sh's --keep-failed was ignored by a search, which asked its failed trials again."""
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3"))
    output = tmp_path / "results.json"
    failing = Driver(SearchStudy(load(path), output), fail=lambda t: (t.configuration.trial, t.seed) == (1, 1))
    failing.drive().study.finish()
    assert runs_left(load(path), output, retry_failed=False) == 0 and runs_left(load(path), output) == len(SEEDS)
    kept = SearchStudy(load(path), output, retry_failed=False)
    assert kept.next_tasks(4) == [] and kept.retries == 0
    kept.finish()
    study = stored(tmp_path)
    assert len(study.trials) == 3 and named(study)[1].state == TrialState.FAIL
    assert json.loads(output.read_text())["search"]["n_failed"] == 1


def test_run_sweep_closes_a_search_of_failed_trials_saying_to_narrow_its_space(tmp_path, capsys):
    """Failed before: its closing line said to change the settings of trials whose settings the sampler chose."""
    from experiments import sweep as sweep_module

    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 3"))
    output = tmp_path / "results.json"
    Driver(SearchStudy(load(path), output), fail=lambda t: t.configuration.trial == 1).drive().study.finish()
    options = sweep_module.Options("local", 2, None, output, keep_failed=True)
    study = SearchStudy(load(path), output, retry_failed=False)
    assert sweep_module._run_search(load(path), options, study, None, []) == 1
    closing = capsys.readouterr().err.strip()
    assert closing.startswith('2 runs failed in training (find_trial1 seeds 0, 1: "boom")'), closing
    assert closing.endswith(
        "fail the same way: narrow the space (a rerun asks their trials again, with --keep-failed it leaves them); "
        f"every error is in {output}"
    )


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("high = 8}", "high = 9}", "search.space.bond_dim = {low = 2, high = 8}, not {low = 2, high = 9}"),
        ("log = true}", "log = false}", "jitter_start = {low = 0.001, high = 1.0, log = true}, not {low = 0.001,"),
        ("l = [3, 4]", "l = [3, 4, 5]", "search.space.l = [3, 4], not [3, 4, 5]"),
        (
            "l = [3, 4]",
            "l = [3, 4]\ninit_strength = [0.1, 0.2]",
            "search.space.init_strength = nothing, not [0.1, 0.2]",
        ),
        ("seeds = [0, 1]", "seeds = [0, 1, 2]", "seeds = [0, 1], not [0, 1, 2]"),
    ],
)
def test_a_changed_space_or_seeds_under_the_same_name_is_refused_and_nothing_written(tmp_path, old, new, said):
    """Failed before: the study went on, its earlier trials (of another space, or over other seeds) ranked and
    fed to the sampler with the new ones, and the results file's `space` saying only the new one."""
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 2"))
    output = tmp_path / "results.json"
    Driver(SearchStudy(load(path), output)).drive().study.finish()
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new).replace("trials = 2", "trials = 4"))
    with pytest.raises(SettingError) as refused:
        SearchStudy(load(path), output)
    assert said in str(refused.value) and "\n" not in str(refused.value), refused.value
    assert f"{storage_path(output)} holds a study with " in str(refused.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != path.name} == {
        k: v for k, v in kept.items() if k != path.name
    }


@pytest.mark.parametrize("damage", ["cut short", "a bad line"])
def test_a_damaged_journal_is_refused_in_one_line_and_left_as_it_is(tmp_path, damage):
    """Failed before: a traceback (JSONDecodeError), and a last line cut short was appended to by Optuna, which
    made the journal unreadable for good."""
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 2"))
    output = tmp_path / "results.json"
    Driver(SearchStudy(load(path), output)).drive().study.finish()
    storage = storage_path(output)
    lines = storage.read_bytes().splitlines(keepends=True)
    damaged = (
        b"".join(lines[:-1]) + lines[-1][:40] if damage == "cut short" else b"".join([lines[0], b"{oops\n", *lines[1:]])
    )
    storage.write_bytes(damaged)
    said = f"its line {len(lines)} is cut short" if damage == "cut short" else "its line 2: Expecting property name"
    for attempt in (lambda: runs_left(load(path), output), lambda: SearchStudy(load(path), output)):
        with pytest.raises(SettingError) as refused:
            attempt()
        assert f"{storage}: cannot open the Optuna study ({said}" in str(refused.value), refused.value
        assert str(refused.value).endswith("; move it away") and "\n" not in str(refused.value)
        assert storage.read_bytes() == damaged


@pytest.mark.parametrize("sampler", ["random", "cmaes", "grid"])
@pytest.mark.parametrize("prune", ["hyperband", "none"])
def test_every_sampler_and_pruner_runs_a_study(tmp_path, sampler, prune):
    text = GOOD.replace("trials = 12", "trials = 6").replace('"tpe"', f'"{sampler}"').replace('"median"', f'"{prune}"')
    if sampler == "grid":
        text = text.replace("{low = 0.001, high = 1.0, log = true}", "[0.01, 0.1]")
    study = SearchStudy(load(sweep_file(tmp_path, text)), tmp_path / "results.json")
    Driver(study).drive()
    trials = named(stored(tmp_path))
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials.values())
    if prune == "none":
        assert all(t.state == TrialState.COMPLETE for t in trials.values())
    if sampler == "grid":
        assert len({tuple(sorted(t.params.items())) for t in trials.values()}) == 6  # no point twice


def test_a_trial_of_one_worker_hands_out_its_seeds_one_at_a_time(tmp_path):
    study = SearchStudy(load(sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 2"))), tmp_path / "r.json")
    first = study.next_tasks(1)
    assert [(t.configuration.trial, t.seed) for t in first] == [(0, 0)]
    assert [(t.configuration.trial, t.seed) for t in study.next_tasks(1)] == [(0, 1)]  # the same trial's next seed
    assert [(t.configuration.trial, t.seed) for t in study.next_tasks(3)] == [(1, 0), (1, 1)]
    assert study.next_tasks(3) == []  # both trials asked: it waits for them


# ---- through run_sweep.sh ---------------------------------------------------------------------------------

SCRIPT = """
name = "find"
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "synthetic"
n_samples = 300
n_epochs = {epochs}
[search]
trials = {trials}
prune = "{prune}"
[search.space]
bond_dim = {{low = 2, high = 6}}
jitter_start = {{low = 0.001, high = 1.0, log = true}}
l = [3, 4]
"""


def run_sweep(tmp_path, *args, background=False):
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "AIM_REPO", "TRACKER_DIR")}
    env |= {"PYTHON": sys.executable, "TRACKER_BACKEND": "file"}
    command = ["bash", str(REPO / "experiments" / "run_sweep.sh"), "find.toml", *args]
    if background:
        return subprocess.Popen(
            command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def run_files(tmp_path):
    """Each run file's name -> (its status, its config's trial, when it was last written)."""
    return {
        p.stem: (
            json.loads(p.read_text())["summary"]["status"],
            json.loads(p.read_text())["config"]["trial"],
            p.stat().st_mtime_ns,
        )
        for p in (tmp_path / "experiment_logs").glob("find_trial*.json")
    }


@pytest.mark.slow
def test_run_sweep_trains_a_search_records_its_pruned_runs_and_resumes_exactly_once(tmp_path):
    (tmp_path / "find.toml").write_text(SCRIPT.format(epochs=8, trials=8, prune="median"))
    first = run_sweep(tmp_path, "--workers", "2")
    document = json.loads((tmp_path / "results_sweep_find.json").read_text())
    failed = document["search"]["n_failed"]
    assert first.returncode == (1 if failed else 0), first.stderr
    assert first.stdout.splitlines()[-1].startswith("runs recorded by file: experiment_logs/; compare them: ")
    study = stored_at(tmp_path / "results_sweep_find.json")
    latest = named(study)
    assert sorted(latest) == [t.number for t in study.trials] == list(range(8))
    files = run_files(tmp_path)
    assert len(files) == 16
    for number, trial in latest.items():
        statuses = {files[f"find_trial{number}_seed{s}"][0] for s in SEEDS}
        assert {f"find_trial{number}_seed{s}" for s in SEEDS} <= set(files)
        assert all(files[f"find_trial{number}_seed{s}"][1] == number for s in SEEDS)  # the trial, in its runs' config
        if trial.state == TrialState.PRUNED:  # a seed may end before the stop reaches it
            assert "pruned" in statuses and statuses <= {"pruned", "finished"}
        elif trial.state == TrialState.COMPLETE:
            assert statuses == {"finished"}
            runs = {
                r["seed"]: r
                for c in document["configurations"]
                if c["experiment"] == f"find_trial{number}"
                for r in c["runs"]
            }
            assert trial.value == pytest.approx(statistics.fmean(runs[s]["val_r2"] for s in SEEDS), rel=1e-12)
    assert document["n_pruned"] == sum(s == "pruned" for s, _, _ in files.values())
    assert f"8 of 8 trials (tpe, pruning: median): {document['search']['n_complete']} complete" in first.stdout
    assert (tmp_path / "results_sweep_find.png").read_bytes()[:4] == b"\x89PNG"

    again = run_sweep(tmp_path, "--workers", "2")
    assert again.returncode == first.returncode and run_files(tmp_path) == files  # nothing trained, nothing written
    assert len(stored_at(tmp_path / "results_sweep_find.json").trials) == 8 + failed

    (tmp_path / "find.toml").write_text(SCRIPT.format(epochs=8, trials=10, prune="median"))
    more = run_sweep(tmp_path, "--workers", "2")
    after = run_files(tmp_path)
    assert {k: v for k, v in after.items() if k in files} == files
    assert sorted({trial for _, trial, _ in after.values()} - {trial for _, trial, _ in files.values()}) == [
        8 + failed,
        9 + failed,
    ], more.stderr


@pytest.mark.slow
def test_a_search_interrupted_mid_trial_trains_only_that_trials_missing_seed_when_run_again(tmp_path):
    (tmp_path / "find.toml").write_text(SCRIPT.format(epochs=300, trials=2, prune="none"))
    first = run_sweep(tmp_path, "--workers", "1", background=True)
    journal = tmp_path / "results_sweep_find.journal.jsonl"
    deadline = time.monotonic() + 300
    second_run = tmp_path / "experiment_logs" / "find_trial0_seed1.json"
    while not (journal.exists() and journal.read_text().count("\n") >= 1 and second_run.exists()):  # seed 0
        if first.poll() is not None or time.monotonic() > deadline:  # recorded, seed 1 started
            first.kill()
            pytest.fail(first.communicate()[1])
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "run the same command again to go on with the search" in err, err
    files = run_files(tmp_path)
    assert files["find_trial0_seed0"][0] == "finished" and files["find_trial0_seed1"][0] == "interrupted"
    assert named(stored_at(tmp_path / "results_sweep_find.json"))[0].state == TrialState.RUNNING

    second = run_sweep(tmp_path, "--workers", "1")
    assert second.returncode in (0, 1), second.stderr
    after = run_files(tmp_path)
    assert after["find_trial0_seed0"] == files["find_trial0_seed0"]  # recorded: not trained again
    assert after["find_trial0_seed1"][0] == "finished"
    study = stored_at(tmp_path / "results_sweep_find.json")
    assert [(t.number, t.state, t.user_attrs["trial"]) for t in study.trials][:2] == [
        (0, TrialState.FAIL, 0),  # the interrupted attempt
        (1, TrialState.COMPLETE, 0),  # asked again under its name, with its values
    ]
    assert study.trials[1].params == study.trials[0].params
    assert sorted(named(study)) == [0, 2]


@pytest.mark.slow
def test_a_search_on_a_dask_cluster_reports_every_epoch_to_the_driver(tmp_path):
    (tmp_path / "find.toml").write_text(SCRIPT.format(epochs=5, trials=3, prune="none"))
    done = run_sweep(tmp_path, "--executor", "dask", "--workers", "2")
    assert done.returncode in (0, 1), done.stderr
    study = stored_at(tmp_path / "results_sweep_find.json")
    document = json.loads((tmp_path / "results_sweep_find.json").read_text())
    runs = {c["experiment"]: c["runs"] for c in document["configurations"]}
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == list(range(5))  # each epoch, from the workers, as it ended
        curves = [json.loads((tmp_path / "experiment_logs" / f"find_trial{trial.number}_seed{s}.json").read_text())
                  for s in SEEDS]  # fmt: skip
        for epoch, reported in trial.intermediate_values.items():
            values = [next(m["val_r2"] for m in c["metrics_log"] if m["step"] == epoch) for c in curves]
            assert reported == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert trial.value == pytest.approx(statistics.fmean(r["val_r2"] for r in runs[f"find_trial{trial.number}"]))


def test_the_search_table_fits_80_and_120_columns_dropping_whole_columns(tmp_path, monkeypatch):
    """#40 finding 4, for a search: its table was 117 columns wide whatever the terminal."""
    path = sweep_file(tmp_path, GOOD.replace("trials = 12", "trials = 4"))
    document = Driver(SearchStudy(load(path), tmp_path / "results.json")).drive().study.finish()
    for columns, dropped in ((80, "not shown at this width: seeds ok"), (120, None)):
        monkeypatch.setenv("COLUMNS", str(columns))
        lines = search_module.table(document).splitlines()
        assert max(map(len, lines)) <= columns, lines
        header = next(line.split() for line in lines if line.startswith("trial "))
        assert header[:7] == ["trial", "state", "bond_dim", "jitter_start", "l", "val_r2", "↑"]
        assert "val" not in header[7:]  # the objective's own figure is not shown twice (it was, as "val r2")
        assert ("test" in header) and (dropped is None) == ("ok" in header)
        assert (dropped is None) == all("not shown" not in line for line in lines)
        assert dropped is None or any(line.startswith(dropped) for line in lines)
