"""Quality figures of fused ERP labels, beyond the ones fusion measures while it fuses.

Fusion (`pipeline.fusion.PanoramaFusion.finish`) measures coverage, confidence, inter-patch
disagreement and the depth alignment. This module adds

- seam figures: how much more the labels change across the borders between patches (and
  across the ±180° longitude) than inside one patch, from the labels and the layout alone;
- ground-truth metrics: depth AbsRel, RMSE and δ<1.25; normal angular errors; semantic pixel
  accuracy and mIoU, with their per-pixel error maps;
- `array_figures`: every figure the stored arrays determine (coverage, confidence, class
  histogram, seams), so `mtpano inspect --recompute` can recompute them from a store;
- `FIGURES`: the registry of the figures: manifest column, task, format and which way is worse.

docs/quality.md defines every figure. Seam figures run in torch on the labels' device (they
are computed by the labelling workers); the ground-truth metrics work on numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from pipeline.fusion import FusedLabels, FusionGeometry
from spherical.ade20k import IGNORE_ID
from spherical.erp import erp_lonlat
from spherical.layouts import Layout, parse_layout
from spherical.reproject import PatchToErp, patch_to_erp
from storage import groundtruth
from storage.labelstore import LABEL_TASKS, StoreError, StoreSpec

POLAR_LATITUDE_DEG = 60.0  # the "near the poles" band of the coverage figures, as in fusion
DELTA1 = 1.25  # threshold of the depth δ figure
NORMAL_GOOD_DEG = 11.25  # threshold of the "share of normals within" figure


# The figure `--worst` and the report rank by when no `--sort` is given: a panorama's lowest
# mean confidence, which sums up its patches' disagreement and the teachers' own doubts.
DEFAULT_SORT = "min_confidence"


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Figure:
    """One per-panorama quality figure.

    Fields:
        name: its column in the manifest and in every output (`--json`, `--csv`, the report).
        task: "depth", "semantic" or "normals" ("all" for a figure of the whole panorama).
        header: short table header.
        worse: "high" when larger values are worse, "low" when smaller ones are.
        fmt: "share" (shown as a percentage), "ratio", "deg", "m" or "count".
        source: "fusion" (measured while fusing: needs the patches, so `--recompute` keeps the
            manifest's value), "arrays" (the stored arrays determine it), "gt" (needs ground
            truth; computed on request) or "derived" (from the other figures of the row).
        description: one line, as in docs/quality.md.
    """

    name: str
    task: str
    header: str
    worse: str
    fmt: str
    source: str
    description: str

    def format(self, value: Any) -> str:
        """The value as a table shows it; "-" when it is missing or not finite."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        if self.fmt == "share":
            return f"{value:.1%}"
        if self.fmt == "count":
            return f"{int(value)}"
        if self.fmt == "deg":
            return f"{value:.2f}°"
        if self.fmt == "m":
            return f"{value:.3f} m"
        return f"{value:.3g}"

    def badness(self, value: float) -> float:
        """A key that grows as the figure gets worse (sorting worst first)."""
        return value if self.worse == "high" else -value


