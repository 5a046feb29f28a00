"""ERP -> ERP resampling under a rotation of the sphere (pitch/roll augmentation).

`rotate_erp(erp, rotation)` turns a panorama as if the camera had been rotated: what the
input sees in direction d, the output sees in direction R d. Every output pixel reads the
input at R^T d_out with `F.grid_sample` over `spherical.sampling.pad_erp`, so it wraps at
+-180 degrees and reads across the poles; pixel centres follow docs/conventions.md exactly
(the identity rotation returns the input, a yaw by k pixel widths is a roll by k columns).

Why not pyequilib's `equi2equi` (0.6.0, what the project's rules would pick first): it
samples an ERP grid half a pixel early in longitude and latitude (pixel j at 2 pi j / W),
reads the input one pixel right of and below the ray's pixel, does not wrap at the seam
(reflection padding) and clamps at the poles. Half the offsets can be undone by feeding it
an input shifted by one pixel with our padding; the output grid's half-pixel offset only
by asking for a 2H x 2W output and keeping its odd rows and columns (4x the work); the
seam cannot be fixed. Measured (`tests/test_resample.py` asserts the agreement figures;
times are interleaved medians on the 2-core development machine, float32, a random 3-channel
image, a 10 degree pitch + 5 degree roll, one torch thread as in a DataLoader worker):

| H x W | rotate_erp | equi2equi (raw) | equi2equi (corrected, 2H x 2W) |
|---|---|---|---|
| 64 x 128 | 0.8 ms | 1.3 ms | 3.6 ms |
| 256 x 512 | 8.7 ms | 13.0 ms | 61.7 ms |
| 512 x 1024 | 35 ms | 57 ms | 281 ms |

Agreement: against a direct render of the rotated synthetic room (64 x 128, same rotation)
the mean absolute RGB error is 0.0117 for rotate_erp and for the corrected equi2equi, 0.0237
for the raw call (its half-pixel grid). On a random 32 x 64 image the corrected equi2equi
equals rotate_erp to 1e-5 (pyequilib's pi is a float32 constant) on every pixel but the 3%
that read between the last two columns (no wrap) or below the centre of the second-to-last
row (clamped), where it is off by up to 0.62. So this module resamples with its own grid:
exact at the seam and the poles, 1.6x faster than the raw library call and 8x faster than
the corrected one at 512 x 1024.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from spherical.erp import erp_rays, erp_width
from spherical.sampling import pad_erp

ResampleMode = Literal["bilinear", "nearest"]


def rotation_sampling_grid(
    rotation: Tensor, height: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """grid_sample grid that reads a rotated ERP from a padded input ERP (see `pad_erp`).

    Args:
        rotation: (3,3) or (B,3,3) output-from-input rotations R (world frame): the input's
            direction d appears at R d in the output.
        height: H of the input and output ERP (W = 2H).
    Returns:
        (B,H,W,2) normalised (x, y) coordinates for `F.grid_sample(align_corners=False)` on a
        (H+2, W+2) padded input; B = 1 for a single (3,3) rotation.
    """
    if rotation.shape[-2:] != (3, 3) or rotation.ndim not in (2, 3):
        raise ValueError(f"rotation must be (3,3) or (B,3,3), got {tuple(rotation.shape)}")
    W = erp_width(height)
    # Grid maths in float64 for float64 inputs, float32 otherwise (exact enough to address
    # pixels of a 4096-wide ERP).
    work = torch.float64 if dtype == torch.float64 else torch.float32
    rays = erp_rays(height, dtype=work, device=device)  # (H,W,3)
    rot = rotation.to(device=device, dtype=work).reshape(-1, 3, 3)  # (B,3,3)
    # Source direction R^T d; as a row vector (R^T d)^T = d^T R.
    src = torch.einsum("hwj,bjk->bhwk", rays, rot)  # (B,H,W,3)
    x, y, z = src.unbind(-1)
    lon = torch.atan2(x, z)  # (B,H,W) in [-pi, pi]
    neg_lat = torch.atan2(y, torch.hypot(x, z))  # (B,H,W) minus latitude (y points down)
    # Continuous x = (lon + pi) W / (2 pi), y = (pi/2 - lat) H / pi in the unpadded ERP;
    # in the padded one, normalised: 2 (x + 1) / (W + 2) - 1 and 2 (y + 1) / (H + 2) - 1.
    gx = lon * (W / (math.pi * (W + 2)))
    gy = neg_lat * (2.0 * height / (math.pi * (height + 2)))
    return torch.stack((gx, gy), -1)  # (B,H,W,2)


def rotate_erp(erp: Tensor, rotation: Tensor, mode: ResampleMode = "bilinear", grid: Tensor | None = None) -> Tensor:
    """Resample ERP maps as seen after rotating the camera: output(R d) = input(d).

    Vector fields (normals, points) are only moved, not rotated: rotate them with R as well.

    Args:
        erp: (B,C,H,W) ERP maps, W = 2H. Floating maps are interpolated with `mode`; integer
            and bool maps (classes, masks) need mode="nearest" and keep their dtype.
        rotation: (3,3) (one rotation for the whole batch) or (B,3,3) output-from-input
            rotations in the world frame (docs/conventions.md).
        mode: "bilinear" for images and continuous maps, "nearest" for labels and masks.
        grid: optional precomputed `rotation_sampling_grid(rotation, H)` to reuse for several
            calls with the same rotation.
    Returns:
        (B,C,H,W) in the dtype of `erp`, on its device.
    """
    if erp.ndim != 4:
        raise ValueError(f"erp must be (B,C,H,W), got {tuple(erp.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    is_float = erp.is_floating_point()
    if not is_float and mode != "nearest":
        raise ValueError("integer and bool maps can only be resampled with mode='nearest'")
    B, _, H, W = erp.shape
    if erp_width(H) != W:
        raise ValueError(f"ERP maps must be 2:1, got {H}x{W}")
    work = torch.float64 if erp.dtype == torch.float64 else torch.float32
    if grid is None:
        grid = rotation_sampling_grid(rotation, H, dtype=work, device=erp.device)
    if grid.shape[1:] != (H, W, 2) or grid.shape[0] not in (1, B):
        raise ValueError(f"grid must be (1 or {B},{H},{W},2), got {tuple(grid.shape)}")
    padded = pad_erp(erp.to(work))  # (B,C,H+2,W+2)
    out = F.grid_sample(
        padded, grid.to(work).expand(B, -1, -1, -1), mode=mode, padding_mode="border", align_corners=False
    )  # (B,C,H,W)
    if is_float:
        return out.to(erp.dtype)
    if erp.dtype == torch.bool:
        return out > 0.5
    return out.round_().to(erp.dtype)
