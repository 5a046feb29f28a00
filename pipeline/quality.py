"""Quality figures of fused ERP labels, beyond the ones fusion measures while it fuses.

Fusion (`pipeline.fusion.PanoramaFusion.finish`) measures coverage, confidence, inter-patch
disagreement and the depth alignment. This module adds

- seam figures: how much more the labels change across the borders between patches (and
  across the ±180° longitude) than inside one patch, from the labels and the layout alone;
- ground-truth metrics: depth AbsRel, RMSE and δ<1.25; normal angular errors; semantic pixel
  accuracy and mIoU, with their per-pixel error maps, computed by `evaluation.metrics` (the
  one definition of every metric; ground-truth files are read by `storage.groundtruth`);
- `array_figures`: every figure the stored arrays determine (coverage, confidence, class
  histogram, seams), so `mtpano inspect --recompute` can recompute them from a store;
- `FIGURES`: the registry of the figures: manifest column, task, format and which way is worse.

docs/quality.md defines every figure. Seam figures run in torch on the labels' device (they
are computed by the labelling workers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evaluation import metrics
from spherical.ade20k import IGNORE_ID
from spherical.erp import erp_lonlat
from spherical.layouts import Layout, parse_layout
from spherical.reproject import PatchToErp, patch_to_erp
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
         "mean IoU over the classes present in the ground truth"),
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

    @functools.cached_property
    def inner_rows_h(self) -> tuple[Tensor, Tensor]:
        """`inner_h` as float32 1 and 0 (H,W), for masked sums as products, and its (H,)
        float64 count per row (`_row_means`)."""
        return _ones_and_counts(self.inner_h)

    @functools.cached_property
    def inner_rows_v(self) -> tuple[Tensor, Tensor]:
        """The same of `inner_v`: (H-1,W) and (H-1,)."""
        return _ones_and_counts(self.inner_v)

    @functools.cached_property
    def border_pairs_h(self) -> Tensor:
        """(K,) flat indices v * W + u of the horizontal border pairs, in raster order: a
        border's few pairs are read from the step maps instead of masking all of them."""
        return torch.nonzero(self.border_h.flatten()).squeeze(1)

    @functools.cached_property
    def border_pairs_v(self) -> Tensor:
        """(K,) flat indices v * W + u of the vertical border pairs, in raster order."""
        return torch.nonzero(self.border_v.flatten()).squeeze(1)

    @classmethod
    def for_store(cls, spec: StoreSpec, device: torch.device | str | None = None) -> SeamGeometry:
        """The seams of a store's layout at its label resolution."""
        return cls.from_mapping(store_mapping(spec, device))


