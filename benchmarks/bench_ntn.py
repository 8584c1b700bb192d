"""Epoch time, peak RSS and achieved GFLOP/s of MPO2 (L=3, 9 inputs) training.

    python benchmarks/bench_ntn.py [--batch-size 4000]
    python benchmarks/bench_ntn.py --device cuda     # the GPU table: CPU and CUDA side by side


Each (N, bond_dim) runs in its own process so its peak RSS is its own. "moments s" is the one pass over
the data that gathers its polynomial moments before the first epoch (`ntn.moments`; "-" where the
trainer sums over the batches instead). The GFLOP/s column counts the flops of one update of the middle
core (forming the Newton system + Cholesky solve), next to torch.matmul's float64 GFLOP/s measured in
the same run. Targets on the 2-core machine: N=16k, bond 6 <= 0.1 s/epoch;
bond 16 <= 2 s/epoch; peak RSS <= 600 MB; time linear in N (with the moments: a pass linear in N, then
epochs whose cost does not depend on N).
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
    from ntn.moments import monomial_count

    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    y = X[:, 0] * X[:, 1] + X[:, 2] - X[:, 3] ** 2
    trainer = NTN(
        MPO2(L=3, bond_dim=bond, phys_dim=FEATURES + 1, output_dim=1, output_site=1, init_strength=0.1, seed=0),
        X,
        y,
        batch_size=batch_size,
    )
    start = time.perf_counter()
    uses_moments = trainer._moments is not None  # the one pass over the data that gathers them
    moments_s = time.perf_counter() - start
    trainer.fit(1)  # warm-up
    epochs = 3
    start = time.perf_counter()
    trainer.fit(epochs)
    epoch_s = (time.perf_counter() - start) / epochs
    middle = Unit(TOP, 1)
    start = time.perf_counter()
    trainer.update(middle, 1e-3)
    update_s = time.perf_counter() - start
    p = FEATURES + 1
    P = bond * p * bond
    if uses_moments:  # Z V and Vᵀ (Z V), see ntn.moments
        S = monomial_count(3, p)
        system_flops = 2 * P * S * (S + P)
    else:  # packed symmetric-Kronecker products, see ntn.gram
        pairs = bond * (bond + 1) // 2
        system_flops = 2 * n * pairs * (p * (p + 1) // 2) * pairs
    flops = system_flops + P**3 / 3 + 2 * P**2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "epoch_s": epoch_s,
        "moments_s": moments_s if uses_moments else None,
        "peak_mb": peak_mb,
        "update_gflops": flops / update_s / 1e9,
    }


def paths() -> list[list]:
    """10 epochs of each model (L=3, bond 6, batch_size 100), Newton systems summed over the batches or
    formed from the data's moments (`ntn.moments`; the trainer picks the moments from N >= S = 165)."""
    import torch
    from ntn import LMPO2, MMPO2, MPO2, NTN
    from ntn.moments import Moments

    rows = []
    g = torch.Generator().manual_seed(0)
    for n in (100, 350, 1000, 14000):
        X = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
        y = X[:, 0] * X[:, 1] + X[:, 2] - X[:, 3] ** 2
        for Model in (MPO2, LMPO2, MMPO2):
            seconds = []
            for use_moments in (False, True):
                trainer = NTN(
                    Model(
                        L=3, bond_dim=6, phys_dim=FEATURES + 1, output_dim=1, output_site=1, init_strength=0.1, seed=0
                    ),
                    X,
                    y,
                    batch_size=100,
                )
                start = time.perf_counter()
                chosen = Moments(trainer.model, trainer._batches(trainer.X, trainer.y)) if use_moments else None
                trainer.__dict__["_moments"] = chosen  # overrides the trainer's own choice
                trainer.fit(10)
                seconds.append(time.perf_counter() - start)
            rows.append([n, Model.__name__, f"{seconds[0]:.3f}", f"{seconds[1]:.3f}", f"{seconds[0] / seconds[1]:.1f}"])
    return rows


