"""ERP -> perspective patch sampling (gnomonic projection).

Longitude wraps: the ERP is padded with one column from the opposite edge on each side,
so a patch straddling +-180 degrees interpolates across the seam. Latitude does not fold:
the row beyond a pole is the first row read at the opposite longitude (rolled by W/2),
which is where a ray that crosses the pole lands.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_width, lonlat_to_pixel, ray_to_lonlat

SampleMode = Literal["bilinear", "nearest"]


def pad_erp(erp: Tensor) -> Tensor:
    """Pad an ERP image by one pixel on every side with its spherical neighbours.

    Args:
        erp: (B,C,H,W) ERP image, W = 2H.
    Returns:
        (B,C,H+2,W+2): columns wrap around in longitude; the padded top/bottom rows are the
        first/last rows shifted by half a turn (the pixels across the pole).
    """
    *_, H, W = erp.shape
    if erp_width(H) != W:
        raise ValueError(f"ERP images must be 2:1, got {H}x{W}")
    top = torch.roll(erp[:, :, :1], W // 2, dims=-1)  # (B,C,1,W) across the north pole
    bottom = torch.roll(erp[:, :, -1:], W // 2, dims=-1)  # (B,C,1,W) across the south pole
    rows = torch.cat((top, erp, bottom), dim=2)  # (B,C,H+2,W)
    return torch.cat((rows[..., -1:], rows, rows[..., :1]), dim=-1)  # (B,C,H+2,W+2)


def erp_sampling_grid(cameras: PatchCameras, erp_height: int) -> Tensor:
    """grid_sample grid that reads every patch pixel from a padded ERP (see `pad_erp`).

    Returns:
        (N*h, w, 2) normalised (x, y) coordinates for `F.grid_sample(align_corners=False)`
        on a (H+2, W+2) padded ERP; the N patches are stacked along the rows.
    """
    H, W = erp_height, erp_width(erp_height)
    lon, lat = ray_to_lonlat(cameras.world_rays())  # (N,h,w) each
    x, y = lonlat_to_pixel(lon, lat, erp_height)
    gx = 2.0 * (x + 1.0) / (W + 2) - 1.0  # +1: the padded column on the left
    gy = 2.0 * (y + 1.0) / (H + 2) - 1.0
    grid = torch.stack((gx, gy), -1)  # (N,h,w,2)
    return grid.flatten(0, 1)  # (N*h,w,2)


def erp_to_patches(erp: Tensor, cameras: PatchCameras, mode: SampleMode = "bilinear") -> Tensor:
    """Sample perspective patches from ERP images.

    Args:
        erp: (B,C,H,W) ERP images, W = 2H. Floating images are interpolated with `mode`;
            integer label maps must use mode="nearest" and keep their dtype.
        cameras: N patch cameras of size (h, w); every image is sampled by all of them.
        mode: "bilinear" for images and continuous maps, "nearest" for labels.
    Returns:
        (B,N,C,h,w) patches in the dtype of `erp`, on its device.
    """
    if erp.ndim != 4:
        raise ValueError(f"erp must be (B,C,H,W), got {tuple(erp.shape)}")
    is_float = erp.is_floating_point()
    if not is_float and mode != "nearest":
        raise ValueError("integer label maps can only be sampled with mode='nearest'")
    B, _, H, _ = erp.shape
    # Coordinates and interpolation in float32 at least: half precision cannot address
    # pixels of a 2048-wide ERP exactly.
    work_dtype = torch.float64 if erp.dtype == torch.float64 else torch.float32
    grid = erp_sampling_grid(cameras.to(device=erp.device, dtype=work_dtype), H)  # (N*h,w,2)
    padded = pad_erp(erp.to(work_dtype))  # (B,C,H+2,W+2)
    out = F.grid_sample(
        padded, grid.expand(B, -1, -1, -1), mode=mode, padding_mode="border", align_corners=False
    )  # (B,C,N*h,w)
    out = out.unflatten(2, (len(cameras), cameras.height)).transpose(1, 2)  # (B,N,C,h,w)
    return out.to(erp.dtype) if is_float else out.round().to(erp.dtype)
