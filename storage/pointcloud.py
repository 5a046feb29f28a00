"""Coloured point clouds of ERP range maps, written as binary PLY files (any PLY reader opens
them: plyfile, Open3D, MeshLab, CloudCompare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spherical.erp import erp_rays


def erp_point_cloud(range_m: np.ndarray, rgb: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of an ERP range map, every `stride`-th row and column.

    Args:
        range_m: (H,W) range in metres, NaN or <= 0 where there is none.
        rgb: (H,W,3) float RGB in [0,1] (or uint8), the panorama at the range map's size.
        stride: keep rows and columns 0, stride, 2 stride, ...
    Returns:
        (N,3) float32 world-frame points (range x ray: x right, y down, z forward) of the
        valid pixels, and their (N,3) uint8 colours.
    """
    if rgb.shape[:2] != range_m.shape:
        raise ValueError(f"rgb {rgb.shape[:2]} and range {range_m.shape} must have one size")
    rays = erp_rays(range_m.shape[0], dtype=torch.float64).numpy()[::stride, ::stride]  # (h,w,3)
    depth = range_m[::stride, ::stride].astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    points = (rays * depth[..., None])[valid].astype(np.float32)
    colors = rgb[::stride, ::stride][valid]
    if colors.dtype != np.uint8:
        colors = np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)
    return points, colors


def write_ply(path: Path | str, points: np.ndarray, colors: np.ndarray) -> Path:
    """Write (N,3) float32 points and (N,3) uint8 colours as a binary little-endian PLY."""
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colours must both be (N,3), got {points.shape} and {colors.shape}")
    vertex = np.empty(
        len(points),
        dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")],
    )
    for k, name in enumerate(("x", "y", "z")):
        vertex[name] = points[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = colors[:, k]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment mtpano: world frame x right, y down, z forward; metres\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path = Path(path)
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
    return path
