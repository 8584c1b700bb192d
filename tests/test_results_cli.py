"""`ntn-trackers summary / compare / plot` on runs written by the real trackers."""

import csv
import io
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from ntn.tracking import start_run
from ntn_tracker_file import FileTracker

CLI = [str(pathlib.Path(sys.executable).parent / "ntn-trackers")]
RNG = np.random.default_rng(7)
EXPERIMENTS = {
    "bond_sweep_4": [dict(test_r2=v, test_loss=1 - v, r2=v + 0.05) for v in RNG.uniform(0.5, 0.7, 4)],
    "bond_sweep_8": [dict(test_r2=v, test_loss=1 - v, r2=v + 0.05) for v in RNG.uniform(0.6, 0.8, 3)],
}


def log_experiments(backend="file"):
    for name, seeds in EXPERIMENTS.items():
        for seed, figures in enumerate(seeds):
            with start_run(f"{name}_seed{seed}", {"experiment": name}, backend=backend) as run:
                run.log_metrics({"loss": 2.0, "val_loss": 2.5}, step=-1)
                for epoch in range(3):
                    run.log_metrics({"loss": 1.0 / (epoch + 1 + seed), "val_loss": 1.2 / (epoch + 1)}, step=epoch)
                run.log_summary({"seed": seed, "best_epoch": 2, "success": True, **figures})


def ntn_trackers(*args, cwd):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture
def logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    log_experiments()
    return tmp_path


def test_summary_numbers_match_an_independent_computation(logs):
    done = ntn_trackers("summary", "--format", "json", cwd=logs)
    assert done.returncode == 0, done.stderr
    rows = {r["experiment"]: r for r in json.loads(done.stdout)}
    assert sorted(rows) == sorted(EXPERIMENTS)
    for name, seeds in EXPERIMENTS.items():
        row = rows[name]
        assert row["runs"] == row["successful"] == len(seeds) and row["failed"] == {} and row["running"] == {}
        for metric, shown in (("test_r2", "test_r2"), ("test_loss", "test_loss"), ("r2", "train_r2")):
            values = np.array([s[metric] for s in seeds])
            stats = row[shown]  # the training figure named with its split
            assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std())
            assert stats["min"] == pytest.approx(values.min()) and stats["max"] == pytest.approx(values.max())
        assert row["best_epoch"] == [2] * len(seeds)
        assert list(row)[list(row).index("best_epoch") + 1 :][:2] == ["test_loss", "test_r2"]  # held-out first


def test_summary_table_and_csv(logs):
    table = ntn_trackers("summary", cwd=logs)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0] == "mean ± std over the successful runs, each at the epoch it kept"
    assert lines[1].split()[:4] == ["experiment", "ok/runs", "best", "epoch"] and "test_r2 ↑" in lines[1]
    row = next(line for line in lines if line.startswith("bond_sweep_4"))
    mean = np.mean([s["test_r2"] for s in EXPERIMENTS["bond_sweep_4"]])
    assert row.split()[1] == f"{len(EXPERIMENTS['bond_sweep_4'])}/{len(EXPERIMENTS['bond_sweep_4'])}"
    assert f"{mean:.4g} ± " in row
    rows = list(csv.DictReader(io.StringIO(ntn_trackers("summary", "--format", "csv", cwd=logs).stdout)))
    assert {r["experiment"] for r in rows} == set(EXPERIMENTS)
    r8 = next(r for r in rows if r["experiment"] == "bond_sweep_8")
    assert float(r8["test_r2_mean"]) == pytest.approx(np.mean([s["test_r2"] for s in EXPERIMENTS["bond_sweep_8"]]))


def _log_bond_runs(runs: dict[tuple[str, int], list[float]]) -> None:
    """Two seeds per experiment of `runs` ((name, bond_dim) → each seed's val_r2), by the real file tracker."""
    for (name, bond), values in runs.items():
        for seed, val in enumerate(values):
            epochs = 10 if seed == 0 or bond == 8 else 1  # bond_dim2's seed 1 was trained with other settings
            config = {"experiment": name, "bond_dim": bond, "n_epochs": epochs, "run_id": f"{name}_seed{seed}@x"}
            with start_run(f"{name}_seed{seed}", config, backend="file") as run:
                figures = {"val_r2": val, "test_r2": val - 0.01, "test_loss": 1 - val, "val_loss": 1 - val}
                run.log_summary({"seed": seed, "success": True, "r2": val, "loss": 0.5, **figures})


