import itertools

import ntn.moments
import pytest
import torch
from ntn import LMPO2, MMPO2, MPO2
from ntn.hessians import HeldRows
from ntn.models import Unit, basis_inputs
from ntn.moments import Moments
from scaled import assert_close


def embed(X):
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("output_site", [0, 1, 2])
def test_output_equals_dense_einsum_of_contracted_tensor(Model, output_site):
    model = Model(L=3, bond_dim=4, phys_dim=5, output_dim=2, output_site=output_site, init_strength=0.3, seed=0)
    phi = embed(torch.randn(11, 4, dtype=torch.float64))
    W = model.dense()  # (p, p, p, C)
    expected = torch.einsum("ni,nj,nk,ijkc->nc", phi, phi, phi, W)
    assert_close(model(phi), expected)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
def test_environment_is_the_linear_map_of_each_core(Model):
    model = Model(L=4, bond_dim=3, phys_dim=4, output_dim=3, output_site=2, init_strength=0.4, seed=1)
    phi = embed(torch.randn(9, 3, dtype=torch.float64))
    for unit in model.units:
        E = model.environment(unit, phi)
        assert_close(E @ model.core(unit).reshape(-1), model(phi))


def basis_environment_per_monomial(model, unit, p, L):
    """Independent of every fold's shortcut (MMPO2: the top row alone on the sorted tuples): E on all p^L basis
    tuples through every core, mask included, summed over the tuples of each monomial: (S, C, P)."""
    monomials = torch.combinations(torch.arange(p), L, with_replacement=True)  # (S, L), each tuple sorted
    tuples = torch.cartesian_prod(*[torch.arange(p)] * L).reshape(-1, L)  # (p^L, L), row-major
    monomial_of = torch.tensor([monomials.tolist().index(sorted(t)) for t in tuples.tolist()])
    E_basis = model.environment(unit, basis_inputs(L, p, torch.float64, torch.device("cpu")))  # (p^L, C, P)
    return E_basis.new_zeros(len(monomials), *E_basis.shape[1:]).index_add_(0, monomial_of, E_basis)


FOLD_SHAPES = [(3, 1, 1), (4, 3, 0), (4, 2, 3), (2, 2, 1)]  # (L, output_dim, output_site)


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("L, output_dim, output_site", FOLD_SHAPES)
def test_folded_basis_environment_is_the_basis_environment_summed_per_monomial(Model, L, output_dim, output_site):
    p = 4
    model = Model(L=L, bond_dim=3, phys_dim=p, output_dim=output_dim, output_site=output_site, seed=3)
    model.top_cores = [core.normal_() for core in model.top_cores]  # entries of order 1: no tiny products
    moments = Moments(model, [])  # its monomials and their map only
    for unit in model.units:
        if unit.layer == "top":
            V = model.folded_basis_environment(unit, moments.monomials, moments.monomial_of)
            assert_close(V, basis_environment_per_monomial(model, unit, p, L))


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("L, output_dim, output_site", FOLD_SHAPES)
@pytest.mark.parametrize("held_min_width", [1, 10**6])  # on the rows that hold each index, or dense
def test_the_held_environment_is_the_basis_environment_summed_per_monomial(
    Model, L, output_dim, output_site, held_min_width, monkeypatch
):
    """The fold of every core that reads φ's index (MPO2's and MMPO2's top cores, every input core: multisets,
    then rows), in V's layout (blocks, (m, c), (j, …)) and parameter order, against the basis environment."""
    monkeypatch.setattr(ntn.moments, "HELD_MIN_WIDTH", held_min_width)
    p = 4
    model = Model(L=L, bond_dim=3, phys_dim=p, output_dim=output_dim, output_site=output_site, seed=3)
    model.top_cores = [core.normal_() for core in model.top_cores]
    moments = Moments(model, [])
    for unit in [unit for unit in model.units if model.reads_phi(unit)]:
        V, (order, _) = moments._held_environment(model, unit)
        V = V.dense() if isinstance(V, HeldRows) else V
        blocks, per_block = order.shape[0], output_dim // order.shape[0]
        got = V.new_zeros(len(moments.monomials), output_dim, model.core(unit).numel())  # (S, C, P), core order
        for b in range(blocks):  # block b: outputs b·per_block + c, parameters order[b]
            block = V[b].reshape(len(moments.monomials), per_block, -1)
            got[:, b * per_block : (b + 1) * per_block, order[b]] = block
        assert_close(got, basis_environment_per_monomial(model, unit, p, L))


@pytest.mark.parametrize("Model", [MPO2, LMPO2, MMPO2])
@pytest.mark.parametrize("L", [2, 4])
def test_norm_sq_is_each_trainable_rows_whole_tensor_squared(Model, L):
    """Independent of the transfer matrices: each row contracted into its whole tensor (bond by bond), squared."""
    model = Model(L=L, bond_dim=3, phys_dim=4, output_dim=2, output_site=L - 1, init_strength=0.5, seed=5)
    rows = [model.top_cores, model.input_cores] if model.train_input else [model.top_cores]
    expected = 0.0
    for row in rows:
        whole = row[0]
        for core in row[1:]:
            whole = torch.tensordot(whole, core, dims=([-1], [0]))
        expected += whole.pow(2).sum().item()
    assert model.norm_sq() == pytest.approx(expected, rel=1e-12)


