import math

import numpy as np
import pytest
import torch
from ntn import LMPO2, MMPO2, MPO2, NTN, NewtonStepError, moments
from ntn.gram import accumulate_system
from ntn.losses import MSE
from ntn.models import TOP, Unit
from ntn.moments import LowRankSystem, Moments, monomial_count
from scaled import assert_close


def embed(X):
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)


def objective(trainer, jitter, unit):
    """J_k = mean data loss over the training set + jitter · h_k · ||A_k||², computed independently:
    h_k = (2/C) · mean_n ||E_n||²_F / P from the environment of the core, formed directly."""
    phi = embed(trainer.X)
    core = trainer.model.core(unit)
    E = trainer.model.environment(unit, phi).detach()  # (N, C, P)
    h = 2 / E.shape[1] * E.pow(2).sum() / (E.shape[0] * E.shape[2])
    f = trainer.model(phi)
    return (f - trainer.y).pow(2).mean() + jitter * h * core.pow(2).sum()


def regression_data(n=200, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = X[:, 0] * X[:, 1] - 0.5 * X[:, 2] ** 2 + X[:, 3] + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("n", [30, 200])  # 30 < 35 monomials: summed over the batches; 200: from the moments
def test_gradient_of_J_vanishes_after_a_core_update(Model, n):
    X, y = regression_data(n=n)
    trainer = NTN(
        Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=0), X, y, batch_size=37
    )
    assert (trainer._moments is None) == (n == 30)
    jitter = 1e-3
    for unit in trainer.model.units:
        trainer.update(unit, jitter)
        core = trainer.model.core(unit).clone().requires_grad_(True)
        trainer.model.set_core(unit, core)
        (grad,) = torch.autograd.grad(objective(trainer, jitter, unit), core)
        trainer.model.set_core(unit, core.detach())
        assert grad.abs().max().item() < 1e-9, unit


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
def test_J_k_never_increases_across_core_updates(Model):
    X, y = regression_data(seed=1)
    trainer = NTN(
        Model(L=3, bond_dim=4, phys_dim=5, output_dim=1, output_site=1, init_strength=0.2, seed=1), X, y, batch_size=50
    )
    jitter = 1e-2
    units = trainer.model.units
    for _ in range(2):
        for unit in units + units[-2::-1]:
            before = objective(trainer, jitter, unit).item()
            trainer.update(unit, jitter)
            assert objective(trainer, jitter, unit).item() <= before * (1 + 1e-12), unit


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("n", [30, 200])
def test_an_update_does_not_depend_on_the_scale_of_the_other_cores(Model, n):
    """The ridge is relative to the core's own curvature: scaling another core by s scales the updated
    core by 1/s and leaves f unchanged. (A raw ridge λ||θ||² fails this: it shrinks f for small s.)"""
    X, y = regression_data(n=n, seed=4)
    outputs = []
    for s in (1.0, 1e-3):
        model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=5)
        first = model.units[0]
        model.set_core(first, model.core(first) * s)
        trainer = NTN(model, X, y, batch_size=64)
        trainer.update(model.units[-1], 0.05)
        outputs.append(trainer.predict(X))
    assert_close(outputs[1], outputs[0], rtol=1e-8)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize(("L", "output_dim", "output_site"), [(2, 2, 1), (3, 1, 1), (3, 2, 0), (4, 3, 2)])
