"""Shared rows: a block's same-shape rows sit in one tensor, and stacking consecutive columns is a view, never a
change of value."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.stacked_stats import concat_rows, share_rows

SHAPES = [(4,), (2, 3), (5,)]


@st.composite
def columns(draw):
    """Columns of a block: per statistic a batched [rows, *shape] tensor (or an unbatched one), two dtypes."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        col = {}
        for stat in ("w", "g"):
            if draw(st.booleans()):
                shape = draw(st.sampled_from(SHAPES))
                dtype = draw(st.sampled_from([torch.float16, torch.float32]))
                batched = draw(st.booleans())
                rows = draw(st.integers(1, 3))
                col[stat] = (torch.randn(rows, *shape).to(dtype) if batched else torch.randn(*shape).to(dtype),
                             batched)
        out.append(col)
    return out


@settings(max_examples=60, deadline=None)
@given(columns(), st.data())
def test_shared_rows_keep_every_value_and_stack_consecutive_columns_as_views(cols, data):
    shared = share_rows(cols)
    for before, after in zip(cols, shared, strict=True):
        assert before.keys() == after.keys()
        for stat, (t, batched) in before.items():
            assert after[stat][1] == batched and after[stat][0].dtype == t.dtype
            assert torch.equal(after[stat][0], t)
    for stat in ("w", "g"):
        parts = [d[stat][0] for d in shared if stat in d and d[stat][1]]
        if not parts:
            continue
        start = data.draw(st.integers(0, len(parts) - 1))
        stop = data.draw(st.integers(start + 1, len(parts)))
        chosen = parts[start:stop]
        if len({(p.dtype, tuple(p.shape[1:])) for p in chosen}) > 1:
            continue  # torch.cat itself refuses (or promotes) mixed parts: the evaluator never stacks them
        joined = concat_rows(chosen)
        assert torch.equal(joined, torch.cat(chosen)) and joined.dtype == chosen[0].dtype
        if len(chosen) > 1:  # consecutive columns of one statistic, shape and dtype: rows of one tensor, a view
            assert joined.data_ptr() == chosen[0].data_ptr()


def test_rows_of_separate_tensors_are_copied_as_torch_cat_would():
    a, b = torch.randn(2, 3), torch.randn(1, 3)
    joined = concat_rows([a, b])
    assert torch.equal(joined, torch.cat([a, b])) and joined.data_ptr() not in (a.data_ptr(), b.data_ptr())
    assert torch.equal(concat_rows([a[1:], a[:1]]), torch.cat([a[1:], a[:1]]))  # out of order: copied