def _ones_and_counts(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(R,C) bool -> the same as float32 1 and 0, and its (R,) float64 count per row."""
    ones = mask.to(torch.float32)
    return ones, ones.sum(1, dtype=torch.float64)


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
        # log of a value <= 0 or not finite is NaN or infinite: no label, NaN.
        log_v = torch.log(values.float()).nan_to_num_(nan=math.nan, posinf=math.nan, neginf=math.nan)
        return _neighbour_differences(log_v, lambda a, b, out: torch.sub(a, b, out=out).abs_())
    if task == "normals":
        n = values.float()
        norm = (n[0] * n[0]).addcmul_(n[1], n[1]).addcmul_(n[2], n[2]).sqrt_()  # (H,W)
        unit = n / norm  # (3,H,W)

        def angle(a: Tensor, b: Tensor, out: Tensor) -> Tensor:  # (3,R,C) pairs -> (R,C) degrees
            dot = torch.mul(a[0], b[0], out=out).addcmul_(a[1], b[1]).addcmul_(a[2], b[2])
            return dot.clamp_(-1.0, 1.0).acos_().mul_(180.0 / math.pi)

        return _neighbour_differences(unit, angle)
    if task == "semantic":
        # As floats (ids below 2^24 are exact), NaN = none: |a - b| of two class ids clamped
        # to 1 is 1 where the class changes.
        classes = values.to(torch.float32, copy=True)
        low, high = torch.aminmax(classes)
        if bool((low < 0) | (high >= IGNORE_ID)):  # some pixel may have no label
            classes.masked_fill_((classes < 0) | (classes == IGNORE_ID), math.nan)
        return _neighbour_differences(classes, lambda a, b, out: torch.sub(a, b, out=out).abs_().clamp_(max=1.0))
    raise ValueError(f"unknown task {task!r}")


def _neighbour_differences(values: Tensor, step: Callable[[Tensor, Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """`step(a, b, out)` of the horizontal pairs (v,u)-(v,(u+1) mod W) and of the vertical
    pairs (v,u)-(v+1,u) of (...,H,W) `values` (the pairs' (...,R,C) values a, b, written into
    out (R,C)): (H,W) and (H-1,W), without a rolled copy of the map."""
    H, W = values.shape[-2:]
    horizontal = values.new_empty(H, W)
    step(values[..., 1:], values[..., :-1], horizontal[:, :-1])
    step(values[..., :1], values[..., -1:], horizontal[:, -1:])  # the wrap pairs (v,W-1)-(v,0)
    vertical = step(values[..., 1:, :], values[..., :-1, :], values.new_empty(H - 1, W))
    return horizontal, vertical


def _row_means(steps: Tensor, inner: Tensor, inner_rows: tuple[Tensor, Tensor]) -> Tensor:
    """(R,) float64 mean of the compared (not NaN) steps (R,C) of each row's interior pairs
    (`inner` (R,C) bool; `inner_rows` as `SeamGeometry.inner_rows_h`); NaN for rows without any."""
    if bool(torch.isnan(steps.sum())):
        kept = torch.where(inner, steps, math.nan)
        return torch.nansum(kept, 1, dtype=torch.float64) / (kept.shape[1] - torch.isnan(kept).sum(1))
    # Every pair compared (every pixel labelled), the usual case: the steps times the mask
    # and the mask's own counts instead of a masked copy and its NaN count (1.7 -> 0.5 ms
    # for 512x1024).
    ones, count = inner_rows
    return (steps * ones).sum(1, dtype=torch.float64) / count


def _pairs_ratio(steps: Tensor, mean: Tensor, pairs: Tensor) -> tuple[float, float]:
    """(sum of the compared steps of some pairs, sum of their rows' mean interior steps) over
    the rows that have interior pairs (steps (R,C), NaN = not compared; mean (R,) of
    `_row_means`). `pairs`: (K,) flat indices r * C + c of the pairs, in raster order. Sums
    accumulate in float64."""
    rows = torch.div(pairs, steps.shape[1], rounding_mode="floor")
    row_mean = mean.index_select(0, rows)  # (K,)
    step = steps.view(-1).index_select(0, pairs)  # (K,)
    chosen = ~torch.isnan(step) & ~torch.isnan(row_mean)
    observed = torch.where(chosen, step, 0.0).sum(dtype=torch.float64)
    expected = torch.where(chosen, row_mean, 0.0).sum()
    return float(observed), float(expected)


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
    mean_h = _row_means(dh, seams.inner_h, seams.inner_rows_h)
    mean_v = _row_means(dv, seams.inner_v, seams.inner_rows_v)
    seam_h, expected_h = _pairs_ratio(dh, mean_h, seams.border_pairs_h)
    seam_v, expected_v = _pairs_ratio(dv, mean_v, seams.border_pairs_v)
    H, W = dh.shape
    last = torch.arange(W - 1, H * W, W, device=dh.device)  # the pairs of the last column with the first
    wrap_sum, wrap_expected = _pairs_ratio(dh, mean_h, last)

    def ratio(observed: float, expected: float) -> float:
        return observed / expected if expected > 0 else math.nan

    return {
        f"{task}_seam_error": ratio(seam_h + seam_v, expected_h + expected_v),
        f"{task}_seam_wrap": ratio(wrap_sum, wrap_expected),
    }


def fused_figures(arrays: Mapping[str, Tensor], seams: SeamGeometry, num_classes: int) -> dict[str, Any]:
    """The seam figures of one panorama's freshly fused labels and its `semantic_histogram`,
    for its manifest row.

    Args:
        arrays: the label arrays as the store keeps them, as tensors: "depth" (H,W) and
            "normals" (3,H,W) float16, "semantic" (H,W) uint8 (255 = none); absent tasks left out.
        seams: the layout's seams at the label resolution (computed once per worker).
        num_classes: the store's classes (the histogram's length).
    Measured on the stored values, so that `array_figures` on the store gives the same numbers.
    """
    out: dict[str, Any] = {}
    for task in LABEL_TASKS:
        if task in arrays:
            values = arrays[task]
            out.update(seam_figures(task, values.float() if task != "semantic" else values, seams))
    if "semantic" in arrays:
        out["semantic_histogram"] = semantic_histogram(arrays["semantic"], num_classes)
    return out


def semantic_histogram(semantic: Tensor, num_classes: int) -> list[float]:
    """Share of the labelled pixels per class id (num_classes,) of a stored (H,W) uint8 label
    map (255 = none); all 0 when no pixel is labelled."""
    # Counted as uint8, the stored dtype: bincount of uint8 is several times faster than of int64.
    counts = torch.bincount(semantic.flatten(), minlength=IGNORE_ID + 1)[:num_classes].double()  # (256,) -> (C,)
    return (counts / counts.sum().clamp_min(1)).tolist()


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


def array_figures(spec: StoreSpec, arrays: Mapping[str, np.ndarray], seams: SeamGeometry | None) -> dict[str, Any]:
    """Every figure the stored arrays of one panorama determine.

    Args:
        arrays: the panorama's arrays as `LabelStore.read` returns them.
        seams: the store's `SeamGeometry.for_store`; None for a store without a patch layout
            (ground truth, predictions), which has no seam figures.
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
        if seams is not None:
            values = torch.from_numpy(arrays[task].astype(np.float32 if task != "semantic" else np.uint8))
            out.update(seam_figures(task, values, seams))
        if task == "semantic":
            out["semantic_histogram"] = semantic_histogram(torch.from_numpy(arrays["semantic"]), len(spec.class_names))
    return out


# ---------------------------------------------------------------------- ground truth
# The per-panorama ground-truth columns and the evaluation.metrics figure each one is.
GT_FIGURES = {
    "depth_gt_absrel": "depth_absrel",
    "depth_gt_rmse": "depth_rmse",
    "depth_gt_delta1": "depth_delta1",
    "normals_gt_mean_deg": "normals_mean_deg",
    "normals_gt_median_deg": "normals_median_deg",
    "normals_gt_within_11_25": "normals_within_11_25",
    "semantic_gt_accuracy": "semantic_pixel_accuracy",
    "semantic_gt_miou": "semantic_miou",
}


def _gt_batch(
    spec: StoreSpec, arrays: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]
) -> tuple[tuple[str, ...], dict[str, Tensor], dict[str, Tensor]]:
    """The tasks with both labels and ground truth, and both as a batch of one panorama
    (depth (1,H,W), semantic (1,H,W), normals (1,3,H,W)) for evaluation.metrics."""
    tasks = tuple(t for t in spec.tasks if t in gt)
    labels = {t: torch.from_numpy(np.ascontiguousarray(arrays[t]))[None] for t in tasks}
    truth = {t: torch.from_numpy(np.ascontiguousarray(gt[t]))[None] for t in tasks}
    return tasks, labels, truth