@pytest.mark.parametrize("held_min_width", [1, moments.HELD_MIN_WIDTH])  # 1: products over held rows wherever dense
def test_moments_give_the_same_newton_system_as_the_batches(
    Model, L, output_dim, output_site, held_min_width, monkeypatch
):
    monkeypatch.setattr(moments, "HELD_MIN_WIDTH", held_min_width)
    g = torch.Generator().manual_seed(7)
    X = torch.randn(120, 3, generator=g, dtype=torch.float64)
    y = torch.randn(120, output_dim, generator=g, dtype=torch.float64)
    trainer = NTN(
        Model(L=L, bond_dim=3, phys_dim=4, output_dim=output_dim, output_site=output_site, init_strength=0.4, seed=3),
        X,
        y,
        batch_size=50,
    )
    system = Moments(trainer.model, trainer._batches(X, y))
    for unit in trainer.model.units:
        H, g, environment_sq = accumulate_system(trainer.model, unit, trainer.loss, trainer._batches(X, y))
        newton, trace, V = system.system(trainer.model, unit, trainer.loss)
        core = trainer.model.core(unit)
        assert_close(system.coefficients_of(V, newton.to_blocks(core)), system.coefficients(trainer.model), rtol=1e-10)
        if isinstance(newton, LowRankSystem):  # rank (outputs per block)·S < parameters per block: kept factored
            blocks, rank, per_block = newton.V.shape
            assert per_block == trainer.model.core(unit).numel() // blocks
            assert rank == output_dim // blocks * monomial_count(L, 4) < per_block
        assert_close(newton.dense(), H, rtol=1e-10)
        assert_close(newton.rhs(), H @ trainer.model.core(unit).reshape(-1) - g, rtol=1e-10)  # b = Hθ − g
        assert float(trace) == pytest.approx(2 / output_dim * float(environment_sq), rel=1e-10)  # K Σ ||E_n||²
        theta, shift = trainer.model.core(unit).reshape(-1), torch.tensor(0.01 * float(trace))
        for weight in (None, 0.5 * shift):  # the ridge minimiser, and a damped step's (H + μI)⁻¹ (b + w θ)
            rhs = H @ theta - g + (0 if weight is None else weight * theta)
            want = torch.linalg.solve(H + shift * torch.eye(len(H), dtype=H.dtype), rhs)
            assert_close(newton.step(shift, theta, weight), want, rtol=1e-9)


def test_deep_networks_on_all_rows_take_the_moments_path():
    """L = 5 bond 6 on California housing's 14,448 training rows: the moments path (measured 3.2× faster per run
    than a pass over the data per update, peak RSS 452 MB; docs/benchmarks.md), not below S = 1287 samples."""
    model = MPO2(L=5, bond_dim=6, phys_dim=9, output_dim=1, output_site=1)
    assert moments.applies(model, MSE(), 14_448)
    assert not moments.applies(model, MSE(), monomial_count(5, 9) - 1)


def test_fits_noise_free_data_from_a_random_mpo2_of_the_same_shape():
    shape = dict(L=3, bond_dim=4, phys_dim=5, output_dim=1, output_site=1)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(1000, 4, generator=g, dtype=torch.float64)
        y = MPO2(**shape, init_strength=0.5, seed=100 + seed)(embed(X))
        trainer = NTN(MPO2(**shape, init_strength=0.1, seed=seed), X, y, batch_size=250)
        result = trainer.fit(10, jitter_start=1e-6, jitter_decay=0.5, jitter_min=1e-12)
        assert result["scores"]["r2"] > 0.999


def test_batch_size_does_not_change_the_result():
    X, y = regression_data(n=300, seed=2)
    weights = []
    for batch_size in (7, 1000):
        trainer = NTN(
            MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.2, seed=2),
            X,
            y,
            batch_size=batch_size,
        )
        trainer.fit(3, jitter_start=0.05, jitter_decay=0.5)
        weights.append(torch.cat([core.reshape(-1) for core in trainer.model.trainable_cores]))
    assert_close(*weights, rtol=1e-10)


def test_batch_size_does_not_change_the_result_for_cross_entropy_and_lmpo2():
    X, y = regression_data(n=150, seed=3)
    labels = (y > y.median()).long() + (y > y.quantile(0.8)).long()
    weights = []
    for batch_size in (7, 1000):
        trainer = NTN(
            LMPO2(L=3, bond_dim=2, phys_dim=5, output_dim=3, output_site=1, init_strength=0.3, seed=2),
            X,
            labels,
            loss="cross_entropy",
            batch_size=batch_size,
        )
        trainer.fit(2, jitter_start=0.05)
        weights.append(torch.cat([core.reshape(-1) for core in trainer.model.trainable_cores]))
    assert_close(*weights, rtol=1e-10)


def test_iris_cross_entropy_reaches_held_out_accuracy():
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    trainer = NTN(
        MPO2(L=3, bond_dim=4, phys_dim=5, output_dim=3, output_site=1, init_strength=0.1, seed=0),
        X_train,
        y_train,
        loss="cross_entropy",
        batch_size=32,
    )
    trainer.fit(10, jitter_start=0.05)
    assert trainer.evaluate(X_test, y_test)["accuracy"] >= 0.9


