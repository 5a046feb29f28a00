"""Equirectangular (ERP) pixel grid, longitude/latitude and unit rays.

Conventions (docs/conventions.md): an ERP image is H x W with W = 2H; pixel
(row v, col u) has its centre at continuous coordinates (x, y) = (u + 0.5, v + 0.5);
longitude phi = 2*pi*x/W - pi in [-pi, pi), latitude theta = pi/2 - pi*y/H; the unit
ray is d = (cos(theta) sin(phi), -sin(theta), cos(theta) cos(phi)) in the world frame
(x right, y down, z forward).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def erp_width(height: int) -> int:
    """Width of an ERP image of the given height (W = 2H)."""
    if height <= 0:
        raise ValueError(f"ERP height must be positive, got {height}")
    return 2 * height


def erp_lonlat(
    height: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Longitudes (W,) and latitudes (H,) of the ERP pixel centres, radians.

    Returned as 1-D vectors: the grid is their outer product, so callers that only need a
    footprint can index rows and columns without building the full grid.
    """
    width = erp_width(height)
    u = torch.arange(width, dtype=torch.float64, device=device)
    v = torch.arange(height, dtype=torch.float64, device=device)
    lon = 2.0 * math.pi * (u + 0.5) / width - math.pi
    lat = math.pi / 2.0 - math.pi * (v + 0.5) / height
    return lon.to(dtype), lat.to(dtype)


def lonlat_to_ray(lon: Tensor, lat: Tensor) -> Tensor:
    """Unit world rays (..., 3) for broadcastable longitude and latitude tensors (radians)."""
    lon, lat = torch.broadcast_tensors(lon, lat)
    cos_lat = torch.cos(lat)
    return torch.stack((cos_lat * torch.sin(lon), -torch.sin(lat), cos_lat * torch.cos(lon)), -1)


def lonlat_grid_to_ray(lon: Tensor, lat: Tensor) -> Tensor:
    """Unit world rays (h, w, 3) of the grid of latitudes `lat` (h,) by longitudes `lon` (w,).

    The same rays as `lonlat_to_ray(lon[None, :], lat[:, None])`, with the trigonometry done
    on the two vectors only.
    """
    cos_lat, sin_lat = torch.cos(lat)[:, None], torch.sin(lat)[:, None]  # (h,1)
    x = cos_lat * torch.sin(lon)  # (h,w)
    z = cos_lat * torch.cos(lon)  # (h,w)
    return torch.stack((x, (-sin_lat).expand_as(x), z), -1)  # (h,w,3)


def ray_to_lonlat(rays: Tensor) -> tuple[Tensor, Tensor]:
    """Longitude in [-pi, pi] and latitude in [-pi/2, pi/2] of world rays (..., 3).

    The rays need not be unit length.
    """
    x, y, z = rays.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(-y, torch.hypot(x, z))
    return lon, lat


def erp_rays(height: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Unit world rays of every ERP pixel centre, (H, W, 3)."""
    lon, lat = erp_lonlat(height, dtype=dtype, device=device)
    return lonlat_grid_to_ray(lon, lat)  # (H,W,3)


def lonlat_to_pixel(lon: Tensor, lat: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """Continuous ERP coordinates (x, y) of longitude/latitude, pixel centres at u + 0.5.

    x is wrapped into [0, W); y lies in [0, H].
    """
    width = erp_width(height)
    x = torch.remainder((lon + math.pi) * (width / (2.0 * math.pi)), width)
    y = (math.pi / 2.0 - lat) * (height / math.pi)
    return x, y


def pixel_to_lonlat(x: Tensor, y: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """Longitude and latitude (radians) of continuous ERP coordinates (x, y)."""
    width = erp_width(height)
    lon = 2.0 * math.pi * x / width - math.pi
    lat = math.pi / 2.0 - math.pi * y / height
    return lon, lat


def solid_angle_weights(
    height: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Solid angle of each ERP row's pixels (H,), steradians; they sum to 4*pi over the image."""
    width = erp_width(height)
    v = torch.arange(height + 1, dtype=torch.float64, device=device)
    edge_lat = math.pi / 2.0 - math.pi * v / height
    band = torch.sin(edge_lat[:-1]) - torch.sin(edge_lat[1:])  # (H,) area of each latitude band
    return (band * (2.0 * math.pi / width)).to(dtype)
