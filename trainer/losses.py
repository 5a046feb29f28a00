"""Training losses of BridgeNet: one term per output, masked, confidence- and solid-angle-weighted.

`compute_losses(output, batch, config)` returns every term on its own (0-dim tensors, before
weighting) and "total" = sum of weight x term. Batch keys (trainer.data, leading B):
    rgb (B,3,H,W) float RGB in [0,1], ERP;
    depth (B,H,W) range in metres where depth_metric, aligned disparity (> 0) otherwise;
    semantic (B,H,W) int64 ADE20K ids, 255 = no label; normals (B,3,H,W) unit, world frame;
    <task>_mask (B,H,W) bool, <task>_confidence (B,H,W) in [0,1]; depth_metric (B,) bool.

Pixel weights. A pixel counts when its label is valid (mask True, finite, depth > 0, class
!= 255) with weight c^gamma x a: c the label's confidence, gamma = `confidence_power`
(0 turns it off), a the pixel's solid angle (`spherical.erp.solid_angle_weights`, about
cos latitude, so the poles that ERP over-samples do not dominate; `solid_angle` off gives 1).

Normalisation. Each term is a weighted mean per sample, sum_p w_p l_p / sum_p w_p, then
summed over the samples and divided by the batch size B; a sample without the term's label
contributes 0. So the loss of a batch is the mean of its samples' losses, and DDP over N
workers (which averages gradients) equals one process holding the N workers' samples.
Every term stays connected to its output even when it is 0, so every parameter gets a
gradient and DDP needs no `find_unused_parameters`.

Terms (each computed only when the model has the output):
- depth: per sample by `depth_metric`. Metric samples: `metric_depth_loss`:
  "silog" (default), the scale-invariant log loss of Eigen et al., "Depth Map Prediction from
  a Single Image using a Multi-Scale Deep Network" (NeurIPS 2014, eq. 4) with g = log pred -
  log label: D = mean_w(g^2) - lambda mean_w(g)^2, and with `silog_root` its square root as
  BTS (Lee et al. 2019) and AdaBins (Bhat et al. 2021) use it, without their x10 factor (the
  weight sets the scale); lambda = 1 makes it scale-invariant, 0.85 (default) mostly so;
  "l1": |pred - label| in metres; "berhu": reverse Huber of Laina et al. (3DV 2016), |x| up
  to c and (x^2 + c^2) / 2c beyond, c = `berhu_threshold` x the sample's largest |x|.
  Relative samples: scale-and-shift-invariant L1 in disparity (MiDaS, Ranftl et al., TPAMI
  2020, eq. 4-5 alignment): the prediction's disparity q = 1 / pred is aligned to the label's
  disparity t by weighted least squares (s, b) per sample, loss mean_w |s q + b - t| /
  mean_w(t); the division makes it independent of the store's arbitrary disparity unit. The
  alignment is part of the graph (as in MiDaS), so the gradient ignores scale and shift.
- semantic: cross-entropy (255 ignored); "semantic_dice" (only when `dice_weight` > 0): soft
  Dice, 1 - mean over the classes present in the sample's labels of 2 I_k / (P_k + Y_k),
  with I_k = sum_w p_k y_k, P_k = sum_w p_k, Y_k = sum_w y_k (p = softmax, y one-hot).
- normals: "angular" (default): acos of the cosine, clamped to +-(1 - `cosine_margin`) so the
  gradient stays finite; "l1": sum over xyz of |pred - label| (unit vectors).
- gradient (aux): L1 to the Sobel magnitude of the input's luma (`image_gradient_target`),
  solid-angle weighted only (every pixel has it).
- edge_distance (aux): L1 to `edge_distance_target`: the Euclidean distance in ERP pixels to
  the nearest label boundary, clipped at K = `edge_distance_clip` and divided by K (so in
  [0, 1]). Boundary pixels: both pixels of every horizontally (wrapping at the seam) or
  vertically adjacent pair whose depth labels differ by more than a factor 1 +
  `edge_depth_jump` or whose class labels differ (both labelled). Counted where a depth or
  class label exists, weighted by the larger of the two confidences.
- points (aux, metric samples only): sum over xyz of |pred - range x ray| in metres
  (`spherical.depth.erp_points`, world frame), weighted like depth.
- coarse_<task> (aux, the bridge's heads on the h x w token grid): the same loss as the
  task against area-averaged labels. ERP pixel (v, u) belongs to cell (floor(v h / H),
  floor(u w / W)); a cell's target is the weighted mean of its valid pixels (depth in log
  space, i.e. a geometric mean, which keeps range and disparity inverse to each other;
  classes as a distribution, trained by soft cross-entropy; normals renormalised, the cell
  weighted by the length of the mean normal, 1 on a flat cell), and its weight the sum of
  its pixels' weights. Weighted by `coarse_scale` x the task's weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from model.bridgenet import BridgeNetOutput
from spherical.depth import erp_points
from spherical.erp import solid_angle_weights
from spherical.sampling import pad_erp

MetricDepthLoss = Literal["silog", "l1", "berhu"]
NormalsLoss = Literal["angular", "l1"]
IGNORE_CLASS = 255
# Smallest predicted depth the losses read (softplus can underflow to 0 in float32).
_MIN_DEPTH = 1e-6
# Rec. 601 luma weights of the image-gradient target.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class LossConfig:
    """Weights and choices of every loss term (see the module docstring for the formulas)."""

    # Weight of the depth term.
    depth_weight: float = 1.0
    # Depth loss on metric samples: "silog", "l1" (metres) or "berhu".
    metric_depth_loss: MetricDepthLoss = "silog"
    # SILog's lambda in [0, 1]: 1 is fully scale-invariant, 0 is the plain log-MSE.
    silog_lambda: float = 0.85
    # Take SILog's square root (BTS/AdaBins form) rather than Eigen's squared form.
    silog_root: bool = True
    # berHu switches from L1 to L2 at this share of the sample's largest absolute error.
    berhu_threshold: float = 0.2
    # Weight of the semantic cross-entropy.
    semantic_weight: float = 1.0
    # Weight of the soft Dice term (0: not computed).
    dice_weight: float = 0.0
    # Weight of the normals term.
    normals_weight: float = 1.0
    # Normals loss: "angular" (radians) or "l1" on unit vectors.
    normals_loss: NormalsLoss = "angular"
    # The angular loss clamps the cosine to [-1 + m, 1 - m]: acos has an infinite slope at +-1.
    cosine_margin: float = 1e-6
    # Weight of the auxiliary image-gradient term.
    gradient_weight: float = 0.05
    # Weight of the auxiliary edge-distance term.
    edge_distance_weight: float = 0.05
    # Weight of the auxiliary point-map term (metres).
    points_weight: float = 0.05
    # Weight of each bridge head's coarse_<task> term, relative to its task's weight.
    coarse_scale: float = 0.3
    # gamma of the per-pixel confidence weight c^gamma; 0 ignores the confidences.
    confidence_power: float = 1.0
    # Weight pixels by their solid angle (about cos latitude); False weighs all alike.
    solid_angle: bool = True
    # Adjacent depth labels differing by more than this factor minus 1 make an edge (0.25: 25%).
    edge_depth_jump: float = 0.25
    # K: the edge-distance target is min(distance in pixels, K) / K.
    edge_distance_clip: int = 8

    def __post_init__(self) -> None:
        weights = ("depth", "semantic", "dice", "normals", "gradient", "edge_distance", "points")
        for name in (*(f"{w}_weight" for w in weights), "coarse_scale", "confidence_power"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.metric_depth_loss not in ("silog", "l1", "berhu"):
            raise ValueError(f"LossConfig.metric_depth_loss must be silog, l1 or berhu, got {self.metric_depth_loss!r}")
        if self.normals_loss not in ("angular", "l1"):
            raise ValueError(f"LossConfig.normals_loss must be angular or l1, got {self.normals_loss!r}")
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(f"LossConfig.silog_lambda must be in [0, 1], got {self.silog_lambda}")
        if not 0.0 < self.berhu_threshold <= 1.0:
            raise ValueError(f"LossConfig.berhu_threshold must be in (0, 1], got {self.berhu_threshold}")
        if not 0.0 < self.cosine_margin < 1.0:
            raise ValueError(f"LossConfig.cosine_margin must be in (0, 1), got {self.cosine_margin}")
        if not self.edge_depth_jump > 0:
            raise ValueError(f"LossConfig.edge_depth_jump must be > 0, got {self.edge_depth_jump}")
        if self.edge_distance_clip < 1:
            raise ValueError(f"LossConfig.edge_distance_clip must be >= 1, got {self.edge_distance_clip}")

    def task_weight(self, task: str) -> float:
        """Weight of a main or auxiliary task's term (coarse heads: `coarse_scale` x this)."""
        return getattr(self, f"{task}_weight")


