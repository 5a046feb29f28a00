"""Joint cross-patch depth alignment over the overlaps of a panorama's patches.

Every pair of entries (i, j) that sees the same ERP pixel from two patches a = p_i and
b = p_j gives one residual; all residuals are solved together by weighted least squares,
re-weighted a few rounds with a Cauchy loss so that depth edges and teacher failures do
not pull the solution.

- Metric teachers: one log-scale x_a per patch; residual (l_i + x_a) - (l_j + x_b) with
  l = log range. Gauge: sum(x) = 0, i.e. the geometric mean of the scales is 1.
- Relative teachers (affine-invariant disparity d): a scale and a shift per patch, applied
  in the patch's own disparity; the aligned inverse range of an entry is
  q = (alpha_a d + beta_a) / ||c||, with ||c|| the length of the entry's c_z = 1 camera ray
  (1/range = (1/z) / ||c||). Gauge: the mean over patches of the mean aligned q is 1. The
  shift is identifiable because ||c|| differs between the two patches of an overlap.

Patches without any overlap keep the identity (a small ridge pins them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Cauchy loss width in units of the robust residual scale (95% efficiency for Gaussian noise).
_CAUCHY_C = 2.385
_RIDGE = 1e-6


@dataclass(frozen=True)
class Alignment:
    """Per-patch depth corrections and how well they agree.

    Fields:
        scale: (P,) float64 multiplier of each patch (metric) or of its disparity (relative).
        shift: (P,) float64 disparity shift (relative), zeros for metric.
        residual: weighted RMS of the pair residuals after alignment (log range for metric,
            aligned inverse range relative to its mean for relative).
        residual_before: the same before alignment (identity scales, zero shifts).
        pairs: number of overlap pairs used.
    """

    scale: Tensor
    shift: Tensor
    residual: float
    residual_before: float
    pairs: int


class _NormalEquations:
    """A = sum_k w_k g_k g_k^T for sparse rows g_k with entries vals[r][k] at cols[r][k], for
    weights that change from round to round. The columns of a row depend only on its group
    (a pair of patches), so each round sums the rows' products per group (one index_add of the
    m(m+1)/2 distinct products per row) and then places the few groups' sums.

    Args:
        cols: m (K,) int64 columns of the non-zeros, distinct within a row; vals: m (K,)
        float64 their values; group: (K,) int64 of each row, in [0, groups), the rows of a
        group sharing their columns; groups: the number of groups; size: the columns.
    """

    def __init__(self, cols: list[Tensor], vals: list[Tensor], group: Tensor, groups: int, size: int) -> None:
        upper = [(r, s) for r in range(len(vals)) for s in range(r, len(vals))]  # the products with r <= s
        self.size, self.group, self.groups = size, group, groups
        # (U,K): a product per row, as a CPU index_add along the last dimension adds row by row
        # (1.7 ms for 100k pairs) where one along the first adds (K,U) rows of U (3.8 ms).
        self.products = torch.stack([vals[r] * vals[s] for r, s in upper])  # (U,K)
        # The cells of each group's products, from any of its rows (unused groups add zeros).
        columns = torch.zeros(groups, len(cols), dtype=torch.int64, device=group.device)
        columns.index_copy_(0, group, torch.stack(cols, 1))  # (G,m)
        self.cells = torch.stack([columns[:, r] * size + columns[:, s] for r, s in upper], 1).view(-1)  # (G*U,)

    def __call__(self, weights: Tensor) -> Tensor:
        """(size,size) float64 A for (K,) weights."""
        sums = torch.zeros(self.products.shape[0], self.groups, dtype=torch.float64, device=weights.device)
        sums.index_add_(1, self.group, self.products * weights)  # (U,G)
        upper = torch.zeros(self.size * self.size, dtype=torch.float64, device=weights.device)
        sums = sums.T.reshape(-1)  # (U,G) -> (G*U,), as the cells
        upper = upper.index_add_(0, self.cells, sums).view(self.size, self.size)  # diagonal + one triangle
        # The products with r < s stand for both (r, s) and (s, r): off the diagonal, as the
        # columns of a row are distinct.
        return upper + upper.T - torch.diag(torch.diagonal(upper))


def _solve_constrained(A: Tensor, rhs: Tensor, c: Tensor, target: float) -> Tensor:
    """argmin x^T A x - 2 rhs^T x subject to c^T x = target (KKT system, small ridge)."""
    n = A.shape[0]
    ridge = _RIDGE * (float(torch.diagonal(A).abs().mean()) + 1.0)
    kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=A.device)
    kkt[:n, :n] = A + ridge * torch.eye(n, dtype=torch.float64, device=A.device)
    kkt[:n, n] = c
    kkt[n, :n] = c
    b = torch.cat((rhs, torch.tensor([target], dtype=torch.float64, device=A.device)))
    return torch.linalg.solve(kkt, b)[:n]


def _robust_weights(residuals: Tensor) -> Tensor:
    """Cauchy weights for (K,) finite residuals, scale from their median absolute value."""
    scale = 1.4826 * _lower_median(residuals.abs()) + 1e-12
    return torch.div(residuals, _CAUCHY_C * scale).square_().add_(1.0).reciprocal_()


def _lower_median(values: Tensor) -> Tensor:
    """The lower median of (K,) finite values, as `Tensor.median()` gives it. On the CPU by
    numpy's selection, 5x faster than torch's for the alignment's 100k pairs (0.37 against
    1.8 ms; four calls per panorama)."""
    if values.device.type != "cpu":
        return values.median()
    k = (len(values) - 1) // 2
    return torch.as_tensor(np.partition(values.numpy(), k)[k])


def _rms(residuals: Tensor, weights: Tensor) -> float:
    total = float(weights.sum())
    return math.sqrt(float((weights * residuals**2).sum()) / total) if total > 0 else math.nan


def align_log_scales(
    diff: Tensor, weights: Tensor, a: Tensor, b: Tensor, num_patches: int, iterations: int
) -> Alignment:
    """Per-patch scales of metric depth.

    Args:
        diff: (K,) float64 l_i - l_j of every usable pair (both entries valid), l = log range;
        weights: (K,) float64 the pairs' weights w_i * w_j; a, b: (K,) int64 the patches of
        entries i and j; iterations: robust re-weighting rounds.
    """
    P = num_patches
    if diff.shape[0] == 0:
        ones = torch.ones(P, dtype=torch.float64, device=diff.device)
        return Alignment(ones, torch.zeros_like(ones), math.nan, math.nan, 0)
    # Every row of the system is e_a - e_b: A = diag(row + column sums of W) - W - W^T, with W
    # the summed weights per ordered patch pair; the right-hand side is the column minus the
    # row sums of the same sums of the weighted differences. One bincount each per round.
    cell = a * P + b  # (K,) the pair's cell of the (P,P) W
    residual_before = _rms(diff, weights)
    robust = torch.ones_like(weights)
    ones = torch.ones(P, dtype=torch.float64, device=diff.device)
    for _ in range(iterations + 1):
        ww = weights * robust
        W = torch.bincount(cell, weights=ww, minlength=P * P).view(P, P)  # (P*P,) -> (P,P)
        A = torch.diag(W.sum(0) + W.sum(1)) - W - W.T
        pulls = torch.bincount(cell, weights=ww.mul_(diff), minlength=P * P).view(P, P)  # (P*P,) -> (P,P)
        x = _solve_constrained(A, pulls.sum(0) - pulls.sum(1), ones, 0.0)
        res = (x[:, None] - x[None, :]).view(-1).index_select(0, cell).add_(diff)  # (P,P) -> (P*P,): x_a - x_b
        robust = _robust_weights(res)
    return Alignment(torch.exp(x), torch.zeros_like(x), _rms(res, weights * robust), residual_before, len(a))


def align_affine_disparity(
    dn: Tensor, inv_n: Tensor, weights: Tensor, a: Tensor, b: Tensor, gauge: Tensor, num_patches: int, iterations: int
) -> Alignment:
    """Per-patch scale and shift of affine-invariant disparity (see the module doc).

    Args:
        dn: (2,K) float64 d/||c|| of the first and second entries of every usable pair (both
            finite), with d the teacher disparity and ||c|| the length of the entry's camera ray;
        inv_n: (2,K) float64 their 1/||c||; weights: (K,) float64 the pairs' weights;
        a, b: (K,) int64 the patches of the first and second entries;
        gauge: (3,P) float64 per patch, over its entries with a finite disparity: their count,
            the sum of d/||c|| and the sum of 1/||c||; iterations: robust re-weighting rounds.
    """
    P = num_patches
    device = dn.device
    if dn.shape[1] == 0:
        ones = torch.ones(P, dtype=torch.float64, device=device)
        return Alignment(ones, torch.zeros_like(ones), math.nan, math.nan, 0)
    # Unknowns theta = (alpha_0..alpha_{P-1}, beta_0..beta_{P-1}); q_i - q_j = g . theta.
    cols = [a, P + a, b, P + b]  # 4 (K,)
    vals = [dn[0], inv_n[0], -dn[1], -inv_n[1]]  # 4 (K,)
    # Gauge: mean over patches of the mean aligned q of the patch's valid entries is 1.
    count, sum_dn, sum_n = gauge
    has = count > 0
    c = torch.cat((torch.where(has, sum_dn / count.clamp_min(1), 0), torch.where(has, sum_n / count.clamp_min(1), 0)))
    target = float(has.sum())

    # Before alignment: the raw disparities scaled by one common factor to the same gauge.
    raw = vals[0] + vals[2]
    residual_before = _rms(raw / (float(c[:P].sum()) / target), weights)
    normal_equations = _NormalEquations(cols, vals, a * P + b, P * P, 2 * P)
    robust = torch.ones_like(weights)
    theta = torch.zeros(2 * P, dtype=torch.float64, device=device)
    for _ in range(iterations + 1):
        A = normal_equations(weights * robust)
        theta = _solve_constrained(A, torch.zeros(2 * P, dtype=torch.float64, device=device), c, target)
        at = [theta.index_select(0, col) for col in cols]  # 4 (K,)
        res = torch.mul(vals[0], at[0])  # (K,)
        for v, t in zip(vals[1:], at[1:], strict=True):
            res.addcmul_(v, t)
        robust = _robust_weights(res)
    return Alignment(theta[:P], theta[P:], _rms(res, weights * robust), residual_before, len(a))
