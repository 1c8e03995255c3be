"""One op applied to candidate-stacked values: directly, under `torch.func.vmap`, or network by network.

Ops marked `elementwise` in the registry run directly on the stacked tensor, the
others through `vmap` over the candidate dimension. An op that fails under vmap is
retried network by network for that node only, which also tells which networks fail:
each failure is written into the caller's `failed` list under a countable reason
(`op_error:<op>`, `shape:<op>`); when every candidate has failed, `ChunkFailed` stops
the piece.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch.func import vmap

from emq.stacked_stats import Value
from primitives import Kind, get_op


class ChunkFailed(Exception):
    """Every candidate of the chunk has failed; stop evaluating it."""


def apply_op(name: str, args: list[Value], count: int, failed: list[str | None], where: str) -> Value:
    """Apply op `name` to (possibly batched) arguments; candidates whose op call fails are marked in `failed`."""
    op = get_op(name)
    tensors = [t for t, _ in args]
    dims = tuple(0 if b else None for _, b in args)
    reason = f"op_error:{name}"
    if not any(b for _, b in args):
        try:
            out = _unbatched(op, tensors)
        except Exception:  # same inputs for every candidate: every candidate fails alike
            fail_all(failed, reason)
        return _check_shape(op, (out, False), failed)
    if count == 1 and not op.elementwise:
        # torch reduces a [1, K] tensor with other kernels than a [C, K] one (other rounding):
        # a lone network is computed as two identical rows, like any row of a larger piece.
        padded = [(torch.cat([t, t]), True) if b else (t, False) for t, b in args]
        pair = [failed[0], None]
        try:
            out, _ = apply_op(name, padded, 2, pair, where)
        finally:
            failed[0] = pair[0]
        return (out[:1], True)
    if op.elementwise and _direct_ok(args):
        shape = next(t.shape for t, b in args if b)
        # `align` compares whole shapes: an unbatched per-network tensor must look stacked too (a view).
        direct = [t if b or t.numel() == 1 else t.expand(shape) for t, b in args]
        try:
            out = op.fn(*direct)
            if out.dim() == 0:  # one candidate of one entry beside a one-entry constant: `align` made both 0-d
                out = out.reshape(1)
            return _check_shape(op, (out, True), failed)
        except Exception:
            pass  # a real failure on some candidates: the loop below tells which
    else:
        try:
            with warnings.catch_warnings():
                # ops without a batching rule (quantile) still run, through torch's slow fallback
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                out = vmap(op.fn, in_dims=dims)(*tensors)
            return _check_shape(op, (out, True), failed)
        except Exception:
            pass  # unsupported under vmap, or a real failure on some candidates: the loop tells which
    outs: list[torch.Tensor | None] = []
    for i in range(count):
        try:
            outs.append(op.fn(*[t[i] if b else t for t, b in args]))
        except Exception:
            outs.append(None)
            if failed[i] is None:
                failed[i] = reason
    ok = [o for o in outs if o is not None]
    if not ok:
        fail_all(failed, reason)
    template = ok[0]
    try:
        out = torch.stack([o if o is not None else torch.full_like(template, math.nan) for o in outs])
    except RuntimeError:  # per-candidate shapes differ: the op is not shape-stable here
        fail_all(failed, f"shape:{name}")
    return _check_shape(op, (out, True), failed)


def _unbatched(op, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Return op(*tensors) for inputs shared by every candidate, computed as a row of a batch.

    Entry-wise ops round the same whatever the shape. Others run vmapped over two
    identical rows, so the value equals what a batched candidate gets (the same
    kernel path); ops that cannot run under vmap run directly, as they do per candidate.
    """
    if op.elementwise:
        return op.fn(*tensors)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            return vmap(op.fn)(*[torch.stack([t, t]) for t in tensors])[0]
    except Exception:
        return op.fn(*tensors)


def _direct_ok(args: list[Value]) -> bool:
    """True when an elementwise op on the stacked tensors computes exactly the per-candidate results.

    Per candidate, `align` pairs equal shapes entry by entry and broadcasts a
    one-element argument. Stacked, that holds when every batched argument has the
    same shape and every unbatched one either has one element or the per-candidate
    shape of the batched ones (torch broadcasting then lines them up the same way).
    """
    batched = [t.shape for t, b in args if b]
    shape = batched[0]
    if any(s != shape for s in batched[1:]):
        return False
    return all(t.numel() == 1 or t.shape == shape[1:] for t, b in args if not b)


def _check_shape(op, value: Value, failed: list[str | None]) -> Value:
    t, batched = value
    if op.output == Kind.T:
        return value
    per_candidate = t.shape[1:] if batched else t.shape
    if math.prod(per_candidate) != 1:
        fail_all(failed, f"shape:{op.name}")
    return (t.reshape(t.shape[0]) if batched else t.reshape(()), batched)


def fail_all(failed: list[str | None], reason: str) -> None:
    for i, r in enumerate(failed):
        if r is None:
            failed[i] = reason
    raise ChunkFailed
