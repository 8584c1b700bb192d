"""The device follows the data or the `device` argument; nothing in the trainer needs an operation that
CUDA lacks. Tests marked `cuda` run only where a GPU exists (CI has none)."""

import pytest
import torch
from ntn import LMPO2, MMPO2, MPO2, NTN, resolve_device
from ntn.moments import Moments
from scaled import assert_close
from torch.overrides import TorchFunctionMode

MATRIX_PRODUCTS = {torch.matmul, torch.mm, torch.mv, torch.bmm, torch.addmm, torch.addmv, torch.einsum}
MATRIX_PRODUCTS |= {torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.matmul, torch.Tensor.mm}
MATRIX_PRODUCTS |= {torch.Tensor.mv, torch.Tensor.addmm_, torch.Tensor.addmm}


class IntegerMatrixProducts(TorchFunctionMode):
    """Records every matrix product whose operands are integer tensors (CUDA implements none)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in MATRIX_PRODUCTS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(not (t.is_floating_point() or t.is_complex()) for t in tensors):
                self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def regression(n=200, features=4, outputs=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = X[:, :outputs] * X[:, 1:2] - 0.5 * X[:, 2:3] ** 2 + 0.1 * torch.randn(n, outputs, generator=g, dtype=X.dtype)
    return X, y


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
def test_moments_use_no_integer_matrix_product(Model):
    """Failed on main, seeing ['matmul', ...]: `monomials @ powers` is an integer matmul, which
    CUDA does not have (NotImplementedError: "addmv_impl_cuda" not implemented for 'Long')."""
    X, y = regression()
    trainer = NTN(Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=0), X, y)
    with IntegerMatrixProducts() as mode:
        system = Moments(trainer.model, trainer._batches(X, y))
        system.system(trainer.model, trainer.model.units[0], trainer.loss)
        system.scores(trainer.model)
    assert mode.seen == []


def test_the_integer_matrix_product_detector_sees_one():
    with IntegerMatrixProducts() as mode:
        torch.arange(6).reshape(2, 3) @ torch.arange(3)
    assert mode.seen


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("n_val", [100, 20])  # 20 < S = 35: validation scores take the moments at any size
def test_training_and_validation_scores_from_the_moments_match_a_direct_evaluation(Model, outputs, n_val):
    X, y = regression(n=300, outputs=outputs, seed=1)
    X_val, y_val = regression(n=n_val, outputs=outputs, seed=3)
    trainer = NTN(
        Model(L=3, bond_dim=3, phys_dim=5, output_dim=outputs, output_site=1, init_strength=0.3, seed=2),
        X,
        y,
        batch_size=64,
        X_val=X_val,
        y_val=y_val,
    )
    assert trainer._moments is not None and trainer._validation_moments is not None
    trainer.fit(2)
    from_moments = trainer.scores()
    direct = trainer.evaluate(X.clone(), y.clone()) | {
        f"val_{k}": v for k, v in trainer.evaluate(X_val.clone(), y_val.clone()).items()
    }
    assert from_moments.keys() == direct.keys() == {"loss", "r2", "val_loss", "val_r2"}
    for key in direct:
        assert from_moments[key] == pytest.approx(direct[key], rel=1e-10)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' asked for, but CUDA is not available here"):
            resolve_device("cuda:1")


def _fit_everywhere(device, Model, loss, n):
    X, y = regression(n=n, seed=3)
    if loss == "cross_entropy":
        y = (y[:, 0] > y[:, 0].median()).long() + (y[:, 0] > y[:, 0].quantile(0.8)).long()
        model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=3, output_site=1, init_strength=0.3, seed=4)
    else:
        model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=4)
    cut = n * 3 // 4
    trainer = NTN(model, X[:cut].numpy(), y[:cut].numpy(), loss=loss, X_val=X[cut:], y_val=y[cut:], device=device)
    result = trainer.fit(3)
    return trainer, result, trainer.predict(X.numpy()).cpu(), trainer.evaluate(X[cut:].numpy(), y[cut:].numpy())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize(("loss", "n"), [("mse", 200), ("mse", 20), ("cross_entropy", 200)])  # moments, batches
def test_every_path_trains_on_cuda_as_on_the_cpu(Model, loss, n):
    cpu, cuda = _fit_everywhere("cpu", Model, loss, n), _fit_everywhere("cuda", Model, loss, n)
    assert cuda[0].X.device.type == "cuda" and all(c.device.type == "cuda" for c in cuda[0].model.trainable_cores)
    assert (cuda[0]._moments is not None) == (loss == "mse" and n == 200)
    assert_close(cuda[2], cpu[2], rtol=1e-8)
    for key, value in cpu[3].items():
        assert cuda[3][key] == pytest.approx(value, rel=1e-8, abs=1e-10)


def test_numpy_inputs_land_on_the_device_asked_for():
    trainer, _, predictions, scores = _fit_everywhere("cpu", MPO2, "mse", 200)
    assert trainer.X.device.type == "cpu" and predictions.shape == (200, 1) and scores["r2"] > 0.5
