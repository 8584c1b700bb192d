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
