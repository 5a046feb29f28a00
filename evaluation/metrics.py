"""The metrics of the field, defined once: depth, semantic and normals figures of predictions
against targets, over a whole set, in three labelled aggregations.

Everyone scores through this module: the trainer's validation, `mtpano inspect --gt` /
`report --gt` (through `pipeline.quality.gt_figures`), `compare` and `evaluate`.
docs/evaluation.md gives every formula, the published code each one matches and how the
aggregations relate to published tables.

- `Meter` accumulates a set batch by batch (torch, on the predictions' device, float64
  sums) and gives `figures()` in three aggregations:
  - `pooled`: every valid pixel of the set weighs the same (MTPano-style meters; the
    confusion-matrix mIoU of every segmentation benchmark);
  - `per_panorama`: each panorama's figure first, then their mean (UniFuse's and HoHoNet's
    depth evaluation);
  - `sphere`: pooled, each pixel weighted by its solid angle (about cos latitude,
    `spherical.erp.solid_angle_weights`): the error on the sphere rather than on the ERP grid.
- Functional helpers for one batch: `depth_pairs` (validity, alignment, clamping),
  `depth_errors` (the per-pixel depth terms), `normal_angles`, `semantic_scores`,
  `fit_affine`, `masked_median`, `histogram_median`. The `Meter` uses exactly these.

Figure names (`FIGURE_NAMES`): depth_absrel, depth_sqrel, depth_rmse, depth_rmse_log (natural
log), depth_log10 (mean |log10 ratio|), depth_rmse_log10 (RMSE of log10: what UniFuse and
HoHoNet print as "rmse_log"), depth_delta1..3; semantic_miou, semantic_mean_accuracy,
semantic_pixel_accuracy; normals_mean_deg, normals_median_deg, normals_rmse_deg,
normals_within_11_25, normals_within_22_5, normals_within_30. Shares are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spherical.ade20k import IGNORE_ID
from spherical.erp import solid_angle_weights

TASKS = ("depth", "semantic", "normals")
AGGREGATIONS = ("pooled", "per_panorama", "sphere")
ALIGNMENTS = ("none", "median", "lsq")

DELTA_BASE = 1.25  # δ_k: share of pixels with max(d/d*, d*/d) < 1.25^k, k = 1, 2, 3
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
# Set-wide medians of normal angles come from a histogram over [0°, 180°]: bounded state that
# sums across workers. Reporting the centre of the median's bin puts it within half a bin
# (0.005°) of the exact median (see `histogram_median`).
ANGLE_BIN_DEG = 0.01
ANGLE_BINS = 18000

DEPTH_FIGURES = (
    "depth_absrel",
    "depth_sqrel",
    "depth_rmse",
    "depth_rmse_log",
    "depth_log10",
    "depth_rmse_log10",
    "depth_delta1",
    "depth_delta2",
    "depth_delta3",
)
SEMANTIC_FIGURES = ("semantic_miou", "semantic_mean_accuracy", "semantic_pixel_accuracy")
NORMALS_FIGURES = (
    "normals_mean_deg",
    "normals_median_deg",
    "normals_rmse_deg",
    "normals_within_11_25",
    "normals_within_22_5",
    "normals_within_30",
)
FIGURE_NAMES: dict[str, tuple[str, ...]] = {
    "depth": DEPTH_FIGURES,
    "semantic": SEMANTIC_FIGURES,
    "normals": NORMALS_FIGURES,
}

# Per-pixel depth terms (`depth_errors`), in the order `_depth_figures` turns their means into
# DEPTH_FIGURES (rmse-type figures are square roots of a mean term).
DEPTH_TERMS = ("absrel", "sqrel", "sq", "log_sq", "log10_abs", "log10_sq", "delta1", "delta2", "delta3")
# What `Meter.update` takes per task, for its error messages.
_LAYOUTS = {"depth": "(B,H,W) depth", "semantic": "(B,H,W) class ids", "normals": "(B,3,H,W) vectors"}
# Per-pixel normal terms whose means give every normals figure but the median.
_NORMAL_TERMS = 5  # angle, angle², within each of NORMAL_THRESHOLDS_DEG


@dataclass(frozen=True)
class MetricConfig:
    """What a `Meter` scores and how (docs/evaluation.md).

    Fields:
        tasks: the tasks scored, a subset of ("depth", "semantic", "normals").
        num_classes: C, semantic class ids are 0..C-1 (255 = no label).
        counted_classes: the classes mIoU and mean class accuracy average over. None: the
            classes present in the ground truth of what is aggregated (the whole set for
            `pooled` and `sphere`, the panorama for `per_panorama`), i.e. with at least one
            valid target pixel. Given: exactly these, except a class with an empty union
            (neither in the ground truth nor predicted: IoU 0/0), which is left out. Either way
            mean class accuracy leaves out classes without ground-truth pixels.
        depth_min, depth_max: a target depth is valid in (depth_min, depth_max], metres;
            predictions and targets are clamped to [max(depth_min, depth_floor), depth_max].
        align: metric predictions against metric targets: "none", "median" (scale by
            median(target) / median(prediction) per panorama) or "lsq" (the least-squares
            scale per panorama). Relative predictions are always fitted in disparity.
        depth_floor: the lowest depth a prediction is clamped to when depth_min is 0, metres
            (keeps logs and ratios finite; HoHoNet clamps at 0.01, UniFuse at 0.1).
        missing_class_is_wrong: a prediction of 255 (no class) on a labelled pixel: True
            counts it wrong (a miss of the true class, as mmseg does with out-of-range
            predictions); False leaves the pixel out (label stores, whose coverage is a
            figure of its own).
    """

    tasks: tuple[str, ...]
    num_classes: int = 150
    counted_classes: tuple[int, ...] | None = None
    depth_min: float = 0.0
    depth_max: float = math.inf
    align: str = "none"
    depth_floor: float = 1e-3
    missing_class_is_wrong: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}")
        if not 1 <= self.num_classes <= IGNORE_ID:
            raise ValueError(f"num_classes must be in 1..{IGNORE_ID}, got {self.num_classes}")
        if self.counted_classes is not None and any(not 0 <= c < self.num_classes for c in self.counted_classes):
            raise ValueError(f"counted_classes must be ids in 0..{self.num_classes - 1}")
        if not (0.0 <= self.depth_min < self.depth_max):
            raise ValueError(f"need 0 <= depth_min < depth_max, got ({self.depth_min}, {self.depth_max}]")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {self.align!r}")
        if not self.depth_floor > 0.0:
            raise ValueError(f"depth_floor must be positive, got {self.depth_floor}")

    @property
    def depth_low(self) -> float:
        """The lower clamp of predictions and targets, metres."""
        return max(self.depth_min, self.depth_floor)


# ---------------------------------------------------------------------- depth
def fit_affine(x: Tensor, y: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares a, b of a*x + b ~ y per sample, over the valid pixels.

    Args:
        x, y: (B,...) float64; valid: (B,...) bool.
    Returns:
        a, b: (B,) float64; NaN where fewer than 2 valid pixels or x is constant on them.
    """
    w = valid.flatten(1).double()  # (B,N)
    xs = torch.where(valid, x, 0.0).flatten(1)  # (B,N)
    ys = torch.where(valid, y, 0.0).flatten(1)  # (B,N)
    n = w.sum(1)
    mean_x = xs.sum(1) / n.clamp_min(1)
    mean_y = ys.sum(1) / n.clamp_min(1)
    dx = (xs - mean_x[:, None]) * w  # centred: well conditioned for far-from-zero disparities
    dy = (ys - mean_y[:, None]) * w
    sxx = (dx * dx).sum(1)
    a = (dx * dy).sum(1) / sxx
    b = mean_y - a * mean_x
    ok = (n >= 2) & (sxx > 1e-24 * n)
    return torch.where(ok, a, math.nan), torch.where(ok, b, math.nan)