def _columns(table: str, first: str) -> list[str]:
    """The headers of the table in `table` whose header line starts with `first`."""
    header = next(line for line in table.splitlines() if line.startswith(first))
    return re.split(r"\s{2,}", header.strip())


SUMMARY_PRIORITY = ["experiment", "ok/runs", "val_r2 ↑", "test_r2 ↑", "settings", "test_loss ↓", "best epoch"]


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_the_terminal_dropping_whole_columns_in_their_stated_priority(tmp_path, monkeypatch, width):
    """Failed on main: `summary` was 92-107 characters wide at COLUMNS=80 (its first columns were never
    dropped) and hid test_r2 at 120; `compare` at 80 dropped the compared column; settings were shown beside
    names, and the dropped columns were not named."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    runs = {
        ("long_experiment_name_small", 2): [0.50, 0.52],
        ("long_experiment_name_large", 8): [0.71, 0.69],
        ("long_experiment_name_medium", 4): [0.61, 0.60],
    }
    _log_bond_runs(runs)
    env = dict(os.environ, COLUMNS=str(width))
    compared = ["compare", *(name for name, _ in runs)]
    for command in (["summary"], compared):
        done = subprocess.run([*CLI, *command], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        lines = done.stdout.splitlines()
        assert done.returncode == 0 and max(map(len, lines)) <= width, done.stdout
        assert lines[0].startswith("best first on val_r2 (↑ higher is better, ↓ lower)")
    table = subprocess.run([*CLI, "summary"], capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    shown = _columns(table, "experiment")
    kept = [c for c in SUMMARY_PRIORITY if c in shown]  # the shown columns are the first ones by priority
    assert kept == SUMMARY_PRIORITY[: len(kept)] and {"val_r2 ↑", "test_r2 ↑"} <= set(kept), table
    every = [*SUMMARY_PRIORITY, "val_loss ↓", "train_loss ↓", "train_r2 ↑"]
    missing = [c for c in every if c not in shown]
    note = table[table.index("not shown at this width: ") :].split("\n\n")[0] if missing else ""
    assert all(c in note for c in missing) and all(c not in note for c in shown)
    rows = [line for line in table.splitlines() if line.startswith("long_experiment")]
    if "settings" in shown:  # the names do not say the settings: they are shown, once
        assert rows[0].split()[:2] == ["long_experiment_name_large", "bond_dim=8"]
    assert [r.split()[0] for r in rows] == [  # best first
        "long_experiment_name_large",
        "long_experiment_name_medium",
        "long_experiment_name_small",
    ]
    assert "mixed: long_experiment_name_small's runs differ in n_epochs (10, 1): not one experiment" in " ".join(
        table.split()
    )
    comparison = subprocess.run([*CLI, *compared], capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert "Δ: difference of means to A (the best) ± its standard error" in " ".join(comparison.split())
    assert "A: long_experiment_name_large (n=2): bond_dim=8" in comparison
    assert "C: long_experiment_name_small (n=2): bond_dim=2" in comparison
    columns = _columns(comparison, "metric")
    assert columns == ["metric", "A", "B", "C"][: len(columns)] and len(columns) >= 3  # the last dropped first
    assert "Δ -0.19 ± " in comparison if "C" in columns else "not shown at this width: C" in comparison


def test_names_that_say_their_settings_are_not_repeated_by_a_settings_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    _log_bond_runs({("sweep_bond_dim2", 2): [0.50, 0.52], ("sweep_bond_dim8", 8): [0.71, 0.69]})
    env = dict(os.environ, COLUMNS="200")
    table = subprocess.run([*CLI, "summary"], capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert "settings" not in _columns(table, "experiment") and "bond_dim=" not in table
    comparison = subprocess.run(
        [*CLI, "compare", "sweep_bond_dim2", "sweep_bond_dim8"], capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout
    assert "A: sweep_bond_dim8 (n=2)\nB: sweep_bond_dim2 (n=2)\n" in comparison and "bond_dim=" not in comparison


def test_running_and_failed_runs_are_never_counted_as_successes(logs):
    running = FileTracker("bond_sweep_4_seed9", {"experiment": "bond_sweep_4"})  # never finalized
    running.log_summary({"success": True, "test_r2": 0.99})
    with pytest.raises(RuntimeError), start_run("bond_sweep_4_seed10", {"experiment": "bond_sweep_4"}):
        raise RuntimeError("singular system at site 1")
    done = ntn_trackers("summary", "--format", "json", cwd=logs)
    row = next(r for r in json.loads(done.stdout) if r["experiment"] == "bond_sweep_4")
    assert row["runs"] == 6 and row["successful"] == 4
    ((name, updated),) = row["running"].items()
    run_file = logs / "experiment_logs" / "bond_sweep_4_seed9.json"
    assert name == "bond_sweep_4_seed9" and updated == pytest.approx(run_file.stat().st_mtime)
    assert row["failed"] == {"bond_sweep_4_seed10": "RuntimeError: singular system at site 1"}
    assert row["test_r2"]["max"] < 0.99  # the running run's figures are not in the statistics
    table = ntn_trackers("summary", cwd=logs).stdout
    assert "running: bond_sweep_4_seed9, last record 0 min ago" in table
    assert "failed: bond_sweep_4_seed10: RuntimeError: singular system at site 1" in table


def test_damaged_and_foreign_files_are_reported_in_one_line_each_and_skipped(logs):
    (logs / "experiment_logs" / "truncated.json").write_text('{"experiment_name": "x", "metrics_log": [')
    (logs / "experiment_logs" / "foreign.json").write_text(json.dumps([1, 2, 3]))
    (logs / "experiment_logs" / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    done = ntn_trackers("summary", "--format", "json", cwd=logs)
    assert done.returncode == 0
    errors = done.stderr.splitlines()
    assert len(errors) == 3 and all(e.startswith("ntn-trackers: skipped experiment_logs/") for e in errors)
    assert {e.split("/")[1].split(":")[0] for e in errors} == {"truncated.json", "foreign.json", "binary.json"}
    assert sorted(r["experiment"] for r in json.loads(done.stdout)) == sorted(EXPERIMENTS)


HOSTILE = {
    "log_not_objects.json": {"experiment_name": "h1", "metrics_log": [1, 2], "summary": {}},
    "step_not_number.json": {"experiment_name": "h2", "metrics_log": [{"step": "x", "loss": 1}], "summary": {}},
    "config_not_object.json": {"experiment_name": "h3", "config": [1], "metrics_log": [], "summary": {}},
    "error_not_text.json": {"experiment_name": "h4", "metrics_log": [], "summary": {"success": False, "error": [1]}},
    "best_epoch_text.json": {
        "experiment_name": "h5",
        "metrics_log": [],
        "summary": {"success": True, "best_epoch": "2"},
    },
    # one that would be the newest run of its name, whatever started later
    "started_infinite.json": {"experiment_name": "h6", "metrics_log": [], "summary": {}, "started": math.inf},
    "started_text.json": {"experiment_name": "h7", "metrics_log": [], "summary": {}, "started": "yesterday"},
    "started_huge.json": {"experiment_name": "h8", "metrics_log": [], "summary": {}, "started": 10**400},
}


def test_malformed_and_hostile_run_files_never_crash_the_results_commands(logs):
    """Failed on main: each of these files made summary/plot crash with a traceback, hiding the good runs."""
    runs = logs / "experiment_logs"
    for name, document in HOSTILE.items():
        (runs / name).write_text(json.dumps(document))
    (runs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    escape = "\x1b]0;owned\x07\x1b[2J"
    (runs / "evil.json").write_text(
        json.dumps(
            {
                "experiment_name": f"evil{escape}_seed0",
                "metrics_log": [{"step": 0, "loss": 1.0}],
                "summary": {"status": "finished", "success": False, "error": f"boom{escape}"},
            }
        )
    )
    for command in (("summary",), ("summary", "--format", "csv"), ("compare", "bond_sweep_4", "bond_sweep_8")):
        done = ntn_trackers(*command, cwd=logs)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "\x1b" not in done.stdout + done.stderr and "bond_sweep_8" in done.stdout
        skipped = done.stderr.splitlines()
        assert len(skipped) == len(HOSTILE) + 1 and all(line.startswith("ntn-trackers: skipped ") for line in skipped)
    table = ntn_trackers("summary", cwd=logs).stdout
    assert "failed: evil\\x1b]0;owned\\x07\\x1b[2J_seed0: boom\\x1b" in table
    plot = ntn_trackers("plot", "--metric", "loss", "-o", "curves.png", cwd=logs)
    assert plot.returncode == 0 and (logs / "curves.png").stat().st_size > 0, plot.stderr


def test_a_relaunch_is_counted_once_by_summary_said_only_where_it_is_shown_and_still_reproducible(logs, monkeypatch):
    """Two launches of `other` into two directories (as Aim keeps both): summary counts the newest and says so;
    compare of two other experiments said it too (it counted runs it did not show), and reproduce could no
    longer find the earlier launch's run by its id."""
    for launch, r2 in (("first", 0.1), ("second", 0.9)):
        monkeypatch.setenv("TRACKER_DIR", str(logs / launch))
        with start_run("other_seed0", {"run_id": f"other_seed0@{launch}"}) as run:
            run.log_summary({"seed": 0, "success": True, "test_r2": r2})
    sources = ["--from", "file:second", "--from", "file:first", "--from", "file:experiment_logs"]  # newest read first
    summary = ntn_trackers("summary", "--format", "json", *sources, cwd=logs)
    (row,) = [r for r in json.loads(summary.stdout) if r["experiment"] == "other"]
    assert row["runs"] == 1 and row["test_r2"]["mean"] == 0.9
    assert (
        summary.stderr
        == "ntn-trackers: each run counted once, its newest launch; left out 1 run of an earlier launch\n"
    )
    compared = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_8", *sources, cwd=logs)
    assert compared.returncode == 0 and compared.stderr == "", compared.stderr
    earlier = ntn_trackers("reproduce", "other_seed0@first", *sources, cwd=logs)
    assert "cannot reproduce other_seed0@first: it was recorded by None" in earlier.stderr  # found: its record read
    assert "no recorded run is named" not in earlier.stderr, earlier.stderr