@pytest.mark.parametrize("Model", [LMPO2, MMPO2])
def test_two_layer_models_fit_a_degree_3_polynomial(Model):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    y = X[:, 0] * X[:, 1] * X[:, 2] + 0.5 * X[:, 3] ** 2 - X[:, 1] + 0.3
    trainer = NTN(
        Model(L=3, bond_dim=6, phys_dim=5, output_dim=1, output_site=1, init_strength=0.1, seed=0), X, y, batch_size=250
    )
    result = trainer.fit(10, jitter_start=1e-3, jitter_decay=0.5, jitter_min=1e-10)
    assert result["scores"]["r2"] > 0.99


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_does_not_grow_across_epochs():
    X, y = regression_data(n=4000, seed=5)
    trainer = NTN(
        MPO2(L=3, bond_dim=6, phys_dim=5, output_dim=1, output_site=1, init_strength=0.1, seed=0), X, y, batch_size=500
    )
    trainer.fit(2)
    before = rss_bytes()
    trainer.fit(20)
    grown = rss_bytes() - before
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 20 epochs"
    assert all(not c.requires_grad and c.grad_fn is None for c in trainer.model.trainable_cores)


def mpo2_with_validation(bond_dim, n_train, seed):
    """An MPO2 trainer on regression_data(seed), the rows after n_train held out for validation."""
    X, y = regression_data(seed=seed)
    model = MPO2(L=3, bond_dim=bond_dim, phys_dim=5, output_dim=1, output_site=1, init_strength=0.2, seed=0)
    return NTN(model, X[:n_train], y[:n_train], X_val=X[n_train:], y_val=y[n_train:])


def test_callbacks_receive_the_documented_keys_and_reg_loss_formula():
    trainer = mpo2_with_validation(bond_dim=3, n_train=150, seed=6)
    seen = {}

    def callback_init(scores, info):
        seen["init"] = (scores, info)

    def callback_epoch(epoch, scores, info):
        seen.setdefault("epochs", []).append((epoch, scores, info))

    result = trainer.fit(
        4, jitter_start=0.1, jitter_decay=0.5, callback_init=callback_init, callback_epoch=callback_epoch
    )
    scores, info = seen["init"]
    assert set(info) == {"n_epochs", "jitter_schedule", "regularize"}
    assert info["jitter_schedule"] == [0.1, 0.05, 0.025, 0.0125]
    assert set(scores) == {"loss", "r2", "val_loss", "val_r2"}
    best = math.inf
    for expected_epoch, (epoch, scores, info) in enumerate(seen["epochs"]):
        assert epoch == info["epoch"] == expected_epoch
        assert set(info) == {"epoch", "jitter", "reg_loss", "weight_norm_sq", "best_reg_loss", "is_best"}
        assert info["reg_loss"] == pytest.approx(scores["loss"] + info["jitter"] * info["weight_norm_sq"])
        assert info["is_best"] == (info["reg_loss"] < best)
        best = min(best, info["reg_loss"])
        assert info["best_reg_loss"] == best
    best_epoch = min(range(4), key=lambda e: seen["epochs"][e][2]["reg_loss"])
    assert result["best_epoch"] == best_epoch
    assert result["scores"]["loss"] == pytest.approx(seen["epochs"][best_epoch][1]["loss"])


def test_selection_by_validation_loss_restores_that_state():
    trainer = mpo2_with_validation(bond_dim=4, n_train=100, seed=7)
    epochs = []
    result = trainer.fit(6, jitter_start=1e-6, select="val_loss", callback_epoch=lambda e, s, i: epochs.append(s))
    best = min(range(6), key=lambda e: epochs[e]["val_loss"])
    assert result["best_epoch"] == best
    assert result["scores"]["val_loss"] == pytest.approx(epochs[best]["val_loss"])
    restored = trainer.scores()  # the model now holds that state: its scores computed again
    assert restored == pytest.approx(result["scores"], rel=1e-12)


def test_same_seed_gives_identical_results():
    X, y = regression_data(seed=8)
    cores = []
    for _ in range(2):
        trainer = NTN(LMPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.2, seed=11), X, y)
        trainer.fit(2)
        cores.append(trainer.model.trainable_cores)
    for a, b in zip(*cores):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "X, y, message",
    [
        (np.full((5, 4), np.nan), np.zeros(5), r"X contains NaN or Inf \(first in row 0\)"),
        (np.zeros((5, 4)), np.array([0, 0, np.inf, 0, 0]), r"y contains NaN or Inf \(first in row 2\)"),
        (np.zeros((5, 3)), np.zeros(5), r"X must have shape \(N, 4\)"),
        (np.zeros((5, 4)), np.zeros(4), "X has 5 rows but y has 4"),
        (np.zeros((5, 4)), np.zeros((5, 2)), r"y must have shape \(N,\) or \(N, 1\)"),
        ([["a"] * 4] * 5, np.zeros(5), "X must be a real numeric array"),
    ],
)
def test_bad_training_data_names_the_argument(X, y, message):
    with pytest.raises(ValueError, match=message):
        NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1), X, y)