def masked_median(values: Tensor, valid: Tensor) -> Tensor:
    """Exact median of each sample's valid values (the mean of the two middle ones for an even
    count, as numpy's), (B,...) -> (B,) float64; NaN where a sample has none."""
    flat = torch.where(valid, values.double(), math.inf).flatten(1)  # (B,N)
    n = valid.flatten(1).sum(1)
    ordered = flat.sort(dim=1).values
    last = flat.shape[1] - 1
    lower = ordered.gather(1, ((n - 1) // 2).clamp(0, last)[:, None])[:, 0]
    upper = ordered.gather(1, (n // 2).clamp(0, last)[:, None])[:, 0]
    return torch.where(n > 0, (lower + upper) / 2, math.nan)


def _scale(factor: Tensor) -> Tensor:
    return factor[:, None, None]  # (B,) -> (B,1,1)


def depth_pairs(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    config: MetricConfig,
    pred_metric: bool = True,
    target_metric: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Prediction and target as comparable ranges, and the pixels that are scored.

    Args:
        pred: (B,H,W) range in metres, or disparity (any affine inverse range) when
            `pred_metric` is False.
        target: (B,H,W) range in metres, or per sample (`target_metric` False) relative
            disparity: inverse range up to an unknown affine map (`relative_disparity` stores).
        valid: (B,H,W) bool, the target's mask.
        target_metric: (B,) bool, None = all metric.
    Returns:
        pred_range, target_range: (B,H,W) float64, clamped to [config.depth_low, depth_max]
        (relative-against-relative samples are not clamped: their unit is unknown);
        scored: (B,H,W) bool.

    Validity: a metric target is valid where finite and in (depth_min, depth_max]; a relative
    one where finite and positive; a prediction where finite. Then, per sample:
    - metric prediction, metric target: `config.align` (none | median | lsq scale);
    - relative prediction p, metric target d*: a*p + b ~ 1/d* (least squares), range
      1/(a*p + b), pixels where a*p + b <= 0 are not scored;
    - metric prediction d, relative target t: a*t + b ~ 1/d, target range 1/(a*t + b), then
      the target range must be in (depth_min, depth_max];
    - relative prediction, relative target: a*p + b ~ t, ranges 1/(a*p + b) and 1/t (one
      unknown global scale: scale-free figures are meaningful, RMSE is in the store's unit).
    """
    B = pred.shape[0]
    p, t = pred.double(), target.double()
    tm = torch.ones(B, dtype=torch.bool, device=p.device) if target_metric is None else target_metric.to(p.device)
    tm3 = tm[:, None, None]  # (B,1,1)
    low, high = config.depth_low, config.depth_max
    in_range = (t > config.depth_min) & (t <= high)
    scored = valid & torch.isfinite(t) & torch.isfinite(p) & torch.where(tm3, in_range, t > 0)
    if pred_metric:
        p_pos = p.clamp_min(low)
        if config.align == "median":
            s = masked_median(torch.where(tm3, t, 1.0), scored) / masked_median(p_pos, scored)
            p_pos = p_pos * _scale(torch.where(tm, s, 1.0))
        elif config.align == "lsq":
            s = torch.where(scored, p_pos * t, 0.0).sum((1, 2)) / torch.where(scored, p_pos * p_pos, 0.0).sum((1, 2))
            p_pos = p_pos * _scale(torch.where(tm, s, 1.0))
        if target_metric is None or bool(tm.all()):
            return p_pos.clamp(low, high), t.clamp(low, high), scored
        # Relative targets: their disparity fitted to the prediction's inverse range.
        a, b = fit_affine(t, 1.0 / p_pos.clamp(low, high), scored & ~tm3)
        inverse_t = _scale(a) * t + _scale(b)
        fitted_t = 1.0 / torch.where(inverse_t > 0, inverse_t, math.nan)
        fitted_ok = (inverse_t > 0) & (fitted_t > config.depth_min) & (fitted_t <= high)
        scored = scored & torch.where(tm3, True, fitted_ok)
        return p_pos.clamp(low, high), torch.where(tm3, t, fitted_t).clamp(low, high), scored
    # Relative predictions: fitted in disparity to the target's inverse range (metric) or to
    # the target's disparity (relative).
    a, b = fit_affine(p, torch.where(tm3, 1.0 / t, t), scored)
    inverse_p = _scale(a) * p + _scale(b)
    scored = scored & (inverse_p > 0)
    p_range = 1.0 / torch.where(inverse_p > 0, inverse_p, math.nan)
    t_range = torch.where(tm3, t, 1.0 / t)
    return (
        torch.where(tm3, p_range.clamp(low, high), p_range),
        torch.where(tm3, t_range.clamp(low, high), t_range),
        scored,
    )


def depth_errors(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """The per-pixel depth terms of positive ranges `pred` d and `target` d* (any equal shapes,
    float64), one tensor of that shape per name of DEPTH_TERMS:

    absrel |d - d*| / d*; sqrel (d - d*)² / d*; sq (d - d*)²; log_sq (ln d - ln d*)²;
    log10_abs |log10 d - log10 d*|; log10_sq (log10 d - log10 d*)²; delta_k 1 where
    max(d/d*, d*/d) < 1.25^k, else 0.
    """
    diff = pred - target
    log_ratio = torch.log(pred) - torch.log(target)
    log10_ratio = log_ratio / math.log(10.0)
    ratio = torch.maximum(pred / target, target / pred)
    out = {
        "absrel": diff.abs() / target,
        "sqrel": diff * diff / target,
        "sq": diff * diff,
        "log_sq": log_ratio * log_ratio,
        "log10_abs": log10_ratio.abs(),
        "log10_sq": log10_ratio * log10_ratio,
    }
    for k in (1, 2, 3):
        out[f"delta{k}"] = (ratio < DELTA_BASE**k).to(pred.dtype)
    return out


def _depth_figures(means: Tensor) -> Tensor:
    """DEPTH_FIGURES from the means of DEPTH_TERMS, (9,...) -> (9,...)."""
    root = torch.tensor([0, 0, 1, 1, 0, 1, 0, 0, 0], dtype=torch.bool, device=means.device)
    return torch.where(root.view(-1, *([1] * (means.dim() - 1))), means.clamp_min(0).sqrt(), means)


# ---------------------------------------------------------------------- normals
def normal_angles(pred: Tensor, target: Tensor, dim: int = -3) -> Tensor:
    """Angle in degrees between normals along `dim` (normalised first), float64:
    2·atan2(‖p − g‖, ‖p + g‖) of the unit vectors p, g, which keeps full precision near 0° and
    180° where acos of the dot product does not. NaN where either vector is NaN or zero."""
    p, g = pred.double(), target.double()
    p = p / _length(p, dim, keepdim=True)
    g = g / _length(g, dim, keepdim=True)
    return torch.rad2deg(2.0 * torch.atan2(_length(p - g, dim), _length(p + g, dim)))


def _length(v: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    # A sum of squares over the (short) vector axis: several times faster on CPU than
    # torch.linalg.vector_norm across a strided axis.
    return (v * v).sum(dim, keepdim=keepdim).sqrt()


def _normal_terms(angles: Tensor) -> Tensor:
    """(5,...) per-pixel normal terms: angle, angle², and 1 where within each threshold."""
    within = [(angles < t).to(angles.dtype) for t in NORMAL_THRESHOLDS_DEG]
    return torch.stack([angles, angles * angles, *within])


def _normal_figures(means: Tensor, median: Tensor) -> Tensor:
    """NORMALS_FIGURES from the means of `_normal_terms` (5,...) and the median (...)."""
    return torch.stack([means[0], median, means[1].clamp_min(0).sqrt(), means[2], means[3], means[4]])


def histogram_median(hist: Tensor, bin_width: float = ANGLE_BIN_DEG) -> Tensor:
    """The median of values binned in `hist` (..., K) (counts or weights; bin k covers
    [k·w, (k+1)·w)), float64 (...); NaN where the histogram is empty.

    Returned: the mean of the centres of the bins holding the lower and the upper median
    (the first bins where the cumulative sum reaches, and exceeds, half the total). Both
    medians lie in their bins, so the result is within w/2 of the exact median: the middle
    value for an odd count, the mean of the two middle values for an even one (numpy's), and
    the same for weights (a weight acting as a repeat count). Sums within a relative 1e-12 of
    half count as equal to it, so rounded weight sums split ties as exact counts do.
    """
    h = hist.double().cpu()  # cumsum of floats has no deterministic CUDA kernel; K is small
    cum = h.cumsum(-1)
    total = cum[..., -1:]
    half = total / 2
    last = h.shape[-1] - 1
    lower = torch.searchsorted(cum, half * (1 - 1e-12), right=False).clamp(max=last)
    upper = torch.searchsorted(cum, half * (1 + 1e-12), right=True).clamp(max=last)
    centre = ((lower + upper).double() / 2 + 0.5) * bin_width
    return torch.where(total > 0, centre, math.nan)[..., 0].to(hist.device)


def _angle_bins(angles: Tensor) -> Tensor:
    return (angles / ANGLE_BIN_DEG).floor().clamp(0, ANGLE_BINS - 1).long()


# ---------------------------------------------------------------------- semantic
def semantic_scores(confusion: Tensor, counted: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class IoU and accuracy, and pixel accuracy, of confusion matrices.

    Args:
        confusion: (...,C,C+1) float: [g, p] counts (or weights) of target class g predicted
            as p; column C = no class predicted (a miss).
        counted: (C,) bool, the classes to count (see `MetricConfig.counted_classes`); None:
            those with ground-truth pixels.
    Returns:
        iou (...,C): TP / (TP + FP + FN), NaN where not counted;
        accuracy (...,C): TP / (TP + FN), NaN where not counted or without ground truth;
        pixel_accuracy (...): ΣTP / Σ(TP + FN), NaN without ground truth.
    mIoU and mean class accuracy are the nanmeans of the first two over the class axis.
    """
    C = confusion.shape[-2]
    tp = torch.diagonal(confusion[..., :C], dim1=-2, dim2=-1)  # (...,C)
    truth = confusion.sum(-1)  # (...,C): TP + FN
    predicted = confusion[..., :C].sum(-2)  # (...,C): TP + FP
    union = truth + predicted - tp
    use = truth > 0 if counted is None else counted.to(confusion.device) & (union > 0)
    iou = torch.where(use, tp / union.clamp_min(1e-300), math.nan)
    accuracy = torch.where(use & (truth > 0), tp / truth.clamp_min(1e-300), math.nan)
    total = truth.sum(-1)
    pixel = torch.where(total > 0, tp.sum(-1) / total.clamp_min(1e-300), math.nan)
    return iou, accuracy, pixel


def _nanmean(values: Tensor) -> Tensor:
    """Mean over the last axis ignoring NaN; NaN when all are NaN."""
    ok = ~torch.isnan(values)
    count = ok.sum(-1)
    mean = torch.where(ok, values, 0.0).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, math.nan)


# ---------------------------------------------------------------------- the meter
class Meter:
    """Accumulates the figures of a set of panoramas, batch by batch (see the module doc).

    State (all float64, on `device`; `sync` sums it across workers):
    - depth: per aggregation the sums of DEPTH_TERMS and their pixel count / solid angle;
      per panorama the sums of its figures and the number of panoramas scored;
    - semantic: the confusion matrix (C, C+1) (column C: no class predicted) pooled and
      weighted by solid angle; per panorama the sums of its figures and of its class IoUs;
    - normals: sums of the normal terms, histograms of the angles (ANGLE_BINS bins) pooled
      and weighted; per panorama the sums of its figures.
    A panorama counts in `per_panorama` for a task when it has at least one scored pixel.
    """

    def __init__(self, config: MetricConfig, device: torch.device | str | None = None) -> None:
        self.config = config
        self.device = torch.device(device if device is not None else "cpu")
        C = config.num_classes
        self._counted = None
        if config.counted_classes is not None:
            self._counted = torch.zeros(C, dtype=torch.bool, device=self.device)
            self._counted[list(config.counted_classes)] = True
        shapes: dict[str, tuple[int, ...]] = {}
        if "depth" in config.tasks:
            terms = len(DEPTH_TERMS)
            shapes |= {"depth_pooled": (terms + 1,), "depth_sphere": (terms + 1,), "depth_panos": (terms + 1,)}
        if "semantic" in config.tasks:
            shapes |= {
                "semantic_pooled": (C, C + 1),
                "semantic_sphere": (C, C + 1),
                "semantic_panos": (len(SEMANTIC_FIGURES) + 1,),
                "semantic_pano_iou": (2, C),  # sums of per-panorama IoUs, and how many panoramas counted each
            }
        if "normals" in config.tasks:
            shapes |= {
                "normals_pooled": (_NORMAL_TERMS + 1,),
                "normals_sphere": (_NORMAL_TERMS + 1,),
                "normals_hist": (2, ANGLE_BINS),  # counts, solid-angle weights
                "normals_panos": (len(NORMALS_FIGURES) + 1,),
            }
        self._state = {k: torch.zeros(s, dtype=torch.float64, device=self.device) for k, s in shapes.items()}

    def reset(self) -> None:
        """Forget everything accumulated."""
        for value in self._state.values():
            value.zero_()

    # ------------------------------------------------------------------ update
    def update(
        self,
        pred: Mapping[str, Tensor],
        target: Mapping[str, Tensor],
        pano_ids: Sequence[str],
        pred_depth_metric: bool = True,
    ) -> list[dict[str, float]]:
        """Add a batch; return one row per panorama: {"pano_id": ..., figure: value} with the
        figures of every task scored (NaN where a panorama has no scored pixel of it).

        Args:
            pred: any subset of "depth" (B,H,W) or (B,1,H,W) float > 0, range in metres (or
                disparity when `pred_depth_metric` is False); "semantic" (B,H,W) int64 class
                ids (255 = no class, see `MetricConfig.missing_class_is_wrong`); "normals"
                (B,3,H,W) unit vectors, world frame.
            target: the trainer's batch format: "depth" (B,H,W) float32 + "depth_mask"
                (B,H,W) bool + optional "depth_metric" (B,) bool (False: relative disparity);
                "semantic" (B,H,W) int64 (255 = none) + "semantic_mask"; "normals" (B,3,H,W)
                + "normals_mask". A missing mask means every pixel with a valid value.
            pano_ids: B panorama ids, for the rows.
        A task is scored where the config lists it, pred and target have it, and the target's
        mask is true; ERP maps only (W = 2H), the same size in pred and target.
        """
        B = len(pano_ids)
        rows: list[dict[str, float]] = [{"pano_id": pano_id} for pano_id in pano_ids]
        for task in self.config.tasks:
            if task not in pred or task not in target:
                continue
            p, t = pred[task], target[task]
            if task == "depth" and p.dim() == 4 and p.shape[1] == 1:
                p = p[:, 0]  # (B,1,H,W) -> (B,H,W)
            rank = 4 if task == "normals" else 3
            if p.dim() != rank or t.dim() != rank or (task == "normals" and (p.shape[1], t.shape[1]) != (3, 3)):
                raise ValueError(
                    f"{task}: prediction and target must be {_LAYOUTS[task]}, got {tuple(p.shape)} and {tuple(t.shape)}"
                )
            spatial = t.shape[-2:]
            if p.shape[0] != B or t.shape[0] != B or p.shape[-2:] != spatial:
                raise ValueError(
                    f"{task}: prediction {tuple(p.shape)} and target {tuple(t.shape)} must hold the "
                    f"{B} panoramas of pano_ids at one size"
                )
            if spatial[1] != 2 * spatial[0]:
                raise ValueError(f"{task}: maps must be ERP (W = 2H), got {spatial[1]}x{spatial[0]}")
            device = p.device
            t = t.to(device)
            mask = target.get(f"{task}_mask")
            mask = torch.ones(t.shape[0], *spatial, dtype=torch.bool, device=device) if mask is None else mask
            mask = mask.to(device).bool()
            weights = solid_angle_weights(spatial[0], dtype=torch.float64, device=device)[None, :, None]  # (1,H,1)
            if task == "depth":
                metric = target.get("depth_metric")
                figures = self._update_depth(p, t, mask, weights, pred_depth_metric, metric)
            elif task == "semantic":
                figures = self._update_semantic(p, t, mask, weights)
            else:
                figures = self._update_normals(p, t, mask, weights)
            values = figures.T.tolist()  # (F,B) -> B lists of F
            for row, per_pano in zip(rows, values, strict=True):
                row.update(zip(FIGURE_NAMES[task], per_pano, strict=True))
        return rows

    def _add(self, name: str, value: Tensor) -> None:
        self._state[name] += value.to(self.device)

    def _update_depth(
        self, pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor, pred_metric: bool, metric: Tensor | None
    ) -> Tensor:
        d, d_true, scored = depth_pairs(pred, target, mask, self.config, pred_metric, metric)
        errors = depth_errors(d, d_true)
        row_sums = torch.stack([torch.where(scored, errors[k], 0.0).sum(-1) for k in DEPTH_TERMS])  # (T,B,H)
        figures = self._add_sums("depth", row_sums, scored, weights)  # (T,B) means
        figures = _depth_figures(figures)  # (F,B), NaN where nothing scored
        self._add_panoramas("depth_panos", figures, scored.flatten(1).any(1))
        return figures

    def _update_semantic(self, pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        C = self.config.num_classes
        p, g = pred.long(), target.long()
        bad_target = (g < 0) | ((g >= C) & (g != IGNORE_ID))
        bad_pred = (p < 0) | ((p >= C) & (p != IGNORE_ID))
        if bool((mask & (bad_target | bad_pred)).any()):
            raise ValueError(f"semantic: class ids must be in 0..{C - 1} or {IGNORE_ID} (no label)")
        scored = mask & (g != IGNORE_ID)
        missing = p == IGNORE_ID
        if not self.config.missing_class_is_wrong:
            scored = scored & ~missing
        column = torch.where(missing, C, p)
        B = p.shape[0]
        batch = torch.arange(B, device=p.device)[:, None, None]  # (B,1,1)
        cell = ((batch * C + g.clamp(0, C - 1)) * (C + 1) + column)[scored]  # flat index into (B,C,C+1)
        size = B * C * (C + 1)
        per_pano = torch.zeros(size, dtype=torch.float64, device=p.device).index_add_(
            0, cell, torch.ones_like(cell, dtype=torch.float64)
        )
        per_pano = per_pano.view(B, C, C + 1)  # (B*C*(C+1),) -> (B,C,C+1)
        w = (weights.expand_as(scored))[scored]
        weighted = torch.zeros(size, dtype=torch.float64, device=p.device).index_add_(0, cell, w)
        self._add("semantic_pooled", per_pano.sum(0))
        self._add("semantic_sphere", weighted.view(B, C, C + 1).sum(0))  # (B*C*(C+1),) -> (B,C,C+1) -> (C,C+1)
        iou, accuracy, pixel = semantic_scores(per_pano, self._counted_on(p.device))
        figures = torch.stack([_nanmean(iou), _nanmean(accuracy), pixel])  # (3,B)
        has = scored.flatten(1).any(1)
        self._add_panoramas("semantic_panos", figures, has)
        counted = ~torch.isnan(iou) & has[:, None]  # (B,C)
        self._add("semantic_pano_iou", torch.stack([torch.where(counted, iou, 0.0).sum(0), counted.sum(0).double()]))
        return figures

    def _update_normals(self, pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        angles = normal_angles(pred, target.to(pred.device), dim=1)  # (B,H,W)
        scored = mask & torch.isfinite(angles)
        row_sums = torch.stack([torch.where(scored, term, 0.0).sum(-1) for term in _normal_terms(angles)])  # (5,B,H)
        means = self._add_sums("normals", row_sums, scored, weights)  # (5,B)
        bins = _angle_bins(angles[scored])
        hist = torch.zeros(2, ANGLE_BINS, dtype=torch.float64, device=pred.device)
        hist[0].index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))
        hist[1].index_add_(0, bins, weights.expand_as(scored)[scored])
        self._add("normals_hist", hist)
        figures = _normal_figures(means, masked_median(angles, scored))  # (6,B)
        self._add_panoramas("normals_panos", figures, scored.flatten(1).any(1))
        return figures

    def _add_sums(self, task: str, row_sums: Tensor, scored: Tensor, weights: Tensor) -> Tensor:
        """Add per-pixel terms to the `pooled` and `sphere` sums of `task`; return each
        panorama's means (T,B), NaN where it has no scored pixel.

        Args:
            row_sums: (T,B,H) the terms summed along each row over the scored pixels (a row's
                pixels share one solid angle, so the weighted sums need no per-pixel product).
            scored: (B,H,W) bool; weights: (1,H,1) solid angle per pixel of each row.
        """
        row_weights = weights[0, :, 0]  # (1,H,1) -> (H,)
        row_counts = scored.sum(-1).double()  # (B,H)
        count = row_counts.sum(-1)  # (B,)
        sums = row_sums.sum(-1)  # (T,B)
        self._add(f"{task}_pooled", torch.cat([sums.sum(1), count.sum()[None]]))
        weighted = (row_sums * row_weights).sum((1, 2))  # (T,)
        self._add(f"{task}_sphere", torch.cat([weighted, (row_counts * row_weights).sum()[None]]))
        return sums / count

    def _add_panoramas(self, name: str, figures: Tensor, has: Tensor) -> None:
        """Sum the (F,B) figures of the panoramas that have scored pixels, and count them."""
        summed = torch.where(has[None], figures, 0.0).sum(1)
        self._add(name, torch.cat([summed, has.sum()[None].double()]))

    def _counted_on(self, device: torch.device) -> Tensor | None:
        return None if self._counted is None else self._counted.to(device)

    # ------------------------------------------------------------------ results
    def sync(self, all_reduce: Callable[[Tensor], None]) -> None:
        """Sum the state over distributed workers: `all_reduce` is called once, on one flat
        float64 tensor, and must sum it in place across workers (e.g. torch.distributed's
        all_reduce with SUM). Every worker then holds the figures of the whole set."""
        flat = torch.cat([v.reshape(-1) for v in self._state.values()])
        all_reduce(flat)
        offset = 0
        for value in self._state.values():
            value.copy_(flat[offset : offset + value.numel()].view_as(value))
            offset += value.numel()

    def counts(self) -> dict[str, int]:
        """Per task scored, how many panoramas had at least one scored pixel."""
        names = {"depth": "depth_panos", "semantic": "semantic_panos", "normals": "normals_panos"}
        return {task: int(self._state[names[task]][-1].item()) for task in self.config.tasks}

    def figures(self) -> dict[str, dict[str, float]]:
        """{aggregation: {figure: value}} for the aggregations `pooled`, `per_panorama` and
        `sphere` and the figures of the configured tasks; NaN for a task with no scored pixel."""
        out: dict[str, dict[str, float]] = {a: {} for a in AGGREGATIONS}
        s = {k: v.cpu() for k, v in self._state.items()}
        if "depth" in self.config.tasks:
            for aggregation, key in (("pooled", "depth_pooled"), ("sphere", "depth_sphere")):
                values = _depth_figures(s[key][:-1] / s[key][-1])
                out[aggregation] |= dict(zip(DEPTH_FIGURES, values.tolist(), strict=True))
            out["per_panorama"] |= self._panorama_means("depth_panos", DEPTH_FIGURES, s)
        if "semantic" in self.config.tasks:
            counted = None if self._counted is None else self._counted.cpu()
            for aggregation, key in (("pooled", "semantic_pooled"), ("sphere", "semantic_sphere")):
                iou, accuracy, pixel = semantic_scores(s[key], counted)
                values = [_nanmean(iou), _nanmean(accuracy), pixel]
                out[aggregation] |= {n: float(v) for n, v in zip(SEMANTIC_FIGURES, values, strict=True)}
            out["per_panorama"] |= self._panorama_means("semantic_panos", SEMANTIC_FIGURES, s)
        if "normals" in self.config.tasks:
            median = histogram_median(s["normals_hist"])  # (2,): pooled, sphere
            for i, (aggregation, key) in enumerate((("pooled", "normals_pooled"), ("sphere", "normals_sphere"))):
                values = _normal_figures(s[key][:-1] / s[key][-1], median[i])
                out[aggregation] |= dict(zip(NORMALS_FIGURES, values.tolist(), strict=True))
            out["per_panorama"] |= self._panorama_means("normals_panos", NORMALS_FIGURES, s)
        return out

    @staticmethod
    def _panorama_means(key: str, names: tuple[str, ...], state: Mapping[str, Tensor]) -> dict[str, float]:
        sums, count = state[key][:-1], state[key][-1]
        means = sums / count if count > 0 else torch.full_like(sums, math.nan)
        return dict(zip(names, means.tolist(), strict=True))

    def class_iou(self, aggregation: str = "pooled") -> Tensor:
        """(num_classes,) float64 IoU per class, NaN where not counted (`MetricConfig`); for
        `per_panorama` the mean over the panoramas that counted the class."""
        if "semantic" not in self.config.tasks:
            raise ValueError("class_iou needs the semantic task in the MetricConfig")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if aggregation == "per_panorama":
            sums, count = self._state["semantic_pano_iou"].cpu()
            return torch.where(count > 0, sums / count.clamp_min(1), math.nan)
        key = "semantic_pooled" if aggregation == "pooled" else "semantic_sphere"
        counted = None if self._counted is None else self._counted.cpu()
        return semantic_scores(self._state[key].cpu(), counted)[0]
