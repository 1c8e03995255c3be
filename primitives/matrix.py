"""Matrix ops: spectra, determinants, Gram and correlation matrices, distinct rows (NASWOT, MeCo, jacov, SWAP, AZ-NAS).

How a tensor is read as a matrix (one rule, stated once):

- *square-matrix ops* (`logdet`, `trace`, `eigvals`, `eig_min`, `eig_max`, `eig_entropy`,
  `eff_rank`) need a square 2-d tensor; a one-element tensor of fewer dimensions is the
  1 x 1 matrix of its value. Anything else (non-square, 1-d, 3-d and more, empty) is
  refused with `MatrixShapeError`, so the evaluator counts the candidate as
  `op_error:<op>`. Non-square statistics are made square first with `gram` or
  `corrcoef`; no op guesses which side of a non-square matrix was meant.
- *row ops* (`gram`, `corrcoef`, `count_unique_rows`) read any tensor as rows along
  dim 0, `x.reshape(shape[0], -1)` (a 0-d tensor is one row of one value, a 1-d
  tensor a column of one-value rows), like `row_norms`.
- `gram` and `corrcoef` return n x n for n rows, so their output is bounded: at most
  `MAX_SQUARE_GROWTH` times the input's entries or `MIN_SQUARE_BOUND` entries, whichever
  is larger; beyond it they refuse (`MatrixShapeError`, counted as `op_error`). Without
  the bound a 1-d tensor of n entries (`flatten_sort(weight)`) squares to n^2, and an
  NB201 search stacked over its candidates was killed for memory (15 GB in one process).

Eigenvalue ops use the symmetric part (X + X^T) / 2, so their values are real whatever
the input (statistics such as kernels and correlations are symmetric already, and for
them this changes nothing). Decompositions run in float64 and return the input's dtype;
inputs are never modified. Finite input gives finite output: singular matrices have a
finite `logdet` (each singular value's log is floored by the library's epsilon), and a
zero matrix has spectral entropy and effective rank 0.
"""
from __future__ import annotations

import torch

from primitives.numerics import EPS
from primitives.registry import register
from primitives.types import Kind

T, S = Kind.T, Kind.S


#: gram / corrcoef output may hold this many times the input's entries (or MIN_SQUARE_BOUND), no more.
MAX_SQUARE_GROWTH = 16
#: Entries a gram / corrcoef output may always hold (a 64 x 64 matrix), whatever the input's size.
MIN_SQUARE_BOUND = 64 * 64


class MatrixShapeError(ValueError):
    """A tensor a square-matrix op cannot read as a square matrix (the candidate fails as op_error)."""


def as_square(x: torch.Tensor) -> torch.Tensor:
    """Return `x` as a square matrix (a one-element tensor of dim < 2 as 1 x 1), or raise MatrixShapeError."""
    if x.dim() < 2 and x.numel() == 1:
        return x.reshape(1, 1)
    if x.dim() != 2 or x.shape[0] != x.shape[1] or x.numel() == 0:
        raise MatrixShapeError(f"a square-matrix op needs an n x n tensor, got shape {tuple(x.shape)}; "
                               "make one with gram(...) or corrcoef(...)")
    return x


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """Return `x` as rows along dim 0, `x.reshape(shape[0], -1)`; a 0-d tensor is one row of one value."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(x.shape[0], -1)


def bounded_rows(x: torch.Tensor, op_name: str) -> torch.Tensor:
    """Return `as_rows(x)`, refusing (MatrixShapeError) rows whose n x n product would outgrow the input (module doc)."""
    rows = as_rows(x)
    n = rows.shape[0]
    if n * n > max(MIN_SQUARE_BOUND, MAX_SQUARE_GROWTH * x.numel()):
        raise MatrixShapeError(f"{op_name}: {n} rows of {rows.shape[1]} would make a {n} x {n} matrix, more than "
                               f"{MAX_SQUARE_GROWTH} x the input's {x.numel()} entries")
    return rows


def symmetric_eigenvalues(x: torch.Tensor) -> torch.Tensor:
    """Return the ascending eigenvalues (float64) of the symmetric part of the square matrix `x`."""
    m = as_square(x).to(torch.float64)
    return torch.linalg.eigvalsh((m + m.mT) / 2)


def spectral_distribution(eig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (p, nonzero): |eigenvalues| normalised to sum 1 (zeros for the zero matrix), and whether any is non-zero."""
    magnitude = eig.abs()
    total = magnitude.sum()
    nonzero = total > 0
    return magnitude / torch.where(nonzero, total, torch.ones_like(total)), nonzero


@register("logdet", (T,), S, "matrix", shape_rule="reduce")
def logdet(x: torch.Tensor) -> torch.Tensor:
    """Return log|det X| of a square matrix, sum of log(sigma_i + eps) over its singular values (finite if singular)."""
    sigma = torch.linalg.svdvals(as_square(x).to(torch.float64))
    return torch.log(sigma + EPS).sum().to(x.dtype)


