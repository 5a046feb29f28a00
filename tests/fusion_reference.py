"""The fusion maths written the straightforward way: every entry, every class, sums scattered
per ERP pixel, and the depth alignment as first written. `pipeline.fusion` computes the same
labels another way (a per-pixel slot layout, and per-entry summaries of the class
probabilities certified per pixel); tests/test_fusion_exact.py checks that they agree.

Conventions as in pipeline/fusion.py: teacher depth is planar z-depth (range = z ||c||) or
affine-invariant disparity; teacher normals are unit vectors in each patch's camera frame;
class probabilities are (C,h',w') maps read bilinearly at every entry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.fusion import FusionConfig, border_weights
from spherical.camera import PatchCameras
from spherical.reproject import patch_to_erp

_CAUCHY_C = 2.385
_RIDGE = 1e-6


def same_pixel_pairs(erp_index: Tensor) -> Tensor:
    """(K,2) entry pairs that see the same pixel: by gap, then by (pixel, entry) order."""
    order = torch.argsort(erp_index, stable=True)
    ordered = erp_index[order]
    pairs = []
    for gap in range(1, int(torch.bincount(erp_index).max())):
        first = torch.nonzero(ordered[gap:] == ordered[:-gap]).squeeze(1)
        pairs.append(torch.stack((order[first], order[first + gap]), 1))
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.int64)


def _normal_equations(cols: Tensor, vals: Tensor, weights: Tensor, size: int) -> Tensor:
    flat = (cols[:, :, None] * size + cols[:, None, :]).flatten()
    products = (weights[:, None, None] * vals[:, :, None] * vals[:, None, :]).flatten()
    return torch.bincount(flat, weights=products, minlength=size * size).view(size, size)


def _solve(A: Tensor, rhs: Tensor, c: Tensor, target: float) -> Tensor:
    n = A.shape[0]
    ridge = _RIDGE * (float(torch.diagonal(A).abs().mean()) + 1.0)
    kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    kkt[:n, :n] = A + ridge * torch.eye(n, dtype=torch.float64)
    kkt[:n, n] = c
    kkt[n, :n] = c
    return torch.linalg.solve(kkt, torch.cat((rhs, torch.tensor([target], dtype=torch.float64))))[:n]


def _robust(residuals: Tensor) -> Tensor:
    scale = 1.4826 * residuals.abs().median() + 1e-12
    return 1.0 / (1.0 + (residuals / (_CAUCHY_C * scale)) ** 2)


def _rms(residuals: Tensor, weights: Tensor) -> float:
    total = float(weights.sum())
    return math.sqrt(float((weights * residuals**2).sum()) / total) if total > 0 else math.nan


def align_log_scales(log_range, valid, patch, pairs, weights, P, iterations) -> tuple[Tensor, float, float, int]:
    """Per-patch scales (P,) float64, residual after and before, pairs used."""
    kept = pairs[valid[pairs[:, 0]] & valid[pairs[:, 1]]]
    if not len(kept):
        return torch.ones(P, dtype=torch.float64), math.nan, math.nan, 0
    w = (weights[kept[:, 0]] * weights[kept[:, 1]]).double()
    a, b = patch[kept[:, 0]], patch[kept[:, 1]]
    diff = (log_range[kept[:, 0]] - log_range[kept[:, 1]]).double()
    cols = torch.stack((a, b), 1)
    vals = torch.tensor([1.0, -1.0], dtype=torch.float64).expand(len(a), 2)
    before, robust = _rms(diff, w), torch.ones_like(w)
    for _ in range(iterations + 1):
        ww = w * robust
        rhs = torch.zeros(P, dtype=torch.float64).index_add_(0, a, -ww * diff).index_add_(0, b, ww * diff)
        x = _solve(_normal_equations(cols, vals, ww, P), rhs, torch.ones(P, dtype=torch.float64), 0.0)
        res = diff + x[a] - x[b]
        robust = _robust(res)
    return torch.exp(x), _rms(res, w * robust), before, len(a)


def align_affine_disparity(d, ray_norm, valid, patch, pairs, weights, P, iterations):
    """Per-patch scales and shifts (P,) float64, residual after and before, pairs used."""
    kept = pairs[valid[pairs[:, 0]] & valid[pairs[:, 1]]]
    w = (weights[kept[:, 0]] * weights[kept[:, 1]]).double()
    d, inv_n = d.double(), 1.0 / ray_norm.double()
    i, j = kept[:, 0], kept[:, 1]
    a, b = patch[i], patch[j]
    cols = torch.stack((a, P + a, b, P + b), 1)
    vals = torch.stack((d[i] * inv_n[i], inv_n[i], -d[j] * inv_n[j], -inv_n[j]), 1)
    count = torch.zeros(P, dtype=torch.float64).index_add_(0, patch, valid.double())
    mean_dn = torch.zeros(P, dtype=torch.float64).index_add_(0, patch, torch.where(valid, d * inv_n, 0))
    mean_n = torch.zeros(P, dtype=torch.float64).index_add_(0, patch, torch.where(valid, inv_n, 0))
    has = count > 0
    c = torch.cat((torch.where(has, mean_dn / count.clamp_min(1), 0), torch.where(has, mean_n / count.clamp_min(1), 0)))
    target = float(has.sum())
    before = _rms((vals[:, 0] + vals[:, 2]) / (float(c[:P].sum()) / target), w)
    robust = torch.ones_like(w)
    for _ in range(iterations + 1):
        theta = _solve(
            _normal_equations(cols, vals, w * robust, 2 * P), torch.zeros(2 * P, dtype=torch.float64), c, target
        )
        res = (vals * theta[cols]).sum(1)
        robust = _robust(res)
    return theta[:P], theta[P:], _rms(res, w * robust), before, len(a)


def _clean(values: Tensor, counts: dict, task: str) -> Tensor:
    bad = ~torch.isfinite(values)
    counts[task] = counts.get(task, 0) + int(bad.sum())
    return torch.where(bad, math.nan, values)


def reference_fusion(
    cameras: PatchCameras,
    erp_height: int,
    config: FusionConfig,
    *,
    depth: Tensor | None = None,
    depth_kind: str = "metric_zdepth",
    depth_confidence: Tensor | None = None,
    normals: Tensor | None = None,
    normals_confidence: Tensor | None = None,
    probs: Tensor | None = None,
    probs_confidence: Tensor | None = None,
) -> dict:
    """Fused labels of one panorama from all its patches' teacher outputs (P leading).

    Returns a dict with the `FusedLabels` fields (raster (H,W) / (3,H,W)) and `stats`.
    """
    mapping = patch_to_erp(cameras, erp_height)
    H, W = erp_height, 2 * erp_height
    index = mapping.erp_index.long()
    patch = mapping.patch_index
    h, w = cameras.height, cameras.width
    weights = border_weights(mapping.x, mapping.y, w, h, config).float()
    focal = cameras.focal[patch]
    ray_norm = torch.sqrt(((mapping.x - w / 2) / focal) ** 2 + ((mapping.y - h / 2) / focal) ** 2 + 1.0).float()
    count = torch.bincount(index, minlength=H * W)
    pairs = same_pixel_pairs(index)
    pairs = pairs[:: max(1, math.ceil(len(pairs) / config.align_max_pairs))]
    P, HW = len(cameras), H * W
    polar = torch.tensor([abs(math.pi / 2 - math.pi * (v + 0.5) / H) > math.radians(60) for v in range(H)])
    polar = polar[:, None].expand(H, W).flatten()
    out: dict = {"stats": {}}
    nonfinite: dict = {}

    def sample(maps: Tensor) -> Tensor:  # (P,C,h',w') -> (C,M), entry order
        return torch.cat(
            [
                F.grid_sample(maps[n][None].float(), mapping.grid(n), padding_mode="border", align_corners=False)[
                    0, :, 0
                ]
                for n in range(P)
            ],
            1,
        )

    def scatter(values: Tensor) -> Tensor:  # (C,M) -> (C,H*W), summed in entry order
        out = torch.zeros(values.shape[0], HW, dtype=values.dtype)
        for c in range(values.shape[0]):
            out[c].index_add_(0, index, values[c])
        return out

    def coverage(task: str, has: Tensor, conf: Tensor) -> None:
        out["stats"][f"{task}_coverage"] = float(has.float().mean())
        out["stats"][f"{task}_coverage_polar"] = float(has[polar].float().mean())
        out["stats"][f"{task}_confidence_mean"] = float(conf[has].mean()) if bool(has.any()) else 0.0
        out["stats"][f"{task}_nonfinite"] = nonfinite.get(task, 0)

    def teacher_confidence(maps: Tensor | None) -> Tensor:
        return torch.ones(len(index)) if maps is None else sample(maps[:, None])[0].clamp(0, 1)

    if depth is not None:
        v = sample(_clean(depth, nonfinite, "depth")[:, None])[0]
        if depth_kind == "metric_zdepth":
            valid = torch.isfinite(v) & (v > 0)
            log_range = torch.log(torch.where(valid, v * ray_norm, 1.0))
            if config.align_metric_depth:
                scale, residual, before, used = align_log_scales(
                    log_range, valid, patch, pairs, weights, P, config.align_iterations
                )
            else:
                scale, residual, before, used = torch.ones(P, dtype=torch.float64), math.nan, math.nan, 0
            shift = torch.zeros_like(scale)
            value = v * ray_norm * scale.float()[patch]
        else:
            valid = torch.isfinite(v)
            scale, shift, residual, before, used = align_affine_disparity(
                torch.where(valid, v, 0.0), ray_norm, valid, patch, pairs, weights, P, config.align_iterations
            )
            value = (v * scale.float()[patch] + shift.float()[patch]) / ray_norm
        valid = torch.isfinite(value) & (value > 0)
        base = torch.where(valid, weights, 0.0)
        wt = base * teacher_confidence(depth_confidence)
        log_v = torch.log(torch.where(valid, value, 1.0))
        s = scatter(
            torch.stack((wt, wt * torch.where(valid, value, 0.0), wt * log_v, wt * log_v * log_v, valid.float(), base))
        )
        wsum, vsum, lsum, l2sum, nvalid, base_sum = s
        has = wsum > 0
        fused = torch.where(has, vsum / wsum.clamp_min(1e-12), math.nan)
        mean_l = lsum / wsum.clamp_min(1e-12)
        spread = torch.sqrt((l2sum / wsum.clamp_min(1e-12) - mean_l**2).clamp_min(0.0))
        agree = torch.where(nvalid >= 2, torch.exp(-spread / config.depth_spread_scale), config.single_view_agreement)
        conf = torch.where(has, agree * wsum / base_sum.clamp_min(1e-12), 0.0)
        out["depth"], out["depth_confidence"] = fused.view(H, W), conf.view(H, W)
        overlap = nvalid >= 2
        out["stats"].update(
            depth_align_residual=residual,
            depth_align_residual_before=before,
            depth_scale_spread=float(torch.log(scale.clamp_min(1e-12)).std()) if used else math.nan,
            depth_disagreement=float(spread[overlap].mean()) if bool(overlap.any()) else math.nan,
            depth_scales=scale.tolist(),
            depth_shifts=shift.tolist(),
        )
        coverage("depth", has, conf)

    if normals is not None:
        cam = sample(_clean(normals, nonfinite, "normals"))  # (3,M)
        world = torch.cat([cameras.rotation[n].float() @ cam[:, mapping.entries_of(n)] for n in range(P)], 1)
        n = world / torch.linalg.vector_norm(world, dim=0, keepdim=True)
        valid = torch.isfinite(n).all(0)
        base = torch.where(valid, weights, 0.0)
        wt = base * teacher_confidence(normals_confidence)
        s = scatter(torch.cat((torch.where(valid, n, 0.0) * wt, torch.stack((wt, valid.float(), base)))))
        vec, wsum, nvalid, base_sum = s[:3], s[3], s[4], s[5]
        length = torch.linalg.vector_norm(vec, dim=0)
        has = (wsum > 0) & (length > 1e-12)
        fused = torch.where(has, vec / length.clamp_min(1e-12), math.nan)
        spread = torch.rad2deg(torch.acos((length / wsum.clamp_min(1e-12)).clamp(0.0, 1.0)))
        agree = torch.where(nvalid >= 2, torch.exp(-spread / config.normal_spread_deg), config.single_view_agreement)
        conf = torch.where(has, agree * wsum / base_sum.clamp_min(1e-12), 0.0)
        out["normals"], out["normals_confidence"] = fused.view(3, H, W), conf.view(H, W)
        out["normals_spread_deg"] = spread.view(H, W)
        overlap = has & (nvalid >= 2)
        out["stats"]["normals_disagreement_deg"] = float(spread[overlap].mean()) if bool(overlap.any()) else math.nan
        coverage("normals", has, conf)

    if probs is not None:
        C = probs.shape[1]
        p = sample(_clean(probs, nonfinite, "semantic"))  # (C,M)
        ok = torch.isfinite(p).all(0)
        wt = torch.where(ok, weights, 0.0) * teacher_confidence(probs_confidence)
        p = torch.where(ok, p, 0.0)
        k = config.semantic_top_k
        top, classes = p.topk(k, dim=0) if 0 < k < C else p.sort(dim=0, descending=True)
        prob_sum = torch.zeros(C * HW).index_add_(0, (classes * HW + index).flatten(), (top * wt).flatten())
        prob_sum = prob_sum.view(C, HW)
        prob_weight = torch.zeros(HW).index_add_(0, index, wt)
        has = prob_weight > 0
        label = torch.where(has, prob_sum.argmax(0), -1)
        fused_max = prob_sum.amax(0) / prob_weight.clamp_min(1e-12)
        conf = torch.where(has, fused_max * torch.where(count < 2, config.single_view_agreement, 1.0), 0.0)
        out["semantic"], out["semantic_confidence"] = label.view(H, W), conf.clamp(0, 1).view(H, W)
        entry_label = torch.where(ok, classes[0], -1)
        i, j = same_pixel_pairs(index).unbind(1)
        both = (entry_label[i] >= 0) & (entry_label[j] >= 0)
        compared = torch.zeros(HW, dtype=torch.bool).index_fill_(0, index[i][both], True)
        differ = torch.zeros(HW, dtype=torch.bool).index_fill_(
            0, index[i][both & (entry_label[i] != entry_label[j])], True
        )
        n_compared = int(compared.sum())
        out["stats"]["semantic_disagreement"] = int(differ.sum()) / n_compared if n_compared else math.nan
        coverage("semantic", has, conf)
    return out
