"""One run against its arithmetic floor: the dense BLAS/LAPACK calls its Newton systems need at its shapes.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_floor.py [--runs 10]

The run: MPO2 at the scripts' defaults (L=3, bond 6, California housing, N_SAMPLES=500, 10 epochs),
fit and the test evaluation, in this process at one torch thread. Its floor: for each of its 50 core
updates, the products a moments system cannot do without (Z·V, the Hessian or its low-rank inner
matrix, the gradient) and the factorisation and solve of the Newton step, on random tensors of the
same shapes, timed alone. Target (issue #29): run ÷ floor <= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ntn
from ntn.moments import monomial_count

from experiments.dataset_loader import load_dataset

L, BOND, P_IN, EPOCHS = 3, 6, 9, 10


def one_run(data, seed: int) -> None:
    model = ntn.MPO2(L=L, bond_dim=BOND, phys_dim=P_IN, output_dim=1, output_site=1, init_strength=0.1, seed=seed)
    trainer = ntn.NTN(model, data.X_train, data.y_train, X_val=data.X_val, y_val=data.y_val, threads=1)
    trainer.fit(EPOCHS, select="val_loss")
    trainer.evaluate(data.X_test, data.y_test)


def floor_of_one_run() -> None:
    """The dense calls of one run's 50 updates (sweep 0, 1, 2, 1, 0 per epoch), on random tensors."""
    S = monomial_count(L, P_IN)
    Z = torch.randn(S, S, dtype=torch.float64)
    Z = Z @ Z.T
    for _ in range(EPOCHS):
        for site in (0, 1, 2, 1, 0):
            P = BOND * P_IN * (BOND if site == 1 else 1)  # the end cores have one bond
            V = torch.randn(S, P, dtype=torch.float64)
            theta = torch.randn(P, dtype=torch.float64)
            B = Z @ V  # (S, P)
            gradient = V.T @ (B @ theta)
            if S < P:  # low rank: an S × S solve
                inner = B @ V.T
                inner.diagonal().add_(1.0)
                torch.linalg.solve_ex(inner, (B @ gradient)[:, None])
            else:
                hessian = V.T @ B
                hessian.diagonal().add_(1.0)
                factor, _ = torch.linalg.cholesky_ex(hessian)
                torch.cholesky_solve(gradient[:, None], factor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="interleaved rounds (medians)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("california_housing", 500, 0, "clip")
    one_run(data, 0)  # warm
    floor_of_one_run()
    runs, floors = [], []
    for seed in range(args.runs):  # interleaved: both see the same drift of this machine
        start = time.process_time()
        one_run(data, seed)
        runs.append(time.process_time() - start)
        start = time.process_time()
        floor_of_one_run()
        floors.append(time.process_time() - start)
    run, floor = statistics.median(runs), statistics.median(floors)
    rows = [["one run (fit + test evaluation)", f"{run * 1e3:.1f}"], ["its dense calls alone", f"{floor * 1e3:.1f}"]]
    print(f"MPO2 L={L} bond {BOND}, N_SAMPLES=500, {EPOCHS} epochs, one thread, CPU ms (median of {args.runs}):")
    print(tabulate(rows, headers=["what", "CPU ms"]))
    print(f"run ÷ floor: {run / floor:.2f}")


if __name__ == "__main__":
    main()
