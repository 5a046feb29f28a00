"""Depth kinds, normal frames and normals from depth.

ERP depth is *range* (Euclidean distance along the pixel's ray, metres); patch depth is
planar *z-depth* along the optical axis: range = z * ||c|| for the c_z = 1 camera ray c.
ERP normals live in the world frame, patch normals in their camera frame: n_world = R n_cam.
Normals face the camera (n . d < 0 for the viewing ray d). NaN marks "no value".
"""

from __future__ import annotations

import torch
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_rays


def zdepth_to_range(zdepth: Tensor, cameras: PatchCameras) -> Tensor:
    """(N,h,w) planar z-depth of patch pixels -> (N,h,w) range, same units."""
    return zdepth * cameras.to(zdepth.device, zdepth.dtype).ray_norms()


def range_to_zdepth(range_: Tensor, cameras: PatchCameras) -> Tensor:
    """(N,h,w) range of patch pixels -> (N,h,w) planar z-depth, same units."""
    return range_ / cameras.to(range_.device, range_.dtype).ray_norms()


def camera_to_world_normals(normals: Tensor, rotation: Tensor) -> Tensor:
    """Rotate (N,3,h,w) camera-frame vectors by (N,3,3) world-from-camera rotations."""
    return torch.einsum("nab,nbhw->nahw", rotation.to(normals.dtype), normals)  # (N,3,h,w)


def world_to_camera_normals(normals: Tensor, rotation: Tensor) -> Tensor:
    """Rotate (N,3,h,w) world-frame vectors into the cameras of (N,3,3) rotations (R^T n)."""
    return torch.einsum("nba,nbhw->nahw", rotation.to(normals.dtype), normals)  # (N,3,h,w)


def erp_points(range_: Tensor) -> Tensor:
    """(B,H,W) ERP range -> (B,3,H,W) world points (range times the unit ray)."""
    rays = erp_rays(range_.shape[-2], dtype=range_.dtype, device=range_.device)  # (H,W,3)
    return range_[:, None] * rays.permute(2, 0, 1)[None]  # (B,3,H,W)


def patch_points(zdepth: Tensor, cameras: PatchCameras) -> Tensor:
    """(N,h,w) z-depth -> (N,3,h,w) camera-frame points (z times the c_z = 1 ray)."""
    rays = cameras.to(zdepth.device, zdepth.dtype).camera_rays()  # (N,h,w,3)
    return zdepth[:, None] * rays.permute(0, 3, 1, 2)  # (N,3,h,w)


def _one_sided_tangent(points: Tensor, dim: int, circular: bool) -> Tensor:
    """Tangent of (B,3,H,W) points along `dim` (-1 columns, -2 rows).

    Takes, per pixel, the shorter of the forward and backward differences, so a surface
    next to a depth edge is differenced on its own side of the edge. Non-circular borders
    use the only side there is.
    """
    if circular:
        forward = torch.roll(points, -1, dims=dim) - points
        backward = points - torch.roll(points, 1, dims=dim)
    else:
        diff = torch.diff(points, dim=dim)
        size = points.shape[dim]
        forward = torch.cat((diff, diff.narrow(dim, size - 2, 1)), dim=dim)
        backward = torch.cat((diff.narrow(dim, 0, 1), diff), dim=dim)
    forward_len = torch.linalg.vector_norm(forward, dim=1, keepdim=True)
    backward_len = torch.linalg.vector_norm(backward, dim=1, keepdim=True)
    return torch.where(
        torch.nan_to_num(forward_len, nan=torch.inf) <= torch.nan_to_num(backward_len, nan=torch.inf), forward, backward
    )


def _normals_from_points(points: Tensor, circular_columns: bool) -> Tensor:
    """(B,3,H,W) points seen from the origin -> (B,3,H,W) unit normals facing the origin."""
    along_cols = _one_sided_tangent(points, -1, circular_columns)
    along_rows = _one_sided_tangent(points, -2, False)
    normals = torch.cross(along_rows, along_cols, dim=1)
    normals = normals / torch.linalg.vector_norm(normals, dim=1, keepdim=True)
    facing = (normals * points).sum(1, keepdim=True) > 0
    return torch.where(facing, -normals, normals)


def normals_from_erp_range(range_: Tensor) -> Tensor:
    """World-frame normals of an ERP range map.

    Args:
        range_: (B,H,W) float range in metres; NaN or <= 0 where invalid.
    Returns:
        (B,3,H,W) unit normals facing the camera; NaN where a neighbour needed is invalid.
    """
    clean = torch.where(range_ > 0, range_, torch.nan)
    return _normals_from_points(erp_points(clean), circular_columns=True)


def normals_from_zdepth(zdepth: Tensor, cameras: PatchCameras) -> Tensor:
    """Camera-frame normals of patch z-depth maps.

    Args:
        zdepth: (N,h,w) float planar depth; NaN or <= 0 where invalid.
        cameras: the N patch cameras.
    Returns:
        (N,3,h,w) unit normals in each camera frame, facing the camera; NaN where invalid.
    """
    clean = torch.where(zdepth > 0, zdepth, torch.nan)
    return _normals_from_points(patch_points(clean, cameras), circular_columns=False)


def orient_towards(normals: Tensor, rays: Tensor) -> Tensor:
    """Flip (B,3,...) normals so that n . d < 0 for the (B,3,...) viewing rays d."""
    facing_away = (normals * rays).sum(1, keepdim=True) > 0
    return torch.where(facing_away, -normals, normals)
