"""Geometric and photometric augmentations of one training item (CPU, inside DataLoader workers).

An item is the dict `trainer.data` yields for one panorama (ERP, W = 2H):
    rgb (3,H,W) float32 RGB in [0,1];
    depth (H,W) float32 range in metres (or aligned disparity), 0 where unlabelled;
    depth_mask (H,W) bool; depth_confidence (H,W) float32 in [0,1];
    semantic (H,W) int64 ADE20K ids, 255 where unlabelled; semantic_mask, semantic_confidence;
    normals (3,H,W) float32 unit vectors, world frame, 0 where unlabelled; normals_mask,
    normals_confidence;
plus keys this module passes through untouched (depth_metric, index, store, pano_id, ...).

Every augmentation keeps the labels true to the image (docs/conventions.md):
- yaw: rolling the columns by k moves longitude phi to phi + 2 pi k / W, the camera turned by
  alpha = 2 pi k / W about the vertical axis, so world-frame normals become R_yaw(alpha) n;
- mirror: column u <-> W-1-u is longitude phi <-> -phi (pixel centres at u + 0.5), the
  reflection x -> -x of the world, so the normals' x component is negated;
- pitch/roll: every map is resampled on the sphere by `spherical.resample.rotate_erp`
  (output(R d) = input(d)); normals are rotated by the same R; range (and disparity) is
  unchanged along a ray, since the camera centre does not move. Continuous labels are
  interpolated with their mask (sum of w m v / sum of w m over the bilinear footprint), so
  unlabelled pixels never leak zeros into labelled ones; classes and masks take the nearest
  pixel, so classes are moved, never mixed;
- colour jitter: brightness, contrast and saturation of the RGB image only.
All randomness comes from the `torch.Generator` passed in: the loader seeds it per sample,
so an epoch's augmentations are reproducible and a resumed run sees the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spherical.erp import erp_width
from spherical.resample import rotate_erp, rotation_sampling_grid
from spherical.rotation import pitch_matrix, roll_matrix, yaw_matrix

# Per-pixel label maps of each task: (value key, mask key, confidence key).
LABEL_TASKS: dict[str, tuple[str, str, str]] = {
    task: (task, f"{task}_mask", f"{task}_confidence") for task in ("depth", "semantic", "normals")
}
# Every key that holds an (H,W) or (C,H,W) ERP map; all other keys pass through untouched.
MAP_KEYS: tuple[str, ...] = ("rgb", *(key for keys in LABEL_TASKS.values() for key in keys))
# Rec. 601 luma weights, the usual grey level of colour jitter (torchvision uses the same).
_LUMA = (0.299, 0.587, 0.114)
# Uniform draws per item, always all of them, so that switching an augmentation on or off
# leaves the random parameters of the others unchanged.
_DRAWS = 7


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and strengths of the training augmentations (defaults: yaw, mirror, colour jitter)."""

    # Random yaw: roll the columns by a whole number of pixels drawn uniformly in [0, W).
    yaw: bool = True
    # Horizontal mirror about the centre meridian (longitude phi -> -phi).
    mirror: bool = True
    # Probability of mirroring an item when `mirror` is on.
    mirror_probability: float = 0.5
    # Colour jitter of the RGB image (label maps are never touched).
    color_jitter: bool = True
    # Brightness: the image is multiplied by a factor drawn uniformly in [1 - b, 1 + b].
    brightness: float = 0.2
    # Contrast: blend with the image's mean grey level by a factor in [1 - c, 1 + c].
    contrast: float = 0.2
    # Saturation: blend with the per-pixel grey level by a factor in [1 - s, 1 + s].
    saturation: float = 0.2
    # Random pitch and roll, each drawn uniformly in [-pitch_roll_deg, +pitch_roll_deg]
    # degrees, by resampling every map on the sphere; 0 turns it off (e.g. 10 when on).
    pitch_roll_deg: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.mirror_probability <= 1.0:
            raise ValueError(f"AugmentConfig.mirror_probability must be in [0, 1], got {self.mirror_probability}")
        if not 0.0 <= self.pitch_roll_deg < 90.0:
            raise ValueError(f"AugmentConfig.pitch_roll_deg must be in [0, 90), got {self.pitch_roll_deg}")