def compute_losses(output: BridgeNetOutput, batch: dict, config: LossConfig) -> dict[str, Tensor]:
    """Every loss term of `output` against `batch`, and their weighted sum.

    Args:
        output: BridgeNet's predictions for batch["rgb"] (any subset of tasks and aux outputs).
        batch: the collated batch (module docstring), on the output's device.
        config: weights and choices.
    Returns:
        term name -> 0-dim float32 tensor (float64 for float64 outputs), unweighted, plus
        "total" = sum of weight x term.
        Names: depth, semantic, semantic_dice, normals, gradient, edge_distance, points and
        coarse_<task> for each coarse head, as far as the output has them.
    """
    aux = output.get("aux", {})
    predictions = [output[t] for t in ("depth", "semantic", "normals") if t in output] + list(aux.values())
    if not predictions:
        raise ValueError("the model output has no prediction to train")
    # Losses and their targets in float32 even when called inside a bf16 autocast region.
    with torch.autocast(predictions[0].device.type, enabled=False):
        return _compute_losses(output, aux, predictions[0], batch, config)


def _compute_losses(
    output: BridgeNetOutput, aux: dict[str, Tensor], reference: Tensor, batch: dict, config: LossConfig
) -> dict[str, Tensor]:
    device = reference.device
    height, width = batch["rgb"].shape[-2:]
    batch_size = batch["rgb"].shape[0]
    labels = _Labels(batch, config, device, (height, width))
    terms: dict[str, Tensor] = {}
    targets: dict[str, tuple[Tensor, Tensor]] = {}  # task -> (full-resolution target, pixel weights)

    if "depth" in output:
        depth, weight = labels.depth()
        _check_size("depth", output["depth"], (height, width))
        metric = labels.metric()
        terms["depth"] = _mean_over_batch(_depth_loss(output["depth"], depth, weight, metric, config))
    if "semantic" in output:
        classes, weight = labels.semantic(output["semantic"].shape[1])
        _check_size("semantic", output["semantic"], (height, width))
        logits = _work(output["semantic"])
        cross_entropy = F.cross_entropy(logits, classes, reduction="none")  # (B,H,W)
        terms["semantic"] = _mean_over_batch(_weighted_mean(cross_entropy, weight))
        if config.dice_weight > 0:
            terms["semantic_dice"] = _mean_over_batch(_dice_loss(logits, classes, weight))
    if "normals" in output:
        normals, weight = labels.normals()
        _check_size("normals", output["normals"], (height, width))
        terms["normals"] = _mean_over_batch(_weighted_mean(_normals_loss(output["normals"], normals, config), weight))

    if "gradient" in aux or "coarse_gradient" in aux:
        targets["gradient"] = (image_gradient_target(labels.rgb), labels.area(batch_size))
    if "edge_distance" in aux or "coarse_edge_distance" in aux:
        targets["edge_distance"] = labels.edge_distance()
    if "points" in aux or "coarse_points" in aux:
        depth, weight = labels.depth()
        metric_weight = weight * labels.metric()[:, None, None]
        targets["points"] = (erp_points(torch.where(weight > 0, depth, 0.0)), metric_weight)
    unknown = sorted(k for k in aux if not k.startswith("coarse_") and k not in ("gradient", "edge_distance", "points"))
    if unknown:
        raise ValueError(f"no loss is defined for the auxiliary output(s) {unknown}")
    for task, (target, weight) in targets.items():
        if task in aux:
            _check_size(task, aux[task], (height, width))
            terms[task] = _mean_over_batch(_weighted_mean(_l1(aux[task], target), weight))

    for name, prediction in aux.items():
        if not name.startswith("coarse_"):
            continue
        task = name.removeprefix("coarse_")
        cells = _Cells((height, width), prediction.shape[-2:], device)
        terms[name] = _mean_over_batch(_coarse_loss(task, prediction, labels, targets, cells, config))

    total = reference.new_zeros((), dtype=torch.float32)
    for name, value in terms.items():
        if name == "semantic_dice":
            weight = config.dice_weight
        elif name.startswith("coarse_"):
            weight = config.coarse_scale * config.task_weight(name.removeprefix("coarse_"))
        else:
            weight = config.task_weight(name)
        total = total + weight * value
    return {**terms, "total": total}


