"""Per-pixel geometry of an ERP feature grid, from `spherical` (the project's one convention)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from spherical.erp import erp_lonlat, erp_rays, erp_width


class GeometryMaps(NamedTuple):
    """Geometry of an h x 2h ERP grid, shared by the batch.

    code: (1,5,h,2h) ray direction (x, y, z; world frame, unit) then longitude / pi and
        latitude / (pi/2), both in [-1, 1], at the grid's pixel centres.
    pole_weight: (1,1,h,1) |ray_y| = |sin(latitude)| per row: 0 at the equator, -> 1 at the poles.
    """

    code: Tensor
    pole_weight: Tensor


class ErpGeometry(nn.Module):
    """Geometry code of the feature grid, cached as buffers for the last resolution seen.

    The buffers are not persistent: they are a function of the grid size, so checkpoints
    stay independent of the resolution a model last ran at. They follow `.to()` and are
    rebuilt when the grid size, device or dtype of the input changes.
    """

    code: Tensor
    pole_weight: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("code", torch.empty(1, 5, 0, 0), persistent=False)
        self.register_buffer("pole_weight", torch.empty(1, 1, 0, 1), persistent=False)

    def forward(self, features: Tensor) -> GeometryMaps:
        """Geometry of the grid of `features` (B,C,h,2h), on its device and in its dtype."""
        h, w = features.shape[-2:]
        if w != erp_width(h):
            raise ValueError(f"ERP feature grids must be h x 2h, got {h}x{w}")
        if self.code.shape[-2] != h or self.code.device != features.device or self.code.dtype != features.dtype:
            self._build(h, features.dtype, features.device)
        return GeometryMaps(self.code, self.pole_weight)

    def _build(self, height: int, dtype: torch.dtype, device: torch.device) -> None:
        # float64 from spherical, then one rounding to the features' dtype.
        lon, lat = erp_lonlat(height, dtype=torch.float64, device=device)  # (2h,), (h,)
        rays = erp_rays(height, dtype=torch.float64, device=device).permute(2, 0, 1)  # (h,2h,3) -> (3,h,2h)
        lon_map = (lon / math.pi).expand(height, -1)  # (h,2h)
        lat_map = (lat / (math.pi / 2.0))[:, None].expand(-1, lon.shape[0])  # (h,2h)
        code = torch.cat((rays, lon_map[None], lat_map[None]))[None]  # (1,5,h,2h)
        pole_weight = rays[1, :, 0].abs().view(1, 1, height, 1)  # |ray_y| of each row, (1,1,h,1)
        self.code = code.to(dtype)
        self.pole_weight = pole_weight.to(dtype)
