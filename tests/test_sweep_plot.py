"""The sweep's figure (experiments/sweep_results.plot), read back from the matplotlib figure it draws."""

import matplotlib.pyplot as plt

from experiments import sweep_results


def test_the_legend_lists_the_other_settings_in_the_grid_s_order(tmp_path, monkeypatch):
    """Failed on main: the legend was sorted as text, bond_dim=10 before bond_dim=4."""
    grid = {"bond_dim": [4, 6, 8, 10], "l": [3, 4]}
    configurations = [
        {"values": {"bond_dim": b, "l": l}, "metric": "r2", "val_r2_mean": 0.5 + b / 100 + l / 10, "val_r2_std": 0.01}
        for l in grid["l"]
        for b in reversed(grid["bond_dim"])
    ]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # kept open, to be read back
    sweep_results.plot({"sweep": "s", "grid": grid, "configurations": configurations}, tmp_path / "sweep.png")
    handles, labels = figures[0].axes[1].get_legend_handles_labels()  # the plot against l: one line per bond_dim
    assert labels == ["bond_dim=4", "bond_dim=6", "bond_dim=8", "bond_dim=10"]
    for handle, bond_dim in zip(handles, grid["bond_dim"]):  # each label on its own line
        expected = [0.5 + bond_dim / 100 + l / 10 for l in grid["l"]]
        assert list(handle.lines[0].get_ydata()) == expected
    plt.close(figures[0])


def test_a_configuration_none_of_whose_seeds_trained_is_marked_and_named(tmp_path, monkeypatch):
    """Failed on main: a configuration whose seeds all failed was left out of the figure without a word."""
    grid = {"bond_dim": [2, 6], "jitter_start": [0.2, 0.0]}
    configurations = [
        {
            "values": {"bond_dim": b, "jitter_start": j},
            "metric": "r2",
            "val_r2_mean": None if j == 0.0 else 0.5 + b / 100,
            "val_r2_std": None if j == 0.0 else 0.01,
        }
        for b in grid["bond_dim"]
        for j in grid["jitter_start"]
    ]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    sweep_results.plot({"sweep": "s", "grid": grid, "configurations": configurations}, tmp_path / "sweep.png")
    figure = figures[0]
    by_bond = figure.axes[0]  # one line per jitter_start: the failed one as crosses at bond_dim 2 and 6
    crosses = [line for line in by_bond.get_lines() if line.get_marker() == "x"]
    assert [list(line.get_xdata()) for line in crosses] == [[0, 1]]
    assert sorted(by_bond.get_legend_handles_labels()[1]) == ["jitter_start=0.0", "jitter_start=0.2"]
    notes = " ".join(" ".join(t.get_text().split()) for t in figure.texts)
    assert "no seed trained (see their errors in the results file): bond_dim=2 jitter_start=0.0; bond_dim=6" in notes
    assert "(✕: no seed trained)" in figure._suptitle.get_text()
    plt.close(figure)
