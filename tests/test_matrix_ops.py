"""Specification of the matrix, cross-layer and rank-aggregation ops (primitives/matrix.py, layer_tensors.py, ranks.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from primitives import get_op
from primitives.layer_tensors import LayerShapeError
from primitives.matrix import MatrixShapeError
from primitives.numerics import EPS

quick = settings(max_examples=40, deadline=None)
SQUARE_OPS = ["logdet", "trace", "eigvals", "eig_min", "eig_max", "eig_entropy", "eff_rank"]
ROW_OPS = ["gram", "corrcoef", "count_unique_rows"]


def op(name: str):
    return get_op(name).fn


@st.composite
def square_matrices(draw, low: int = 1, high: int = 6, bound: float = 1e6) -> torch.Tensor:
    n = draw(st.integers(low, high))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    values = draw(st.lists(st.floats(-bound, bound, width=32), min_size=n * n, max_size=n * n))
    return torch.tensor(values, dtype=dtype).reshape(n, n)


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("name", SQUARE_OPS + ROW_OPS)
@quick
@given(x=square_matrices())
def test_matrix_ops_map_finite_square_input_to_finite_output_without_touching_it(name, x):
    before = x.clone()
    out = op(name)(x)
    assert torch.equal(x, before)
    assert torch.isfinite(out).all()
    assert out.dtype == x.dtype


@pytest.mark.parametrize("name", SQUARE_OPS)
@pytest.mark.parametrize("shape", [(3, 4), (7,), (2, 3, 3), (0, 0)])
def test_square_matrix_ops_refuse_non_square_input(name, shape):
    with pytest.raises(MatrixShapeError, match="square"):
        op(name)(torch.ones(shape))


@pytest.mark.parametrize("name", SQUARE_OPS)
def test_a_one_element_tensor_is_the_1x1_matrix_of_its_value(name):
    assert torch.allclose(op(name)(torch.tensor(2.5)).reshape(-1), op(name)(torch.tensor([[2.5]])).reshape(-1))


@quick
@given(x=square_matrices())
def test_eigenvalues_are_ascending_and_bracketed_by_eig_min_and_eig_max(x):
    eig = op("eigvals")(x.to(torch.float64))
    assert (eig[1:] >= eig[:-1]).all()
    tolerance = x.shape[0] * torch.finfo(torch.float32).eps * x.abs().max()
    assert op("eig_min")(x.to(torch.float64)) == (eig[0] if eig[0].abs() > tolerance else 0.0)
    assert op("eig_max")(x.to(torch.float64)) == eig[-1]


@quick
@given(x=square_matrices(high=5, bound=1e3))
def test_effective_rank_lies_between_one_and_n_or_is_zero_for_the_zero_matrix(x):
    x = x.to(torch.float64)
    rank = float(op("eff_rank")(x))
    if not x.any():
        assert rank == 0.0
    else:
        assert 1.0 - 1e-9 <= rank <= x.shape[0] + 1e-9
        assert rank == pytest.approx(math.exp(float(op("eig_entropy")(x))))


@quick
@given(x=square_matrices(high=5, bound=1e3))
def test_gram_is_symmetric_positive_semidefinite(x):
    g = op("gram")(x.to(torch.float64))
    assert torch.allclose(g, g.T)
    assert float(torch.linalg.eigvalsh(g)[0]) >= -1e-6 * max(1.0, float(g.abs().max()))


# ------------------------------------------------------------------ values


def test_logdet_equals_log_abs_det_for_a_nonsingular_matrix():
    x = torch.tensor([[4.0, 2.0, 0.5], [1.0, -3.0, 2.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    assert float(op("logdet")(x)) == pytest.approx(float(torch.linalg.slogdet(x)[1]), abs=1e-7)


def test_logdet_of_a_singular_matrix_is_finite_and_far_below_a_nonsingular_one():
    singular = torch.ones(4, 4, dtype=torch.float64) * 7.0  # rank 1: three zero singular values
    value = float(op("logdet")(singular))
    assert math.isfinite(value)
    assert value == pytest.approx(math.log(28.0 + EPS) + 3 * math.log(EPS))
    assert value < float(op("logdet")(torch.eye(4, dtype=torch.float64)))


def test_spectral_entropy_of_the_identity_is_log_n_and_of_a_rank_one_matrix_is_zero():
    assert float(op("eig_entropy")(torch.eye(5, dtype=torch.float64))) == pytest.approx(math.log(5))
    assert float(op("eig_entropy")(torch.ones(5, 5, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    assert float(op("eff_rank")(torch.eye(5, dtype=torch.float64))) == pytest.approx(5.0)


def test_the_zero_matrix_has_entropy_and_effective_rank_zero():
    zero = torch.zeros(3, 3)
    assert float(op("eig_entropy")(zero)) == 0.0 and float(op("eff_rank")(zero)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eig_min_of_a_singular_correlation_is_exactly_zero_whatever_its_rounding(dtype):
    # 12 channels over 5 positions: rank 4, so the smallest eigenvalue is 0; rounding makes it +-1e-7 or so.
    rows = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    corr = op("corrcoef")(rows).to(dtype)
    assert float(torch.linalg.eigvalsh(corr.to(torch.float64))[0]) != 0.0
    assert float(op("eig_min")(corr)) == 0.0


def test_eig_min_keeps_a_small_eigenvalue_that_is_above_rounding():
    x = torch.diag(torch.tensor([1e-5, 1.0, 2.0], dtype=torch.float32))  # tolerance 3 * 1.2e-7 * 2
    assert float(op("eig_min")(x)) == pytest.approx(1e-5)


def test_eigenvalue_ops_read_the_symmetric_part():
    x = torch.tensor([[1.0, 4.0], [0.0, 1.0]], dtype=torch.float64)  # symmetric part [[1, 2], [2, 1]]: -1 and 3
    assert torch.allclose(op("eigvals")(x), torch.tensor([-1.0, 3.0], dtype=torch.float64))
    assert float(op("trace")(x)) == 2.0


def test_corrcoef_matches_numpy_for_varying_rows_and_is_zero_on_constant_rows():
    rows = torch.tensor([[1.0, 2.0, 4.0, 3.0], [2.0, 1.0, 0.0, 5.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    out = op("corrcoef")(rows)
    np.testing.assert_allclose(out[:2, :2].numpy(), np.corrcoef(rows[:2].numpy()), atol=1e-12)
    assert torch.equal(out[2], torch.zeros(3, dtype=torch.float64))  # itself included: MeCo's convention
    assert torch.equal(out[:, 2], torch.zeros(3, dtype=torch.float64))


def test_row_ops_read_rows_along_dim_0():
    x = torch.arange(12.0).reshape(2, 3, 2)
    rows = x.reshape(2, 6)
    assert torch.equal(op("gram")(x), rows @ rows.T)
    assert float(op("count_unique_rows")(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))) == 2.0
    assert float(op("count_unique_rows")(torch.tensor(3.0))) == 1.0


# ------------------------------------------------------------------ cross-layer ops


def test_sum_and_mean_layers_t_combine_tensors_of_one_shape():
    layers = [torch.eye(2), 2 * torch.eye(2), torch.ones(2, 2)]
    assert torch.equal(op("sum_layers_t")(layers), torch.tensor([[4.0, 1.0], [1.0, 4.0]]))
    assert torch.allclose(op("mean_layers_t")(layers), torch.tensor([[4.0, 1.0], [1.0, 4.0]]) / 3)


@pytest.mark.parametrize("name", ["sum_layers_t", "mean_layers_t"])
def test_sum_and_mean_layers_t_refuse_layers_of_different_shapes(name):
    with pytest.raises(LayerShapeError, match="one shape"):
        op(name)([torch.eye(2), torch.eye(3)])


def test_concat_layers_t_stacks_rows_of_one_width_and_refuses_others():
    out = op("concat_layers_t")([torch.ones(2, 3), torch.zeros(4, 3), torch.tensor([7.0, 8.0, 9.0]).reshape(1, 3)])
    assert out.shape == (7, 3)
    with pytest.raises(LayerShapeError, match="row width"):
        op("concat_layers_t")([torch.ones(2, 3), torch.ones(2, 2)])


def test_cross_layer_ops_leave_their_inputs_alone():
    layers = [torch.randn(3, 3) for _ in range(3)]
    copies = [t.clone() for t in layers]
    for name in ("sum_layers_t", "mean_layers_t", "concat_layers_t"):
        op(name)(layers)
    assert all(torch.equal(a, b) for a, b in zip(layers, copies))


# ------------------------------------------------------------------ rank aggregation


@quick
@given(values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=12))
def test_rank_log_is_log_of_scipy_average_rank_over_n(values):
    x = torch.tensor(values, dtype=torch.float64)
    expected = np.log(sps.rankdata(values, method="average") / len(values))
    np.testing.assert_allclose(op("n_rank_log")(x).numpy(), expected, atol=1e-12)


def test_rank_log_keeps_nan_out_of_the_count_and_ranks_infinities_at_the_ends():
    x = torch.tensor([3.0, math.nan, -math.inf, math.inf], dtype=torch.float64)
    out = op("n_rank_log")(x).numpy()
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], np.log(np.array([2.0, 1.0, 3.0]) / 3))


def test_rank_add_sums_the_two_log_ranks_and_ignores_scale():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    b = torch.tensor([40.0, 10.0, 30.0, 20.0], dtype=torch.float64)
    expected = np.log(np.array([1, 2, 3, 4]) / 4) + np.log(np.array([4, 1, 3, 2]) / 4)
    np.testing.assert_allclose(op("n_rank_add")(a, b).numpy(), expected)
    np.testing.assert_allclose(op("n_rank_add")(a * 1e5, b - 7).numpy(), expected)


def test_gram_and_corrcoef_refuse_to_square_a_long_column_instead_of_allocating_n_squared():
    from primitives.matrix import MatrixShapeError
    column = torch.arange(5000.0)  # 5,000 one-value rows: a 5,000 x 5,000 output, 5,000 x the input
    for name in ("gram", "corrcoef"):
        with pytest.raises(MatrixShapeError, match="rows"):
            op(name)(column)
    weight_like = torch.ones(64, 16, 3, 3)  # 64 rows: within the bound, as every statistic's rows are
    assert op("gram")(weight_like).shape == (64, 64)
    assert op("corrcoef")(torch.ones(16)).shape == (16, 16)  # a small column is still squared
