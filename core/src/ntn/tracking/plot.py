"""Learning curves of recorded runs with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ntn.tracking.readers import Record
from ntn.tracking.results import Experiment

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 5.0, 100  # the PNG is 900 × 500 pixels


def _curve(record: Record, metric: str) -> tuple[list[int], list[float]]:
    points = [
        (m["step"], float(m[metric]))
        for m in record.get("metrics_log") or []
        if isinstance(m.get(metric), int | float) and not isinstance(m.get(metric), bool) and math.isfinite(m[metric])
    ]
    points.sort()
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(experiments: dict[str, Experiment], metric: str, out: Path, log_y: bool, band: bool) -> Path:
    """Train (solid) and validation (dashed) `metric` over epochs, step -1 being the initial evaluation.

    One line per run, or with `band` the mean ± std over an experiment's runs at each step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, exp in enumerate(experiments.values()):
        color = colors[i % len(colors)]
        for name, style in ((metric, "-"), (f"val_{metric}", "--")):
            curves = [c for c in (_curve(r, name) for r in exp.runs) if c[0]]
            if not curves:
                continue
            label = f"{exp.name} {'val' if name.startswith('val_') else 'train'}"
            if band:
                by_step: dict[int, list[float]] = {}
                for steps, values in curves:
                    for s, v in zip(steps, values):
                        by_step.setdefault(s, []).append(v)
                steps = sorted(by_step)
                mean = [statistics.fmean(by_step[s]) for s in steps]
                std = [statistics.pstdev(by_step[s]) for s in steps]
                ax.plot(steps, mean, style, color=color, label=label)
                ax.fill_between(
                    steps,
                    [m - d for m, d in zip(mean, std)],
                    [m + d for m, d in zip(mean, std)],
                    color=color,
                    alpha=0.2,
                )
            else:
                for j, (steps, values) in enumerate(curves):
                    ax.plot(steps, values, style, color=color, alpha=0.8, label=label if j == 0 else None)
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no run has the metric {metric!r}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (-1: initial evaluation)")
    ax.set_ylabel(metric)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