def augment(item: dict, config: AugmentConfig, generator: torch.Generator) -> dict:
    """Augment one item; returns a new dict (the input is not modified).

    Args:
        item: one dataset item (see the module docstring), on the CPU.
        config: which augmentations to apply and how strongly.
        generator: the only source of randomness (7 uniform draws per call, whatever the config).
    Returns:
        The augmented item: the same keys, shapes and dtypes; non-map keys are the same objects.
    """
    rgb = item["rgb"]
    if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.shape[-1] != erp_width(rgb.shape[-2]):
        raise ValueError(f"item['rgb'] must be (3,H,W) with W = 2H, got {tuple(rgb.shape)}")
    draws = torch.rand(_DRAWS, generator=generator, dtype=torch.float64).tolist()
    yaw_draw, mirror_draw, brightness, contrast, saturation, pitch_draw, roll_draw = draws
    out = dict(item)
    if config.pitch_roll_deg > 0:
        limit = math.radians(config.pitch_roll_deg)
        out = rotate_item(out, (2 * pitch_draw - 1) * limit, (2 * roll_draw - 1) * limit)
    if config.yaw:
        out = yaw_item(out, int(yaw_draw * rgb.shape[-1]))
    if config.mirror and mirror_draw < config.mirror_probability:
        out = mirror_item(out)
    if config.color_jitter:
        out["rgb"] = jitter_colors(
            out["rgb"],
            brightness=1.0 + (2 * brightness - 1) * config.brightness,
            contrast=1.0 + (2 * contrast - 1) * config.contrast,
            saturation=1.0 + (2 * saturation - 1) * config.saturation,
        )
    return out


def yaw_item(item: dict, columns: int) -> dict:
    """Turn the camera by alpha = 2 pi columns / W: maps rolled by `columns`, normals rotated.

    Rolling by +k puts the content of longitude phi at phi + alpha, which is R_yaw(alpha)
    applied to the ray (`spherical.rotation.yaw_matrix`): the world turns with the image.
    """
    out = dict(item)
    width = item["rgb"].shape[-1]
    for key in MAP_KEYS:
        if key in item:
            out[key] = torch.roll(item[key], columns, dims=-1)
    if "normals" in item:
        rotation = yaw_matrix(2.0 * math.pi * columns / width).to(item["normals"].dtype)  # (3,3)
        out["normals"] = torch.einsum("ij,jhw->ihw", rotation, out["normals"])  # (3,H,W)
    return out


def mirror_item(item: dict) -> dict:
    """Mirror about the centre meridian: column u <-> W-1-u (phi -> -phi), normals' x negated."""
    out = dict(item)
    for key in MAP_KEYS:
        if key in item:
            out[key] = torch.flip(item[key], dims=(-1,))
    if "normals" in item:
        sign = torch.tensor([-1.0, 1.0, 1.0], dtype=item["normals"].dtype)[:, None, None]  # (3,1,1)
        out["normals"] = out["normals"] * sign
    return out


