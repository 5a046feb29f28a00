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
    """A = sum_k w_k g_k g_k^T for sparse rows g_k with entries vals[k, :] at cols[k, :], for
    weights that change from round to round (the cells and products are computed once).

    Args:
        cols: (K,m) int64 column of each non-zero; vals: (K,m) float64; size: the columns.
    """

    def __init__(self, cols: Tensor, vals: Tensor, size: int) -> None:
        self.size = size
        self.cells = (cols[:, :, None] * size + cols[:, None, :]).flatten()  # (K*m*m,) cells of A
        self.products = vals[:, :, None] * vals[:, None, :]  # (K,m,m)

    def __call__(self, weights: Tensor) -> Tensor:
        """(size,size) float64 A for (K,) weights."""
        products = (weights[:, None, None] * self.products).flatten()  # (K*m*m,)
        return torch.bincount(self.cells, weights=products, minlength=self.size**2).view(self.size, self.size)


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
    """Cauchy weights for (K,) residuals, scale from their median absolute value."""
    scale = 1.4826 * residuals.abs().median() + 1e-12
    return torch.div(residuals, _CAUCHY_C * scale).square_().add_(1.0).reciprocal_()


def _rms(residuals: Tensor, weights: Tensor) -> float:
    total = float(weights.sum())
    return math.sqrt(float((weights * residuals**2).sum()) / total) if total > 0 else math.nan


def _usable_pairs(pairs: Tensor, valid: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs whose two entries are valid, and their weights w_i * w_j."""
    keep = valid[pairs[:, 0]] & valid[pairs[:, 1]]
    kept = pairs[keep]
    return kept, (weights[kept[:, 0]] * weights[kept[:, 1]]).double()


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
    disparity: Tensor,
    ray_norm: Tensor,
    valid: Tensor,
    patch: Tensor,
    pairs: Tensor,
    weights: Tensor,
    num_patches: int,
    iterations: int,
) -> Alignment:
    """Per-patch scale and shift of affine-invariant disparity (see the module doc).

    Args:
        disparity: (M,) teacher disparity of every entry; ray_norm: (M,) ||c|| of its camera
            ray; the other arguments as in `align_log_scales`.
    """
    kept, w = _usable_pairs(pairs, valid, weights)
    P = num_patches
    device = disparity.device
    d = disparity.double()
    inv_n = 1.0 / ray_norm.double()
    if kept.shape[0] == 0:
        ones = torch.ones(P, dtype=torch.float64, device=device)
        return Alignment(ones, torch.zeros_like(ones), math.nan, math.nan, 0)
    i, j = kept[:, 0], kept[:, 1]
    a, b = patch[i], patch[j]
    # Unknowns theta = (alpha_0..alpha_{P-1}, beta_0..beta_{P-1}); q_i - q_j = g . theta.
    cols = torch.stack((a, P + a, b, P + b), 1)  # (K,4)
    vals = torch.stack((d[i] * inv_n[i], inv_n[i], -d[j] * inv_n[j], -inv_n[j]), 1)  # (K,4)
    # Gauge: mean over patches of the mean aligned q of the patch's valid entries is 1.
    count = torch.zeros(P, dtype=torch.float64, device=device).index_add_(0, patch, valid.double())
    mean_dn = torch.zeros(P, dtype=torch.float64, device=device).index_add_(0, patch, torch.where(valid, d * inv_n, 0))
    mean_n = torch.zeros(P, dtype=torch.float64, device=device).index_add_(0, patch, torch.where(valid, inv_n, 0))
    has = count > 0
    c = torch.cat((torch.where(has, mean_dn / count.clamp_min(1), 0), torch.where(has, mean_n / count.clamp_min(1), 0)))
    target = float(has.sum())

    # Before alignment: the raw disparities scaled by one common factor to the same gauge.
    raw = vals[:, 0] + vals[:, 2]
    residual_before = _rms(raw / (float(c[:P].sum()) / target), w)
    normal_equations = _NormalEquations(cols, vals, 2 * P)
    robust = torch.ones_like(w)
    theta = torch.zeros(2 * P, dtype=torch.float64, device=device)
    for _ in range(iterations + 1):
        A = normal_equations(w * robust)
        theta = _solve_constrained(A, torch.zeros(2 * P, dtype=torch.float64, device=device), c, target)
        res = (vals * theta[cols]).sum(1)
        robust = _robust_weights(res)
    return Alignment(theta[:P], theta[P:], _rms(res, w * robust), residual_before, len(a))
