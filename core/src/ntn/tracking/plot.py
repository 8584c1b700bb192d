"""Learning curves of recorded runs with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ntn.tracking.readers import Record
from ntn.tracking.results import Experiment

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 5.0, 100  # the PNG is 900 × 500 pixels
MAX_STEP = 2**31 - 1  # far beyond any epoch; a larger int overflows matplotlib's and numpy's arrays


def _number(value: object) -> bool:
    """Whether a metric's value can be drawn: a float, an int that a float holds, or None (not logged)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def damaged(record: Record) -> str | None:
    """What in a run's metrics_log cannot be drawn, in a few words (a step that is no epoch number, a
    metric that is no number or too large for a float); None when nothing is."""
    for entry in record.get("metrics_log") or []:
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int | float) or not -1 <= step <= MAX_STEP or step % 1:
            return f"its metrics_log has the step {str(step)[:40]}, which is no epoch number"
        for name, value in entry.items():
            if not _number(value):
                return f"its metric {str(name)[:40]!r} at step {step} is no number ({str(value)[:40]})"
    return None


def _curve(record: Record, metric: str) -> tuple[list[int], list[float]]:
    """The metric over epochs 0, 1, ...: the initial evaluation (step -1) of an untrained model is left out,
    as it would squash every curve (its loss is several times the trained one)."""
    points = [
        (m["step"], float(m[metric]))
        for m in record.get("metrics_log") or []
        if m["step"] >= 0
        and isinstance(m.get(metric), int | float)
        and not isinstance(m.get(metric), bool)
        and math.isfinite(m[metric])
    ]
    points.sort()
    return [s for s, _ in points], [v for _, v in points]


def _kept(record: Record, steps: list[int], values: list[float]) -> tuple[int, float] | None:
    """The point of the epoch whose state the run kept (summary.best_epoch), if it is on the curve."""
    epoch = (record.get("summary") or {}).get("best_epoch")
    return (epoch, values[steps.index(epoch)]) if epoch in steps else None


def plot_curves(
    experiments: dict[str, Experiment],
    metric: str,
    out: Path,
    log_y: bool,
    band: bool,
    source: str = "",
    left_out: int = 0,
) -> Path:
    """`draw_curves` into the PNG `out` (900 × 500 pixels)."""
    import matplotlib.pyplot as plt

    fig = draw_curves(experiments, metric, log_y, band, source, left_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def curves_of(metric: str) -> list[tuple[str, str, str]]:
    """The curves that `--metric` names, as (recorded name, split, line style): `loss` the training (solid)
    and validation (dashed) curves, `val_loss` the validation one alone, `train_loss` the training one."""
    if metric.startswith("val_"):
        return [(metric, "validation", "--")]
    name = metric.removeprefix("train_")
    return [(name, "train", "-")] + ([] if metric.startswith("train_") else [(f"val_{name}", "validation", "--")])


def draw_curves(
    experiments: dict[str, Experiment], metric: str, log_y: bool, band: bool, source: str = "", left_out: int = 0
):
    """Train (solid) and validation (dashed) `metric` per epoch from 0 (`curves_of`), the kept epoch of each
    run marked on its validation curve; one colour and one legend entry per experiment, a title saying what is
    shown, and how many failed runs it leaves out (`left_out`).

    One line per run, or with `band` the mean ± std over an experiment's runs at each step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn, labelled, styles = 0, set(), {}
    for i, exp in enumerate(experiments.values()):
        color = colors[i % len(colors)]
        for name, split, style in curves_of(metric):
            runs = [(r, c) for r, c in ((r, _curve(r, name)) for r in exp.runs) if c[0]]
            curves = [c for _, c in runs]
            if not curves:
                continue
            label = None if exp.name in labelled else f"{exp.name} ({len(exp.runs)} runs)"
            labelled.add(exp.name)
            styles[split] = style
            if name.startswith("val_"):  # the epoch each run kept
                kept = [k for k in (_kept(r, *c) for r, c in runs) if k is not None]
                if kept:
                    ax.plot(*zip(*kept), "o", color=color, markersize=5, markerfacecolor="none")
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
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(", ".join(name for name, split, _ in curves_of(metric) if split in styles) + " per epoch")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    runs = sum(len(exp.runs) for exp in experiments.values())
    shown = "mean ± std over each experiment's runs" if band else "one line per run"
    where = f" from {source}" if source else ""
    counted = f"{len(experiments)} experiment{'s' * (len(experiments) != 1)}, {runs} run{'s' * (runs != 1)}"
    failed = f"; {left_out} failed run{'s' * (left_out != 1)} not drawn (--status all draws them)" if left_out else ""
    ax.set_title(f"{metric} per epoch of {counted}{where} ({shown}){failed}", fontsize="medium", wrap=True)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", linestyle=style, label=split) for split, style in styles.items()]
    if "validation" in styles:
        handles.append(
            Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="", label="kept epoch")
        )
    ax.legend(handles=handles, fontsize="small")
    fig.tight_layout()
    return fig
