"""Epoch time, peak RSS and achieved GFLOP/s of MPO2 (L=3, 9 inputs) training.

    python benchmarks/bench_ntn.py [--batch-size 4000]

Each (N, bond_dim) runs in its own process so its peak RSS is its own. The GFLOP/s column counts the
flops of one update of the middle core (Gram accumulation + Cholesky solve), next to torch.matmul's
float64 GFLOP/s measured in the same run. Targets on the 2-core machine: N=16k, bond 6 <= 0.1 s/epoch;
bond 16 <= 2 s/epoch; peak RSS <= 600 MB; time linear in N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SIZES = (1000, 4000, 16000)
BONDS = (4, 6, 8, 16)
FEATURES = 8  # 9 inputs with the bias


def matmul_gflops() -> float:
    import torch

    a = torch.randn(1024, 1024, dtype=torch.float64)
    a @ a
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        a @ a
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start) / 1e9


def one(n: int, bond: int, batch_size: int) -> dict:
    import torch
    from ntn import MPO2, NTN
    from ntn.models import TOP, Unit

    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    y = X[:, 0] * X[:, 1] + X[:, 2] - X[:, 3] ** 2
    trainer = NTN(MPO2(3, bond, FEATURES + 1, 1, 1, 0.1, seed=0), X, y, batch_size=batch_size)
    trainer.fit(1)  # warm-up
    epochs = 3
    start = time.perf_counter()
    trainer.fit(epochs)
    epoch_s = (time.perf_counter() - start) / epochs
    middle = Unit(TOP, 1)
    start = time.perf_counter()
    trainer.update(middle, 1e-3)
    update_s = time.perf_counter() - start
    pairs = bond * (bond + 1) // 2
    p_pairs = (FEATURES + 1) * (FEATURES + 2) // 2
    P = bond * (FEATURES + 1) * bond
    flops = 2 * n * pairs * p_pairs * pairs + P**3 / 3 + 2 * P**2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"epoch_s": epoch_s, "peak_mb": peak_mb, "update_gflops": flops / update_s / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.batch_size)))
        return
    from tabulate import tabulate

    reference = matmul_gflops()
    rows = []
    per_1k: dict[int, list[float]] = {}
    for bond in BONDS:
        for n in SIZES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), str(bond), "--batch-size", str(args.batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            per_1k.setdefault(bond, []).append(r["epoch_s"] / n * 1000)
            rows.append(
                [
                    n,
                    bond,
                    f"{r['epoch_s']:.3f}",
                    f"{r['peak_mb']:.0f}",
                    f"{r['update_gflops']:.1f}",
                    f"{r['update_gflops'] / reference:.2f}",
                ]
            )
    print(f"batch_size={args.batch_size}; torch.matmul float64 (1024²): {reference:.1f} GFLOP/s")
    print(tabulate(rows, headers=["N", "bond", "s/epoch", "peak RSS MB", "update GFLOP/s", "÷ matmul"]))
    print("\ns/epoch per 1k samples at N = 1k, 4k, 16k (linear in N when flat):")
    for bond, values in per_1k.items():
        print(f"  bond {bond}: " + ", ".join(f"{v:.4f}" for v in values))


if __name__ == "__main__":
    main()