def _figures() -> dict[str, Figure]:
    rows = [
        # name, task, header, worse, fmt, source, description
        ("depth_coverage", "depth", "cov", "low", "share", "arrays", "share of ERP pixels with a depth label"),
        ("depth_coverage_polar", "depth", "cov>60°", "low", "share", "arrays", "coverage where |latitude| > 60°"),
        ("depth_confidence_mean", "depth", "conf", "low", "ratio", "arrays", "mean confidence of labelled pixels"),
        ("depth_disagreement", "depth", "disagr", "high", "ratio", "fusion",
         "mean std of aligned log depth across patches, over pixels two or more patches see"),
        ("depth_seam_error", "depth", "seam", "high", "ratio", "arrays",
         "|Δ log depth| across patch borders / its expectation from the interior of the same rows"),
        ("depth_seam_wrap", "depth", "wrap", "high", "ratio", "arrays",
         "|Δ log depth| across the ±180° column / its expectation from the interior of the same rows"),
        ("depth_align_residual", "depth", "resid", "high", "ratio", "fusion",
         "RMS of the overlap residuals after alignment (log range, or relative inverse range)"),
        ("depth_scale_spread", "depth", "scale sd", "high", "ratio", "fusion", "std of the per-patch log scales"),
        ("depth_nonfinite", "depth", "nonfin", "high", "count", "fusion", "teacher outputs that were NaN/inf"),
        ("normals_coverage", "normals", "cov", "low", "share", "arrays", "share of ERP pixels with a normal"),
        ("normals_coverage_polar", "normals", "cov>60°", "low", "share", "arrays",
         "coverage where |latitude| > 60°"),
        ("normals_confidence_mean", "normals", "conf", "low", "ratio", "arrays", "mean confidence of labelled pixels"),
        ("normals_disagreement_deg", "normals", "disagr", "high", "deg", "fusion",
         "mean angular spread of the patches' normals, over pixels two or more patches see"),
        ("normals_seam_error", "normals", "seam", "high", "ratio", "arrays",
         "angle between neighbours across patch borders / its expectation from the same rows"),
        ("normals_seam_wrap", "normals", "wrap", "high", "ratio", "arrays",
         "angle between neighbours across the ±180° column / its expectation from the same rows"),
        ("normals_nonfinite", "normals", "nonfin", "high", "count", "fusion", "teacher outputs that were NaN/inf"),
        ("semantic_coverage", "semantic", "cov", "low", "share", "arrays", "share of ERP pixels with a class"),
        ("semantic_coverage_polar", "semantic", "cov>60°", "low", "share", "arrays",
         "coverage where |latitude| > 60°"),
        ("semantic_confidence_mean", "semantic", "conf", "low", "ratio", "arrays",
         "mean confidence of labelled pixels"),
        ("semantic_disagreement", "semantic", "disagr", "high", "share", "fusion",
         "share of overlap pixels where two patches' classes differ"),
        ("semantic_seam_error", "semantic", "seam", "high", "ratio", "arrays",
         "class changes across patch borders / their expectation from the same rows"),
        ("semantic_seam_wrap", "semantic", "wrap", "high", "ratio", "arrays",
         "class changes across the ±180° column / their expectation from the same rows"),
        ("semantic_nonfinite", "semantic", "nonfin", "high", "count", "fusion", "teacher outputs that were NaN/inf"),
        ("depth_gt_absrel", "depth", "AbsRel", "high", "ratio", "gt", "mean |d - d*| / d* against ground truth"),
        ("depth_gt_rmse", "depth", "RMSE", "high", "m", "gt", "root mean square of d - d*, metres"),
        ("depth_gt_delta1", "depth", "δ<1.25", "low", "share", "gt", "share of pixels with max(d/d*, d*/d) < 1.25"),
        ("normals_gt_mean_deg", "normals", "mean err", "high", "deg", "gt", "mean angle to the true normal"),
        ("normals_gt_median_deg", "normals", "med err", "high", "deg", "gt", "median angle to the true normal"),
        ("normals_gt_within_11_25", "normals", "<11.25°", "low", "share", "gt",
         "share of pixels within 11.25° of the true normal"),
        ("semantic_gt_accuracy", "semantic", "acc", "low", "share", "gt", "pixel accuracy against ground truth"),
        ("semantic_gt_miou", "semantic", "mIoU", "low", "share", "gt",
         "mean IoU over the classes present in the ground truth or the labels"),
        (DEFAULT_SORT, "all", "min conf", "low", "ratio", "derived", "the lowest of the tasks' mean confidences"),
    ]  # fmt: skip
    return {r[0]: Figure(*r) for r in rows}


FIGURES: dict[str, Figure] = _figures()


def task_figures(task: str) -> list[Figure]:
    """The figures of `task`, in registry order."""
    return [f for f in FIGURES.values() if f.task == task]