def test_bad_fit_arguments():
    X, y = regression_data(n=20)
    trainer = NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1), X, y)
    with pytest.raises(ValueError, match="n_epochs must be an integer >= 0, got -1"):
        trainer.fit(-1)
    with pytest.raises(ValueError, match="select='val_loss' needs validation data"):
        trainer.fit(1, select="val_loss")
    with pytest.raises(ValueError, match="jitter must hold 2 finite values"):
        trainer.fit(2, jitter=[0.1])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1), X, y, batch_size=0)
    with pytest.raises(ValueError, match=r"loss must be one of \['cross_entropy', 'mse'\], got 'l1'"):
        NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1), X, y, loss="l1")


def test_a_system_that_stays_non_finite_raises_a_clear_error_naming_the_site():
    X = np.full((10, 4), 1e120)  # finite inputs whose degree-3 products overflow
    trainer = NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1, seed=0), X, np.ones(10))
    # H is not finite, so the damping's floor is 2N = 20 and the ridge h_k = 1's, 2λN = 0.2: the retries try 0.2, then
    # 20, 200, … 2e11, the last as λ = μ / 2N
    with pytest.raises(NewtonStepError, match=r"top core at site 0 failed: .* even with jitter 1e\+10$"):
        trainer.update(Unit(TOP, 0), 0.01)


def test_singular_system_is_rescued_by_adaptive_jitter():
    X = np.zeros((10, 4))  # every environment is identical: a rank-one Gram matrix
    trainer = NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1, seed=0), X, np.ones(10))
    trainer.fit(2, jitter=[0.0, 0.0], regularize=False)
    assert trainer.evaluate(X, np.ones(10))["loss"] < 1e-8


def test_memory_and_start_up_do_not_grow_with_n_epochs():
    """Failed on main: fit(10**9) built a list of a billion jitters before its first epoch (gigabytes)."""
    import tracemalloc

    X, y = regression_data(n=100, seed=6)
    trainer = NTN(MPO2(L=3, bond_dim=2, phys_dim=5, output_dim=1, output_site=1, init_strength=0.2, seed=0), X, y)

    class FirstEpochDone(Exception):
        pass

    def stop(epoch, scores, info):
        raise FirstEpochDone

    tracemalloc.start()
    with pytest.raises(FirstEpochDone):
        trainer.fit(10**9, callback_epoch=stop)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def _threads_seen_in_fit(**ntn_options):
    """The torch thread count inside fit's epochs, and after it."""
    rng = np.random.default_rng(0)
    X, seen = rng.standard_normal((40, 2)), []
    trainer = NTN(MPO2(L=2, bond_dim=2, phys_dim=3, output_dim=1, seed=0), X, X.sum(axis=1), **ntn_options)
    trainer.fit(1, callback_epoch=lambda *_: seen.append(torch.get_num_threads()))
    return seen[0], torch.get_num_threads()


def test_fit_trains_at_one_thread_unless_asked_and_leaves_torch_as_it_was(monkeypatch):
    for name in ("TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _threads_seen_in_fit() == (1, 2)
        monkeypatch.setenv("TORCH_THREADS", "3")
        assert _threads_seen_in_fit() == (3, 2)
        assert _threads_seen_in_fit(threads=None) == (2, 2)  # torch's own setting
        monkeypatch.delenv("TORCH_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch's own variable: left to torch
        assert _threads_seen_in_fit() == (2, 2)
        monkeypatch.setenv("TORCH_THREADS", "two")
        with pytest.raises(ValueError, match=r"^TORCH_THREADS='two' must be an integer >= 1$"):
            _threads_seen_in_fit()
    finally:
        torch.set_num_threads(before)


def test_trainers_of_the_same_data_share_its_moments_and_never_those_of_changed_data():
    """The seeds of an experiment train on the same data: its moments are made once (`moments.of`)."""
    X, y = regression_data(n=200, seed=4)
    model = lambda seed: MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, seed=seed)  # noqa: E731
    first, again = NTN(model(0), X, y), NTN(model(1), X.clone(), y.clone())
    assert again._moments is first._moments  # the same content, another tensor
    X[0, 0] += 1.0  # changed in place: other moments, made from the data as it is now
    changed = NTN(model(2), X, y)
    assert changed._moments is not first._moments
    direct = Moments(changed.model, changed._batches(changed.X, changed.y))
    assert torch.equal(changed._moments.Z, direct.Z) and torch.equal(changed._moments.Z_y, direct.Z_y)
    wider = NTN(MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=2, output_site=1, seed=0), X, torch.stack([y, y], 1))
    assert wider._moments.Z_y.shape == (35, 2)  # another output count: its own moments