# --- Targets the losses derive from the batch (public: the trainer may log or show them).


def image_gradient_target(rgb: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luma of (B,3,H,W) ERP RGB in [0,1] -> (B,1,H,W) >= 0.

    Intensity per pixel: the Sobel kernels are divided by 8, so a ramp rising by 1 per pixel
    has magnitude 1. Neighbours are the spherical ones (`pad_erp`): columns wrap at the seam,
    the row beyond a pole is read half a turn away.
    """
    luma = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device)
    grey = torch.einsum("bchw,c->bhw", rgb, luma)[:, None]  # (B,1,H,W)
    padded = pad_erp(grey)  # (B,1,H+2,W+2)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=rgb.dtype, device=rgb.device)
    kernels = torch.stack((sobel_x, sobel_x.T))[:, None] / 8.0  # (2,1,3,3): d/dx, d/dy
    derivatives = F.conv2d(padded, kernels)  # (B,2,H,W)
    return (derivatives * derivatives).sum(1, keepdim=True).sqrt()  # (B,1,H,W), a target: no gradient needed


def label_boundaries(
    depth: Tensor, depth_valid: Tensor, classes: Tensor, classes_valid: Tensor, depth_jump: float
) -> Tensor:
    """(B,H,W) bool boundary pixels of ERP labels (see the module docstring).

    Args:
        depth: (B,H,W) range or disparity (> 0 where valid); depth_valid: (B,H,W) bool.
        classes: (B,H,W) int class ids; classes_valid: (B,H,W) bool.
        depth_jump: adjacent depths whose ratio exceeds 1 + depth_jump make an edge.
    """
    log_depth = torch.where(depth_valid, depth, 1.0).log()
    threshold = math.log1p(depth_jump)
    boundary = torch.zeros_like(depth_valid)
    for dim in (-1, -2):  # columns (wrapping) then rows
        pair_depth = depth_valid & torch.roll(depth_valid, -1, dim)
        pair_classes = classes_valid & torch.roll(classes_valid, -1, dim)
        edge = pair_depth & ((log_depth - torch.roll(log_depth, -1, dim)).abs() > threshold)
        edge |= pair_classes & (classes != torch.roll(classes, -1, dim))
        if dim == -2:
            edge[:, -1] = False  # the last row's next row is not below it
        boundary |= edge | torch.roll(edge, 1, dim)  # both pixels of the pair
    return boundary


def boundary_distance(boundary: Tensor, clip: int) -> Tensor:
    """min(Euclidean distance in pixels to the nearest True pixel, clip) / clip, (B,H,W) -> (B,H,W).

    Exact within the clip: separable squared-distance transform over a (2K+1) x (2K+1) window,
    columns wrapping at the seam, rows not (pixels beyond a pole are not neighbours here).
    """
    far = float((clip + 1) ** 2)
    squared = torch.where(boundary, 0.0, far)  # (B,H,W)
    # Along rows of pixels (columns wrap): min over |dx| <= K of f(x + dx) + dx^2.
    along = squared
    for dx in range(1, clip + 1):
        shifted = torch.minimum(torch.roll(squared, dx, -1), torch.roll(squared, -dx, -1))
        along = torch.minimum(along, shifted + dx * dx)
    # Along columns (no wrap): pad with "far" rows.
    padded = F.pad(along, (0, 0, clip, clip), value=far)  # (B,H+2K,W)
    height = squared.shape[-2]
    result = along
    for dy in range(1, clip + 1):
        shifted = torch.minimum(padded[:, clip - dy : clip - dy + height], padded[:, clip + dy : clip + dy + height])
        result = torch.minimum(result, shifted + dy * dy)
    return result.clamp(max=clip * clip).sqrt() / clip


def edge_distance_target(batch: dict, config: LossConfig) -> tuple[Tensor, Tensor]:
    """The edge-distance target (B,1,H,W) in [0,1] and its pixel weights (B,H,W)."""
    device = batch["rgb"].device
    labels = _Labels(batch, config, device, tuple(batch["rgb"].shape[-2:]))
    return labels.edge_distance()


# --- Per-sample reductions.


def _length(vectors: Tensor) -> Tensor:
    """(B,C,...) -> (B,1,...) Euclidean length along C, at least 1e-12.

    (x*x).sum(1) is several times faster than linalg.vector_norm over dim 1 of NCHW on the CPU;
    the clamp before the root keeps the gradient finite (0) at the zero vector.
    """
    return (vectors * vectors).sum(1, keepdim=True).clamp_min(1e-24).sqrt()


def _work(x: Tensor) -> Tensor:
    """Losses are computed in float32 (float64 inputs stay float64), also under bf16 autocast."""
    return x if x.dtype == torch.float64 else x.float()


def _weighted_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """(B,H,W) per-pixel loss and weights -> (B,) per-sample weighted mean, 0 without weight."""
    numerator = (loss * weight).flatten(1).sum(1)  # (B,)
    denominator = weight.flatten(1).sum(1)  # (B,)
    return numerator / torch.where(denominator > 0, denominator, 1.0)


def _mean_over_batch(per_sample: Tensor) -> Tensor:
    """(B,) per-sample losses -> their sum over the batch divided by B."""
    return per_sample.sum() / per_sample.shape[0]


def _check_size(task: str, prediction: Tensor, size: tuple[int, int]) -> None:
    if tuple(prediction.shape[-2:]) != tuple(size):
        raise ValueError(f"output {task!r} is {tuple(prediction.shape[-2:])}, the batch's labels are {tuple(size)}")


# --- Loss functions on (B,...) predictions and labels with pixel weights (0 = not counted).


def _depth_loss(prediction: Tensor, label: Tensor, weight: Tensor, metric: Tensor, config: LossConfig) -> Tensor:
    """(B,1,h,w) predicted range, (B,h,w) label (range or disparity), weights, (B,) metric flags -> (B,)."""
    pred = _work(prediction)[:, 0].clamp_min(_MIN_DEPTH)  # (B,h,w)
    valid = weight > 0
    label = torch.where(valid, label, 1.0)  # safe values where the weight is 0: no NaN anywhere
    metric_weight = weight * metric[:, None, None]
    relative_weight = weight * ~metric[:, None, None]
    has_metric = metric_weight.flatten(1).sum(1) > 0  # (B,)

    if config.metric_depth_loss == "silog":
        g = pred.log() - label.log()  # (B,h,w)
        mean, mean_square = _weighted_mean(g, metric_weight), _weighted_mean(g * g, metric_weight)  # (B,)
        variance = mean_square - config.silog_lambda * mean * mean  # (B,)
        metric_loss = variance.clamp_min(1e-12).sqrt() if config.silog_root else variance
        metric_loss = torch.where(has_metric, metric_loss, 0.0)
    elif config.metric_depth_loss == "l1":
        metric_loss = _weighted_mean((pred - label).abs(), metric_weight)
    else:
        error = (pred - label).abs()
        largest = torch.where(metric_weight > 0, error, 0.0).detach().flatten(1).amax(1)  # (B,)
        c = (config.berhu_threshold * largest).clamp_min(1e-12)[:, None, None]
        berhu = torch.where(error <= c, error, (error * error + c * c) / (2 * c))
        metric_loss = _weighted_mean(berhu, metric_weight)

    disparity = 1.0 / pred  # (B,h,w)
    mean_q = _weighted_mean(disparity, relative_weight)[:, None, None]  # (B,1,1)
    mean_t = _weighted_mean(label, relative_weight)[:, None, None]
    centred_q = disparity - mean_q
    variance = _weighted_mean(centred_q * centred_q, relative_weight)[:, None, None]
    covariance = _weighted_mean(centred_q * (label - mean_t), relative_weight)[:, None, None]
    # A constant predicted disparity has no scale to fit: s = 0, b = the mean target.
    scale = torch.where(variance > 1e-12, covariance / torch.where(variance > 1e-12, variance, 1.0), 0.0)
    shift = mean_t - scale * mean_q
    aligned_error = (scale * disparity + shift - label).abs()
    relative_loss = _weighted_mean(aligned_error, relative_weight) / torch.where(mean_t > 0, mean_t, 1.0)[:, 0, 0]
    return metric_loss + relative_loss


def _dice_loss(logits: Tensor, classes: Tensor, weight: Tensor) -> Tensor:
    """(B,C,H,W) logits, (B,H,W) safe class ids, weights -> (B,) soft Dice loss over present classes."""
    probabilities = logits.softmax(1)  # (B,C,H,W)
    num_classes = logits.shape[1]
    flat_classes, flat_weight = classes.flatten(1), weight.flatten(1)  # (B,HW)
    truth = torch.zeros(flat_weight.shape[0], num_classes, dtype=weight.dtype, device=weight.device)
    truth.scatter_add_(1, flat_classes, flat_weight)  # (B,C): Y_k
    hit = probabilities.gather(1, classes[:, None])[:, 0].flatten(1) * flat_weight  # (B,HW): w p_y
    intersection = torch.zeros_like(truth).scatter_add(1, flat_classes, hit)  # (B,C): I_k
    predicted = torch.einsum("bchw,bhw->bc", probabilities, weight)  # (B,C): P_k
    present = truth > 0
    ratio = 2 * intersection / torch.where(present, predicted + truth, 1.0)
    count = present.sum(1)  # (B,)
    dice = (ratio * present).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, 1.0 - dice, 0.0)


def _normals_loss(prediction: Tensor, label: Tensor, config: LossConfig) -> Tensor:
    """(B,3,h,w) predicted and (safe, unit) label normals -> (B,h,w) per-pixel loss."""
    pred = _work(prediction)
    pred = pred / _length(pred)
    if config.normals_loss == "l1":
        return (pred - label).abs().sum(1)
    cosine = (pred * label).sum(1)
    limit = 1.0 - config.cosine_margin
    return torch.acos(cosine.clamp(-limit, limit))


def _l1(prediction: Tensor, target: Tensor) -> Tensor:
    """(B,C,h,w) prediction and target -> (B,h,w) sum over channels of |difference|."""
    return (_work(prediction) - target).abs().sum(1)


# --- Labels, their validity and pixel weights.


class _Labels:
    """The batch's labels on the loss device with their validity and pixel weights, built on demand."""

    def __init__(self, batch: dict, config: LossConfig, device: torch.device, size: tuple[int, int]) -> None:
        self.batch, self.config, self.device, self.size = batch, config, device, size
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        height = size[0]
        self.rgb = _work(batch["rgb"].to(device))
        if config.solid_angle:
            rows = solid_angle_weights(height, dtype=self.rgb.dtype, device=device)
            self.row_weight = rows / rows.mean()  # (H,), mean 1
        else:
            self.row_weight = torch.ones(height, dtype=self.rgb.dtype, device=device)

    def _get(self, key: str) -> Tensor:
        if key not in self.batch:
            raise KeyError(f"the batch has no {key!r}, which the model's outputs need")
        value = self.batch[key].to(self.device)
        if value.shape[-2:] != self.size:
            raise ValueError(f"batch[{key!r}] is {tuple(value.shape[-2:])}, batch['rgb'] is {self.size}")
        return value

    def _weight(self, task: str, valid: Tensor) -> Tensor:
        """(B,H,W) pixel weights: valid x confidence^gamma x solid angle."""
        confidence = _work(self._get(f"{task}_confidence"))
        confidence = torch.where(valid & torch.isfinite(confidence), confidence, 0.0).clamp_min(0.0)
        trust = confidence.pow(self.config.confidence_power)  # 0^0 = 1: gamma = 0 weighs all valid alike
        return torch.where(valid, trust, 0.0) * self.row_weight[:, None]

    def area(self, batch_size: int) -> Tensor:
        """(B,H,W) weights of targets every pixel has (the image gradient): the solid angle only."""
        return self.row_weight[:, None].expand(batch_size, *self.size)

    def metric(self) -> Tensor:
        """(B,) bool: the sample's depth is metric range (else aligned disparity)."""
        return self._get_flag("depth_metric")

    def _get_flag(self, key: str) -> Tensor:
        if key not in self.batch:
            raise KeyError(f"the batch has no {key!r}, which the depth loss needs")
        return torch.as_tensor(self.batch[key], device=self.device).reshape(-1).bool()

    def depth(self) -> tuple[Tensor, Tensor]:
        """(B,H,W) depth label (1 where invalid) and its weights."""
        if "depth" not in self._cache:
            depth = _work(self._get("depth"))
            valid = self._get("depth_mask").bool() & torch.isfinite(depth) & (depth > 0)
            self._cache["depth"] = (torch.where(valid, depth, 1.0), self._weight("depth", valid))
        return self._cache["depth"]

    def semantic(self, num_classes: int) -> tuple[Tensor, Tensor]:
        """(B,H,W) int64 class ids (0 where invalid) and their weights."""
        if "semantic" not in self._cache:
            classes = self._get("semantic").long()
            valid = self._get("semantic_mask").bool() & (classes != IGNORE_CLASS)
            self._cache["semantic_raw"] = (classes, valid)
            self._cache["semantic"] = (torch.where(valid, classes, 0), self._weight("semantic", valid))
        classes, valid = self._cache["semantic_raw"]
        out_of_range = valid & ((classes < 0) | (classes >= num_classes))
        if bool(out_of_range.any()):
            bad = int(classes[out_of_range][0])
            raise ValueError(f"semantic label {bad} is outside the model's {num_classes} classes (255 = no label)")
        return self._cache["semantic"]

    def normals(self) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) unit normals (z where invalid) and their weights."""
        if "normals" not in self._cache:
            normals = _work(self._get("normals"))
            square = (normals * normals).sum(1)  # (B,H,W)
            valid = self._get("normals_mask").bool() & torch.isfinite(square) & (square > 0)
            forward = torch.tensor([0.0, 0.0, 1.0], dtype=normals.dtype, device=self.device)[:, None, None]
            safe = torch.where(valid[:, None], normals, forward)  # (B,3,H,W), unit z where invalid
            unit = safe / _length(safe)
            self._cache["normals"] = (unit, self._weight("normals", valid))
        return self._cache["normals"]

    def edge_distance(self) -> tuple[Tensor, Tensor]:
        """(B,1,H,W) edge-distance target in [0,1] and its weights (module docstring)."""
        if "edge_distance" not in self._cache:
            depth, depth_weight = self.depth()
            classes, class_weight = self.semantic(IGNORE_CLASS + 1)
            boundary = label_boundaries(depth, depth_weight > 0, classes, class_weight > 0, self.config.edge_depth_jump)
            distance = boundary_distance(boundary, self.config.edge_distance_clip).to(depth.dtype)[:, None]
            self._cache["edge_distance"] = (distance, torch.maximum(depth_weight, class_weight))
        return self._cache["edge_distance"]


# --- Coarse (token-grid) targets and losses.


class _Cells:
    """The partition of an (H,W) ERP into the (h,w) cells of a coarse head: pixel -> cell index."""

    def __init__(self, size: tuple[int, int], cells: tuple[int, int], device: torch.device) -> None:
        (H, W), (h, w) = size, cells
        rows = torch.div(torch.arange(H, device=device) * h, H, rounding_mode="floor")  # (H,)
        cols = torch.div(torch.arange(W, device=device) * w, W, rounding_mode="floor")  # (W,)
        self.index = (rows[:, None] * w + cols[None, :]).flatten()  # (H*W,) cell of each pixel
        self.cells = (h, w)

    def sum(self, values: Tensor) -> Tensor:
        """(B,C,H,W) -> (B,C,h,w) sums over each cell's pixels."""
        B, C = values.shape[:2]
        out = values.new_zeros(B, C, self.cells[0] * self.cells[1])
        out.index_add_(2, self.index, values.flatten(2))  # (B,C,h*w)
        return out.unflatten(2, self.cells)  # (B,C,h,w)

    def mean(self, values: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted cell means of (B,C,H,W) values with (B,H,W) weights, and the cell weights (B,h,w)."""
        total = self.sum(weight[:, None])[:, 0]  # (B,h,w)
        means = self.sum(values * weight[:, None]) / torch.where(total > 0, total, 1.0)[:, None]
        return means, total


def _coarse_loss(
    task: str,
    prediction: Tensor,
    labels: _Labels,
    targets: dict[str, tuple[Tensor, Tensor]],
    cells: _Cells,
    config: LossConfig,
) -> Tensor:
    """(B,) loss of a coarse_<task> head's (B,C_t,h,w) prediction against area-averaged labels."""
    if task == "depth":
        depth, weight = labels.depth()
        log_mean, cell_weight = cells.mean(depth.log()[:, None], weight)
        return _depth_loss(prediction, log_mean[:, 0].exp(), cell_weight, labels.metric(), config)
    if task == "semantic":
        classes, weight = labels.semantic(prediction.shape[1])
        B, C = prediction.shape[:2]
        h, w = cells.cells
        # Class histogram per cell: weight of pixel p added at (class_p, cell_p).
        slot = classes.flatten(1) * (h * w) + cells.index[None]  # (B,HW)
        histogram = weight.new_zeros(B, C * h * w).scatter_add_(1, slot, weight.flatten(1)).view(B, C, h, w)
        cell_weight = histogram.sum(1)  # (B,h,w)
        distribution = histogram / torch.where(cell_weight > 0, cell_weight, 1.0)[:, None]
        soft_cross_entropy = -(distribution * _work(prediction).log_softmax(1)).sum(1)  # (B,h,w)
        return _weighted_mean(soft_cross_entropy, cell_weight)
    if task == "normals":
        normals, weight = labels.normals()
        mean, cell_weight = cells.mean(normals, weight)
        length = _length(mean)[:, 0]  # (B,h,w): 1 on a flat cell, 1e-12 on an empty one
        unit = mean / length[:, None]
        return _weighted_mean(_normals_loss(prediction, unit, config), cell_weight * length)
    if task not in targets:
        raise ValueError(f"no target for the coarse head coarse_{task}")
    target, weight = targets[task]
    mean, cell_weight = cells.mean(target, weight)
    return _weighted_mean(_l1(prediction, mean), cell_weight)