def test_from_backend_location_reads_through_any_installed_reader(logs):
    default = json.loads(ntn_trackers("summary", "--format", "json", cwd=logs).stdout)
    explicit = ntn_trackers("summary", "--format", "json", "--from", "file:experiment_logs", cwd=logs)
    assert json.loads(explicit.stdout) == default
    plot = ntn_trackers("plot", "--from", "file:experiment_logs", "-o", "from.png", cwd=logs)
    assert plot.returncode == 0 and (logs / "from.png").stat().st_size > 0, plot.stderr
    unknown = ntn_trackers("summary", "--from", "wandb:somewhere", cwd=logs)
    assert unknown.returncode == 2 and "no reader named 'wandb'; installed: " in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and "Traceback" not in unknown.stderr


def test_from_a_reader_name_alone_reads_its_default_location(logs):
    """Failed on main: `--from file` was taken as a path named "file"; now it is TRACKER_DIR's default."""
    default = json.loads(ntn_trackers("summary", "--format", "json", cwd=logs).stdout)
    alone = ntn_trackers("summary", "--format", "json", "--from", "file", cwd=logs)
    assert alone.returncode == 0 and json.loads(alone.stdout) == default, alone.stderr


def test_positional_names_filter_and_an_unknown_name_is_one_line(logs):
    """Failed on main: `plot --from mlflow:URI NAME` took NAME for a missing file and plotted everything."""
    one = ntn_trackers("summary", "--format", "json", "--from", "file:experiment_logs", "bond_sweep_8", cwd=logs)
    assert one.returncode == 0 and [r["experiment"] for r in json.loads(one.stdout)] == ["bond_sweep_8"], one.stderr
    plot = ntn_trackers("plot", "--from", "file", "bond_sweep_4", "-o", "four.png", cwd=logs)
    assert plot.returncode == 0 and (logs / "four.png").exists(), plot.stderr
    unknown = ntn_trackers("summary", "bond_sweep_5", cwd=logs)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    assert "no runs of experiment or sweep 'bond_sweep_5'; found: bond_sweep_4, bond_sweep_8" in unknown.stderr