@pytest.mark.parametrize("change", ["in place", "set_core", "none"])
def test_a_core_updated_twice_in_a_row_sees_every_change_to_the_others(change):
    """The system of a core updated twice in a row is kept (`NTN._system`) only while no other core has changed:
    replaced or changed in place, the second update is the one a fresh trainer makes."""
    X, y = regression_data(n=200, seed=6)
    first, other = Unit(TOP, 0), Unit(TOP, 1)
    model = MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=7)
    trainer = NTN(model, X, y)
    trainer.update(first, 0.05)
    if change == "in place":
        model.core(other).mul_(1.5)
    elif change == "set_core":
        model.set_core(other, model.core(other) * 1.5)
    trainer.update(first, 0.01)
    fresh_model = MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, seed=0)
    fresh_model.load_state(model.state())
    fresh_model.set_core(first, torch.zeros_like(fresh_model.core(first)))  # the ridge step does not read θ
    NTN(fresh_model, X, y).update(first, 0.01)
    assert_close(model.core(first), fresh_model.core(first), rtol=1e-12)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("change", ["in place", "set_core", "load_state", "none"])
def test_scores_after_an_update_are_the_models_own_whatever_changed_since(Model, change):
    """After a core update the scores come from that update's V (`NTN._coefficients`), and only while no other core
    has changed since: each time they equal the scores a pass over the data gives (`evaluate`)."""
    X, y = regression_data(n=200, seed=8)
    y = torch.stack([y, -0.5 * y + 1.0], dim=1)  # two outputs: rows (monomial, c) of each block
    X_val, y_val = X[:60] + 0.1, y[:60]
    model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=2, output_site=1, init_strength=0.3, seed=7)
    trainer = NTN(model, X, y, X_val=X_val, y_val=y_val)
    for unit in model.units:  # the top core that carries the outputs, and one that does not
        trainer.update(unit, 0.05)
        other = model.units[-1] if unit != model.units[-1] else model.units[0]
        if change == "in place":
            model.core(other).mul_(1.5)
        elif change == "set_core":
            model.set_core(other, model.core(other) * 1.5)
        elif change == "load_state":
            model.load_state([1.1 * core for core in model.state()])  # every core another tensor, scaled
        scores, train, val = trainer.scores(), trainer.evaluate(X, y), trainer.evaluate(X_val, y_val)
        want = train | {f"val_{name}": value for name, value in val.items()}
        assert scores == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