def _gt_config(tasks: tuple[str, ...]) -> metrics.MetricConfig:
    # Class ids up to 254; a pixel the labels leave empty is not compared (coverage is a
    # figure of its own); depth valid wherever the ground truth is finite and positive.
    return metrics.MetricConfig(tasks=tasks, num_classes=IGNORE_ID, missing_class_is_wrong=False)


def gt_figures(spec: StoreSpec, arrays: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The ground-truth metrics (GT_FIGURES) of every task that has both labels and ground
    truth: `evaluation.metrics` on this one panorama with the labels as the prediction, over
    the pixels where both have a value. Relative depth labels are first fitted to the ground
    truth in disparity (`evaluation.metrics.depth_pairs`)."""
    tasks, labels, truth = _gt_batch(spec, arrays, gt)
    if not tasks:
        return {}
    meter = metrics.Meter(_gt_config(tasks))
    row = meter.update(labels, truth, [""], pred_depth_metric=spec.depth_kind == "metric_range")[0]
    return {column: row[name] for column, name in GT_FIGURES.items() if name in row}


def error_maps(
    spec: StoreSpec, arrays: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-pixel errors against the ground truth, (H,W) float64 each, NaN where not compared:
    depth |d - d*| / d* (range in metres, relative labels fitted as in `gt_figures`); normals
    the angle in degrees; semantic 1 where the class is wrong, 0 where it is right."""
    tasks, labels, truth = _gt_batch(spec, arrays, gt)
    out = {}
    if "depth" in tasks:
        depth, true_depth, scored = metrics.depth_pairs(
            labels["depth"],
            truth["depth"],
            torch.ones(truth["depth"].shape, dtype=torch.bool),
            _gt_config(tasks),
            pred_metric=spec.depth_kind == "metric_range",
        )
        absrel = metrics.depth_errors(depth, true_depth)["absrel"]
        out["depth"] = torch.where(scored, absrel, math.nan)[0].numpy()
    if "normals" in tasks:
        out["normals"] = metrics.normal_angles(labels["normals"], truth["normals"], dim=1)[0].numpy()
    if "semantic" in tasks:
        s, g = labels["semantic"][0].long(), truth["semantic"][0].long()
        compared = (s != IGNORE_ID) & (g != IGNORE_ID)
        out["semantic"] = torch.where(compared, (s != g).double(), math.nan).numpy()
    return out