def test_explicit_paths_and_missing_sources(logs):
    one = ntn_trackers("summary", "--format", "json", "experiment_logs/bond_sweep_8_seed0.json", cwd=logs)
    assert [r["runs"] for r in json.loads(one.stdout)] == [1]
    missing = ntn_trackers("summary", "--dir", "nowhere", cwd=logs)
    assert missing.returncode == 2 and "no runs found" in missing.stderr and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_compare_gives_the_difference_of_means_and_its_spread(logs):
    done = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_8", "--format", "json", cwd=logs)
    assert done.returncode == 0, done.stderr
    row = next(r for r in json.loads(done.stdout) if r["metric"] == "test_r2")
    a = np.array([s["test_r2"] for s in EXPERIMENTS["bond_sweep_4"]])
    b = np.array([s["test_r2"] for s in EXPERIMENTS["bond_sweep_8"]])
    diff = row["bond_sweep_8 - bond_sweep_4"]
    assert diff["difference"] == pytest.approx(b.mean() - a.mean())
    assert diff["spread"] == pytest.approx(math.sqrt(a.var() / len(a) + b.var() / len(b)))
    table = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_8", cwd=logs).stdout
    assert f"Δ {b.mean() - a.mean():+.3g} ± " in table
    unknown = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_5", cwd=logs)
    assert unknown.returncode == 2 and "no runs of experiment 'bond_sweep_5'" in unknown.stderr