def test_fit_trains_the_same_under_inference_mode_and_leaves_cores_autograd_can_use(Model):
    """A sweep runs in inference mode (`NTN.fit`); under a caller's inference mode too, fit trains as without it (it
    had failed: the cores it made had no version counter). The cores fit and `update` leave are normal tensors, under
    the caller's inference mode too: a change in place is seen, and autograd runs through the model."""
    X, y = regression_data(n=200, seed=9)
    models = [Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=3) for _ in "ab"]
    plain = NTN(models[0], X, y).fit(3)
    with torch.inference_mode():
        trainer = NTN(models[1], X, y)
        under = trainer.fit(3)
        trainer.update(models[1].units[0], 0.05)
    assert under["scores"] == pytest.approx(plain["scores"], rel=1e-12)
    for model in models:
        assert not any(core.is_inference() for core in model.trainable_cores)
    model, unit = models[0], models[0].units[-1]
    trainer = NTN(model, X, y)
    trainer.update(unit, 0.05)
    core = model.core(unit)
    assert not core.is_inference()
    core.mul_(1.5)  # in place: the scores are the changed model's
    core.requires_grad_(True)
    assert trainer.scores() == pytest.approx(trainer.evaluate(X, y), rel=1e-9)
    phi = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    model(phi).pow(2).sum().backward()
    assert core.grad is not None and core.grad.abs().sum() > 0


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("how", ["in place", "in place under inference mode", "set_core"])
def test_a_callback_may_change_a_core_and_use_autograd(Model, how):
    """The cores a callback sees are normal tensors (`NTN._sweep`): changed in place, even under inference
    mode, the next epoch trains the changed model, as when the change is a new tensor; autograd runs through them."""
    X, y = regression_data(n=200, seed=10)
    phi = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)[:20].requires_grad_(True)
    model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=4)
    trainer, seen = NTN(model, X, y), []

    def change(epoch, scores, info):
        (saliency,) = torch.autograd.grad(model(phi).sum(), phi)
        seen.append((scores["loss"], trainer.scores()["loss"], saliency.abs().sum().item()))
        other = model.units[-1]
        if how == "set_core":
            model.set_core(other, model.core(other) * 0.8)
        else:
            with torch.inference_mode(how.endswith("inference mode")):
                model.core(other).mul_(0.8)
        seen[-1] += (trainer.scores()["loss"], trainer.evaluate(X, y)["loss"])

    history = [epoch["loss"] for epoch in trainer.fit(3, callback_epoch=change)["history"]]
    for loss, rescored, saliency, changed, evaluated in seen:
        assert rescored == pytest.approx(loss, rel=1e-12) and saliency > 0
        assert changed == pytest.approx(evaluated, rel=1e-9) and changed != pytest.approx(loss, rel=1e-6)
    reference = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=4)
    reference_trainer = NTN(reference, X, y)
    last = reference.units[-1]

    def scale(epoch, scores, info):
        reference.set_core(last, reference.core(last) * 0.8)

    expected = [epoch["loss"] for epoch in reference_trainer.fit(3, callback_epoch=scale)["history"]]
    assert history == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
def test_autograd_through_the_whole_weight_in_a_callback_reaches_every_core(Model):
    """The tables a model keeps for its sweeps (made without autograd's record) never stand in for what autograd
    records: the gradient of the weight tensor (`dense`) in a callback is a fresh copy's, for every core (the kept
    columns had left four of LMPO2's six cores without one)."""
    X, y = regression_data(n=200, seed=11)
    model = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=5)
    compared = []

    def gradients(of):
        cores = [core.requires_grad_(True) for core in of.trainable_cores]
        found = torch.autograd.grad(of.dense().pow(2).sum(), cores)
        for core in cores:
            core.requires_grad_(False)
        return found

    def compare(epoch, scores, info):
        fresh = Model(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, seed=0)
        fresh.load_state(model.state())
        compared.append((gradients(model), gradients(fresh)))
        first, fresh_first = model.top_cores[0].requires_grad_(True), fresh.top_cores[0].requires_grad_(True)
        compared.append(
            (torch.autograd.grad(model.dense().sum(), first), torch.autograd.grad(fresh.dense().sum(), fresh_first))
        )  # one core alone: the others' tables, kept, had no record
        first.requires_grad_(False)

    NTN(model, X, y).fit(2, callback_epoch=compare)
    for got, want in compared:
        for a, b in zip(got, want, strict=True):
            assert b.abs().sum() > 0
            assert_close(a, b, rtol=1e-12)


def test_a_core_made_in_inference_mode_by_the_caller_is_never_taken_as_unchanged():
    """Outside a trainer's sweep an inference tensor's changes in place cannot be counted (`ntn.models.versions`): a
    core the caller made in inference mode and changes in place gives the scores a pass over the data gives."""
    X, y = regression_data(n=200, seed=12)
    model = LMPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=6)
    trainer = NTN(model, X, y)
    trainer.fit(1)
    with torch.inference_mode():
        core = model.core(Unit(TOP, 2)).clone()
    model.set_core(Unit(TOP, 2), core)
    before = trainer.scores()
    with torch.inference_mode():
        core.add_(0.05)
    after = trainer.scores()
    assert after == pytest.approx(trainer.evaluate(X, y), rel=1e-9)
    assert after["loss"] != pytest.approx(before["loss"], rel=1e-6)


def test_a_sweep_cut_short_leaves_normal_cores():
    """However a sweep ends (an error, Ctrl-C), the cores it made are normal tensors again after it (`NTN._sweep`)."""
    X, y = regression_data(n=200, seed=13)
    model = MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, init_strength=0.3, seed=6)
    trainer = NTN(model, X, y)
    with pytest.raises(KeyboardInterrupt):
        with trainer._sweep():
            trainer._update(Unit(TOP, 0), 0.05, True)
            assert model.core(Unit(TOP, 0)).is_inference()
            raise KeyboardInterrupt
    assert not any(core.is_inference() for core in model.trainable_cores)
