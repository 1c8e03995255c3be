"""Specification of the typed op library (primitives/)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from primitives import Kind, UnknownOpError, get_op, list_ops
from primitives.binary import align
from primitives.layer_tensors import LayerShapeError
from primitives.matrix import MatrixShapeError
from primitives.numerics import EPS

ALL_OPS = list_ops()
OP_IDS = [op.name for op in ALL_OPS]

# The library's contract: finite input with |x| <= BOUND gives finite output. No op
# needs a smaller bound today; an op that genuinely overflows below BOUND would be
# listed here with its own bound (and say so in its docstring).
BOUND = 1e6
SMALLER_BOUND: dict[str, float] = {}

SHAPES = [(), (1,), (7,), (3, 4), (3, 1), (1, 3), (3, 3), (2, 3, 2, 2), (4, 1, 1, 1)]
DTYPES = [torch.float32, torch.float64]
SIGNATURES_BY_GROUP = {
    "unary": {((Kind.T,), Kind.T)},
    "binary": {((Kind.T, Kind.T), Kind.T)},
    "reduction": {((Kind.T,), Kind.S)},
    "scalar": {((Kind.S,), Kind.S), ((Kind.S, Kind.S), Kind.S)},
    "network": {((Kind.N,), Kind.N), ((Kind.N, Kind.N), Kind.N)},
    "aggregation": {((Kind.S,), Kind.N)},
    "matrix": {((Kind.T,), Kind.T), ((Kind.T,), Kind.S)},
    "across_layers": {((Kind.T,), Kind.T)},
    "positions": {((Kind.T,), Kind.T)},
    "population": {((Kind.N,), Kind.N), ((Kind.N, Kind.N), Kind.N)},
}
#: The refusals an op may answer finite input with (documented per op family; the evaluator counts op_error).
REFUSALS = (MatrixShapeError, LayerShapeError)

quick = settings(max_examples=25, deadline=None)


def numbers(bound: float = BOUND) -> st.SearchStrategy[float]:
    """Floats in [-bound, bound] representable in float32, biased towards 0, tiny and extreme values."""
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-38, EPS, bound, -bound]
    return st.one_of(
        st.sampled_from([e for e in edges if abs(e) <= bound]),
        st.floats(-bound, bound, width=32),
    )


@st.composite
def tensors(draw, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None, bound: float = BOUND) -> torch.Tensor:
    """A finite tensor of the given (or a drawn) shape; sometimes constant, to hit zero-spread guards."""
    shape = draw(st.sampled_from(SHAPES)) if shape is None else shape
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    n = math.prod(shape)
    if draw(st.booleans()):
        values = draw(st.lists(numbers(bound), min_size=n, max_size=n))
    else:
        values = [draw(numbers(bound))] * n
    return torch.tensor(values, dtype=dtype).reshape(shape)


@st.composite
def op_arguments(draw, op, bound: float = BOUND) -> list[torch.Tensor]:
    """Arguments of the kinds `op` declares: any shape for T, 0-d for S and N, (values, params) for aggregations."""
    dtype = draw(st.sampled_from(DTYPES))
    if op.is_cross_layer:  # the list of a network's per-layer tensors, mostly of one shape
        layers = draw(st.integers(1, 4))
        shape = draw(st.sampled_from(SHAPES))
        return [[draw(tensors(shape if draw(st.integers(0, 3)) else None, dtype, bound)) for _ in range(layers)]]
    if op.is_population:  # one score per candidate scored together
        n = draw(st.integers(1, 9))
        return [draw(tensors((n,), dtype, bound)) for _ in op.inputs]
    if op.is_aggregation:
        layers = draw(st.integers(1, 8))
        values = draw(tensors((layers,), dtype, bound))
        params = torch.tensor(draw(st.lists(st.integers(0, 10**7), min_size=layers, max_size=layers)), dtype=dtype)
        return [values, params]
    args: list[torch.Tensor] = []
    for kind in op.inputs:
        if kind != Kind.T:
            shape: tuple[int, ...] = ()
        elif args:  # a second tensor: often the same shape as the first, so the elementwise rule is exercised
            shape = draw(st.one_of(st.just(tuple(args[0].shape)), st.sampled_from(SHAPES)))
        else:
            shape = draw(st.sampled_from(SHAPES))
        args.append(draw(tensors(shape, dtype, bound)))
    return args


# ------------------------------------------------------------------ registry


def test_registry_holds_at_least_40_ops():
    assert len(ALL_OPS) >= 40


def test_op_names_are_unique():
    assert len(set(OP_IDS)) == len(OP_IDS)


@pytest.mark.parametrize("op", ALL_OPS, ids=OP_IDS)
def test_every_op_signature_matches_its_group(op):
    assert op.group in SIGNATURES_BY_GROUP
    assert (op.inputs, op.output) in SIGNATURES_BY_GROUP[op.group]


@pytest.mark.parametrize("op", ALL_OPS, ids=OP_IDS)
def test_every_op_has_a_one_line_doc(op):
    assert op.doc and "\n" not in op.doc


def test_only_binary_ops_are_marked_commutative():
    assert all(op.arity == 2 for op in ALL_OPS if op.commutative)
    assert {"add", "mul", "maximum", "minimum", "abs_diff", "s_add", "s_mul", "n_add", "n_mul"} <= {
        op.name for op in ALL_OPS if op.commutative
    }
    assert not any(get_op(name).commutative for name in ["sub", "div", "s_sub", "s_div", "n_sub", "n_div"])


def test_unknown_op_error_lists_valid_names():
    with pytest.raises(UnknownOpError) as info:
        get_op("frobnicate")
    message = str(info.value)
    assert "frobnicate" in message
    assert all(name in message for name in ["abs", "mul", "l2", "mean_layers", "n_add"])


def test_scalar_and_network_versions_are_one_function():
    for stem in ["neg", "log", "sqrt", "add", "sub", "mul", "div"]:
        assert get_op(f"s_{stem}").fn is get_op(f"n_{stem}").fn


# ------------------------------------------------------------ properties of every op


# One test checks both properties: hypothesis examples dominate the file's run time.
@pytest.mark.parametrize("op", ALL_OPS, ids=OP_IDS)
@quick
@given(data=st.data())
def test_every_op_returns_its_declared_kind_and_dtype_without_touching_its_inputs(op, data):
    args = data.draw(op_arguments(op))
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
    before = [a.clone() for a in flat]
    try:
        out = op.fn(*args)
    except REFUSALS:
        out = None
    for arg, copy in zip(flat, before):
        assert torch.equal(arg, copy)
    if out is None:
        return
    assert isinstance(out, torch.Tensor)
    assert out.dtype == flat[0].dtype
    if op.is_population:
        assert out.shape == args[0].shape  # one value per candidate
    elif op.output in (Kind.S, Kind.N):
        assert out.dim() == 0


@pytest.mark.parametrize("op", ALL_OPS, ids=OP_IDS)
@quick
@given(data=st.data())
def test_every_op_maps_finite_inputs_to_finite_outputs(op, data):
    args = data.draw(op_arguments(op, SMALLER_BOUND.get(op.name, BOUND)))
    try:
        out = op.fn(*args)
    except REFUSALS:  # finite in: finite out, or a documented refusal
        return
    assert torch.isfinite(out).all(), f"{op.name}{args} -> {out}"


@pytest.mark.parametrize("op", [op for op in ALL_OPS if op.commutative], ids=[op.name for op in ALL_OPS if op.commutative])
@quick
@given(data=st.data())
def test_commutative_ops_ignore_argument_order(op, data):
    a, b = data.draw(op_arguments(op))
    assert torch.equal(op.fn(a, b), op.fn(b, a))


# ------------------------------------------------------------------ unary values


@quick
@given(x=tensors())
def test_softmax_last_sums_to_one_over_the_last_dim(x):
    out = get_op("softmax_last").fn(x)
    total = out.sum(dim=-1) if x.dim() else out
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@quick
@given(x=tensors())
def test_softmax_first_sums_to_one_over_the_first_dim(x):
    out = get_op("softmax_first").fn(x)
    total = out.sum(dim=0) if x.dim() else out
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_softmax_of_a_0d_tensor_treats_it_as_one_element():
    x = torch.tensor(3.5)
    assert get_op("softmax_last").fn(x).item() == 1.0
    assert get_op("log_softmax_first").fn(x).item() == 0.0


@pytest.mark.parametrize("value", [0.0, 0.1, -7.3, 1e6, 1e-30])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zscore_of_a_constant_tensor_is_zeros(value, dtype):
    x = torch.full((5, 3), value, dtype=dtype)
    assert torch.equal(get_op("zscore").fn(x), torch.zeros_like(x))


def test_zscore_of_a_varying_tensor_has_zero_mean_and_unit_std():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, -4.0, 0.5]], dtype=torch.float64)
    out = get_op("zscore").fn(x)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert out.std(correction=0).item() == pytest.approx(1.0)


def test_minmax_spans_zero_to_one_and_is_zeros_for_a_constant():
    out = get_op("minmax").fn(torch.tensor([2.0, 4.0, 3.0]))
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(get_op("minmax").fn(torch.full((4,), 0.3)), torch.zeros(4))


def test_exp_clamps_its_input_at_20():
    out = get_op("exp").fn(torch.tensor([0.0, 20.0, 1e6]))
    assert torch.allclose(out, torch.tensor([1.0, math.exp(20), math.exp(20)]))


def test_reciprocal_of_zero_is_one_over_eps():
    out = get_op("reciprocal").fn(torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(out, torch.full((2,), 1 / EPS, dtype=torch.float64))


@quick
@given(x=tensors())
def test_flatten_sort_is_ascending_and_keeps_every_value(x):
    out = get_op("flatten_sort").fn(x)
    assert out.shape == (x.numel(),)
    assert (out[1:] >= out[:-1]).all()
    assert torch.equal(out, torch.sort(x.reshape(-1)).values)


def test_row_norms_gives_one_norm_per_slice_along_dim_0():
    x = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]])
    assert torch.allclose(get_op("row_norms").fn(x), torch.tensor([5.0, 1.0]))
    assert torch.equal(get_op("row_norms").fn(torch.tensor(-2.0)), torch.tensor([2.0]))


def test_l2_normalize_gives_unit_frobenius_norm():
    out = get_op("l2_normalize").fn(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    assert torch.linalg.vector_norm(out).item() == pytest.approx(1.0)


# ------------------------------------------------------------ binary shape rule


def test_align_keeps_equal_shapes_elementwise():
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(2, 3)
    assert torch.equal(get_op("add").fn(a, b), a + 1)


def test_align_broadcasts_a_single_element_over_the_other_tensor():
    a, one = torch.arange(6.0).reshape(2, 3), torch.tensor([[2.0]])
    out = get_op("mul").fn(a, one)
    assert out.shape == (2, 3)
    assert torch.equal(out, a * 2)
    assert get_op("sub").fn(one, a).shape == (2, 3)


def test_align_takes_the_mean_route_for_unrelated_shapes():
    a = torch.tensor([[1.0], [2.0], [6.0]])  # (3, 1), mean 3
    b = torch.tensor([[2.0, 4.0, 6.0]])  # (1, 3), mean 4
    aligned_a, aligned_b = align(a, b)
    assert aligned_a.shape == aligned_b.shape == ()
    assert (aligned_a.item(), aligned_b.item()) == (3.0, 4.0)
    out = get_op("mul").fn(a, b)
    assert out.shape == () and out.item() == 12.0  # never the (3, 3) outer product


@pytest.mark.parametrize("dtype", DTYPES)
def test_div_by_zero_is_finite(dtype):
    a = torch.tensor([1.0, -1e6, 0.0], dtype=dtype)
    out = get_op("div").fn(a, torch.zeros(3, dtype=dtype))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, a / EPS)
    assert torch.isfinite(get_op("n_div").fn(torch.tensor(5.0), torch.tensor(0.0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_div_nonzero_is_exact_where_the_divisor_is_nonzero_and_zero_where_it_is_zero(dtype):
    a = torch.tensor([1.0, 3e-9, 2.0, -4.0], dtype=dtype)
    b = torch.tensor([0.0, 1e-12, 4.0, -2.0], dtype=dtype)
    out = get_op("div_nonzero").fn(a, b)
    assert out.dtype == dtype and out[0].item() == 0.0  # ZiCo leaves zero-std weights out
    assert torch.allclose(out[1:].double(), a[1:].double() / b[1:].double(), rtol=1e-6)  # no epsilon: 3000
    huge = get_op("div_nonzero").fn(torch.tensor([1e30], dtype=dtype), torch.tensor([1e-30], dtype=dtype))
    assert torch.isfinite(huge).all() and huge.item() == min(1e60, torch.finfo(dtype).max)  # clamped, never inf


def test_div_shifts_negative_denominators_away_from_zero():
    out = get_op("div").fn(torch.tensor([1.0], dtype=torch.float64), torch.tensor([-EPS / 2], dtype=torch.float64))
    assert out.item() < 0 and abs(out.item()) <= 1 / EPS


# ------------------------------------------------------------------ reductions


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1)])
def test_std_and_var_of_one_element_are_zero(shape):
    x = torch.full(shape, 42.0)
    assert get_op("std").fn(x).item() == 0.0
    assert get_op("var").fn(x).item() == 0.0


def test_reductions_match_hand_computations():
    x = torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=torch.float64)
    expected = {
        "mean": -0.25, "sum": -1.0, "l1": 7.0, "l2": 5.0, "max": 3.0, "min": -4.0, "max_abs": 4.0,
        "mean_abs": 1.75, "numel": 4.0, "l1_per_numel": 1.75, "l2_per_numel": 2.5,
        "var": 6.1875, "std": math.sqrt(6.1875), "logsumexp": math.log(math.exp(3) + math.exp(-4) + 2),
    }
    for name, value in expected.items():
        assert get_op(name).fn(x).item() == pytest.approx(value), name


# ---------------------------------------------------------------- aggregations


def test_wmean_layers_equals_the_params_weighted_mean():
    values = torch.tensor([1.0, 2.0, 4.0])
    params = torch.tensor([1.0, 1.0, 2.0])
    assert get_op("wmean_layers").fn(values, params).item() == pytest.approx((1 * 1 + 2 * 1 + 4 * 2) / 4)


def test_wmean_layers_with_no_parameters_is_the_plain_mean():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert get_op("wmean_layers").fn(values, torch.zeros(3)).item() == pytest.approx(3.0)


def test_median_layers_averages_the_two_middle_values():
    params = torch.ones(4)
    assert get_op("median_layers").fn(torch.tensor([4.0, 1.0, 3.0, 2.0]), params).item() == 2.5
    assert get_op("median_layers").fn(torch.tensor([5.0, 1.0, 3.0]), params[:3]).item() == 3.0


def test_layer_aggregations_match_hand_computations():
    values, params = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([10.0, 20.0, 30.0])
    expected = {"mean_layers": 1.0, "sum_layers": 3.0, "max_layers": 4.0, "min_layers": -2.0, "std_layers": math.sqrt(6.0)}
    for name, value in expected.items():
        assert get_op(name).fn(values, params).item() == pytest.approx(value), name
