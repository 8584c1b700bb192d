"""NTN: Newton sweeps over the cores of a tensor network.

One epoch sweeps the trainable cores left to right and back. f is linear in each core θ = vec(A_k):
f(x_n) = E_n θ with the environment E_n (C × P) from `TensorNetwork.environment`. Each core update is a
Newton step on

    J_k(θ) = (1/N) Σ_n ℓ(E_n θ, y_n) + λ h_k ||θ||²,      h_k = (2/C) · (1/(N P)) Σ_n ||E_n||²_F,

over the whole training set, λ = the epoch's jitter. h_k is the mean curvature per parameter of the core's
data term under MSE (the mean of diag H below), so the ridge is λ times the data term's own scale and λ is
dimensionless. That makes the update independent of how the model's weight is spread over its factors:
rescaling the other cores by s scales E_n by s and h_k by s², the minimiser θ* by 1/s, and leaves
f = E θ* unchanged. A ridge λ||θ||² on the raw core does not have this property: it weighs a core by the
scale of all the others, and on a product of many small factors (LMPO2 multiplies six) it dominates every
update until the sweep contracts the model to f = 0. So

    g = (1/N) Σ_n E_nᵀ ∂ℓ_n/∂f + 2λh_kθ,     H = (1/N) Σ_n E_nᵀ (∂²ℓ_n/∂f²) E_n + 2λh_kI,     θ ← θ − H⁻¹ g,

accumulated over mini-batches (memory bounded by batch_size, result independent of it). For MSE, J_k is
quadratic in θ and the step lands on its exact minimiser; the sums then come from the data's polynomial
moments (`ntn.moments`), gathered in one pass, whenever that is cheaper than a pass per update.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ntn import moments
from ntn.gram import accumulate_system
from ntn.hessians import DenseSystem, NewtonSystem
from ntn.losses import get_loss
from ntn.models import TensorNetwork, Unit, restamped, sweeping, unchanged, versions
from ntn.threads import training_threads, with_threads

Scores = dict[str, float]
SELECTIONS = ("reg_loss", "val_loss", "last")
JITTER_RETRIES = 12  # each retry multiplies the damping by 10


class NewtonStepError(RuntimeError):
    """A core's Newton system stayed singular or non-finite up to the jitter bound."""