def test_plot_writes_a_non_blank_png_of_the_expected_size(logs):
    import matplotlib.image

    for extra in ([], ["--band", "--log-y"]):
        out = logs / f"curves{len(extra)}.png"
        done = ntn_trackers("plot", "-o", str(out), "--metric", "loss", *extra, cwd=logs)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(out)
        image = matplotlib.image.imread(out)
        assert image.shape[:2] == (500, 900)
        assert image[..., :3].std() > 0.05  # lines drawn, not a blank canvas
    bad = ntn_trackers("plot", "--metric", "no_such_metric", cwd=logs)
    assert bad.returncode == 2 and "no run has the metric 'no_such_metric'" in bad.stderr


def test_the_plot_starts_at_epoch_0_marks_the_kept_epoch_and_says_what_it_shows(logs):
    """Failed on main: step -1 (the untrained model) squashed every curve, the legend had an entry per
    split per experiment, no title, no mark of the kept epoch."""
    from ntn.tracking.plot import draw_curves
    from ntn.tracking.readers import read_runs
    from ntn.tracking.results import group

    records, _ = read_runs("file", str(logs / "experiment_logs"))
    axes = draw_curves(group(records), "loss", log_y=False, band=False, source="experiment_logs").axes[0]
    runs = {name: len(seeds) for name, seeds in EXPERIMENTS.items()}
    title = f"loss per epoch of 2 experiments, {sum(runs.values())} runs from experiment_logs (one line per run)"
    assert axes.get_title() == title
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == [f"{name} ({n} runs)" for name, n in sorted(runs.items())] + ["train", "validation", "kept epoch"]
    curves = [line for line in axes.get_lines() if line.get_linestyle() in ("-", "--")]
    assert len(curves) == 2 * sum(runs.values()) and all(min(line.get_xdata()) == 0 for line in curves)
    kept = [list(line.get_xdata()) for line in axes.get_lines() if line.get_marker() == "o"]
    assert kept == [[2] * n for _, n in sorted(runs.items())]  # best_epoch 2 of every run


def _diverged(name: str, seed: int) -> None:
    """A run whose training diverged: its curves run to -350, and it is recorded as failed."""
    with start_run(f"{name}_seed{seed}", {"experiment": name}, backend="file") as run:
        for epoch in range(3):
            run.log_metrics({"loss": 1.0 + 100 * epoch, "val_loss": -350.0 * epoch, "val_r2": -4820.0 * epoch}, epoch)
        error = "no better than the trivial predictor on the held-out test split (test r2 -4820.000)"
        run.log_summary({"seed": seed, "best_epoch": 0, "success": False, "test_r2": -4820.0, "error": error})


def test_status_chooses_the_runs_of_summary_compare_and_plot(logs):
    """Failed on main: no --status; a failed run's curve was drawn and flattened every other."""
    _diverged("bond_sweep_2", 0)
    _diverged("bond_sweep_4", 9)
    every = {r["experiment"]: r for r in json.loads(ntn_trackers("summary", "--format", "json", cwd=logs).stdout)}
    assert every["bond_sweep_4"]["runs"] == 5 and every["bond_sweep_2"]["runs"] == 1
    done = ntn_trackers("summary", "--status", "finished", "--format", "json", cwd=logs)
    finished = {r["experiment"]: r for r in json.loads(done.stdout)}
    assert sorted(finished) == sorted(EXPERIMENTS) and finished["bond_sweep_4"]["runs"] == 4
    failed = json.loads(ntn_trackers("summary", "--status", "failed", "--format", "json", cwd=logs).stdout)
    assert sorted((r["experiment"], r["runs"]) for r in failed) == [("bond_sweep_2", 1), ("bond_sweep_4", 1)]
    both = json.loads(ntn_trackers("summary", "--status", "finished,failed", "--format", "json", cwd=logs).stdout)
    assert sum(r["runs"] for r in both) == 9
    compared = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_8", "--status", "finished", cwd=logs).stdout
    assert "failed" not in compared and "A: bond_sweep_4 (n=4)\nB: bond_sweep_8 (n=3)" in compared
    for command, failed in (("summary", 2), ("compare bond_sweep_4 bond_sweep_8", 1), ("plot", 2)):
        bad = ntn_trackers(*command.split(), "--status", "faild", cwd=logs)
        assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1, bad.stderr
        # the runs of what the command shows: compare's experiments only
        assert f"--status faild: no run has that status; these runs are failed ({failed}), finished (7)" in bad.stderr


