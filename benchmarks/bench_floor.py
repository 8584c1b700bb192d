"""Each model's run against its arithmetic floor, and the old code's run beside it.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_floor.py [--runs 5] [--old /tmp/ntn-old/core/src]

The cases: MPO2, LMPO2 and MMPO2 at L=3 bond 6 N_SAMPLES=500, and MPO2 at L=5 bond 6 on all rows of
California housing; 10 epochs, fit and the test evaluation, one torch thread, process CPU time. Each run is
paired with the floor timed right before it in the same process (a child importing this checkout's `ntn`, or
with `--old` that source tree; the first pair warms the caches), so that both see the same load on the machine:
on a host whose speed drifts by ±30 % over seconds, a ratio of medians taken minutes apart moved by as much, the
median of paired ratios by a few per cent (docs/benchmarks.md). Rounds alternate the two codes; "run ÷ floor" is
the median of the pairs' ratios (with its quartiles), "old ÷ new" the ratio of the two codes' medians of it. Both
codes' floors time the updates of this checkout's run (`update_shapes`, computed here and handed to the children).

The floor of a run: for each of its core updates (the sweep of every epoch), the dense calls its Newton
system cannot do without, from the moments (`ntn.moments`), on operands made BEFORE the timer, in inference mode
as a run's sweeps (`NTN.fit`); the regularised
step lands on the ridge minimiser θ' = (H + μI)⁻¹ b, b = Vᵀ Z_y (`ntn.hessians`), so no gradient is formed:
  P ≤ S (dense):     B = Z V (S, P), H = Vᵀ B, b = Vᵀ Z_y, Cholesky of H + μI, its solve; for a core that reads
                     φ's index (MPO2's and MMPO2's top cores) and has at least `HELD_MIN_WIDTH` columns per index,
                     Z V and Vᵀ B over the M monomials that hold each index only (V is 0 elsewhere): 2·S·M·P and
                     2·M·P² flops (narrower ones take less time dense: `ntn.moments`);
  P > S (low rank):  G = V Vᵀ (S, S), Z G, then the push-through θ' = (μI + Vᵀ Z V)⁻¹ Vᵀ Z_y = Vᵀ (μI + Z G)⁻¹ Z_y:
                     one S × S solve and one product by Vᵀ; for a core that reads φ's index, G from each index's M
                     held rows alone, added into their places in G, instead of 2·S²·P flops: every index's are the
                     same rows (the multisets m − {j}: `ntn.moments`), so one product (M, P/p) (P/p, M), 2·M²·P/p
                     flops, except behind MMPO2's mask (p products, 2·M²·P).
A core updated twice in a row (each epoch's end and the next one's start) keeps its system (H and b depend on the
other cores alone): the floor only solves it again. S = C(p + L − 1, L) monomials, P the core's size.
Target (issue #39): run ÷ floor ≤ 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
P_IN, BOND, EPOCHS = 9, 6, 10
SIZES_ENV = "BENCH_FLOOR_UPDATES"  # a child's updates to time the floor of (JSON), from the parent
M_OF: dict[int, int] = {}  # S -> the number of monomials that hold one index
CASES = {  # name: (model, L, N_SAMPLES; 0 = all rows)
    "MPO2 L=3": ("MPO2", 3, 500),
    "LMPO2 L=3": ("LMPO2", 3, 500),
    "MMPO2 L=3": ("MMPO2", 3, 500),
    "MPO2 L=5 all rows": ("MPO2", 5, 0),
}


def child(case: str, runs: int) -> None:
    """Time `runs` runs of one case in this process (the `ntn` on PYTHONPATH), each after the floor, and print
    their [floor, run] CPU seconds."""
    sys.path.insert(0, str(REPO))
    import ntn

    from experiments.dataset_loader import load_dataset

    torch.set_num_threads(1)
    model_name, L, n_samples = CASES[case]
    data = load_dataset("california_housing", n_samples, 0, "clip")
    floor = floor_timer(case, [tuple(update) for update in json.loads(os.environ[SIZES_ENV])])
    pairs = []
    for seed in range(runs + 1):  # the first warms the caches
        floor_seconds = floor(1)[0]
        start = time.process_time()
        model = getattr(ntn, model_name)(L=L, bond_dim=BOND, phys_dim=P_IN, output_dim=1, output_site=1, seed=seed)
        trainer = ntn.NTN(model, data.X_train, data.y_train, X_val=data.X_val, y_val=data.y_val, threads=1)
        trainer.fit(EPOCHS, select="val_loss")
        trainer.evaluate(data.X_test, data.y_test)
        pairs.append([floor_seconds, time.process_time() - start])
    print(json.dumps(pairs[1:]))


def paired_times(case: str, runs: int, source: Path, sizes: list) -> list[list[float]]:
    """[floor, run] CPU seconds of `runs` runs of `case` in a child importing the `ntn` of `source`; the floor of
    `sizes`, the updates this checkout's run makes (`update_shapes`), whatever code the child runs."""
    path = os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, **{SIZES_ENV: json.dumps(sizes)})
    done = subprocess.run(
        [sys.executable, __file__, "--child", case, "--runs", str(runs)], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{case} under {source} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def update_shapes(case: str) -> list[tuple[int, bool, bool, bool, bool]]:
    """(P, whether the core reads φ's index, whether its products run over held rows, whether its system is new,
    whether it is behind MMPO2's mask) of each core update of one run (every epoch's sweep, there and back). A core
    updated twice in a row (each epoch's end and the next one's start) keeps its system: H and b depend on the other
    cores alone (`NTN._system`)."""
    sys.path.insert(0, str(REPO / "core" / "src"))
    import ntn
    from ntn.moments import HELD_MIN_WIDTH

    model_name, L, _ = CASES[case]
    model = getattr(ntn, model_name)(L=L, bond_dim=BOND, phys_dim=P_IN, output_dim=1, output_site=1, seed=0)
    units = model.units
    run = (units + units[-2::-1]) * EPOCHS
    return [
        (
            model.core(u).numel(),
            model.reads_phi(u),
            model.core(u).numel() // P_IN >= HELD_MIN_WIDTH,
            i == 0 or u != run[i - 1],
            model.masked(u),
        )
        for i, u in enumerate(run)
    ]


def floor_operands(L: int, S: int, M: int, sizes: list[tuple[int, ...]]) -> tuple:
    """Z (S, S), Z_y (S,), Z's columns for each index's M monomials (p, S, M), the places in G (S, S) of each index's
    held pairs (p·M·M,) and, per core size P, V (S, P) and its rows for each index (p, M, P/p): random
    (the places from the monomials), made once before the timer."""
    generator = torch.Generator().manual_seed(0)
    Z = torch.randn(S, S + 8, dtype=torch.float64, generator=generator)
    Z = Z @ Z.T
    Z_y = torch.randn(S, dtype=torch.float64, generator=generator)
    Z_held = torch.randn(P_IN, S, M, dtype=torch.float64, generator=generator)
    monomials = torch.combinations(torch.arange(P_IN), L, with_replacement=True)  # (S, L)
    holding = (monomials[:, :, None] == torch.arange(P_IN)).any(dim=1).T.nonzero()[:, 1].reshape(P_IN, M)
    places = (holding[:, :, None] * S + holding[:, None, :]).reshape(-1)
    per_size = {
        P: (
            torch.randn(S, P, dtype=torch.float64, generator=generator),
            torch.randn(P_IN, M, P // P_IN, dtype=torch.float64, generator=generator),
        )
        for P, *_ in set(sizes)
    }
    return Z, Z_y, Z_held, places, per_size


def floor_of_one_run(Z, Z_y, Z_held, places, per_size: dict[int, tuple], sizes: list[tuple[int, ...]]) -> None:
    """The dense calls of one run's Newton systems (see the module docstring); μ = 1. A kept system (the same core
    again) is only solved again."""
    S = len(Z)
    hessian = b = ZG = None  # the kept system's (its values: μ added once more per reuse, the same calls)
    for P, reads_phi, held, new, masked in sizes:
        V, V_held = per_size[P]
        if P <= S:
            if new and reads_phi and held:
                B = (Z_held @ V_held).transpose(0, 1).reshape(S, P)  # (S, P) from (p, S, P/p)
                hessian = (V_held.transpose(1, 2) @ B[: M_OF[S]]).reshape(P, P)  # p blocks (P/p, M) @ (M, P)
            elif new:
                hessian = V.T @ (Z @ V)  # (P, P)
            if new:
                b = V.T @ Z_y
            damped = hessian if new else hessian.clone()
            damped.diagonal().add_(1.0)
            factor, _ = torch.linalg.cholesky_ex(damped)
            torch.cholesky_solve(b[:, None], factor)
            continue
        if new and reads_phi:  # G from each index's held rows, added into place: the same rows unless masked
            rows = V_held if masked else V_held[:1]
            products = (rows @ rows.transpose(1, 2)).reshape(-1)
            products = products if masked else products.repeat(P_IN)
            G = Z.new_zeros(S * S).index_add_(0, places, products).view(S, S)
        elif new:
            G = V @ V.T
        if new:
            ZG = Z @ G  # (S, S)
        small = ZG if new else ZG.clone()
        small.diagonal().add_(1.0)
        inner, _ = torch.linalg.solve_ex(small, Z_y[:, None])
        V.T @ inner[:, 0]


def floor_timer(case: str, sizes: list[tuple[int, bool, bool, bool, bool]]) -> Callable[[int], list[float]]:
    """The floor of one run of `case` with these updates (`update_shapes`): its operands made now, and a function
    timing it n times."""
    from math import comb

    _, L, _ = CASES[case]
    S = comb(P_IN + L - 1, L)
    M_OF[S] = S - comb(P_IN + L - 2, L)  # monomials that hold a given index
    with torch.inference_mode():  # as a run's sweeps: no autograd dispatch
        operands = floor_operands(L, S, M_OF[S], sizes)
        floor_of_one_run(*operands, sizes)  # warm

    @torch.inference_mode()
    def times(n: int) -> list[float]:
        measured = []
        for _ in range(n):
            start = time.process_time()
            floor_of_one_run(*operands, sizes)
            measured.append(time.process_time() - start)
        return measured

    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case and code (medians)")
    parser.add_argument("--old", type=Path, help="the old code's source tree, e.g. /tmp/ntn-old/core/src")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.runs)
    torch.set_num_threads(1)
    rows = []
    for case in args.cases.split(","):
        rounds = args.runs if "L=5" not in case else max(1, args.runs // 2)  # an L=5 run takes seconds
        codes = {"new": REPO / "core" / "src"} | ({"old": args.old} if args.old else {})
        pairs: dict[str, list[list[float]]] = {code: [] for code in codes}
        sizes = update_shapes(case)  # the same floor for both codes
        for round_ in range(rounds):  # the codes alternate, one run each a round
            for code in list(codes)[:: 1 if round_ % 2 == 0 else -1]:
                pairs[code] += paired_times(case, 1, codes[code], sizes)
        ratios = {code: [run / floor for floor, run in got] for code, got in pairs.items()}
        floor = statistics.median(floor for floor, _ in pairs["new"])
        new = statistics.median(ratios["new"])
        row = [case, f"{floor * 1e3:.1f}", f"{statistics.median(run for _, run in pairs['new']) * 1e3:.1f}"]
        row += [len(ratios["new"]), f"{new:.2f}", _quartiles(ratios["new"])]
        if args.old:
            old = statistics.median(ratios["old"])
            row += [f"{old:.2f}", _quartiles(ratios["old"]), f"{old / new:.2f}"]
        rows.append(row)
        print(f"{case}: {row[1:]}", file=sys.stderr, flush=True)
    headers = ["case", "floor ms", "run ms", "runs", "run ÷ floor", "quartiles"]
    headers += ["old ÷ floor", "quartiles", "old ÷ new"] if args.old else []
    print(
        f"{EPOCHS} epochs, bond {BOND}, fit + test evaluation, one thread, CPU ms (medians); ratios: medians over the "
        "runs (of each code), each run over the floor timed right before it:"
    )
    print(tabulate(rows, headers=headers))


def _quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")  # within the values measured
    return f"{low:.2f}–{high:.2f}"


if __name__ == "__main__":
    main()
