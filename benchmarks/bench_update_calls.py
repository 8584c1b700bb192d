"""Where a core update's time goes beyond its floor: its torch calls, each at its best, and the Python around them.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_update_calls.py [--cases "MPO2 L=3"] [--compile]

For each core of each case (L=3 bond 6 N_SAMPLES=500, one torch thread, CPU µs), in each of --rounds rounds (medians
of --repeats timings), side by side in one process:
  floor      the dense calls its Newton system needs, on operands made before (`bench_floor.py`'s floor of that update);
  update     `NTN._update` in a sweep (inference mode), the other cores changed before each one (a new system);
  calls      how many torch calls each makes (attribute reads such as `.shape` aside);
  alone      each of those calls timed alone, repeated on its own arguments (warm caches, no Python between them),
             summed: what the calls cost at their best, whatever Python is arranged around them.
Ratios are taken within a round (the host's speed drifts between rounds), then their median. "alone ÷ floor alone"
compares the two sets of calls the same way; "update ÷ floor" is, per core, what `bench_floor.py`'s run ÷ floor
sums over a run (issue #39 asks for ≤ 1.5). With --compile, the chain-end update (MPO2, site 0) eager against
`torch.compile(NTN._update)`, and the wall time that compile took (its first two updates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from math import comb

import bench_floor  # this folder: the script's own, first on sys.path
import torch
from tabulate import tabulate
from torch.overrides import TorchFunctionMode

CASES = [case for case in bench_floor.CASES if "L=3" in case]


def recorded_calls(work: Callable[[], None]) -> list[tuple[Callable, tuple, dict]]:
    """The torch calls `work()` makes, with their arguments (attribute reads such as `.shape` left out)."""
    calls = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") != "__get__":
                calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Record():
        work()
    return calls


def alone(calls: list[tuple[Callable, tuple, dict]], repeats: int) -> float:
    """Σ over the calls of each one's median CPU time, repeated on its own arguments."""
    total = 0.0
    for func, args, kwargs in calls:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            func(*args, **kwargs)
            times.append(time.process_time() - start)
        total += statistics.median(times)
    return total


def median_time(work: Callable[[], None], repeats: int, before: Callable[[], None] | None = None) -> float:
    """The median CPU time of `work()`, each after `before()` (untimed)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def trainer_of(case: str, data):
    import ntn

    model_name, L, _ = bench_floor.CASES[case]
    model = getattr(ntn, model_name)(L=L, bond_dim=bench_floor.BOND, phys_dim=bench_floor.P_IN, output_site=1, seed=0)
    trainer = ntn.NTN(model, data.X_train, data.y_train, X_val=data.X_val, y_val=data.y_val, threads=1)
    trainer.fit(2)  # warm: the moments, the index tables
    return trainer


def per_core(case: str, data, rounds: int, repeats: int) -> list[list]:
    """A row per core of `case`: its floor, its update, their calls and the calls' sums alone; all four measured in
    each of `rounds` rounds (medians of `repeats` timings), the ratios taken within a round (the host's speed drifts
    between rounds), then their medians."""
    _, L, _ = bench_floor.CASES[case]
    S = comb(bench_floor.P_IN + L - 1, L)
    bench_floor.M_OF[S] = S - comb(bench_floor.P_IN + L - 2, L)
    trainer = trainer_of(case, data)
    units = trainer.model.units
    shapes = bench_floor.update_shapes(case)[: len(units)]  # each core's first update: a new system
    rows = []
    for i, (unit, shape) in enumerate(zip(units, shapes)):
        with torch.inference_mode():
            operands = bench_floor.floor_operands(L, S, bench_floor.M_OF[S], [shape])
            floor = partial(bench_floor.floor_of_one_run, *operands, [shape])
            floor_calls = recorded_calls(floor)
        neighbour = units[i - 1] if i else units[1]  # changed before each update: its system is new
        update, before = partial(trainer._update, unit, 0.1, True), partial(trainer._update, neighbour, 0.1, True)
        with trainer._sweep():
            before()
            update_calls = recorded_calls(update)
        measured = []  # per round: floor, update, update's calls alone, floor's calls alone
        for _ in range(rounds):
            with torch.inference_mode():
                floor_times = [median_time(floor, repeats), alone(floor_calls, repeats)]
            with trainer._sweep():
                measured.append([floor_times[0], median_time(update, repeats, before)])
                measured[-1] += [alone(update_calls, repeats), floor_times[1]]
        floor_s, update_s, update_alone, floor_alone = (statistics.median(column) for column in zip(*measured))
        rows.append(
            [
                case,
                f"{unit.layer} {unit.site}",
                f"{floor_s * 1e6:.0f}",
                f"{update_s * 1e6:.0f}",
                f"{statistics.median(u / f for f, u, _, _ in measured):.2f}",
                f"{len(update_calls)} / {len(floor_calls)}",
                f"{update_alone * 1e6:.0f} / {floor_alone * 1e6:.0f}",
                f"{statistics.median(a / b for _, _, a, b in measured):.2f}",
            ]
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def compiled(data, rounds: int, repeats: int) -> list:
    """MPO2's chain-end update eager and through `torch.compile(NTN._update)`, alternating by rounds, and the wall
    seconds the compile took."""
    from ntn.models import Unit

    eager, fast = trainer_of("MPO2 L=3", data), trainer_of("MPO2 L=3", data)
    end, middle = Unit("top", 0), Unit("top", 1)
    start = time.perf_counter()  # wall time: the compile runs in worker processes too
    fast._update = torch.compile(fast._update)
    with fast._sweep():
        fast._update(middle, 0.1, True)
        fast._update(end, 0.1, True)
    compile_s = time.perf_counter() - start
    measured = []
    for _ in range(rounds):
        measured.append([])
        for trainer in (eager, fast):
            with trainer._sweep():
                before = partial(trainer._update, middle, 0.1, True)
                measured[-1].append(median_time(partial(trainer._update, end, 0.1, True), repeats, before))
    eager_s, fast_s = (statistics.median(column) for column in zip(*measured))
    ratio = statistics.median(b / a for a, b in measured)
    return [f"{eager_s * 1e6:.0f}", f"{fast_s * 1e6:.0f}", f"{ratio:.2f}", f"{compile_s:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--rounds", type=int, default=9, help="rounds per core (the ratios' medians)")
    parser.add_argument("--repeats", type=int, default=30, help="timings per median within a round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the update (minutes)")
    args = parser.parse_args()
    sys.path.insert(0, str(bench_floor.REPO))
    from experiments.dataset_loader import load_dataset

    torch.set_num_threads(1)
    data = load_dataset("california_housing", 500, 0, "clip")
    rows = [row for case in args.cases.split(",") for row in per_core(case, data, args.rounds, args.repeats)]
    print(
        f"one core update, one thread, CPU µs (medians of {args.rounds} rounds); ratios: medians of the rounds' own; "
        "calls and their sums alone: update / floor"
    )
    headers = ["case", "core", "floor", "update", "update ÷ floor", "calls", "alone", "alone ÷ floor alone"]
    print(tabulate(rows, headers=headers))
    if args.compile:
        print("\nMPO2 L=3, the chain-end update (site 0), CPU µs (medians); compile: wall s of its first two updates")
        headers = ["eager", "compiled", "compiled ÷ eager", "compile s"]
        print(tabulate([compiled(data, args.rounds, args.repeats)], headers=headers))


if __name__ == "__main__":
    main()
