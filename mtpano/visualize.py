"""Colour images of label maps for people to look at (uint8 RGB, (H,W,3))."""

from __future__ import annotations

import cv2
import numpy as np

from spherical.ade20k import ADE20K_PALETTE, IGNORE_ID

NO_LABEL_RGB = np.array([0, 0, 0], dtype=np.uint8)


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H,W) depth (NaN = none) -> (H,W,3) uint8 turbo colours, near = red, far = blue.

    vmin/vmax default to the 2nd/98th percentiles of the valid values.
    """
    valid = np.isfinite(depth)
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo = float(np.percentile(depth[valid], 2)) if vmin is None else vmin
    hi = float(np.percentile(depth[valid], 98)) if vmax is None else vmax
    scaled = 1.0 - np.clip((np.nan_to_num(depth, nan=lo) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    return np.where(valid[..., None], bgr[..., ::-1], NO_LABEL_RGB)


def colorize_normals(normals: np.ndarray) -> np.ndarray:
    """(3,H,W) unit normals (NaN = none) -> (H,W,3) uint8, rgb = (n + 1) / 2."""
    valid = np.isfinite(normals).all(0)
    rgb = np.round((np.nan_to_num(normals).transpose(1, 2, 0) + 1.0) * 127.5)
    return np.where(valid[..., None], np.clip(rgb, 0, 255), NO_LABEL_RGB).astype(np.uint8)


def colorize_semantic(ids: np.ndarray, palette: np.ndarray = ADE20K_PALETTE) -> np.ndarray:
    """(H,W) class ids (255 = none) -> (H,W,3) uint8 palette colours."""
    ids = ids.astype(np.int64)
    valid = (ids >= 0) & (ids < len(palette)) & (ids != IGNORE_ID)
    return np.where(valid[..., None], palette[np.where(valid, ids, 0)], NO_LABEL_RGB).astype(np.uint8)


def colorize_scalar(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(H,W) scalar in [vmin, vmax] (NaN = none) -> (H,W,3) uint8 viridis colours."""
    valid = np.isfinite(values)
    scaled = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / max(vmax - vmin, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return np.where(valid[..., None], bgr[..., ::-1], NO_LABEL_RGB)


def write_rgb(path: str, rgb: np.ndarray) -> None:
    """Write an (H,W,3) uint8 RGB image (PNG/JPEG by extension)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")