def rotate_item(item: dict, pitch: float, roll: float) -> dict:
    """Resample every map as seen by the camera turned by R = R_pitch(pitch) R_roll(roll) (radians).

    rgb and the continuous labels are interpolated bilinearly (labels with their mask, see
    the module docstring), classes and masks take the nearest pixel; normals are rotated by
    R and renormalised; unlabelled pixels stay 0 (255 for classes) with a False mask.
    """
    height = item["rgb"].shape[-2]
    rotation = pitch_matrix(torch.tensor(pitch, dtype=torch.float64)) @ roll_matrix(
        torch.tensor(roll, dtype=torch.float64)
    )  # (3,3) output-from-input
    grid = rotation_sampling_grid(rotation, height)  # (1,H,W,2), shared by every map
    tasks = [task for task, keys in LABEL_TASKS.items() if all(k in item for k in keys)]

    # One bilinear pass over every continuous channel: rgb, then per task value and confidence
    # zeroed where unlabelled (where(), not a product: NaN stays out) and the mask itself (the
    # interpolation weight of the labelled pixels).
    smooth: list[Tensor] = [item["rgb"]]
    for task in tasks:
        value, mask, confidence = (item[k] for k in LABEL_TASKS[task])
        if task != "semantic":
            smooth.append(torch.where(mask, value, 0.0).reshape(-1, *mask.shape))  # (C,H,W)
        smooth += [torch.where(mask, confidence, 0.0)[None], mask.to(torch.float32)[None]]
    stacked = torch.cat(smooth, 0)[None]  # (1,K,H,W)
    smooth_out = rotate_erp(stacked, rotation, "bilinear", grid=grid)[0]  # (K,H,W)
    # One nearest pass over classes and masks (class ids <= 255 are exact in float32).
    sharp = [item[LABEL_TASKS[t][1]].to(torch.float32) for t in tasks]
    if "semantic" in tasks:
        sharp.append(item["semantic"].to(torch.float32))
    sharp_out = rotate_erp(torch.stack(sharp, 0)[None], rotation, "nearest", grid=grid)[0]  # (T(+1),H,W)

    out = dict(item)
    out["rgb"] = smooth_out[:3].clamp(0.0, 1.0)
    channel = 3
    for index, task in enumerate(tasks):
        value_key, mask_key, confidence_key = LABEL_TASKS[task]
        channels = 0 if task == "semantic" else (3 if task == "normals" else 1)
        value_sum = smooth_out[channel : channel + channels]  # (C,H,W)
        confidence_sum, weight_sum = smooth_out[channel + channels], smooth_out[channel + channels + 1]
        channel += channels + 2
        # The nearest pixel is one of the bilinear footprint's, so weight_sum > 0 where it is
        # labelled; the clamp only guards the division elsewhere.
        mask = sharp_out[index] > 0.5
        inverse = torch.where(mask, 1.0 / weight_sum.clamp_min(1e-6), 0.0)  # (H,W)
        out[mask_key] = mask
        out[confidence_key] = (confidence_sum * inverse).to(item[confidence_key].dtype)
        if task == "depth":
            out[value_key] = (value_sum[0] * inverse).to(item[value_key].dtype)
        elif task == "normals":
            rotated = torch.einsum("ij,jhw->ihw", rotation.to(value_sum.dtype), value_sum)  # (3,H,W)
            # (x*x).sum: linalg.vector_norm over the leading dim of a CHW map is several times slower on the CPU.
            unit = rotated / (rotated * rotated).sum(0, keepdim=True).sqrt().clamp_min(1e-12)
            out[value_key] = torch.where(mask, unit, 0.0).to(item[value_key].dtype)
        else:
            classes = sharp_out[-1].round().to(item[value_key].dtype)
            out[value_key] = torch.where(mask, classes, torch.full_like(classes, 255))
    return out


def jitter_colors(rgb: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Colour jitter of a (3,H,W) RGB image in [0,1] by the given factors (1 = unchanged).

    Brightness scales the image; contrast blends it with its mean grey level; saturation
    with its per-pixel grey level (Rec. 601 luma); clamped to [0,1] after each step, as
    torchvision's ColorJitter does.
    """
    luma = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device)  # (3,)
    # In place on one copy, a blend as x s + g (1 - s): the loaders run this per item, so
    # every pass over a 512x1024 image counts.
    out = rgb.mul(brightness).clamp_(0.0, 1.0)
    mean_grey = float(out.flatten(1).mean(1) @ luma)  # (3,H*W) -> (3,) channel means -> grey
    out.mul_(contrast).add_(mean_grey * (1.0 - contrast)).clamp_(0.0, 1.0)
    grey = torch.einsum("c,chw->hw", luma, out)  # (H,W) per-pixel grey
    return out.mul_(saturation).add_(grey.mul_(1.0 - saturation)).clamp_(0.0, 1.0)