def _drawn(monkeypatch, logs, *args: str):
    """`ntn-trackers plot ARGS` in this process: its stdout lines and the matplotlib figure it drew."""
    import contextlib

    import matplotlib.pyplot as plt
    from ntn.tracking.cli import main

    figures, out = [], io.StringIO()
    monkeypatch.setattr(plt, "close", figures.append)  # kept open, to be read back
    monkeypatch.chdir(logs)
    with contextlib.redirect_stdout(out):
        assert main(["plot", "-o", str(logs / "p.png"), *args]) == 0
    return out.getvalue().splitlines(), figures[0]


def test_plot_leaves_failed_runs_out_by_default_and_lists_them_beneath(logs, monkeypatch):
    _diverged("bond_sweep_4", 9)
    lines, figure = _drawn(monkeypatch, logs)
    error = "no better than the trivial predictor on the held-out test split (test r2 -4820.000)"
    assert lines == [str(logs / "p.png"), f"not drawn (failed): bond_sweep_4_seed9: {error}"]
    axes = figure.axes[0]
    assert min(min(line.get_ydata()) for line in axes.get_lines()) > 0  # no curve of the diverged run
    assert axes.get_title().endswith("; 1 failed run not drawn (--status all draws them)")
    lines, figure = _drawn(monkeypatch, logs, "--status", "all")
    assert lines == [str(logs / "p.png")] and min(min(line.get_ydata()) for line in figure.axes[0].get_lines()) == -700


def test_plot_of_a_validation_metric_draws_it_dashed_as_its_legend_says(logs, monkeypatch):
    """Failed on main: `--metric val_loss` drew validation solid, where the legend says solid is train."""
    _, figure = _drawn(monkeypatch, logs, "--metric", "val_loss")
    axes = figure.axes[0]
    curves = [line for line in axes.get_lines() if line.get_marker() != "o"]
    assert len(curves) == sum(map(len, EXPERIMENTS.values())) and {c.get_linestyle() for c in curves} == {"--"}
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels[-2:] == ["validation", "kept epoch"] and "train" not in labels
    assert axes.get_ylabel() == "val_loss per epoch"