def test_parameter_counts():
    assert MPO2(L=3, bond_dim=6, phys_dim=9, output_dim=1, output_site=1).n_parameters == 432
    assert MMPO2(L=3, bond_dim=6, phys_dim=9, output_dim=1, output_site=1).n_parameters == 432
    # rank = max(2, int(9 * 0.5)) = 4: reduction 216 + 1296 + 216, top 24 + 144 + 24
    assert LMPO2(L=3, bond_dim=6, phys_dim=9, output_dim=1, output_site=1).n_parameters == 1920
    assert (
        LMPO2(L=3, bond_dim=6, phys_dim=9, output_dim=1, output_site=1, rank=2).n_parameters
        == 9 * 2 * 6 * 2 + 6 * 9 * 2 * 6 + 2 * 6 + 6 * 2 * 6 + 6 * 2
    )


def test_mmpo2_mask_keeps_each_monomial_once():
    model = MMPO2(L=3, bond_dim=2, phys_dim=4, output_dim=1, output_site=1, init_strength=0.5, seed=3)
    W = model.dense()[..., 0]
    for index in itertools.product(range(4), repeat=3):
        if list(index) != sorted(index):
            assert W[index] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(L=1), "L must be an integer >= 2"),
        (dict(bond_dim=0), "bond_dim must be an integer >= 1"),
        (dict(output_site=3), r"output_site must be an integer in \[0, 3\), got 3"),
        (dict(output_site=-1), r"output_site must be an integer in \[0, 3\), got -1"),
    ],
)
def test_bad_model_arguments_name_the_argument(kwargs, message):
    args = dict(L=3, bond_dim=2, phys_dim=4, output_dim=1, output_site=1) | kwargs
    for Model in (MPO2, LMPO2, MMPO2):
        with pytest.raises(ValueError, match=message):
            Model(**args)


@pytest.mark.parametrize("factory", ["MPO2", "LMPO2", "MMPO2"])
def test_a_saved_model_loads_back_and_predicts_the_same(tmp_path, factory):
    import ntn

    generator = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=generator, dtype=torch.float64)
    y = (X[:, :1] * X[:, 1:2] - X[:, 2:3]).squeeze(1)
    model = getattr(ntn, factory)(L=3, bond_dim=3, phys_dim=4, seed=1)
    trainer = ntn.NTN(model, X, y, loss="mse", batch_size=60)
    trainer.fit(2)
    ntn.save_model(model, tmp_path / "model.pt")
    loaded = ntn.load_model(tmp_path / "model.pt")
    assert loaded.recipe == model.recipe and loaded.n_parameters == model.n_parameters
    phi = torch.cat([X, torch.ones(60, 1, dtype=torch.float64)], dim=1)
    expected = model(phi)
    assert_close(loaded(phi), expected, rtol=1e-12)
    assert_close(ntn.NTN(loaded, X, y, loss="mse", batch_size=60).predict(X), trainer.predict(X), rtol=1e-12)


@pytest.mark.parametrize("change", ["in place", "set_core"])
def test_the_kept_columns_and_sides_see_every_change_to_a_core(change):
    """LMPO2's columns, the tables around a site and a chain end's rows summed per multiset are kept while their
    cores are unchanged (`_basis_column`, `_basis_sides`, `_multiset_side`): replaced or changed in place, the next
    fold is the one a fresh model makes."""
    p, L = 4, 3
    model = LMPO2(L=L, bond_dim=3, phys_dim=p, output_dim=2, output_site=1, seed=3)
    monomials = torch.combinations(torch.arange(p), L, with_replacement=True)
    tuples = torch.cartesian_prod(*[torch.arange(p)] * L).reshape(-1, L)
    monomial_of = torch.tensor([monomials.tolist().index(sorted(t)) for t in tuples.tolist()])

    def fold(network, unit):  # each reads `_basis_sides`, which keeps every column and side
        if unit.layer == "input":
            return network.input_multisets(unit)
        return network.folded_basis_environment(unit, monomials, monomial_of)

    for unit in model.units:
        fold(model, unit)
    changed = Unit("input", 2) if change == "in place" else Unit("top", 1)
    if change == "in place":
        model.core(changed).mul_(1.5)
    else:
        model.set_core(changed, model.core(changed) * 1.5)
    fresh = LMPO2(L=L, bond_dim=3, phys_dim=p, output_dim=2, output_site=1, seed=0)
    fresh.load_state(model.state())
    for unit in model.units:
        assert_close(fold(model, unit), fold(fresh, unit), rtol=1e-12)