# (name, model, L, bond, rows, loss, run on the CPU too): the cases of the GPU issue, float64
DEVICE_CASES = (
    ("MPO2 L=3 bond 6", "MPO2", 3, 6, 14448, "mse", True),
    ("MPO2 L=3 bond 16", "MPO2", 3, 16, 14448, "mse", True),
    ("MPO2 L=3 bond 32", "MPO2", 3, 32, 14448, "mse", True),
    ("MPO2 L=3 bond 64", "MPO2", 3, 64, 14448, "mse", False),
    ("MPO2 L=4 bond 16 (batch path)", "MPO2", 4, 16, 14448, "mse", True),
    ("LMPO2 L=3 bond 6", "LMPO2", 3, 6, 14448, "mse", True),
    ("cross-entropy, 3 classes, 200k rows", "MPO2", 3, 6, 200_000, "cross_entropy", True),
    ("synthetic regression, 20M rows, bond 8", "MPO2", 3, 8, 20_000_000, "mse", False),
)


def device_case(device: str, model: str, L: int, bond: int, rows: int, loss: str) -> dict:
    """s/epoch (after one warm-up epoch), the moments pass, and the peak device memory of one case."""
    import ntn
    import torch

    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, FEATURES, generator=g, dtype=torch.float64)
    target = X[:, 0] * X[:, 1] + X[:, 2] - X[:, 3] ** 2
    y = target if loss == "mse" else (target > 0).long() + (target > 1).long()
    C = 1 if loss == "mse" else 3
    net = getattr(ntn, model)(L, bond, FEATURES + 1, C, 1, 0.1, seed=0)
    trainer = ntn.NTN(net, X, y, loss=loss, batch_size=20_000, device=device)
    del X, y
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    uses_moments = trainer._moments is not None
    sync()
    moments_s = time.perf_counter() - start
    trainer.fit(1)
    sync()
    start = time.perf_counter()
    trainer.fit(2)
    sync()
    epoch_s = (time.perf_counter() - start) / 2
    peak = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else None
    return {"epoch_s": epoch_s, "moments_s": moments_s if uses_moments else None, "peak_gb": peak}


def device_table(device: str) -> None:
    import torch
    from tabulate import tabulate

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    print(f"{name} against this machine's CPU ({torch.get_num_threads()} threads), float64, torch {torch.__version__}")
    rows = []
    for label, model, L, bond, n, loss, on_cpu in DEVICE_CASES:
        gpu = device_case(device, model, L, bond, n, loss)
        cpu = device_case("cpu", model, L, bond, n, loss) if on_cpu else None
        rows.append(
            [
                label,
                f"{gpu['epoch_s']:.3f}",
                "-" if gpu["moments_s"] is None else f"{gpu['moments_s']:.3f}",
                "-" if gpu["peak_gb"] is None else f"{gpu['peak_gb']:.1f}",
                "-" if cpu is None else f"{cpu['epoch_s']:.3f}",
            ]
        )
        print(tabulate(rows[-1:], tablefmt="plain"), flush=True)
    headers = ["case", f"{device} s/epoch", "moments pass s", "peak GPU GB", "CPU s/epoch"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--device", help="print the GPU table for this device (cuda, cuda:N) instead")
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.batch_size)))
        return
    if args.device:
        device_table(args.device)
        return
    from tabulate import tabulate

    reference = matmul_gflops()
    rows = []
    for bond in BONDS:
        for n in SIZES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), str(bond), "--batch-size", str(args.batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            rows.append(
                [
                    n,
                    bond,
                    f"{r['epoch_s']:.3f}",
                    "-" if r["moments_s"] is None else f"{r['moments_s']:.3f}",
                    f"{r['peak_mb']:.0f}",
                    f"{r['update_gflops']:.1f}",
                    f"{r['update_gflops'] / reference:.2f}",
                ]
            )
    print(f"batch_size={args.batch_size}; torch.matmul float64 (1024²): {reference:.1f} GFLOP/s")
    print(
        tabulate(
            rows, headers=["N", "bond", "s/epoch", "moments s (once)", "peak RSS MB", "update GFLOP/s", "÷ matmul"]
        )
    )
    print("\nNewton systems summed over batches or formed from moments, 10 epochs, s:")
    print(tabulate(paths(), headers=["N", "model", "batches", "moments", "speed-up"]))


if __name__ == "__main__":
    main()