class JitterSchedule(Sequence[float]):
    """jitter[e] = max(start · decay^e, minimum), e < n_epochs: computed on demand, so that its memory and
    its making do not grow with n_epochs."""

    def __init__(self, n_epochs: int, start: float, decay: float, minimum: float) -> None:
        for name, value in (("jitter_start", start), ("jitter_decay", decay), ("jitter_min", minimum)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.n_epochs, self.start, self.decay, self.minimum = n_epochs, start, decay, minimum

    def __len__(self) -> int:
        return self.n_epochs

    def __getitem__(self, epoch):  # type: ignore[override]
        if isinstance(epoch, slice):
            return [self[e] for e in range(*epoch.indices(self.n_epochs))]
        if not -self.n_epochs <= epoch < self.n_epochs:
            raise IndexError(epoch)
        epoch %= self.n_epochs
        try:
            value = self.start * self.decay**epoch
        except OverflowError:  # decay > 1 over very many epochs
            value = math.inf
        return max(value, self.minimum)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"JitterSchedule({self.n_epochs}, start={self.start}, decay={self.decay}, minimum={self.minimum})"


def jitter_schedule(n_epochs: int, start: float, decay: float, minimum: float) -> JitterSchedule:
    """jitter[e] = max(start · decay^e, minimum)."""
    return JitterSchedule(n_epochs, start, decay, minimum)


def newton_step(
    theta: Tensor,
    system: NewtonSystem,
    curvature: Tensor,
    per_curvature: float,
    regularize: bool,
    n_samples: int,
    unit: Unit,
) -> Tensor:
    """One Newton step on J = data term + (ridge/2)·||θ||² (the ridge term only when `regularize`), ridge =
    per_curvature · curvature: 2 × the epoch's λ × the core's curvature scale h_k, in the units of the system's sums
    (`NTN._update`). A ridge that overflows to inf lands on its limit, θ = 0; a NaN one fails, and the retries start
    from h_k = 1.

    :param theta: the core, in its own shape (P parameters)
    :param system: the data term's Hessian H and right side b = Hθ − g (`ntn.hessians`), summed over n_samples
    :param curvature: (0-d, no device sync); :param per_curvature: a number; :param unit: the core's, for the error
    :return: (P,): θ − (H + ridge·I)⁻¹ (g + ridge·θ) = (H + ridge·I)⁻¹ b (without the ridge term: damped by it,
        (H + ridge·I)⁻¹ (b + ridge·θ)). If H + ridge·I is not positive definite or the step is not finite, the
        damping μ is raised tenfold (at least to 1e-12 of H's mean diagonal per sample), up to JITTER_RETRIES times:
        (H + μI)⁻¹ (b + (μ − ridge)·θ).
    """
    updated = system.step(curvature, theta, None if regularize else curvature, per_curvature)  # μ = ridge
    if updated is not None:
        return updated
    # failed: the damping's floor and the ridge as a tensor, made only now
    diagonal_mean = system.diagonal().abs().mean().item() / n_samples  # not finite when the diagonal is not
    floor = 2e-12 * n_samples * max(diagonal_mean, 1.0) if math.isfinite(diagonal_mean) else 2.0 * n_samples
    ridge = curvature * per_curvature
    tried = math.isfinite(ridge.item())  # the step above was at this ridge; else the retries start at h_k = 1
    unit_ridge = per_curvature * theta.numel() * n_samples  # h_k = 1: the curvature's sum is P·N
    ridge = ridge.nan_to_num(nan=unit_ridge, posinf=unit_ridge, neginf=unit_ridge)
    shift = ridge
    for retry in range(JITTER_RETRIES):
        if retry or tried:
            shift = torch.clamp(10 * shift, min=floor)
        updated = system.step(shift, theta, shift - ridge if regularize else shift)
        if updated is not None:
            return updated
    raise NewtonStepError(
        f"Newton step on {unit.layer} core at site {unit.site} failed: the system is not positive definite or not "
        f"finite even with jitter {float(shift) / (2 * n_samples):.3g}"  # the last μ tried, as λ with h_k = 1
    )


def _as_tensor(name: str, value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`value` as a finite real tensor of `dtype` on `device`, or a ValueError naming `name`."""
    try:
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real numeric array ({err})") from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be a real numeric array, got dtype {tensor.dtype}")
    tensor = tensor.to(device=device, dtype=dtype)
    if tensor.numel() and not torch.isfinite(tensor).all():
        row = (~torch.isfinite(tensor)).reshape(len(tensor), -1).any(dim=1).nonzero()[0, 0].item()
        raise ValueError(f"{name} contains NaN or Inf (first in row {row})")
    return tensor


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A torch device from "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N".

    :raises ValueError: one line naming the device, when it is malformed or not available here
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use auto or cpu)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} asked for, but only {count} CUDA device(s) exist")
    return device


class NTN:
    """Trains a TensorNetwork with Newton sweeps on fixed training data.

    :param model: MPO2, LMPO2 or MMPO2
    :param X: training inputs (N, n_features), with n_features = model.phys_dim − 1
    :param y: targets, (N,) or (N, output_dim) for "mse"; class labels in [0, output_dim) for "cross_entropy"
    :param loss: "mse" or "cross_entropy"
    :param batch_size: samples per mini-batch when accumulating gradient and Hessian
    :param X_val, y_val: optional validation data; its scores appear as val_* in the callbacks
    :param dtype: float64 by default
    :param device: where the data, the model and every computation live ("cpu", "cuda", "cuda:1",
        "auto"); by default the device of X when X is a tensor, else the CPU. Inputs given as numpy
        arrays or tensors on another device are copied there once.
    :param threads: torch threads for fit, evaluate and predict (torch's setting is restored after):
        default $TORCH_THREADS, else torch's own when OMP_NUM_THREADS or MKL_NUM_THREADS is set, else 1
        (`ntn.threads`: faster at every measured size on a busy machine); None leaves torch's setting
    """

    def __init__(
        self,
        model: TensorNetwork,
        X: Any,
        y: Any,
        loss: str = "mse",
        batch_size: int = 100,
        X_val: Any = None,
        y_val: Any = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        threads: int | str | None = "default",
    ) -> None:
        self.threads = training_threads() if threads == "default" else threads
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.loss = get_loss(loss)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.batch_size, self.dtype = model, batch_size, dtype
        if device is None:
            self.device = X.device if isinstance(X, Tensor) else torch.device("cpu")
        else:
            self.device = resolve_device(device)
        self.X, self.y = self._data("X", X, "y", y)
        self.validation = self._data("X_val", X_val, "y_val", y_val) if X_val is not None or y_val is not None else None
        model.to(self.device, dtype)
        self._kept: tuple = ()  # (unit, the other cores with their versions, its system, trace and V): `_system`

    # ---- data -------------------------------------------------------------------------------

    def _data(self, x_name: str, X: Any, y_name: str, y: Any) -> tuple[Tensor, Tensor]:
        if X is None or y is None:
            raise ValueError(f"{x_name} and {y_name} must be given together")
        X = _as_tensor(x_name, X, self.dtype, self.device)
        n_features = self.model.phys_dim - 1
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(
                f"{x_name} must have shape (N, {n_features}) for phys_dim={self.model.phys_dim} "
                f"(phys_dim = n_features + 1), got {tuple(X.shape)}"
            )
        C = self.model.output_dim
        if self.loss.labels:
            y = _as_tensor(y_name, y, torch.float64, self.device)
            if y.ndim != 1 or (y != y.round()).any() or (y < 0).any() or (y >= C).any():
                raise ValueError(f"{y_name} must be class labels (N,) with values in [0, {C}) for {self.loss.name}")
            y = y.long()
        else:
            y = _as_tensor(y_name, y, self.dtype, self.device)
            y = y[:, None] if y.ndim == 1 else y
            if y.ndim != 2 or y.shape[1] != C:
                raise ValueError(f"{y_name} must have shape (N,) or (N, {C}) for output_dim={C}, got {tuple(y.shape)}")
        if len(y) != len(X):
            raise ValueError(f"{x_name} has {len(X)} rows but {y_name} has {len(y)}")
        if len(X) == 0:
            raise ValueError(f"{x_name} is empty")
        return X, y

    def _batches(self, X: Tensor, y: Tensor):
        for start in range(0, len(X), self.batch_size):
            X_b = X[start : start + self.batch_size]
            phi = torch.cat([X_b, X_b.new_ones(len(X_b), 1)], dim=1)  # φ(x) = [x, 1]: (B, p)
            yield phi, y[start : start + self.batch_size]

    # ---- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    @with_threads
    def predict(self, X: Any) -> Tensor:
        """Model outputs (N, output_dim): regression values, or class logits."""
        X = _as_tensor("X", X, self.dtype, self.device)
        dummy = X.new_zeros(len(X), dtype=torch.long)
        return torch.cat([self.model(phi) for phi, _ in self._batches(X, dummy)])

    @torch.inference_mode()
    @with_threads
    def evaluate(self, X: Any, y: Any) -> Scores:
        """{"loss", "r2"} for regression (R² over all outputs) or {"loss", "accuracy"} for classification."""
        return self._evaluate(*self._data("X", X, "y", y))

    def _evaluate(self, X: Tensor, y: Tensor) -> Scores:
        """`evaluate` on data already checked and on the device; one device sync."""
        batches = [self.model(phi) for phi, _ in self._batches(X, y)]
        f = batches[0] if len(batches) == 1 else torch.cat(batches)
        loss = self.loss.per_sample(f, y).mean()
        if self.loss.labels:
            loss, accuracy = torch.stack([loss.double(), (f.argmax(dim=1) == y).double().mean()]).tolist()
            return {"loss": loss, "accuracy": accuracy}
        loss, total, residual = torch.stack([loss, (y - y.mean(dim=0)).pow(2).sum(), (y - f).pow(2).sum()]).tolist()
        r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else -math.inf)
        return {"loss": loss, "r2": r2}

    @torch.inference_mode()
    def scores(self) -> Scores:
        """Training scores, plus val_* ones when validation data was given; each from its data's moments
        where they apply (no pass over the data), else by `evaluate`."""
        sums = self._moments or self._validation_moments
        coefficients = None if sums is None else self._coefficients(sums)  # the same for both data sets
        scores = self._scores(self._moments, coefficients, self.X, self.y)
        if self.validation is not None:
            validation = self._scores(self._validation_moments, coefficients, *self.validation)
            scores |= {f"val_{k}": v for k, v in validation.items()}
        return scores

    def _coefficients(self, sums: moments.Moments) -> Tensor:
        """The model's coefficients on the monomials (`Moments.coefficients`): from the last core update's system,
        a = V θ (one product), when no other core has changed since it was made (each epoch's sweep ends on one),
        else from the whole model. A change is what torch counts (in place or a new tensor), as for the model's kept
        columns: one made through `.data` or `.numpy()` is not seen."""
        if self._kept:
            unit, others, system, _, environment = self._kept
            core = self.model.core(unit)
            if unchanged(others, self._others(core)):
                return sums.coefficients_of(environment, system.to_blocks(core))
        return sums.coefficients(self.model)

    def _scores(self, sums: moments.Moments | None, coefficients: Tensor | None, X: Tensor, y: Tensor) -> Scores:
        return sums.scores(self.model, coefficients) if sums is not None else self._evaluate(X, y)

    # ---- training ---------------------------------------------------------------------------

    @functools.cached_property
    def _moments(self) -> moments.Moments | None:
        """The training data's moments, when they give the MSE Newton systems faster than the batches."""
        return self._moments_of(self.X, self.y)

    @functools.cached_property
    def _validation_moments(self) -> moments.Moments | None:
        """The validation data's moments, when they give its scores (any size of data: `moments.applies`)."""
        return None if self.validation is None else self._moments_of(*self.validation, scores_only=True)

    def _moments_of(self, X: Tensor, y: Tensor, scores_only: bool = False) -> moments.Moments | None:
        if not moments.applies(self.model, self.loss, None if scores_only else len(X)):
            return None
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, made once: they serve autograd later
            return moments.of(self.model, X, y, lambda: self._batches(X, y))

    def update(self, unit: Unit, jitter: float, regularize: bool = True) -> None:
        """Newton step on one core over the whole training set."""
        with self._sweep():
            self._update(unit, jitter, regularize)

    @contextlib.contextmanager
    def _sweep(self) -> Iterator[None]:
        """Updates in inference mode (no autograd records), the cores they make told apart by their identity
        (`ntn.models.sweeping`); at its end, however it ends, every core a normal tensor again
        (`TensorNetwork.make_cores_normal`) and the kept system kept for the copies."""
        try:
            with torch.inference_mode(), sweeping():
                yield
        finally:
            copies = self.model.make_cores_normal()
            if self._kept:
                unit, others, *kept = self._kept
                self._kept = (unit, restamped(others, copies), *kept)

    def _update(self, unit: Unit, jitter: float, regularize: bool) -> None:
        """`update` inside a `_sweep`, held by its caller (`fit` holds one for a whole sweep): the new core is an
        inference tensor."""
        theta = self.model.core(unit)
        N, P, C = self.X.shape[0], theta.numel(), self.model.output_dim
        if self._moments is not None:
            system, curvature = self._system(unit, theta)
        else:
            hessian, gradient, environment_sq = accumulate_system(
                self.model, unit, self.loss, self._batches(self.X, self.y)
            )
            system, curvature = DenseSystem(hessian, hessian @ theta.reshape(-1) - gradient), environment_sq * (2 / C)
        # the ridge 2λ h_k in the sums' units (× N), h_k = (2/C) Σ_n ||E_n||² / (N P) (MSE: trace(H) / (N P)): the
        # curvature (a 0-d tensor: no device sync) times 2λ / P
        step = newton_step(theta, system, curvature, 2 * jitter / P, regularize, N, unit)
        self.model.set_core(unit, step.reshape(theta.shape))

    def _system(self, unit: Unit, theta: Tensor) -> tuple[NewtonSystem, Tensor]:
        """The core's Newton system from the moments: H and b depend on the other cores alone, so the last update's
        is kept when it was this core's and no other core has changed since (each epoch's end and the next one's
        start update the first core twice: 9 of a 10-epoch run's 50 systems for MPO2 at L = 3)."""
        others = self._others(theta)
        if self._kept and self._kept[0] == unit and unchanged(self._kept[1], others):
            return self._kept[2:4]
        system, trace, environment = self._moments.system(self.model, unit, self.loss)
        self._kept = (unit, others, system, trace, environment)
        return system, trace

    def _others(self, core: Tensor) -> tuple[tuple[Tensor, int], ...]:
        """Every core but `core`, with its version (`ntn.models.versions`)."""
        return versions([other for other in self.model.top_cores + (self.model.input_cores or []) if other is not core])

    def weight_norm_sq(self) -> float:
        """Σ over the trainable rows of ||T_row||²_F (`TensorNetwork.norm_sq`): unlike Σ_k ||A_k||², it
        does not depend on how the weight is spread over the factors."""
        return self.model.norm_sq()

    @with_threads
    def fit(
        self,
        n_epochs: int = 10,
        jitter_start: float = 0.2,
        jitter_decay: float = 0.9,
        jitter_min: float = 1e-6,
        jitter: Sequence[float] | None = None,
        regularize: bool = True,
        select: str = "reg_loss",
        callback_init: Callable[[Scores, dict], None] | None = None,
        callback_epoch: Callable[[int, Scores, dict], None] | None = None,
    ) -> dict:
        """Train for n_epochs sweeps and restore the best state.

        :param jitter: an explicit per-epoch list; otherwise max(jitter_start·jitter_decay^e, jitter_min)
        :param regularize: each core's step minimises data loss + λ·h_k·||A_k||², λ the epoch's jitter and
            h_k the core's mean curvature (`update`); if False, λ·h_k only damps the Newton step
        :param select: which state to keep at the end: lowest "reg_loss" (the seed's choice), lowest
            "val_loss" (needs validation data), or the "last" one
        :return: {"scores": scores of the kept state, "best_epoch": its epoch, "history": per-epoch records}

        Each epoch's sweep runs in `torch.inference_mode`; the cores a callback sees and fit leaves are normal tensors.
        """
        if not isinstance(n_epochs, int) or isinstance(n_epochs, bool) or n_epochs < 0:
            raise ValueError(f"n_epochs must be an integer >= 0, got {n_epochs!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {list(SELECTIONS)}, got {select!r}")
        if select == "val_loss" and self.validation is None:
            raise ValueError("select='val_loss' needs validation data (X_val, y_val)")
        if jitter is None:
            schedule: Sequence[float] = JitterSchedule(n_epochs, jitter_start, jitter_decay, jitter_min)
        else:
            schedule = list(jitter)
            if len(schedule) != n_epochs or not all(math.isfinite(j) and j >= 0 for j in schedule):
                raise ValueError(f"jitter must hold {n_epochs} finite values >= 0, got {schedule!r}")

        if callback_init is not None:
            info = {"n_epochs": n_epochs, "jitter_schedule": schedule, "regularize": regularize}
            callback_init(self.scores(), info)

        units = self.model.units
        sweep = units + units[-2::-1]  # left to right and back
        best_value, best_epoch, best_state, best_scores = math.inf, -1, self.model.state(), None
        best_reg_loss = math.inf
        history = []
        for epoch, lam in enumerate(schedule):
            # one context for the sweep and its scores, not one per update. Inference mode keeps no autograd records
            # (under no_grad every call still passes autograd's dispatch, and views of a normal tensor make autograd
            # metadata: a run took ~10 % longer). The cores it makes are inference tensors until its end: the
            # callbacks see normal ones.
            with self._sweep():
                for unit in sweep:
                    self._update(unit, lam, regularize)
                scores = self.scores()
                norm_sq = self.weight_norm_sq()
            reg_loss = scores["loss"] + lam * norm_sq
            best_reg_loss = min(best_reg_loss, reg_loss)
            value = {"reg_loss": reg_loss, "val_loss": scores.get("val_loss"), "last": -epoch}[select]
            is_best = value < best_value
            if is_best:
                best_value, best_epoch, best_state, best_scores = value, epoch, self.model.state(), dict(scores)
            info = {
                "epoch": epoch,
                "jitter": lam,
                "reg_loss": reg_loss,
                "weight_norm_sq": norm_sq,
                "best_reg_loss": best_reg_loss,
                "is_best": is_best,
            }
            history.append(scores | info)
            if callback_epoch is not None:
                callback_epoch(epoch, scores, info)
        self.model.load_state(best_state)  # its scores: those computed for it (the same sums of the same cores)
        if best_scores is None:  # no epoch kept (none ran, or none had a finite value): the initial state's
            best_scores = self.scores()
        return {"scores": best_scores, "best_epoch": best_epoch, "history": history}