def with_derived(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` plus the derived figures (`min_confidence`)."""
    conf = [row.get(f"{t}_confidence_mean") for t in LABEL_TASKS]
    conf = [float(c) for c in conf if c is not None and math.isfinite(float(c))]
    return {**row, DEFAULT_SORT: min(conf) if conf else None}


# ---------------------------------------------------------------------- seams
@dataclass(frozen=True)
class SeamGeometry:
    """Which pairs of adjacent ERP pixels a patch border passes between.

    A pair of neighbours is a *border pair* when the sets of patches that see its two pixels
    differ (the footprint edge of at least one patch runs between them), an *interior pair*
    when both pixels are seen by the same patches. Fusion blends patches with weights that
    fall to ~0 at their borders, so where patches disagree, the labels change across their
    footprint edges (sharply when the blending is hard, over the weight ramp when it is
    soft); at the borders of the central patches' regions both patches weigh 1 and nothing
    changes. Horizontal pairs wrap in longitude: column W-1 pairs with column 0.

    Fields:
        patch_set: (H,W) int64 code of the set of patches that see each pixel (0 = none):
            equal codes, equal sets.
        owner: (H,W) int64 central patch of each pixel: of the patches that see it, the one
            that sees it nearest to its image centre (`PatchToErp.best_entry`); -1 = unseen.
        border_h, inner_h: (H,W) bool, pair of pixel (v,u) with (v,(u+1) mod W).
        border_v, inner_v: (H-1,W) bool, pair of pixel (v,u) with (v+1,u).
    """

    patch_set: Tensor
    owner: Tensor
    border_h: Tensor
    inner_h: Tensor
    border_v: Tensor
    inner_v: Tensor

    @classmethod
    def from_mapping(cls, mapping: PatchToErp) -> SeamGeometry:
        """Seams of the patches behind `mapping`, from their entries only (no per-patch grid)."""
        H, W = mapping.erp_height, mapping.erp_width
        index = mapping.erp_index.long()
        patch = mapping.patch_index.to(index.device)
        # A set of patches is identified by the sum of random 52-bit codes of its members: two
        # different sets collide with probability ~2^-52 (and no sum of 2^11 codes overflows).
        codes = torch.randint(1, 2**52, (mapping.num_patches,), generator=torch.Generator().manual_seed(0))
        sets = torch.zeros(H * W, dtype=torch.int64, device=index.device)
        sets.index_add_(0, index, codes.to(index.device)[patch])
        best = mapping.best_entry(-mapping.centre_distance()).to(index.device)  # (H,W) entry, -1 = unseen
        owner = torch.where(best >= 0, patch[best.clamp_min(0)], -1)
        return cls.from_patch_sets(sets.view(H, W), owner)  # (H*W,) -> (H,W)

    @classmethod
    def from_patch_sets(cls, patch_set: Tensor, owner: Tensor) -> SeamGeometry:
        """Seams of (H,W) patch-set codes (0 = unseen) and central patches (see the fields)."""
        seen = patch_set != 0
        right = patch_set.roll(-1, dims=1)
        seen_h = seen & seen.roll(-1, dims=1)
        seen_v = seen[:-1] & seen[1:]
        return cls(
            patch_set=patch_set,
            owner=owner,
            border_h=seen_h & (patch_set != right),
            inner_h=seen_h & (patch_set == right),
            border_v=seen_v & (patch_set[:-1] != patch_set[1:]),
            inner_v=seen_v & (patch_set[:-1] == patch_set[1:]),
        )

    @classmethod
    def for_store(cls, spec: StoreSpec, device: torch.device | str | None = None) -> SeamGeometry:
        """The seams of a store's layout at its label resolution."""
        return cls.from_mapping(store_mapping(spec, device))


def store_layout(spec: StoreSpec) -> Layout:
    """The patch layout a store was labelled with, rebuilt from its spec (random layouts are
    recorded as "random:N@seed=S"; every patch gets its recorded FoV)."""
    name, _, seed = spec.layout.partition("@seed=")
    try:
        layout = parse_layout(name, seed=int(seed) if seed else 0)
    except ValueError as err:
        raise StoreError(f"cannot rebuild the store's layout {spec.layout!r}: {err}") from None
    if len(layout) != spec.num_patches:
        raise StoreError(f"layout {spec.layout!r} has {len(layout)} patches, the store records {spec.num_patches}")
    return replace(layout, fov_x_deg=np.asarray(spec.fov_deg, dtype=np.float64))


def store_mapping(spec: StoreSpec, device: torch.device | str | None = None) -> PatchToErp:
    """Patch -> ERP correspondences of a store's layout at its label resolution."""
    cameras = store_layout(spec).cameras(spec.patch_size, device=device)
    return patch_to_erp(cameras, spec.erp_height)


def pair_steps(task: str, values: Tensor) -> tuple[Tensor, Tensor]:
    """How much a label changes between neighbours, NaN where either has no label.

    Args:
        task: "depth": (H,W) range or inverse range, NaN = none: |Δ log value|;
            "normals": (3,H,W) unit normals, NaN = none: the angle between them in degrees;
            "semantic": (H,W) class ids, negative or 255 = none: 1 where the class changes, else 0.
    Returns:
        (H,W) float32 steps of the horizontal pairs (v,u)-(v,(u+1) mod W) and (H-1,W) of the
        vertical pairs (v,u)-(v+1,u).
    """
    if task == "depth":
        v = values.float()
        log_v = torch.log(torch.where(torch.isfinite(v) & (v > 0), v, math.nan))
        return (log_v - log_v.roll(-1, dims=1)).abs(), (log_v[:-1] - log_v[1:]).abs()
    if task == "normals":
        n = values.float()
        n = n / torch.linalg.vector_norm(n, dim=0, keepdim=True)

        def angle(a: Tensor, b: Tensor) -> Tensor:
            return torch.rad2deg(torch.acos((a * b).sum(0).clamp(-1.0, 1.0)))

        return angle(n, n.roll(-1, dims=2)), angle(n[:, :-1], n[:, 1:])
    if task == "semantic":
        ids = values.long()
        valid = (ids >= 0) & (ids != IGNORE_ID)
        change = torch.where(valid, ids, -1)

        def step(a: Tensor, b: Tensor, ok: Tensor) -> Tensor:
            return torch.where(ok, (a != b).float(), math.nan)

        horizontal = step(change, change.roll(-1, dims=1), valid & valid.roll(-1, dims=1))
        return horizontal, step(change[:-1], change[1:], valid[:-1] & valid[1:])
    raise ValueError(f"unknown task {task!r}")


def _row_ratio(steps: Tensor, selected: Tensor, inner: Tensor) -> tuple[float, float]:
    """(sum of the selected steps, sum of their rows' mean interior steps) over the rows that
    have interior pairs; steps (R,C) with NaN = not compared, selected and inner (R,C) bool."""
    ok = torch.isfinite(steps)
    value = torch.where(ok, steps, 0.0).double()
    inner = inner & ok
    n_inner = inner.sum(1)  # (R,)
    baseline = (value * inner).sum(1) / n_inner.clamp_min(1)  # (R,) mean interior step per row
    chosen = selected & ok & (n_inner > 0)[:, None]
    return float((value * chosen).sum()), float((baseline[:, None] * chosen).sum())


def seam_figures(task: str, values: Tensor, seams: SeamGeometry) -> dict[str, float]:
    """`<task>_seam_error` and `<task>_seam_wrap` of one label map (steps: `pair_steps`).

    seam_error = sum of the steps of the border pairs / sum, over the same pairs, of the mean
    step of the interior pairs in the same row and direction. The expectation is taken per
    row because the scene's own steps depend on latitude (pixels shrink towards the poles;
    floors, walls and ceilings meet at typical latitudes) and so do the borders of a layout.
    seam_wrap = the same for the H horizontal pairs (v, W-1)-(v, 0) across the ±180° longitude.
    1 means the borders are no more visible than the scene inside the patches; NaN when there
    is nothing to compare (no border pairs, or an interior that never changes).
    """
    dh, dv = pair_steps(task, values.to(seams.owner.device))
    seam_h, expected_h = _row_ratio(dh, seams.border_h, seams.inner_h)
    seam_v, expected_v = _row_ratio(dv, seams.border_v, seams.inner_v)
    wrap = torch.zeros_like(seams.inner_h)
    wrap[:, -1] = True
    wrap_sum, wrap_expected = _row_ratio(dh, wrap, seams.inner_h)

    def ratio(observed: float, expected: float) -> float:
        return observed / expected if expected > 0 else math.nan

    return {
        f"{task}_seam_error": ratio(seam_h + seam_v, expected_h + expected_v),
        f"{task}_seam_wrap": ratio(wrap_sum, wrap_expected),
    }


def fused_figures(labels: FusedLabels, geometry: FusionGeometry) -> dict[str, float]:
    """The seam figures of one panorama's freshly fused labels, for its manifest row.

    Measured on the values as the store keeps them (float16 depth and normals), so that
    `array_figures` on the stored arrays gives the same numbers.
    """
    seams = SeamGeometry.from_mapping(geometry.mapping)
    out: dict[str, float] = {}
    if labels.depth is not None:
        out.update(seam_figures("depth", labels.depth.half().float(), seams))
    if labels.normals is not None:
        out.update(seam_figures("normals", labels.normals.half().float(), seams))
    if labels.semantic is not None:
        out.update(seam_figures("semantic", labels.semantic, seams))
    return out


# ---------------------------------------------------------------------- from the arrays
def label_mask(task: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """(H,W) bool pixels with a `task` label in a panorama's stored arrays."""
    if task == "depth":
        return np.isfinite(arrays["depth"])
    if task == "normals":
        return np.isfinite(arrays["normals"]).all(0)
    return arrays["semantic"] != IGNORE_ID


def polar_rows(erp_height: int) -> np.ndarray:
    """(H,) bool rows with |latitude| > 60°."""
    _, lat = erp_lonlat(erp_height, dtype=torch.float64)
    return (lat.abs() > math.radians(POLAR_LATITUDE_DEG)).numpy()


def array_figures(spec: StoreSpec, arrays: Mapping[str, np.ndarray], seams: SeamGeometry) -> dict[str, Any]:
    """Every figure the stored arrays of one panorama determine.

    Args:
        arrays: the panorama's arrays as `LabelStore.read` returns them.
        seams: the store's `SeamGeometry.for_store`.
    Returns:
        per task: `<task>_coverage`, `<task>_coverage_polar`, `<task>_confidence_mean` and the
        seam figures; `semantic_histogram` (share of labelled pixels per class id).
    """
    polar = polar_rows(spec.erp_height)
    out: dict[str, Any] = {}
    for task in spec.tasks:
        has = label_mask(task, arrays)
        conf = arrays[f"{task}_confidence"].astype(np.float64)
        out[f"{task}_coverage"] = float(has.mean())
        out[f"{task}_coverage_polar"] = float(has[polar].mean())
        out[f"{task}_confidence_mean"] = float(conf[has].mean()) if has.any() else 0.0
        values = torch.from_numpy(arrays[task].astype(np.float32 if task != "semantic" else np.int64))
        out.update(seam_figures(task, values, seams))
        if task == "semantic":
            hist = np.bincount(arrays["semantic"][has].astype(np.int64), minlength=len(spec.class_names))
            out["semantic_histogram"] = (hist / max(int(hist.sum()), 1)).tolist()
    return out


# ---------------------------------------------------------------------- ground truth
def ground_truth_files(folder: Path, pano_id: str) -> dict[str, Path]:
    """The ground-truth files of a panorama in a folder of `mtpano synth`'s gt/ format:
    `<name>_depth.png`, `<name>_normals.png`, `<name>_semantic.png`, where name is the last
    path component of the panorama id. Tasks without a file are left out."""
    name = pano_id.rsplit("/", 1)[-1]
    files = {task: Path(folder) / f"{name}{suffix}" for task, suffix in groundtruth.TASK_SUFFIX.items()}
    return {task: path for task, path in files.items() if path.is_file()}


def read_ground_truth(files: Mapping[str, Path], erp_height: int) -> dict[str, np.ndarray]:
    """Ground-truth maps resampled to the label grid (H x 2H).

    Returns per task: depth (H,W) float32 range in metres, NaN = invalid; normals (3,H,W)
    float32 unit world-frame normals, NaN = invalid; semantic (H,W) uint8 ids, 255 = ignore.
    Depth and normals are averaged over the valid ground-truth pixels each label pixel covers
    (normals renormalised); semantic ids are sampled at the nearest pixel.
    """
    readers = {
        "depth": groundtruth.read_depth,
        "normals": groundtruth.read_normals,
        "semantic": groundtruth.read_semantic,
    }
    out = {}
    for task, path in files.items():
        value = readers[task](Path(path))
        h, w = value.shape[-2:]
        if w != 2 * h:
            raise ValueError(f"{path}: ground truth must be an ERP image (W = 2H), got {w}x{h}")
        out[task] = resample_to_labels(task, value, erp_height)
    return out


def resample_to_labels(task: str, value: np.ndarray, erp_height: int) -> np.ndarray:
    """One ground-truth map (see `read_ground_truth`) on the H x 2H label grid."""
    size = (2 * erp_height, erp_height)  # cv2 takes (width, height)
    if value.shape[-2:] == (erp_height, 2 * erp_height):
        return value
    if task == "semantic":
        return cv2.resize(value, size, interpolation=cv2.INTER_NEAREST)
    channels = value if value.ndim == 3 else value[None]  # (C,h,w)
    valid = np.isfinite(channels).all(0).astype(np.float32)  # (h,w)
    weight = cv2.resize(valid, size, interpolation=cv2.INTER_AREA)  # (H,W)
    sums = np.stack([cv2.resize(np.nan_to_num(c) * valid, size, interpolation=cv2.INTER_AREA) for c in channels])
    mean = np.where(weight > 0, sums / np.maximum(weight, 1e-12), np.nan)  # (C,H,W)
    if task == "normals":
        norm = np.linalg.norm(mean, axis=0, keepdims=True)
        return np.where(norm > 1e-6, mean / np.maximum(norm, 1e-6), np.nan).astype(np.float32)
    return mean[0].astype(np.float32)


def metric_depth(depth: np.ndarray, gt: np.ndarray, depth_kind: str) -> np.ndarray:
    """(H,W) depth labels as range in metres, for comparison with the ground truth `gt`.

    Metric stores hold range already. Relative stores hold aligned disparity (inverse range up
    to one global scale and shift): one affine fit a*q + b ~ 1/gt over the pixels valid in
    both (least squares), then range = 1/(a*q + b); pixels whose fitted inverse range is not
    positive become NaN.
    """
    depth = depth.astype(np.float64)
    if depth_kind == "metric_range":
        return depth
    valid = np.isfinite(depth) & np.isfinite(gt) & (gt > 0)
    if valid.sum() < 2:
        return np.full_like(depth, np.nan)
    A = np.stack((depth[valid], np.ones(int(valid.sum()))), 1)  # (n,2)
    (a, b), *_ = np.linalg.lstsq(A, 1.0 / gt[valid].astype(np.float64), rcond=None)
    inverse = a * depth + b
    return np.where(inverse > 0, 1.0 / np.where(inverse > 0, inverse, 1.0), np.nan)


def depth_metrics(depth: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """AbsRel, RMSE (metres) and δ<1.25 of range `depth` against `gt` over the pixels where both
    are finite and positive (see `metric_depth` for relative stores)."""
    valid = np.isfinite(depth) & np.isfinite(gt) & (depth > 0) & (gt > 0)
    if not valid.any():
        return {"depth_gt_absrel": math.nan, "depth_gt_rmse": math.nan, "depth_gt_delta1": math.nan}
    d, g = depth[valid].astype(np.float64), gt[valid].astype(np.float64)
    return {
        "depth_gt_absrel": float(np.mean(np.abs(d - g) / g)),
        "depth_gt_rmse": float(np.sqrt(np.mean((d - g) ** 2))),
        "depth_gt_delta1": float(np.mean(np.maximum(d / g, g / d) < DELTA1)),
    }


def normal_angles(normals: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H,W) angle in degrees between (3,H,W) normals and the true ones, NaN where either is missing."""
    n = normals.astype(np.float64)
    g = gt.astype(np.float64)
    cos = (n * g).sum(0) / (np.linalg.norm(n, axis=0) * np.linalg.norm(g, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def normals_metrics(normals: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Mean and median angular error (degrees) and the share within 11.25°, over the pixels
    where both the labels and the ground truth have a normal."""
    angles = normal_angles(normals, gt)
    a = angles[np.isfinite(angles)]
    if not a.size:
        return dict.fromkeys(("normals_gt_mean_deg", "normals_gt_median_deg", "normals_gt_within_11_25"), math.nan)
    return {
        "normals_gt_mean_deg": float(a.mean()),
        "normals_gt_median_deg": float(np.median(a)),
        "normals_gt_within_11_25": float(np.mean(a < NORMAL_GOOD_DEG)),
    }


def semantic_metrics(semantic: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Pixel accuracy and mIoU over the pixels where both the labels and the ground truth have
    a class (255 = none). IoU_c = |label = c and gt = c| / |label = c or gt = c| over those
    pixels; mIoU is its mean over the classes present in either."""
    valid = (semantic != IGNORE_ID) & (gt != IGNORE_ID)
    if not valid.any():
        return {"semantic_gt_accuracy": math.nan, "semantic_gt_miou": math.nan}
    p, g = semantic[valid].astype(np.int64), gt[valid].astype(np.int64)
    n = int(max(p.max(), g.max())) + 1
    both = np.bincount(p[p == g], minlength=n)
    union = np.bincount(p, minlength=n) + np.bincount(g, minlength=n) - both
    present = union > 0
    return {
        "semantic_gt_accuracy": float(np.mean(p == g)),
        "semantic_gt_miou": float(np.mean(both[present] / union[present])),
    }


def gt_figures(spec: StoreSpec, arrays: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The ground-truth metrics of every task that has both labels and ground truth."""
    out: dict[str, float] = {}
    if "depth" in spec.tasks and "depth" in gt:
        out.update(depth_metrics(metric_depth(arrays["depth"], gt["depth"], spec.depth_kind), gt["depth"]))
    if "normals" in spec.tasks and "normals" in gt:
        out.update(normals_metrics(arrays["normals"], gt["normals"]))
    if "semantic" in spec.tasks and "semantic" in gt:
        out.update(semantic_metrics(arrays["semantic"], gt["semantic"]))
    return out


def error_maps(
    spec: StoreSpec, arrays: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-pixel errors against the ground truth, (H,W) float64 each, NaN where not compared:
    depth |d - d*| / d* (range in metres, see `metric_depth`); normals the angle in degrees;
    semantic 1 where the class is wrong, 0 where it is right."""
    out = {}
    if "depth" in spec.tasks and "depth" in gt:
        d = metric_depth(arrays["depth"], gt["depth"], spec.depth_kind)
        g = gt["depth"].astype(np.float64)
        ok = np.isfinite(d) & np.isfinite(g) & (g > 0)
        out["depth"] = np.where(ok, np.abs(d - g) / np.where(ok, g, 1.0), np.nan)
    if "normals" in spec.tasks and "normals" in gt:
        out["normals"] = normal_angles(arrays["normals"], gt["normals"])
    if "semantic" in spec.tasks and "semantic" in gt:
        s, g = arrays["semantic"], gt["semantic"]
        ok = (s != IGNORE_ID) & (g != IGNORE_ID)
        out["semantic"] = np.where(ok, (s != g).astype(np.float64), np.nan)
    return out