@register("trace", (T,), S, "matrix", shape_rule="reduce")
def trace(x: torch.Tensor) -> torch.Tensor:
    """Return the sum of the diagonal of a square matrix."""
    return torch.diagonal(as_square(x)).sum()


@register("eigvals", (T,), T, "matrix")
def eigvals(x: torch.Tensor) -> torch.Tensor:
    """Return the ascending eigenvalues of a square matrix's symmetric part (1-d)."""
    return symmetric_eigenvalues(x).to(x.dtype)


def rounding_tolerance(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return n * eps * max|m_ij|: twice the most that rounding m's entries can move an eigenvalue (Weyl's bound).

    Rounding moves each entry by at most eps / 2 * max|m_ij|, so the spectral norm of the
    change is at most n * eps / 2 * max|m_ij|: an eigenvalue below the tolerance cannot be
    told from 0. eps is float32's at least: networks run in float32, so a statistic stored
    in float64 carries float32 rounding all the same.
    """
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return m.shape[0] * eps * m.abs().max()


@register("eig_min", (T,), S, "matrix", shape_rule="reduce")
def eig_min(x: torch.Tensor) -> torch.Tensor:
    """Return the smallest eigenvalue of a square matrix's symmetric part, 0 when it is within rounding of 0.

    A singular matrix's smallest eigenvalue is exactly 0, but the one computed from its
    rounded entries is noise of either sign (about 1e-7 for a float32 correlation), and a
    sum of such noise ranks networks by their widths: MeCo's correlation matrices are
    singular wherever a layer has no more positions than channels (NB201's 8 x 8 stage at
    64 channels, a ViT's 17 tokens). So an eigenvalue below `rounding_tolerance` is 0.
    """
    smallest = symmetric_eigenvalues(x)[0]
    if smallest.abs() <= rounding_tolerance(as_square(x).to(torch.float64), x.dtype):
        smallest = torch.zeros_like(smallest)
    return smallest.to(x.dtype)


@register("eig_max", (T,), S, "matrix", shape_rule="reduce")
def eig_max(x: torch.Tensor) -> torch.Tensor:
    """Return the largest eigenvalue of a square matrix's symmetric part."""
    return symmetric_eigenvalues(x)[-1].to(x.dtype)


@register("eig_entropy", (T,), S, "matrix", shape_rule="reduce")
def eig_entropy(x: torch.Tensor) -> torch.Tensor:
    """Return the spectral entropy -sum p log p, p = |eigenvalues| / sum |eigenvalues| (0 for the zero matrix)."""
    p, _ = spectral_distribution(symmetric_eigenvalues(x))
    # 0 log 0 = 0: zero eigenvalues add nothing.
    terms = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return (0.0 - terms.sum()).to(x.dtype)  # 0.0 - : never -0.0


@register("eff_rank", (T,), S, "matrix", shape_rule="reduce")
def eff_rank(x: torch.Tensor) -> torch.Tensor:
    """Return the effective rank exp(spectral entropy) (Roy & Vetterli 2007), in [1, n]; 0 for the zero matrix."""
    _, nonzero = spectral_distribution(symmetric_eigenvalues(x))
    value = torch.exp(eig_entropy(x).to(torch.float64))
    return torch.where(nonzero, value, torch.zeros_like(value)).to(x.dtype)


@register("gram", (T,), T, "matrix")
def gram(x: torch.Tensor) -> torch.Tensor:
    """Return R R^T of the rows R of x (rows along dim 0): n x n, symmetric, positive semi-definite."""
    rows = bounded_rows(x, "gram").to(torch.float64)
    return (rows @ rows.mT).to(x.dtype)


@register("corrcoef", (T,), T, "matrix")
def corrcoef(x: torch.Tensor) -> torch.Tensor:
    """Return the Pearson correlation of the rows of x (n x n); a constant row correlates 0 with every row, itself too."""
    rows = bounded_rows(x, "corrcoef").to(torch.float64)
    centered = rows - rows.mean(dim=1, keepdim=True)
    # Scaling each row by its largest deviation first keeps the squares finite for any finite input.
    scale = centered.abs().amax(dim=1, keepdim=True)
    varying = scale > 0
    centered = centered / torch.where(varying, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(centered, dim=1, keepdim=True)
    unit = torch.where(varying, centered / torch.where(varying, norm, torch.ones_like(norm)), torch.zeros_like(centered))
    return (unit @ unit.mT).clamp(-1.0, 1.0).to(x.dtype)


@register("count_unique_rows", (T,), S, "matrix", shape_rule="reduce")
def count_unique_rows(x: torch.Tensor) -> torch.Tensor:
    """Return the number of distinct rows of x (rows along dim 0; exact equality), as a float (SWAP's count)."""
    rows = as_rows(x)
    if rows.shape[0] == 0:
        return x.new_zeros(())
    if rows.shape[1] == 1:  # one value per row: a 1-d unique, much faster
        return x.new_tensor(float(torch.unique(rows.reshape(-1)).shape[0]))
    return x.new_tensor(float(torch.unique(rows, dim=0).shape[0]))