def test_aim_repo_gives_the_same_summary_as_the_run_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    monkeypatch.delenv("AIM_REPO", raising=False)
    log_experiments(backend="both")
    from ntn_tracker_aim import flush

    assert flush()  # aim runs are delivered by the uploader process
    from_files = json.loads(ntn_trackers("summary", "--format", "json", cwd=tmp_path).stdout)
    done = ntn_trackers("summary", "--format", "json", "--from", "aim:.aim", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == from_files
    compared = ntn_trackers("compare", "bond_sweep_4", "bond_sweep_8", "--from", "aim:.aim", cwd=tmp_path)
    assert compared.returncode == 0 and "test_r2" in compared.stdout


def test_thousand_run_files_are_summarised(tmp_path):
    directory = tmp_path / "many"
    for i in range(1000):
        tracker = FileTracker(f"exp{i % 10}_seed{i}", {}, directory=str(directory))
        tracker.log_metrics({"loss": 1.0}, 0)
        tracker.log_summary({"success": True, "test_r2": i / 1000})
        tracker.finalize()
    done = ntn_trackers("summary", "--dir", str(directory), "--format", "json", cwd=tmp_path)
    rows = json.loads(done.stdout)
    assert len(rows) == 10 and sum(r["runs"] for r in rows) == 1000


def test_compare_shows_an_experiment_whose_seeds_all_failed_with_its_count_and_reasons(logs):
    """Failed on main: the experiment was dropped (no rows; `--format json` printed [], rc 0)."""
    for seed in range(2):
        with pytest.raises(RuntimeError), start_run(f"bond_sweep_16_seed{seed}", {"experiment": "bond_sweep_16"}):
            raise RuntimeError(f"singular system at site {seed}")
    errors = {f"bond_sweep_16_seed{s}": f"RuntimeError: singular system at site {s}" for s in range(2)}
    done = ntn_trackers("compare", "bond_sweep_16", "bond_sweep_4", "--format", "json", cwd=logs)
    assert done.returncode == 0, done.stderr
    rows = {r["metric"]: r for r in json.loads(done.stdout)}
    assert rows["runs"]["bond_sweep_16"] == {"runs": 2, "successful": 0, "failed": 2, "running": 0, "pruned": 0}
    assert rows["runs"]["bond_sweep_4"] == {"runs": 4, "successful": 4, "failed": 0, "running": 0, "pruned": 0}
    assert rows["failed"] == {"metric": "failed", "bond_sweep_16": errors}
    test_r2 = np.array([s["test_r2"] for s in EXPERIMENTS["bond_sweep_4"]])
    assert rows["test_r2"]["bond_sweep_4"]["mean"] == pytest.approx(test_r2.mean())  # the trained one is the reference
    assert rows["test_r2"]["bond_sweep_16"] is None
    table = ntn_trackers("compare", "bond_sweep_16", "bond_sweep_4", cwd=logs).stdout
    assert "bond_sweep_16 (n=0, 2 failed)" in table and "bond_sweep_4 (n=4)" in table
    assert all(f"failed: {name}: {error}" in table for name, error in errors.items())
    csv_rows = {
        r["metric"]: r
        for r in csv.DictReader(
            io.StringIO(ntn_trackers("compare", "bond_sweep_16", "bond_sweep_4", "--format", "csv", cwd=logs).stdout)
        )
    }
    assert csv_rows["runs"]["bond_sweep_16_failed"] == "2" and csv_rows["runs"]["bond_sweep_16_successful"] == "0"
    assert json.loads(csv_rows["failed"]["bond_sweep_16"]) == errors
    assert float(csv_rows["test_r2"]["bond_sweep_4_mean"]) == pytest.approx(test_r2.mean())


def test_an_unknown_reader_or_flag_is_one_line_naming_what_there_is(logs):
    """Failed on main: `--from nosuch` was read as a path (no such file, then "no runs found"), and a misspelt
    flag printed the whole usage before its error."""
    unknown = ntn_trackers("summary", "--from", "nosuch", cwd=logs)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "--from nosuch: no reader named 'nosuch'" in unknown.stderr
    installed = unknown.stderr.split("; installed: ")[1].split("; ")[0].split(", ")
    assert "file" in installed and unknown.stderr.endswith("; nor is it a file or directory\n")
    misspelt = ntn_trackers("summary", "--formt", "csv", cwd=logs)
    assert misspelt.returncode == 2 and misspelt.stderr.count("\n") == 1, misspelt.stderr
    assert "unrecognized arguments: --formt" in misspelt.stderr and "ntn-trackers summary --help" in misspelt.stderr
    bad_choice = ntn_trackers("summary", "--format", "xml", cwd=logs)
    assert bad_choice.returncode == 2 and bad_choice.stderr.count("\n") == 1, bad_choice.stderr
    assert "invalid choice: 'xml'" in bad_choice.stderr and "usage" not in bad_choice.stderr


def test_the_summary_csv_counts_running_and_failed_runs_and_gives_the_errors(logs):
    """Failed on main: the running and failed columns printed `{}`, or the runs by name, where counts belong."""
    FileTracker("bond_sweep_4_seed9", {"experiment": "bond_sweep_4"}).log_summary({"success": True})  # running
    with pytest.raises(RuntimeError), start_run("bond_sweep_4_seed10", {"experiment": "bond_sweep_4"}):
        raise RuntimeError("singular system at site 1")
    done = ntn_trackers("summary", "--format", "csv", cwd=logs)
    rows = {r["experiment"]: r for r in csv.DictReader(io.StringIO(done.stdout))}
    assert list(rows["bond_sweep_4"])[1:6] == ["runs", "successful", "running", "failed", "errors"]
    assert [rows["bond_sweep_4"][k] for k in ("runs", "successful", "running", "failed")] == ["6", "4", "1", "1"]
    assert json.loads(rows["bond_sweep_4"]["errors"]) == {
        "bond_sweep_4_seed10": "RuntimeError: singular system at site 1"
    }
    clean = rows["bond_sweep_8"]
    assert (clean["running"], clean["failed"], clean["errors"], clean["settings"], clean["mixed"]) == (
        "0",
        "0",
        "",
        "",
        "",
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"step": 10**30, "loss": 0.5}, "its metrics_log has the step 1000000000000000000000000000000, which is no"),
        ({"step": 1, "loss": 10**400}, "its metric 'loss' at step 1 is no number (1000000000"),
        ({"step": 1, "loss": "0.5"}, "its metric 'loss' at step 1 is no number (0.5)"),
        ({"step": 0.5, "loss": 0.5}, "its metrics_log has the step 0.5, which is no epoch number"),
    ],
)
def test_plot_skips_a_damaged_run_in_one_line_and_draws_the_others(tmp_path, capsys, entry, problem):
    """Failed on main: a traceback (a step of 10**30 with --band; a value no float holds)."""
    from ntn.tracking.cli import main as trackers

    for name, last in (("good_seed0", {"step": 1, "loss": 0.25}), ("damaged_seed0", entry)):
        record = {"experiment_name": name, "metrics_log": [{"step": 0, "loss": 1.0}, last]}
        (tmp_path / f"{name}.json").write_text(
            json.dumps(record | {"summary": {"status": "finished", "success": True}})
        )
    out = tmp_path / "curves.png"
    assert trackers(["plot", str(tmp_path), "--band", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == f"ntn-trackers: skipped run 'damaged_seed0': {problem}" + printed.err.split(problem)[1]
    assert printed.err.count("\n") == 1 and out.stat().st_size > 0 and printed.out == f"{out}\n"
    (tmp_path / "good_seed0.json").unlink()
    assert trackers(["plot", str(tmp_path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "ntn-trackers plot: no run left to plot"


def test_summary_counts_the_runs_a_search_pruned_apart_from_the_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    ends = {"s_trial0": ["finished", "finished"], "s_trial1": ["pruned", "pruned"], "s_trial2": ["finished", "failed"]}
    for name, statuses in ends.items():
        for seed, status in enumerate(statuses):
            with start_run(f"{name}_seed{seed}", {"experiment": name, "sweep": "s", "trial": int(name[-1])}) as run:
                run.log_metrics({"loss": 1.0, "val_r2": 0.5}, step=0)
                run.log_summary({"seed": seed, "success": status == "finished", "val_r2": 0.5, "test_r2": 0.4})
                if status != "finished":
                    run.finalize(status)
    written = {
        p.stem: json.loads(p.read_text())["summary"]["status"] for p in (tmp_path / "experiment_logs").glob("*.json")
    }
    assert sorted(written.values()) == ["failed", "finished", "finished", "finished", "pruned", "pruned"]

    rows = {r["experiment"]: r for r in json.loads(ntn_trackers("summary", "--format", "json", cwd=tmp_path).stdout)}
    assert {name: (r["successful"], r["pruned"], len(r["failed"])) for name, r in rows.items()} == {
        "s_trial0": (2, 0, 0),
        "s_trial1": (0, 2, 0),
        "s_trial2": (1, 0, 1),
    }
    table = ntn_trackers("summary", cwd=tmp_path).stdout
    assert "0/2 (2 pruned)" in table
    assert "3 experiments, 6 runs: 3 ok, 2 pruned (stopped early by a search), 1 failed" in " ".join(table.split())


def test_metrics_chooses_the_columns_and_an_unknown_figure_is_one_line(logs):
    """Failed on main: a figure no run has was shown as a column of '-', exit 0."""
    chosen = ntn_trackers("summary", "--metrics", "test_loss,test_r2", cwd=logs)
    header = chosen.stdout.splitlines()[1]
    assert chosen.returncode == 0 and header.index("test_loss") < header.index("test_r2"), chosen.stdout
    unknown = ntn_trackers("summary", "--metrics", "test_r2,val_accuracy", cwd=logs)
    assert unknown.returncode == 2 and unknown.stdout == "" and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "--metrics val_accuracy: no run has that figure; these runs have: " in unknown.stderr
    assert "test_r2" in unknown.stderr.split("these runs have: ")[1]
    _diverged("only_failed", 0)  # no figure yet to tell a typo by (a sweep's first runs failed): a column of '-'
    failed = ntn_trackers("summary", "only_failed", "--metrics", "test_r2", cwd=logs)
    assert failed.returncode == 0 and "test_r2" in failed.stdout, failed.stderr


def test_a_reader_that_stops_reading_gets_no_error(logs):
    """Failed on main: `ntn-trackers summary --format csv | head -1` ended with `[Errno 32] Broken pipe`, exit 2."""
    process = subprocess.Popen([*CLI, "summary", "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before it writes: it starts Python and reads the runs first
    assert process.wait(timeout=120) in (0, 141)  # 0: it wrote all before the reader went (not seen here)
    assert process.stderr.read() == b""
    closed = subprocess.run([*CLI, "summary"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=logs)
    assert closed.returncode == 0 and closed.stderr == b""
    for command in ("list", "summary"):  # no standard output at all: failed before, AttributeError on None
        shut = subprocess.run(f"{shlex.join(CLI)} {command} >&-", shell=True, capture_output=True, text=True)
        assert shut.returncode == 0 and "Traceback" not in shut.stderr, shut.stderr
